"""A fake Completer: scripted answers (by prompt substring) or the prompt echoed back."""

from __future__ import annotations

import random
import string
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence

from galley.adapters.helpers.completing import BatchCompleter
from galley.adapters.helpers.faults import FaultInjector, Faults
from galley.adapters.noop.tokenizer import ByteTokenizer
from galley.core.domain.chat import ROLES
from galley.core.domain.model_input import ModelInput
from galley.core.domain.types import Completion, ModelRef, SampledSequence, SamplingParams
from galley.core.errors import NotFoundError
from galley.core.keys import join_key
from galley.core.runs.manifest import MANIFEST_NAME
from galley.ports.blobs import BlobStore

# (prompt token ids, sampled token ids) -> one log-probability per sampled token
LogprobsOf = Callable[[Sequence[int], Sequence[int]], list[float]]


class NoopCompleter(BatchCompleter):
    """Answers with ``scripted[key]`` for the longest ``key`` found in the prompt text, else
    echoes the prompt's last line (without a role header such as ``User:``).

    Honours max_tokens, stop strings and stop token ids; logprobs are a fixed function of
    (seed, position, token). Given a BlobStore, it checks that a model's adapter exists, as a
    real completer fails to load a missing one."""

    def __init__(
        self,
        scripted: Mapping[str, str] | None = None,
        *,
        blobs: BlobStore | None = None,
        faults: Faults | None = None,
        vary: float = 0.0,
        logprobs_of: LogprobsOf | None = None,
    ) -> None:
        self.scripted = dict(scripted or {})
        # Sampling (temperature > 0) replaces each character of an answer with this chance,
        # differently per sample: a training session's completer varies as models do.
        self.vary = vary
        self._logprobs_of = logprobs_of
        self.tokenizer = ByteTokenizer()
        self._blobs = blobs
        self._faults = FaultInjector(faults)

    def _answer(self, text: str) -> str:
        for key in sorted(self.scripted, key=len, reverse=True):
            if key in text:
                return self.scripted[key]
        for line in reversed(text.splitlines()):
            # Echo the last line with content, minus a chat header such as "User:".
            head, sep, rest = line.partition(":")
            content = rest if sep and head.strip().lower() in ROLES else line
            if content.strip():
                return content.strip()
        return ""

    def _varied(self, answer: str, params: SamplingParams, sample: int) -> str:
        if not self.vary or params.temperature == 0 or not answer:
            return answer
        rng = random.Random(f"{params.seed}/{sample}/{answer}")
        return "".join(
            rng.choice(string.ascii_letters) if rng.random() < self.vary else ch for ch in answer
        )

    def _sequence(
        self, ids: Sequence[int], text: str, params: SamplingParams, sample: int
    ) -> SampledSequence:
        tok = self.tokenizer
        answer = self._varied(self._answer(text), params, sample)
        cut = min((answer.find(s) for s in params.stop if s in answer), default=-1)
        tokens = tok.encode(answer if cut < 0 else answer[:cut])
        reason = "stop"
        stop_ids = [i for i, t in enumerate(tokens) if t in params.stop_token_ids]
        if stop_ids:
            tokens = tokens[: stop_ids[0] + 1]
        elif cut < 0 and not params.ignore_eos:
            tokens.append(tok.eos_token_id)
        if len(tokens) > params.max_tokens:
            tokens, reason = tokens[: params.max_tokens], "length"
        seed = (params.seed or 0) * 7919 + sample
        logprobs = (
            self._logprobs_of(ids, tokens)
            if self._logprobs_of is not None and tokens
            else [
                -((zlib.crc32(bytes([i % 251, t % 251])) + seed) % 1000) / 2000.0
                for i, t in enumerate(tokens)
            ]
        )
        return SampledSequence(tokens, logprobs, reason, tok.decode(tokens))  # type: ignore[arg-type]

    def _check_model(self, model: ModelRef | None) -> None:
        if model is not None and model.adapter is not None and self._blobs is not None:
            key = join_key(model.adapter.key, MANIFEST_NAME)
            if not self._blobs.exists(key):
                raise NotFoundError(f"sampler weights {model.adapter.key!r} not found (no {key!r})")

    def _answer_prompt(
        self, prompt: str | ModelInput, params: SamplingParams, num_samples: int
    ) -> Completion:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt.to_ints()
        text = prompt if isinstance(prompt, str) else self.tokenizer.decode(ids)
        sequences = [self._sequence(ids, text, params, i) for i in range(num_samples)]
        prompt_logprobs = None
        if params.include_prompt_logprobs:
            prompt_logprobs = (None, *(-(t % 17) / 10.0 for t in ids[1:]))
        return Completion(ids, sequences, prompt_logprobs)

    def complete_batch(
        self,
        prompts: Sequence[str | ModelInput],
        params: SamplingParams,
        *,
        model: ModelRef | None = None,
        num_samples: int = 1,
    ) -> list[Completion]:
        self._faults("complete_batch")  # one request for the whole batch
        self._check_model(model)
        return [self._answer_prompt(p, params, num_samples) for p in prompts]

    def stream(
        self, prompt: str | ModelInput, params: SamplingParams, *, model: ModelRef | None = None
    ) -> Iterator[str]:
        yield from self.complete(prompt, params, model=model).text
