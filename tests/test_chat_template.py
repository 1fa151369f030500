"""Chat-template rendering against transformers' apply_chat_template, with correct loss masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import transformers

from galley.adapters.hf.tokenizer import HFTokenizerAdapter
from galley.core import Conversation, TrainOn, ValidationError
from galley.core.domain.rendering import make_renderer
from tests.hf_models import CHATML, GEMMA3, GEMMA_SPECIALS, LLAMA3_STYLE, write_tokenizer

CHAT = Conversation.of(
    ("system", "You row the galley."),
    ("user", "How fast?"),
    ("assistant", "Ramming speed."),
    ("user", "And now?"),
    ("assistant", "  Steady, 12 knots. "),
)


# Per template: its end of turn, and its assistant header (never trained but under
# all_tokens).
TEMPLATES = {
    "chatml": (CHATML, ("<|im_end|>",), "assistant"),
    "llama3": (LLAMA3_STYLE, ("<|eos|>",), "assistant"),
    "gemma3": (GEMMA3, ("<end_of_turn>",), "<start_of_turn>model"),
}


@pytest.fixture(params=list(TEMPLATES))
def template(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def folder(template: str, tmp_path: Path) -> Path:
    specials = GEMMA_SPECIALS if template == "gemma3" else ()
    write_tokenizer(tmp_path, 400, chat_template=TEMPLATES[template][0], specials=specials)
    return tmp_path


def reference_ids(
    folder: Path, conversation: Conversation, add_generation_prompt: bool
) -> list[int]:
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    messages = [{"role": m.role, "content": m.content} for m in conversation.messages]
    out = tok.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
    )
    return list(out)


def test_tokens_match_apply_chat_template(folder: Path) -> None:
    renderer = make_renderer("chat_template", HFTokenizerAdapter(folder))
    assert renderer.render(CHAT, TrainOn.ALL_TOKENS).model_input.to_ints() == reference_ids(
        folder, CHAT, False
    )
    history = Conversation(CHAT.messages[:-1])
    assert renderer.generation_prompt(history).to_ints() == reference_ids(folder, history, True)


def test_masks_select_the_right_messages(folder: Path, template: str) -> None:
    tok = HFTokenizerAdapter(folder)
    renderer = make_renderer("chat_template", tok)

    def trained(train_on: TrainOn) -> str:
        ex = renderer.render(CHAT, train_on)
        ids = np.asarray(ex.model_input.to_ints())
        return tok._tok.decode(ids[ex.weights > 0].tolist(), skip_special_tokens=False)

    last = trained(TrainOn.LAST_ASSISTANT_MESSAGE)
    assert "Steady, 12 knots." in last and "Ramming" not in last and "How fast" not in last
    _, end_of_turn, header = TEMPLATES[template]
    assert last.rstrip().endswith(end_of_turn)  # the end of turn is trained: it learns to stop
    both = trained(TrainOn.ALL_ASSISTANT_MESSAGES)
    assert (
        "Ramming speed." in both
        and "Steady" in both
        and "How fast" not in both
        and "galley" not in both
    )
    everything = trained(TrainOn.ALL_MESSAGES)  # Gemma's system text opens the user turn
    assert all(
        s in everything for s in ("You row the galley.", "How fast?", "And now?", "Ramming speed.")
    )
    # The generation prompt (assistant header) is never trained outside all_tokens.
    assert header not in both


def test_templates_run_sandboxed(tmp_path: Path) -> None:
    write_tokenizer(
        tmp_path, 400, chat_template="{{ messages.__class__.__mro__[1].__subclasses__() }}"
    )
    renderer = make_renderer("chat_template", HFTokenizerAdapter(tmp_path))
    from jinja2.exceptions import SecurityError

    with pytest.raises(SecurityError):
        renderer.render(CHAT, TrainOn.ALL_TOKENS)


def test_a_model_without_a_template_is_refused(tmp_path: Path) -> None:
    write_tokenizer(tmp_path, 400)
    with pytest.raises(ValidationError, match="no chat_template"):
        make_renderer("chat_template", HFTokenizerAdapter(tmp_path))
    from galley.adapters.noop import ByteTokenizer

    with pytest.raises(ValidationError, match="ByteTokenizer has none"):
        make_renderer("chat_template", ByteTokenizer())
