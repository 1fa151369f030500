"""The role-colon renderer and the train-on masks (property-tested)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from galley.adapters.noop import ByteTokenizer
from galley.core import (
    Conversation,
    Message,
    RoleColonRenderer,
    TrainOn,
    Truncation,
    ValidationError,
    fit_conversation,
    to_datum,
)
from galley.core.domain.chat import ROLES
from galley.core.domain.rendering import DoesNotFitError

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
def test_keep_start_shifts_and_cuts_the_end(conversation: Conversation, max_length: int) -> None:
    ex = renderer.render(conversation, TrainOn.ALL_TOKENS)
    d = to_datum(ex, max_length, Truncation.KEEP_START)
    ids = ex.model_input.to_ints()
    n = min(len(ids) - 1, max_length)
    assert d.model_input.to_ints() == ids[:n]
    assert d.loss_fn_inputs["target_tokens"].tolist() == ids[1 : n + 1]
    np.testing.assert_array_equal(d.loss_fn_inputs["weights"].data, ex.weights[1 : n + 1])


def trained_ids(ids: list[int], weights: np.ndarray) -> list[int]:
    return [t for t, w in zip(ids, weights, strict=True) if w]


@given(conversations, st.sampled_from(list(TrainOn)), st.integers(2, 80))
def test_keep_end_drops_only_prompt_and_skips_what_cannot_fit(
    conversation: Conversation, train_on: TrainOn, max_length: int
) -> None:
    """keep_end: the datum fits, is a tail of the rendering (token level), and keeps every
    trained token; it refuses to fit (DoesNotFit) exactly when the trained tokens plus one
    token of prompt are longer than max_length + 1."""
    ex = renderer.render(conversation, train_on)
    ids, weights = ex.model_input.to_ints(), ex.weights
    trained = np.flatnonzero(weights[1:]) + 1
    if not trained.size:
        with pytest.raises(DoesNotFitError):
            to_datum(ex, max_length)
        return
    if len(ids) - trained[0] + 1 > max_length + 1:
        with pytest.raises(DoesNotFitError, match="do not fit"):
            to_datum(ex, max_length)
        return
    d = to_datum(ex, max_length)
    kept = [*d.model_input.to_ints(), d.loss_fn_inputs["target_tokens"].tolist()[-1]]
    assert len(kept) - 1 <= max_length and kept == ids[len(ids) - len(kept) :]
    kept_weights = np.concatenate([[0.0], d.loss_fn_inputs["weights"].data])
    assert trained_ids(kept, kept_weights) == trained_ids(ids[1:], weights[1:])


def shortest_keep_end_form(conversation: Conversation, train_on: TrainOn) -> Conversation:
    """The conversation with every message keep_end may drop dropped, derived from the rule
    itself: a leading system message, the message right before the first trained one, and
    everything from there on are kept."""
    messages = conversation.messages
    if train_on is TrainOn.ALL_TOKENS or train_on is TrainOn.ALL_MESSAGES:
        return conversation
    if train_on is TrainOn.ALL_ASSISTANT_MESSAGES:
        first = next((i for i, m in enumerate(messages) if m.role == "assistant"), None)
    else:
        first = conversation.last_assistant_index
    if first is None:
        return conversation
    keep = 1 if messages[0].role == "system" else 0
    return Conversation(messages[:keep] + messages[max(keep, first - 1) :])


@given(conversations, st.sampled_from(list(TrainOn)), st.integers(2, 80))
def test_fitting_a_conversation_never_loses_a_trained_token(
    conversation: Conversation, train_on: TrainOn, max_length: int
) -> None:
    """It fits and keeps every trained token, or it refuses, and then even the shortest form
    keep_end may make (only the leading system message and the message before the first
    trained one kept) cannot fit its trained tokens and one token of prompt."""
    full = renderer.render(conversation, train_on)
    try:
        d = fit_conversation(renderer, conversation, train_on, max_length)
    except DoesNotFitError:
        shortest = renderer.render(shortest_keep_end_form(conversation, train_on), train_on)
        trained = np.flatnonzero(shortest.weights[1:]) + 1
        assert not trained.size or shortest.model_input.length - trained[0] + 1 > max_length + 1
        return
    assert d.model_input.length <= max_length
    assert d.loss_fn_inputs["weights"].data.sum() == full.weights[1:].sum()


def test_keep_end_drops_whole_leading_messages_first() -> None:
    chat = Conversation.of(
        ("system", "be brief"),
        ("user", "an old question " * 4),
        ("assistant", "an old answer " * 4),
        ("user", "2+2?"),
        ("assistant", "4"),
    )
    d = fit_conversation(renderer, chat, TrainOn.LAST_ASSISTANT_MESSAGE, 50)
    text = tok.decode([t for t in d.model_input.to_ints() if t < 256])
    assert text == "System: be brief\n\nUser: 2+2?\n\nAssistant: 4"  # both old turns gone


def test_overlong_example_under_error_is_refused() -> None:
    ex = renderer.render(CHAT, TrainOn.ALL_TOKENS)
    with pytest.raises(ValidationError, match="max_length") as info:
        to_datum(ex, 10, Truncation.ERROR)
    assert not isinstance(info.value, DoesNotFitError)  # an error, not a skip


def test_example_with_nothing_trained_after_truncation_does_not_fit() -> None:
    ex = renderer.render(CHAT, TrainOn.LAST_ASSISTANT_MESSAGE)
    with pytest.raises(DoesNotFitError, match="no trained token"):
        to_datum(ex, 10, Truncation.KEEP_START)
