"""The role-colon renderer and the train-on masks (property-tested)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from galley.adapters.noop import ByteTokenizer
from galley.core import Conversation, Message, RoleColonRenderer, TrainOn, ValidationError, to_datum
from galley.core.chat import ROLES

tok = ByteTokenizer()
renderer = RoleColonRenderer(tok)
CHAT = Conversation.of(
    ("system", "be brief"),
    ("user", "hi"),
    ("assistant", "hello"),
    ("user", "2+2?"),
    ("assistant", "4"),
)


def trained_text(conversation: Conversation, train_on: TrainOn) -> str:
    ex = renderer.render(conversation, train_on)
    ids = ex.model_input.to_ints()
    return "".join(
        tok.decode([t]) if t < 256 else "<eos>" for t, w in zip(ids, ex.weights, strict=True) if w
    )


def test_rendered_text() -> None:
    ex = renderer.render(CHAT, TrainOn.ALL_TOKENS)
    assert (
        tok.decode(ex.model_input.to_ints())
        == "System: be brief\n\nUser: hi\n\nAssistant: helloUser: 2+2?\n\nAssistant: 4"
    )
    assert ex.model_input.to_ints()[0] == tok.BOS


def test_train_on_choices() -> None:
    assert trained_text(CHAT, TrainOn.LAST_ASSISTANT_MESSAGE) == " 4<eos>"
    assert trained_text(CHAT, TrainOn.ALL_ASSISTANT_MESSAGES) == " hello<eos> 4<eos>"
    assert (
        trained_text(CHAT, TrainOn.ALL_MESSAGES)
        == " be brief\n\n hi\n\n hello<eos> 2+2?\n\n 4<eos>"
    )
    ex = renderer.render(CHAT, TrainOn.ALL_TOKENS)
    assert ex.weights.all()


def test_generation_prompt_is_a_prefix_of_the_rendered_answer() -> None:
    history = Conversation(CHAT.messages[:-1])
    prompt = renderer.generation_prompt(history).to_ints()
    full = renderer.render(CHAT, TrainOn.ALL_TOKENS).model_input.to_ints()
    assert full[: len(prompt)] == prompt
    assert tok.decode(full[len(prompt) :]) == " 4"


conversations = st.lists(
    st.builds(Message, st.sampled_from(ROLES), st.text(max_size=20)), min_size=1, max_size=6
).map(Conversation)


@given(conversations, st.sampled_from(list(TrainOn)))
def test_weights_are_binary_and_follow_the_choice(
    conversation: Conversation, train_on: TrainOn
) -> None:
    ex = renderer.render(conversation, train_on)
    assert ex.weights.shape == (ex.model_input.length,)
    assert set(np.unique(ex.weights)) <= {0.0, 1.0}
    all_tokens = renderer.render(conversation, TrainOn.ALL_TOKENS)
    assert ex.model_input == all_tokens.model_input  # the mask never changes the tokens
    # Nested choices: last assistant ⊆ all assistant ⊆ all messages ⊆ all tokens.
    masks = [renderer.render(conversation, t).weights for t in TrainOn]
    for smaller, larger in itertools.pairwise(masks):
        assert (smaller <= larger).all()
    if conversation.last_assistant_index is None and train_on in (
        TrainOn.LAST_ASSISTANT_MESSAGE,
        TrainOn.ALL_ASSISTANT_MESSAGES,
    ):
        assert not ex.weights.any()


@given(conversations, st.integers(2, 64))
def test_to_datum_shifts_and_truncates(conversation: Conversation, max_length: int) -> None:
    ex = renderer.render(conversation, TrainOn.ALL_TOKENS)
    d = to_datum(ex, max_length)
    ids = ex.model_input.to_ints()
    n = min(len(ids) - 1, max_length)
    assert d.model_input.to_ints() == ids[:n]
    assert d.loss_fn_inputs["target_tokens"].tolist() == ids[1 : n + 1]
    np.testing.assert_array_equal(d.loss_fn_inputs["weights"].data, ex.weights[1 : n + 1])


def test_overlong_example_without_truncation_is_refused() -> None:
    ex = renderer.render(CHAT, TrainOn.ALL_TOKENS)
    with pytest.raises(ValidationError, match="max_length"):
        to_datum(ex, 10, truncate=False)


def test_example_with_nothing_trained_after_truncation_is_refused() -> None:
    ex = renderer.render(CHAT, TrainOn.LAST_ASSISTANT_MESSAGE)
    with pytest.raises(ValidationError, match="no trained token"):
        to_datum(ex, 10)
