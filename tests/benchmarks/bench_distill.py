"""The distillation chain of the README, timed: `galley run sft` makes a teacher, then
`galley run distill --set teacher=<it>` distils it into a fresh LoRA on the base model.

    python tests/benchmarks/bench_distill.py [--seed 0]

Both commands run as a user runs them (the installed `galley` next to this interpreter, in a
fresh folder). Reported: each command's wall time and the whole chain's, and on the held-out
prompts the student's KL to the teacher per token and its exact match, before and after.
Targets: KL down by at least half, exact match from 0 to 0.5 or more, the chain under 5
minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script

from tests.benchmarks.common import run_galley


def held_out(folder: Path, run_id: str) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (folder / "runs" / run_id / "metrics.jsonl").open()]
    return [r["metrics"] for r in rows if "eval/teacher_kl" in r["metrics"]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0, help="the distillation's seed")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="galley-bench-distill-"))
    sft_s = run_galley(["run", "sft", "--set", "run_id=teacher"], folder)
    distill = ["run", "distill", "--set", "teacher=teacher", "--set", "run_id=student"]
    distill_s = run_galley([*distill, "--set", f"seed={args.seed}"], folder)
    first, last = held_out(folder, "student")[0], held_out(folder, "student")[-1]
    kl0, kl1 = first["eval/teacher_kl"], last["eval/teacher_kl"]
    em0, em1 = first["eval/rewards/exact_match"], last["eval/rewards/exact_match"]
    print(f"sft {sft_s:.1f} s, distill {distill_s:.1f} s, chain {sft_s + distill_s:.1f} s")
    print(f"held-out KL to the teacher {kl0:.3f} -> {kl1:.3f} ({1 - kl1 / kl0:.0%} lower)")
    print(f"held-out exact match {em0:.3f} -> {em1:.3f}")
    figures = {"sft_s": sft_s, "distill_s": distill_s, "kl": [kl0, kl1], "exact_match": [em0, em1]}
    print(json.dumps({"benchmark": "distill", "seed": args.seed, **figures}))


if __name__ == "__main__":
    main()
