"""The ``tinker`` Completer: sampling through the SDK's SamplingClient, from a base model,
from sampler weights saved on the service (a ref whose key is a ``tinker://`` path), or from
a training session's weights as of a moment (``save_weights_and_get_sampling_client``)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from tinker import types as tt

from galley.adapters.helpers.completing import BatchCompleter, prompt_token_ids
from galley.adapters.hf.tokenizer import HFTokenizerAdapter
from galley.adapters.tinker.convert import galley_error, prompt_ids, sdk_sampling
from galley.adapters.tinker.tokenizer import for_model
from galley.core.domain.model_input import ModelInput
from galley.core.domain.types import Completion, ModelRef, SampledSequence, SamplingParams
from galley.core.errors import ValidationError
from galley.ports.hub import HubClient


class TinkerCompleter(BatchCompleter):
    """Over one ``ServiceClient`` (``service``). Tokenizers come from galley's ``hub`` where
    it has them (else from the SDK). ``sampler`` (with its ``tokenizer``) fixes the weights:
    then ``model=`` is refused, as the port says of a session's sampling client."""

    def __init__(
        self,
        service: Any,
        *,
        hub: HubClient | None = None,
        model: str | None = None,
        sampler: Any = None,
        tokenizer: HFTokenizerAdapter | None = None,
        owns_service: bool = False,
    ) -> None:
        self._service, self._hub, self.default_model = service, hub, model
        self._owns_service = owns_service
        self._fixed, self._fixed_tokenizer = sampler, tokenizer
        self._samplers: dict[tuple[str, str | None], Any] = {}
        self._tokenizers: dict[str, HFTokenizerAdapter] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """End the SDK session if this completer made it (the ``tinker`` kind does)."""
        if self._owns_service:
            self._service.close("success").result()
            self._owns_service = False

    def _sampler(self, ref: ModelRef | None) -> Any:
        if self._fixed is not None:
            if ref is not None:
                raise ValidationError("model", "this completer samples one session's weights only")
            return self._fixed
        if ref is None:
            if self.default_model is None:
                raise ValidationError("model", "no model given and the completer has no default")
            ref = ModelRef(self.default_model)
        key = (ref.base_model, ref.adapter.key if ref.adapter else None)
        with self._lock:
            if key not in self._samplers:
                if ref.adapter is not None and not ref.adapter.key.startswith("tinker://"):
                    raise ValidationError(
                        "model.adapter",
                        f"{ref.adapter.key!r} is not on the Tinker service (a tinker:// path)",
                    )
                try:
                    made = (
                        self._service.create_sampling_client(model_path=ref.adapter.key)
                        if ref.adapter is not None
                        else self._service.create_sampling_client(base_model=ref.base_model)
                    )
                    self._samplers[key] = made.result() if hasattr(made, "result") else made
                except Exception as e:
                    raise galley_error(e) from e
            return self._samplers[key]

    def _tokenizer(self, sampler: Any) -> HFTokenizerAdapter:
        if self._fixed_tokenizer is not None:
            return self._fixed_tokenizer
        base = sampler.get_base_model()
        with self._lock:
            if base not in self._tokenizers:
                self._tokenizers[base] = for_model([base], self._hub, sampler.get_tokenizer)
            return self._tokenizers[base]

    def _ids(self, tok: HFTokenizerAdapter, prompt: str | ModelInput) -> list[int]:
        return prompt_token_ids(prompt, tok.encode, tok.bos_token_id)

    def complete_batch(
        self,
        prompts: Sequence[str | ModelInput],
        params: SamplingParams,
        *,
        model: ModelRef | None = None,
        num_samples: int = 1,
    ) -> list[Completion]:
        """Every prompt's request is sent before any answer is awaited."""
        if not prompts:
            return []
        sampler = self._sampler(model)
        tok = self._tokenizer(sampler)
        sdk_params = sdk_sampling(params)
        encoded = [self._ids(tok, p) for p in prompts]
        futures = [
            sampler.sample(
                prompt_ids(ids),
                num_samples,
                sdk_params,
                include_prompt_logprobs=params.include_prompt_logprobs,
            )
            for ids in encoded
        ]
        try:
            replies = [f.result() for f in futures]
        except Exception as e:
            raise galley_error(e) from e
        return [_completion(tok, ids, r, params) for ids, r in zip(encoded, replies, strict=True)]


def _completion(
    tok: HFTokenizerAdapter, ids: list[int], reply: tt.SampleResponse, params: SamplingParams
) -> Completion:
    stops = {tok.eos_token_id, *params.stop_token_ids}
    sequences = []
    for seq in reply.sequences:
        tokens = [int(t) for t in seq.tokens]
        logprobs = list(seq.logprobs or [0.0] * len(tokens))
        body = (
            tokens[:-1] if tokens and tokens[-1] in stops and seq.stop_reason == "stop" else tokens
        )
        text = tok.decode(body)
        for word in params.stop:  # text ends before a stop string, as galley's completers do
            at = text.find(word)
            if at >= 0:
                text = text[:at]
        sequences.append(SampledSequence(tokens, logprobs, seq.stop_reason, text))
    prompt_logprobs = None
    if params.include_prompt_logprobs and reply.prompt_logprobs is not None:
        prompt_logprobs = tuple(reply.prompt_logprobs)
    return Completion(ids, sequences, prompt_logprobs)
