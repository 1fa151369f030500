"""The JAX Completer: greedy parity with transformers.generate, sampling controls, adapters."""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
import transformers

from galley.adapters.hf.local_hub import LocalDirectoryHub
from galley.adapters.jax import JaxCompleter, JaxTrainingClient
from galley.adapters.jax.generate import phase_ends
from galley.adapters.noop import NoopBlobStore
from galley.adapters.testing import CompleterContract
from galley.core import (
    AdamParams,
    Conversation,
    LoraConfig,
    ModelRef,
    RoleColonRenderer,
    SamplingParams,
    SessionConfig,
    TrainOn,
    to_datum,
)
from tests.hf_models import make_model


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> LocalDirectoryHub:
    root = tmp_path_factory.mktemp("hub")
    make_model(root / "tiny" / "llama", "llama")
    make_model(root / "tiny" / "qwen3", "qwen3", tie=True)
    return LocalDirectoryHub(root)


def hf_greedy(folder: Path, prompt: list[int], n: int) -> list[int]:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    out = model.generate(
        torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=1, pad_token_id=2
    )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("repo", ["tiny/llama", "tiny/qwen3"])
def test_greedy_generation_matches_transformers(hub: LocalDirectoryHub, repo: str) -> None:
    completer = JaxCompleter(hub, NoopBlobStore(), model=repo)
    prompts = ["the quick brown fox", "a", "numbers 0 1 2 3 and punctuation , ."]
    params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    for completion in completer.complete_batch(prompts, params):  # different lengths, one batch
        expected = hf_greedy(hub.snapshot(repo), list(completion.prompt_tokens), 20)
        assert list(completion.sequences[0].tokens) == expected
        assert completion.sequences[0].stop_reason == "length"


