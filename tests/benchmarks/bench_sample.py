"""Sampling throughput: galley's JAX Completer vs ``transformers.generate`` on the same machine.

    python tests/benchmarks/bench_sample.py [--rounds 3] [--threads 2]
    python tests/benchmarks/bench_sample.py --preset 0.5b [--model-dir DIR]   # on a GPU

The train benchmark's model (random Llama, hidden 512, 8 layers, vocab 8192); 8 prompts of 64
tokens; 128 new tokens each (EOS ignored, so both generate exactly 8 x 128), greedy and
sampled (temperature 1). Each framework runs in its own process, alternating; a process
reports the first call (compilation included) and the median of 3 timed calls. Prints a table
and one JSON line with new tokens/s, the ratios, and whether greedy outputs agree.
``--preset 0.5b`` samples Qwen2.5-0.5B's shapes in bfloat16 (``common.PRESETS``); there
bf16 rounding differs between the frameworks' kernels, so greedy rows may part ways.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script
from tests.benchmarks.common import PRESETS, Preset, device_peak_mb, model_folder, run_child

PROMPTS, PROMPT_LEN, NEW_TOKENS, CALLS = 8, 64, 128, 3
MODES = {"greedy": 0.0, "sampled": 1.0}


def prompt_ids(preset: Preset) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(0)
    vocab = preset.arch["vocab_size"]
    return rng.integers(2, vocab, (PROMPTS, PROMPT_LEN)).tolist()  # type: ignore[no-any-return]


def timed(fn: Any) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(CALLS + 1):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return times, out


def run_galley(
    folder: Path, temperature: float, preset: Preset
) -> tuple[list[float], list[list[int]]]:
    from galley.adapters.jax import JaxCompleter
    from galley.adapters.noop import NoopBlobStore, NoopHubClient
    from galley.core import ModelInput, SamplingParams

    completer = JaxCompleter(
        NoopHubClient(), NoopBlobStore(), model=str(folder), dtype=preset.dtype
    )
    prompts = [ModelInput.from_ints(ids) for ids in prompt_ids(preset)]
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=temperature, seed=0, ignore_eos=True)
    times, out = timed(lambda: completer.complete_batch(prompts, params))
    return times, [list(c.sequences[0].tokens) for c in out]


def run_torch(
    folder: Path, temperature: float, preset: Preset
) -> tuple[list[float], list[list[int]]]:
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, preset.dtype)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    model = model.to(device).eval()
    ids = torch.tensor(prompt_ids(preset), device=device)
    sample = temperature > 0
    kwargs: dict[str, Any] = {"do_sample": sample, "top_k": 0}
    if sample:
        kwargs["temperature"] = temperature

    def generate() -> Any:
        with torch.inference_mode():
            return model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                pad_token_id=0,
                **kwargs,
            )

    times, out = timed(generate)
    return times, out[:, PROMPT_LEN:].tolist()


def child(framework: str, folder: str, mode: str, preset: Preset) -> None:
    runner = run_galley if framework == "galley" else run_torch
    times, tokens = runner(Path(folder), MODES[mode], preset)
    assert all(len(t) == NEW_TOKENS for t in tokens), "every row must generate all its tokens"
    print(
        json.dumps(
            {
                "first_call_s": times[0],
                "call_s": statistics.median(times[1:]),
                "peak_mb": device_peak_mb(framework),
                "tokens": tokens,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--model-dir", help="reuse (or make) the benchmark model here")
    parser.add_argument("--dtype", help="compute in this dtype instead of the preset's")
    parser.add_argument("--child", nargs=3, metavar=("FRAMEWORK", "FOLDER", "MODE"))
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    if args.dtype:
        preset = dataclasses.replace(preset, dtype=args.dtype)
    if args.child:
        child(*args.child, preset)
        return
    folder = model_folder(preset, args.model_dir)
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _ in range(args.rounds):
        for mode in MODES:
            for framework in ("galley", "torch"):
                child_args = ["--preset", args.preset, "--dtype", preset.dtype]
                child_args += ["--child", framework, str(folder), mode]
                result = run_child(__file__, child_args, args.threads)
                runs.setdefault((framework, mode), []).append(result)
    new_tokens = PROMPTS * NEW_TOKENS
    summary: dict[str, Any] = {
        "benchmark": "sample",
        "preset": args.preset,
        "dtype": preset.dtype,
        "prompts": PROMPTS,
        "prompt_tokens": PROMPT_LEN,
        "new_tokens": NEW_TOKENS,
    }
    print(f"{'':18}{'new tokens/s':>14}{'call s':>9}{'first call s':>14}{'peak MB':>9}")
    for (framework, mode), results in runs.items():
        call = statistics.median(r["call_s"] for r in results)
        first = statistics.median(r["first_call_s"] for r in results)
        mem = max(r["peak_mb"] for r in results)
        print(
            f"{framework + ' ' + mode:18}{new_tokens / call:>14,.0f}{call:>9.3f}"
            f"{first:>14.2f}{mem:>9,.0f}"
        )
        summary[f"{framework}_{mode}"] = {
            "tokens_per_s": round(new_tokens / call, 1),
            "call_s": round(call, 4),
            "first_call_s": round(first, 2),
            "peak_mb": round(mem),
        }
    for mode in MODES:
        ratio = summary[f"galley_{mode}"]["tokens_per_s"] / summary[f"torch_{mode}"]["tokens_per_s"]
        summary[f"ratio_{mode}"] = round(ratio, 3)
        print(f"galley / transformers.generate, {mode}: {ratio:.2f}x")
    galley, torch = runs[("galley", "greedy")][0]["tokens"], runs[("torch", "greedy")][0]["tokens"]
    summary["greedy_rows_identical"] = sum(a == b for a, b in zip(galley, torch, strict=True))
    print(f"greedy rows identical to transformers: {summary['greedy_rows_identical']}/{PROMPTS}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
