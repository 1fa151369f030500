"""The default runs' promises over seeds: `galley run rl` and `galley run dpo` with no
options, and the README's distillation chain (`galley run sft`, then `galley run distill --set
teacher=<it>`), each on seeds 0 to 3, as a user runs them (the installed `galley` next to this
interpreter, in a fresh folder).

    python tests/benchmarks/bench_defaults.py [--seeds 0 1 2 3] [--only rl|distill|dpo]

RL and distillation trajectories depend on the CPU's float rounding, so one seed's figure is
no promise: this prints each seed's held-out figures before and after, their mean and range,
and whether every seed meets its target (RL: held-out reward up by at least 0.2;
distillation: held-out exact match of at least 0.5; DPO: held-out preference accuracy of at
least 0.9).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script

from tests.benchmarks.common import run_galley

RL_GAIN = 0.2
DISTILL_EXACT_MATCH = 0.5
DPO_ACCURACY = 0.9


def held_out(folder: Path, run_id: str, metric: str) -> tuple[float, float]:
    """The metric's first and last held-out value."""
    rows = [json.loads(line) for line in (folder / "runs" / run_id / "metrics.jsonl").open()]
    values = [r["metrics"][metric] for r in rows if metric in r["metrics"]]
    return values[0], values[-1]


def rl(seeds: list[int], folder: Path) -> list[dict[str, float]]:
    out = []
    for seed in seeds:
        args = ["run", "rl", "--set", f"seed={seed}", "--set", f"run_id=rl-{seed}"]
        seconds = run_galley(args, folder)
        before, after = held_out(folder, f"rl-{seed}", "eval/reward")
        out.append({"seed": seed, "before": before, "after": after, "seconds": seconds})
        print(f"rl seed {seed}: held-out reward {before:.3f} -> {after:.3f} ({seconds:.0f} s)")
    return out


def distill(seeds: list[int], folder: Path) -> list[dict[str, float]]:
    teacher_s = run_galley(["run", "sft", "--set", "run_id=teacher"], folder)
    print(f"teacher (galley run sft): {teacher_s:.0f} s")
    out = []
    for seed in seeds:
        run_id = f"student-{seed}"
        args = ["run", "distill", "--set", "teacher=teacher", "--set", f"run_id={run_id}"]
        seconds = run_galley([*args, "--set", f"seed={seed}"], folder)
        before, after = held_out(folder, run_id, "eval/rewards/exact_match")
        kl0, kl1 = held_out(folder, run_id, "eval/teacher_kl")
        out.append(
            {"seed": seed, "before": before, "after": after, "kl_before": kl0, "kl_after": kl1,
             "seconds": seconds}
        )  # fmt: skip
        print(
            f"distill seed {seed}: held-out exact match {before:.3f} -> {after:.3f}, "
            f"KL to the teacher {kl0:.2f} -> {kl1:.2f} ({seconds:.0f} s)"
        )
    return out


def dpo(seeds: list[int], folder: Path) -> list[dict[str, float]]:
    out = []
    for seed in seeds:
        run_id = f"dpo-{seed}"
        seconds = run_galley(
            ["run", "dpo", "--set", f"seed={seed}", "--set", f"run_id={run_id}"], folder
        )
        before, after = held_out(folder, run_id, "eval/rewards/accuracies")
        m0, m1 = held_out(folder, run_id, "eval/rewards/margins")
        out.append(
            {"seed": seed, "before": before, "after": after, "margin_before": m0,
             "margin_after": m1, "seconds": seconds}
        )  # fmt: skip
        print(
            f"dpo seed {seed}: held-out accuracy {before:.3f} -> {after:.3f}, margin "
            f"{m0:.2f} -> {m1:.2f} ({seconds:.0f} s)"
        )
    return out


def summary(name: str, rows: list[dict[str, float]], key: str) -> dict[str, float]:
    values = [r[key] for r in rows]
    return {
        f"{name}_{key}_mean": statistics.fmean(values),
        f"{name}_{key}_min": min(values),
        f"{name}_{key}_max": max(values),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--only", choices=["rl", "distill", "dpo"])
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="galley-bench-defaults-"))
    figures: dict[str, object] = {"benchmark": "defaults", "seeds": args.seeds}
    print("| run | seed | before | after | target | met |")
    if args.only in (None, "rl"):
        rows = rl(args.seeds, folder)
        for r in rows:
            r["gain"] = r["after"] - r["before"]
        figures |= {"rl": rows, **summary("rl", rows, "before"), **summary("rl", rows, "after")}
        figures |= summary("rl", rows, "gain")
        figures["rl_met"] = all(r["gain"] >= RL_GAIN for r in rows)
    if args.only in (None, "distill"):
        rows = distill(args.seeds, folder)
        figures |= {"distill": rows, **summary("distill", rows, "before")}
        figures |= summary("distill", rows, "after")
        figures["distill_met"] = all(r["after"] >= DISTILL_EXACT_MATCH for r in rows)
    if args.only in (None, "dpo"):
        rows = dpo(args.seeds, folder)
        figures |= {"dpo": rows, **summary("dpo", rows, "after")}
        figures["dpo_met"] = all(r["after"] >= DPO_ACCURACY for r in rows)
    targets = {
        "rl": (f"gain >= {RL_GAIN}", lambda r: r["after"] - r["before"] >= RL_GAIN),
        "distill": (f">= {DISTILL_EXACT_MATCH}", lambda r: r["after"] >= DISTILL_EXACT_MATCH),
        "dpo": (f">= {DPO_ACCURACY}", lambda r: r["after"] >= DPO_ACCURACY),
    }
    for name, (target, meets) in targets.items():
        if name not in figures:
            continue
        for r in figures[name]:  # type: ignore[attr-defined]
            met = meets(r)
            print(
                f"| {name} | {r['seed']} | {r['before']:.3f} | {r['after']:.3f} | {target} | "
                f"{'yes' if met else 'NO'} |"
            )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
