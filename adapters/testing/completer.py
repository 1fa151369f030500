"""The Completer contract. Subclass it and define ``make_completer(tmp_path)``."""

from __future__ import annotations

from pathlib import Path

import pytest

from galley.adapters.testing.contract import Contract
from galley.core import SamplingParams
from galley.ports import Completer


class CompleterContract(Contract):
    port = "Completer"

    def make_completer(self, tmp_path: Path) -> Completer:
        raise NotImplementedError

    def make(self) -> Completer:
        return self.make_completer(self.fresh_folder())

    def test_implements_the_port(self) -> None:
        """It has every method of the port (complete, complete_batch, stream)."""
        assert isinstance(self.make(), Completer)

    def test_complete_respects_max_tokens_and_reports_logprobs(self) -> None:
        """complete: at most max_tokens tokens, one logprob per token, a stop reason."""
        c = self.make()
        out = c.complete("Tell me a long story about a ship", SamplingParams(max_tokens=3, seed=1))
        seq = out.sequences[0]
        assert len(seq.tokens) <= 3 and len(seq.logprobs) == len(seq.tokens)
        assert seq.stop_reason in ("stop", "length")

    def test_seeded_sampling_is_reproducible(self) -> None:
        """Seeded sampling is reproducible, and the seed is used: at temperature 1 another
        seed gives another completion (one of eight differs, or the seed is ignored)."""
        c = self.make()
        p = SamplingParams(max_tokens=8, temperature=1.0, seed=7)
        first = c.complete("hello", p)
        assert first == c.complete("hello", p)
        others = [
            c.complete("hello", SamplingParams(max_tokens=8, temperature=1.0, seed=s))
            for s in range(8)
        ]
        assert any(o.sequences[0].tokens != first.sequences[0].tokens for o in others)

    def test_batch_matches_single_prompts(self) -> None:
        """complete_batch equals complete per prompt: same tokens and text; logprobs equal up
        to float rounding (batch shapes differ)."""
        c = self.make()
        p = SamplingParams(max_tokens=6, temperature=0.0)
        prompts = ["a", "a much longer prompt than the first"]
        for batched, single in zip(
            c.complete_batch(prompts, p), [c.complete(x, p) for x in prompts], strict=True
        ):
            assert batched.prompt_tokens == single.prompt_tokens
            for b, s in zip(batched.sequences, single.sequences, strict=True):
                assert (b.tokens, b.text, b.stop_reason) == (s.tokens, s.text, s.stop_reason)
                assert b.logprobs == pytest.approx(s.logprobs, abs=1e-4)

    def test_batch_gives_num_samples_per_prompt(self) -> None:
        """complete_batch with num_samples: that many sequences per prompt, in prompt order,
        the same as complete gives each prompt (seeded)."""
        c = self.make()
        p = SamplingParams(max_tokens=5, temperature=1.0, seed=11)
        prompts = ["one prompt", "another, longer prompt"]
        batched = c.complete_batch(prompts, p, num_samples=3)
        assert [len(x.sequences) for x in batched] == [3, 3]
        for out, prompt in zip(batched, prompts, strict=True):
            single = c.complete(prompt, p, num_samples=3)
            assert [s.tokens for s in out.sequences] == [s.tokens for s in single.sequences]

    def test_stream_joins_to_the_completion_text(self) -> None:
        """stream: the pieces join to the completion's text."""
        c = self.make()
        p = SamplingParams(max_tokens=10, temperature=0.0)
        assert "".join(c.stream("stream me", p)) == c.complete("stream me", p).text

    def test_prompt_logprobs_on_request(self) -> None:
        """include_prompt_logprobs: one per prompt token, None for the first."""
        c = self.make()
        out = c.complete("abc", SamplingParams(max_tokens=2, include_prompt_logprobs=True))
        assert out.prompt_logprobs is not None
        assert len(out.prompt_logprobs) == len(out.prompt_tokens) and out.prompt_logprobs[0] is None
