"""The persistent compilation cache: a second process loads the first one's compiled steps."""

from __future__ import annotations

from pathlib import Path

from tests.hf_models import make_model
from tests.python_script import run_python

# One training step in a fresh interpreter; prints the loss and JAX's cache hits and misses.
STEP = """
import json, sys
from collections import Counter
import jax
from galley.adapters.jax import JaxTrainingClient
from galley.adapters.noop import NoopBlobStore, NoopHubClient
from galley.core import AdamParams, Datum, LoraConfig, SessionConfig

events = Counter()
jax.monitoring.register_event_listener(lambda name, **kw: events.update([name]))
client = JaxTrainingClient(NoopHubClient(), NoopBlobStore(), compilation_cache_dir=sys.argv[2])
session = client.start_session(SessionConfig(sys.argv[1], LoraConfig(rank=2)))
data = [Datum.from_tokens(list(range(2, 20)), [1.0] * 18)]
loss = session.forward_backward(data).result().metrics["loss:sum"]
session.optim_step(AdamParams(learning_rate=1e-3)).result()
print(json.dumps({"loss": loss, "hits": events["/jax/compilation_cache/cache_hits"],
                  "misses": events["/jax/compilation_cache/cache_misses"]}))
"""


def run_step(model: Path, cache: Path) -> dict[str, float]:
    # Cache every program, however quickly it compiled (the default keeps those over 1 s).
    env = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    return run_python(STEP, str(model), str(cache), env=env)


def test_second_process_loads_compiled_steps_from_the_cache(tmp_path: Path) -> None:
    model = make_model(tmp_path / "model", "llama")
    cache = tmp_path / "jax-cache"
    first = run_step(model, cache)
    entries = sorted(p.name for p in cache.iterdir())
    second = run_step(model, cache)
    assert first["misses"] >= 2 and first["hits"] == 0  # forward_backward and optim_step
    assert second["hits"] >= 2 and second["misses"] == 0
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith("-atime")) == [
        e for e in entries if not e.endswith("-atime")
    ]
    assert second["loss"] == first["loss"]