def test_logprobs_match_transformers_across_decode_phases(hub: LocalDirectoryHub) -> None:
    """Prompt and sampled logprobs equal transformers' over the whole sequence, for left-padded
    prompts of different lengths in one batch and more new tokens than one decode phase
    (whose cache is shorter than the next's) holds."""
    repo, new_tokens = "tiny/llama", 40
    assert phase_ends(64)[0] < new_tokens  # 40 new tokens (bucket 64) span several phases
    completer = JaxCompleter(hub, NoopBlobStore(), model=repo)
    params = SamplingParams(
        max_tokens=new_tokens,
        temperature=1.0,
        seed=3,
        ignore_eos=True,
        include_prompt_logprobs=True,
    )
    model = transformers.AutoModelForCausalLM.from_pretrained(hub.snapshot(repo)).eval()
    for completion in completer.complete_batch(["the quick brown fox jumps", "a"], params):
        seq, n = completion.sequences[0], len(completion.prompt_tokens)
        assert len(seq.tokens) == new_tokens and completion.prompt_logprobs is not None
        ids = torch.tensor([[*completion.prompt_tokens, *seq.tokens]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
        expected = logp.gather(1, ids[0, 1:, None])[:, 0].numpy()
        np.testing.assert_allclose(completion.prompt_logprobs[1:], expected[: n - 1], atol=1e-4)
        np.testing.assert_allclose(seq.logprobs, expected[n - 1 :], atol=1e-4)


def test_sampling_is_seeded_and_controlled(hub: LocalDirectoryHub) -> None:
    completer = JaxCompleter(hub, NoopBlobStore(), model="tiny/llama")
    params = SamplingParams(
        max_tokens=16, temperature=1.0, top_k=50, top_p=0.95, seed=11, ignore_eos=True
    )
    first = completer.complete("the", params, num_samples=3)
    assert first == completer.complete("the", params, num_samples=3)
    assert len({s.tokens for s in first.sequences}) == 3  # independent samples
    other = completer.complete("the", attrs.evolve(params, seed=12), num_samples=3)
    assert other.sequences != first.sequences
    # top_k = 1 is greedy whatever the temperature
    greedy = completer.complete(
        "the", SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    )
    top1 = completer.complete(
        "the", SamplingParams(max_tokens=16, temperature=2.0, top_k=1, seed=5, ignore_eos=True)
    )
    assert top1.sequences[0].tokens == greedy.sequences[0].tokens


def test_stop_token_ids_and_stop_strings(hub: LocalDirectoryHub) -> None:
    completer = JaxCompleter(hub, NoopBlobStore(), model="tiny/llama")
    free = completer.complete(
        "the quick", SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    ).sequences[0]
    stop_id = free.tokens[3]
    cut = completer.complete(
        "the quick",
        SamplingParams(max_tokens=12, temperature=0.0, stop_token_ids=(stop_id,), ignore_eos=True),
    ).sequences[0]
    first = free.tokens.index(stop_id)
    assert cut.tokens == free.tokens[: first + 1] and cut.stop_reason == "stop"
    assert len(cut.logprobs) == len(cut.tokens)
    needle = free.text[len(free.text) // 2 : len(free.text) // 2 + 2]
    if needle.strip():
        by_string = completer.complete(
            "the quick",
            SamplingParams(max_tokens=12, temperature=0.0, stop=(needle,), ignore_eos=True),
        ).sequences[0]
        assert by_string.stop_reason == "stop" and needle not in by_string.text
        assert free.text.startswith(by_string.text)


def test_a_trained_adapter_answers_what_it_learned(hub: LocalDirectoryHub) -> None:
    """LoRA-train a tiny model to reverse one word, export, and sample the answer back."""
    blobs = NoopBlobStore()
    session = JaxTrainingClient(hub, blobs).start_session(
        SessionConfig("tiny/llama", LoraConfig(rank=8, alpha=16))
    )
    renderer = RoleColonRenderer(session.tokenizer)
    chat = Conversation.of(("user", "Reverse the letters of: apple"), ("assistant", "elppa"))
    datum = to_datum(renderer.render(chat, TrainOn.LAST_ASSISTANT_MESSAGE), 128)
    losses = []
    for _ in range(40):
        losses.append(session.forward_backward([datum]).result().metrics["loss:sum"])
        session.optim_step(AdamParams(learning_rate=1e-2))
    assert losses[-1] < 0.05 * losses[0]
    adapter = session.save_weights_for_sampler("reverse").result()
    completer = JaxCompleter(hub, blobs)
    prompt = renderer.generation_prompt(Conversation(chat.messages[:1]))
    params = SamplingParams(max_tokens=16, temperature=0.0, stop=renderer.stop_sequences)
    tuned = completer.complete(prompt, params, model=ModelRef("tiny/llama", adapter)).sequences[0]
    base = completer.complete(prompt, params, model=ModelRef("tiny/llama")).sequences[0]
    assert tuned.text.strip() == "elppa" and tuned.stop_reason == "stop"
    assert base.text.strip() != "elppa"
    # The in-training logprobs of the answer agree with the sampler's.
    trained = session.forward([datum]).result().logprobs[0][-len(tuned.tokens) :]
    np.testing.assert_allclose(trained, tuned.logprobs, atol=1e-4)


class TestJaxCompleterContract(CompleterContract):
    hub_: LocalDirectoryHub | None = None

    @pytest.fixture(autouse=True)
    def _hub(self, hub: LocalDirectoryHub) -> None:
        self.hub_ = hub

    def make_completer(self, tmp_path: Path) -> JaxCompleter:
        assert self.hub_ is not None
        return JaxCompleter(self.hub_, NoopBlobStore(), model="tiny/qwen3")


def test_unknown_model_is_refused_through_the_hub(hub: LocalDirectoryHub) -> None:
    from galley.core import NotFoundError

    with pytest.raises(NotFoundError, match="no repo 'tiny/gpt9'"):
        JaxCompleter(hub, NoopBlobStore()).complete(
            "x", SamplingParams(), model=ModelRef("tiny/gpt9")
        )
