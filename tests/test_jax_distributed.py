"""A run of two processes (``jax.distributed``, two CPU devices each, gloo between them) on
localhost: `galley run sft` in each trains like one process with four devices, writes one
checkpoint of both processes' parts, ends cleanly when the other process dies, resumes
exactly, and its checkpoints load on another mesh and process count."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.conftest import free_port
from tests.hf_models import make_model
from tests.python_script import run_python

TIMEOUT_S = 5  # a process not heard from for this long is dead (see the config below)
CONFIG = """
[sft]
base_model = "{model}"
max_steps = 6
batch_size = 4
learning_rate = 5e-3
lora_rank = 4
checkpoint_every = 2
eval_every = 3
num_samples = 2
run_id = "dist"

[adapters]
default = "noop"

[adapters.blobs]
kind = "fsspec"
url = "{root}"

[adapters.metrics]
kind = "jsonl"
url = "{root}/metrics"

[adapters.training]
kind = "jax"
mesh = {{ fsdp = 4 }}
"""


def galley(
    root: Path, model: Path, *args: str, devices: int, process: tuple[int, int] | None = None
) -> subprocess.Popen[str]:
    """`galley run sft` on ``devices`` fake CPU devices, as process (id, port) of two."""
    config = root / "run.toml"
    config.write_text(CONFIG.format(model=model, root=root))
    joins = []
    if process is not None:
        index, port = process
        joins = [
            "--set",
            f'adapters.training.distributed={{coordinator = "127.0.0.1:{port}", '
            f"num_processes = 2, process_id = {index}, timeout_s = {TIMEOUT_S}}}",
        ]
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
    }
    cli = "import sys; from galley.adapters.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", cli, "run", "sft", "--config", str(config)]
    return subprocess.Popen(
        [*command, *joins, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def two_processes(root: Path, model: Path, *args: str) -> list[subprocess.Popen[str]]:
    port = free_port()
    return [galley(root, model, *args, devices=2, process=(i, port)) for i in (0, 1)]


def finished(process: subprocess.Popen[str]) -> str:
    out, _ = process.communicate(timeout=240)
    assert process.returncode == 0, out[-3000:]
    return out


def train_losses(root: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (root / "metrics" / "dist" / "metrics.jsonl").open()]
    return {r["step"]: r["metrics"]["loss"] for r in rows if r["stream"] == "train"}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("model") / "m", "qwen2")


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory, model: Path) -> Path:
    root = tmp_path_factory.mktemp("two")
    outputs = [finished(p) for p in two_processes(root, model)]
    assert all("steps: 6" in out for out in outputs)
    return root


def test_two_processes_train_like_one(tmp_path: Path, model: Path, two: Path) -> None:
    finished(galley(tmp_path, model, devices=4))
    one, both = train_losses(tmp_path), train_losses(two)
    assert list(both) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(list(both.values()), list(one.values()), rtol=1e-5)
    assert both[6] < both[1]


def test_process_zero_owns_the_run_and_the_checkpoint_has_every_part(two: Path) -> None:
    rows = (two / "metrics" / "dist" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(r)["step"] for r in rows if json.loads(r)["stream"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]  # recorded once, by process 0
    state = two / "runs" / "dist" / "state" / "step-000006"
    manifest = json.loads((state / "manifest.json").read_text())
    parts = {"state-00000-of-00002.safetensors", "state-00001-of-00002.safetensors"}
    assert set(manifest["files"]) == parts
    assert {p.name for p in state.iterdir()} == {*parts, "manifest.json"}


LOAD = """
import json, sys
import jax
from galley.adapters.fsspec.blobs import FsspecBlobStore
from galley.adapters.jax import JaxTrainingClient
from galley.adapters.jax.mesh import MeshShape
from galley.adapters.jax.state_files import flat_named
from galley.adapters.noop import NoopHubClient
from galley.core import LoraConfig, SessionConfig
from galley.core.runs.manifest import checkpoint_at

root, model = sys.argv[1], sys.argv[2]
blobs = FsspecBlobStore(root)
ref = checkpoint_at(blobs, "runs/dist/state/step-000006")
out = {}
for name, mesh in [("1 x 4", MeshShape(fsdp=4)), ("one device", MeshShape(data=1))]:
    client = JaxTrainingClient(NoopHubClient(), blobs, mesh=mesh)
    session = client.start_session(SessionConfig(model, LoraConfig(rank=4), run_id="dist"))
    session.load_state(ref).result()
    some = session._trainable["layers"][0]["self_attn"]["q_proj"]["lora_b"][...]
    out[name] = {
        "weights": {k: v.tolist() for k, v in flat_named(session._trainable).items()},
        "devices": len(some.sharding.device_set),
    }
print(json.dumps(out))
"""


def test_a_checkpoint_of_two_processes_loads_on_one_process_of_four_devices_and_on_one(
    two: Path, model: Path
) -> None:
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    loaded = run_python(LOAD, str(two), str(model), env=env)
    assert loaded["1 x 4"]["devices"] == 4 and loaded["one device"]["devices"] == 1
    # The PEFT export of the same step, written by process 0 from the gathered weights.
    export = load_file(
        str(two / "runs" / "dist" / "sampler" / "final" / "adapter_model.safetensors")
    )
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    for mesh in ("1 x 4", "one device"):
        weights = loaded[mesh]["weights"]
        lora_b = next(v for k, v in weights.items() if "'q_proj']['lora_b']" in k and "[0]" in k)
        np.testing.assert_array_equal(np.asarray(lora_b, np.float32).T, export[name])
    assert loaded["1 x 4"]["weights"] == loaded["one device"]["weights"]


def test_a_lost_process_ends_the_other_and_the_run_resumes_exactly(
    tmp_path: Path, model: Path, two: Path
) -> None:
    first, second = two_processes(tmp_path, model)
    index = tmp_path / "runs" / "dist" / "checkpoints.jsonl"
    deadline = time.monotonic() + 240
    while not (index.exists() and "step-000002" in index.read_text()):
        assert first.poll() is None and time.monotonic() < deadline, "no checkpoint at step 2"
        time.sleep(0.02)
    second.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    out, _ = first.communicate(timeout=120)
    waited = time.monotonic() - killed
    second.communicate()
    assert first.returncode == 1, out[-3000:]
    assert waited < TIMEOUT_S + 10, f"process 0 took {waited:.1f} s to end"
    assert "this was process 0 of 2" in out and "--resume dist" in out, out[-3000:]
    assert "Aborted" not in out and "Check failure stack trace" not in out
    assert 6 not in train_losses(tmp_path)

    outputs = [finished(p) for p in two_processes(tmp_path, model, "--resume", "dist")]
    assert all("steps: 4" in out for out in outputs)  # steps 3 to 6, after the checkpoint
    assert train_losses(tmp_path) == train_losses(two)  # bit for bit
