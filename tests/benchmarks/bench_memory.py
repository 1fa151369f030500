"""What each memory lever saves: XLA's memory analysis of the compiled training step, and
`galley plan`'s estimate of it, on the benchmark model.

    python tests/benchmarks/bench_memory.py [--rows 8] [--length 1024]

The benchmark model (``common.PRESETS["cpu"]``: a random Llama, hidden 512, 8 layers, vocab
8192, float32; ``--preset 0.5b``: Qwen2.5-0.5B's shapes in bfloat16, for a GPU), LoRA rank
16, one ``forward_backward_step`` of ``--rows`` x ``--length`` tokens, compiled (not run) on
this machine's default backend, under each lever: remat
``full`` and ``dots`` (scanned), logits in chunks of 1024 (unrolled), and both. Prints the
compiled step's temporaries and its total (arguments, temporaries and the optimizer state),
the plan's total, and their ratio.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script

from tests.benchmarks.common import PRESETS, model_folder

MIB = 1 << 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--model-dir", help="reuse (or make) the benchmark model here")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    args = parser.parse_args()

    import jax

    from galley.adapters.jax import JaxTrainingClient
    from galley.adapters.jax.config import read_config
    from galley.adapters.jax.mesh import MeshShape
    from galley.adapters.jax.model import Remat
    from galley.adapters.jax.plan import Levers, plan_memory
    from galley.adapters.noop import NoopBlobStore, NoopHubClient
    from galley.core import LoraConfig, SessionConfig
    from tests.jax_steps import lowered_step, sequences

    preset = PRESETS[args.preset]
    folder = model_folder(preset, args.model_dir)
    data = sequences(args.rows, args.length + 1)
    levers = {
        "none (unrolled)": Levers(),
        "none (scanned)": Levers(scan_layers=True),
        "remat dots (scanned)": Levers(remat=Remat.DOTS, scan_layers=True),
        "remat full (scanned)": Levers(remat=Remat.FULL, scan_layers=True),
        "logits_chunk 1024 (unrolled)": Levers(logits_chunk=1024),
        "remat full + chunks (scanned)": Levers(
            remat=Remat.FULL, logits_chunk=1024, scan_layers=True
        ),
    }
    print(
        f"{args.rows} x {args.length} tokens, LoRA 16, {preset.dtype}, on {jax.default_backend()}"
    )
    print(f"{'lever':<32}{'temp MiB':>10}{'step MiB':>10}{'plan MiB':>10}{'plan/XLA':>10}")
    for name, lever in levers.items():
        client: Any = JaxTrainingClient(
            NoopHubClient(),
            NoopBlobStore(),
            dtype=preset.dtype,
            scan_layers=lever.scan_layers,
            remat=lever.remat,
            logits_chunk=lever.logits_chunk,
        )
        session = client.start_session(SessionConfig(str(folder), LoraConfig(rank=16)))
        memory = lowered_step(session, data).compile().memory_analysis()
        optimizer = sum(a.nbytes for a in jax.tree.leaves(session._opt_state))
        step = memory.argument_size_in_bytes + memory.temp_size_in_bytes + optimizer
        plan = plan_memory(
            read_config(folder),
            LoraConfig(rank=16),
            dtype=jax.numpy.dtype(preset.dtype),
            mesh=MeshShape(),
            devices=1,
            rows=args.rows,
            length=args.length,
            levers=lever,
        )
        print(
            f"{name:<32}{memory.temp_size_in_bytes / MIB:>10.0f}{step / MIB:>10.0f}"
            f"{plan.total / MIB:>10.0f}{plan.total / step:>10.2f}"
        )


if __name__ == "__main__":
    main()
