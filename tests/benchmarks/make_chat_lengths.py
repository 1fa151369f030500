"""Write the variable-length chat dataset ``bench_pack.py`` trains on.

    python tests/benchmarks/make_chat_lengths.py   # writes tests/fixtures/chat-lengths/

Each row is a two-message chat: the user asks for a list of words to be repeated in reverse
order, the assistant answers with them reversed (a task a small model learns, so held-out
loss falls). Row lengths are log-uniform from 16 to 1024 tokens of the benchmark model's
tokenizer (``tests/benchmarks/common.py``, rendered ``role_colon``), so a batch mixes short
and long rows as real chat data does. Seeded: the same files every time.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "chat-lengths"
WORDS = (  # noqa: SIM905 (a list of 48 words reads better as text)
    "apple river stone cloud green north seven quiet table ocean light paper music silver "
    "window garden yellow thunder winter bridge forest candle mirror planet rocket orange "
    "shadow summer valley wonder anchor basket castle dragon engine falcon harbor island "
    "jungle kettle ladder meadow needle oyster pencil rabbit"
).split()
ROWS = {"train": 384, "test": 48}
SHORTEST, LONGEST = 16, 1024


def chat(words: list[str]) -> dict[str, object]:
    return {
        "messages": [
            {"role": "user", "content": "Reverse: " + " ".join(words)},
            {"role": "assistant", "content": " ".join(reversed(words))},
        ]
    }


def main() -> None:
    from galley.adapters.hf.tokenizer import HFTokenizerAdapter
    from galley.core.domain.chat import TrainOn
    from galley.core.domain.data_formats import row_to_conversation
    from galley.core.domain.rendering import RoleColonRenderer
    from tests.hf_models import write_tokenizer

    def length(words: list[str]) -> int:
        conversation = row_to_conversation(chat(words), source="", index=0)
        return renderer.render(conversation, TrainOn.LAST_ASSISTANT_MESSAGE).model_input.length

    folder = Path(tempfile.mkdtemp())
    write_tokenizer(folder, 400)  # the benchmark model's tokenizer
    renderer = RoleColonRenderer(HFTokenizerAdapter(folder, (1,), 0))
    rng = np.random.default_rng(0)
    OUT.mkdir(parents=True, exist_ok=True)
    for split, count in ROWS.items():
        targets = np.exp(rng.uniform(np.log(SHORTEST), np.log(LONGEST), count)).astype(int)
        lines = []
        for target in targets:
            words = [str(rng.choice(WORDS))]
            while length(words) < target:
                words.append(str(rng.choice(WORDS)))
            if len(words) > 1 and length(words) > target:
                words.pop()
            lines.append(json.dumps(chat(words)))
        (OUT / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        print(f"{split}: {count} rows -> {OUT / f'{split}.jsonl'}")


if __name__ == "__main__":
    main()
