"""Deterministic text for the embedded model: a pretraining corpus that teaches a skill
(writing phrases in capitals) and an instruction dataset that teaches a chat format for it.

The pretraining text never contains the chat format, so the base model cannot answer
``Shout this: ...`` in a conversation; after SFT it can, for words it never saw in SFT."""

from __future__ import annotations

import random
from typing import Any

WORDS = """
able acid aged also area army away baby back ball band bank base bath bear beat been beer bell
belt best bird blow blue boat body bone book boot born boss both bowl bulk burn bush busy cake
call calm came camp card care case cash cast cell chat chip city clay club coal coat code cold
cook cool cope copy core cost crew crop dark data date dawn days dead deal dear debt deep desk
diet disk dock does done door dose down draw drew drop drug drum dual duke dust duty each earn
ease east easy edge else even ever exit face fact fail fair fall farm fast fate fear feed feel
file fill film find fine fire firm fish five flat flow food foot ford form fort four free from
fuel full fund gain game gate gave gear gift girl give glad goal gold golf gone good gray grew
grey grow gulf hair half hall hand hang hard harm hate have head hear heat held hell help here
hero high hill hire hold hole holy home hope host hour huge hung hunt hurt idea inch into iron
item jack jane jean john join jump jury just keen keep kent kept kick kind king knee knew know
lack lady laid lake land lane last late lead left less life lift like line link list live load
loan lock long look lord lose loss lost love luck made mail main make male many mark mass matt
meal mean meat meet menu mere mike mile milk mill mind mine miss mode mood moon more most move
much must name navy near neck need news next nice nick nine none nose note okay once only open
oral over pace pack page paid pain pair palm park part pass past path peak pick pink pipe plan
play plot plug plus poll pool poor port post pull pure push race rail rain rank rare rate read
real rear rely rent rest rice rich ride ring rise risk road rock role roll roof room root rose
rule rush safe said sake sale salt same sand save seat seed seek seem seen self sell send sent
ship shop shot show shut sick side sign site size skin slip slow snow soft soil sold sole some
song soon sort soul spot star stay step stop such suit sure take tale talk tall tank tape task
team tech tell tend term test text than that them then they thin this thus till time tiny told
toll tone tony took tool tour town tree trip true tune turn twin type unit upon used user vary
vast very vice view vote wage wait wake walk wall want ward warm wash wave ways weak wear week
well went were west what when whom wide wife wild will wind wine wing wire wise wish with wood
word wore work yard yeah year your zero zone
""".split()  # noqa: SIM905 (a word block reads better than a 400-item list)

SENTENCES = [
    "the {a} and the {b} were near the {c}.",
    "a {a} is not a {b}, but it is close to a {c}.",
    "we saw the {a} by the {b} at dawn.",
    "they took the {a} to the {b} and left the {c}.",
    "every {a} needs a {b}.",
]


def phrase(rng: random.Random, words: list[str]) -> str:
    return " ".join(rng.choice(words) for _ in range(rng.randint(1, 3)))


def pretraining_lines(n: int, seed: int = 0) -> list[str]:
    """Plain sentences and 'phrase -> PHRASE' lines over every word (no chat format)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        if rng.random() < 0.6:
            text = phrase(rng, WORDS)
            lines.append(f"{text} -> {text.upper()}")
        else:
            a, b, c = (rng.choice(WORDS) for _ in range(3))
            lines.append(rng.choice(SENTENCES).format(a=a, b=b, c=c))
    return lines


def split_words(seed: int = 0) -> tuple[list[str], list[str]]:
    """Disjoint word lists for SFT training and held-out evaluation."""
    words = sorted(set(WORDS))
    random.Random(seed).shuffle(words)
    cut = len(words) * 4 // 5
    return words[:cut], words[cut:]


def instruction_rows(n: int, words: list[str], seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        text = phrase(rng, words)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Shout this: {text}"},
                    {"role": "assistant", "content": text.upper()},
                ]
            }
        )
    return rows


def _wrong_answer(text: str, kind: int) -> str:
    """A plausible wrong answer: the phrase echoed as given, title-cased, or shouted but cut
    short (its last word dropped, or a lone word's last two letters)."""
    if kind == 0:
        return text
    if kind == 1:
        return text.title()
    words = text.split()
    short = " ".join(words[:-1]) if len(words) > 1 else text[:-2]
    return short.upper()


def preference_rows(n: int, words: list[str], seed: int) -> list[dict[str, Any]]:
    """``Shout this`` prompts with the shouted phrase chosen over a wrong answer (TRL's
    conversational preference format, explicit prompt)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        text = phrase(rng, words)
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"Shout this: {text}"}],
                "chosen": [{"role": "assistant", "content": text.upper()}],
                "rejected": [{"role": "assistant", "content": _wrong_answer(text, i % 3)}],
            }
        )
    return rows
