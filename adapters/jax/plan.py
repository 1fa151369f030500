"""How much device memory a training step takes, per device, before anything loads.

Weights, optimizer state, gradients and the batch are counted exactly: the model is built
abstractly (``nnx.eval_shape``: shapes, no arrays) from its config.json, and each array is
divided as the family's sharding rules split it on the mesh. Activations, what the step
keeps for its backward, are an estimate from the model's shapes (``activation_bytes``);
``tests/test_jax_plan.py`` holds the whole within 20% of XLA's own memory analysis of the
compiled step on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import attrs
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from galley.adapters.jax.attention import chunk_size
from galley.adapters.jax.batching import PADDED_DTYPES
from galley.adapters.jax.build import build_model
from galley.adapters.jax.config import ModelConfig, expected_shapes
from galley.adapters.jax.mesh import MeshShape
from galley.adapters.jax.model import Remat
from galley.adapters.jax.sharding import BATCH_AXES, param_name, split_axes, split_count
from galley.core.domain.types import LoraConfig
from galley.core.errors import ConfigError

GIB = 1 << 30


@attrs.frozen
class Levers:
    """How a step may be made to fit: passes of ``micro_batch_size`` rows (0: one pass),
    what each layer keeps for the backward (``remat``), logits ``logits_chunk`` positions at a
    time (0: all at once), and layers scanned over stacked weights (``scan_layers``)."""

    micro_batch_size: int = 0
    remat: Remat = Remat.NONE
    logits_chunk: int = 0
    scan_layers: bool = False

    def settings(self) -> dict[str, Any]:
        """The run settings that pick these levers, as ``--set`` takes them."""
        return {
            "micro_batch_size": self.micro_batch_size,
            "adapters.training.remat": self.remat.value,
            "adapters.training.logits_chunk": self.logits_chunk,
            "adapters.training.scan_layers": self.scan_layers,
        }

    def passes_of(self, rows: int) -> int:
        return -(-rows // self.micro_batch_size) if self.micro_batch_size else 1


@attrs.frozen
class MemoryPlan:
    """Bytes per device of one training step (``forward_backward`` then ``optim_step``)."""

    mesh: Mapping[str, int]
    frozen_weights: int  # the base a LoRA does not train (nothing in full fine-tuning)
    trainable_weights: int
    optimizer_state: int  # AdamW's two moments (and its step count)
    gradients: int  # the accumulator ``forward_backward`` adds into
    batch: int  # one pass's
    activations: int  # estimated: what the forward keeps for the backward, at its peak
    levers: Levers = Levers()

    @property
    def total(self) -> int:
        return (
            self.frozen_weights
            + self.trainable_weights
            + self.optimizer_state
            + self.gradients
            + self.batch
            + self.activations
        )

    def rows(self) -> list[tuple[str, int]]:
        return [
            ("frozen weights", self.frozen_weights),
            ("trainable weights", self.trainable_weights),
            ("optimizer state", self.optimizer_state),
            ("gradients", self.gradients),
            ("batch", self.batch),
            ("activations (estimate)", self.activations),
            ("total", self.total),
        ]


def plan_memory(
    cfg: ModelConfig,
    lora: LoraConfig | None,
    *,
    dtype: Any,
    mesh: MeshShape,
    devices: int,
    rows: int,
    length: int,
    levers: Levers = Levers(),
) -> MemoryPlan:
    """The plan for ``rows`` sequences of ``length`` tokens (padded as the adapter pads them)
    on ``devices`` devices split as ``mesh``, run with ``levers``; ``lora`` None or rank 0 is
    full fine-tuning."""
    sizes = dict(zip(("data", "fsdp", "tensor"), mesh.sizes(devices), strict=True))
    trainable, frozen, optimizer = abstract_state(
        cfg, lora if lora is not None and lora.rank else None, np.dtype(dtype)
    )
    rules = cfg.family.sharding

    def per_device(tree: Any) -> int:
        total = 0
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            shape = tuple(np.shape(leaf))
            axes = split_axes(param_name(path), shape, rules, sizes)
            parts = int(np.prod([split_count(a, sizes) for a in axes]))
            total += int(np.prod(shape)) * np.dtype(leaf.dtype).itemsize // parts
        return total

    split_rows = int(np.prod([sizes[a] for a in BATCH_AXES]))
    pass_rows = -(-rows // levers.passes_of(rows))
    local_rows = -(-pass_rows // split_rows)
    batch = sum(local_rows * length * np.dtype(t).itemsize for t in PADDED_DTYPES.values())
    return MemoryPlan(
        mesh=sizes,
        frozen_weights=per_device(frozen),
        trainable_weights=per_device(trainable),
        optimizer_state=per_device(optimizer),
        gradients=per_device(trainable),
        batch=batch,
        # Scanned, the backward builds the stacked layers' gradient whole before adding it.
        activations=activation_bytes(
            cfg, local_rows, length, np.dtype(dtype).itemsize, sizes["tensor"], levers
        )
        + (per_device(trainable) if levers.scan_layers else 0),
        levers=levers,
    )


@cache
def abstract_state(cfg: ModelConfig, lora: LoraConfig | None, dtype: np.dtype[Any]) -> Any:
    """The session's trainable weights, frozen weights and optimizer state as shapes only
    (``nnx.eval_shape``: no arrays), built once per model: ``galley plan --memory`` plans
    the same model under many levers and meshes."""
    shapes = expected_shapes(cfg)

    def build() -> Any:
        return build_model(cfg, lambda name: jnp.zeros(shapes[name]), lora, dtype)

    model = nnx.eval_shape(build)
    trainable_filter = nnx.LoRAParam if lora is not None else nnx.Param
    parts: tuple[Any, ...] = nnx.split(model, trainable_filter, ...)
    from galley.adapters.jax.steps import adamw  # the optimizer the sessions use

    return parts[1], parts[2], jax.eval_shape(adamw().init, parts[1])


def activation_bytes(
    cfg: ModelConfig, rows: int, length: int, width: int, tensor: int, levers: Levers = Levers()
) -> int:
    """What one device's step keeps for the backward, at its peak: what every layer keeps,
    plus the larger of one layer's backward and the logits'.

    Without remat a layer keeps, per token, the residual stream and its norms (4 x hidden),
    queries, keys and values before and after RoPE and attention's output (3 x (q + k/v
    widths)), the MLP's gate, up, product and their gradients' inputs (4 x intermediate),
    and the attention probabilities of the causal query chunks (float32). ``remat=dots``
    keeps its input and its projections' outputs; ``full`` its input alone, and its backward
    rebuilds the rest, one layer at a time. Both need ``scan_layers``: unrolled, XLA's CPU
    scheduler runs the recomputation during the forward, which saves nothing. The logits
    and their log-softmax are float32, per ``logits_chunk`` positions where it is set.
    Tensor parallelism splits the widths and heads. A mixture of experts' MLP runs each
    token through its top-k experts (and the shared one): that is its width per token."""
    tokens = rows * length
    hidden = cfg.hidden_size
    q = cfg.num_heads * cfg.head_dim // tensor
    kv = max(cfg.num_kv_heads // tensor, 1) * cfg.head_dim
    moe = cfg.moe
    mlp_width = (
        cfg.intermediate_size
        if moe is None
        else moe.top_k * moe.expert_size + moe.shared_expert_size
    )
    inner = mlp_width // tensor
    size = chunk_size(length)
    visible = sum((c + 1) * size for c in range(length // size)) * size  # (query, key) pairs
    probabilities = rows * max(cfg.num_heads // tensor, 1) * visible * 4
    layer = tokens * (4 * hidden + 3 * (q + kv) + 4 * inner) * width + probabilities
    remat = levers.remat if levers.scan_layers else Remat.NONE
    if remat is Remat.FULL:
        kept = tokens * hidden * width
    elif remat is Remat.DOTS:
        kept = tokens * (3 * hidden + q + 2 * kv + 2 * inner) * width
    else:
        kept = layer
    logit_rows = min(levers.logits_chunk, tokens) if levers.logits_chunk else tokens
    logits = 2 * logit_rows * (cfg.vocab_size // tensor) * 4
    if remat is Remat.NONE:  # the peak: every layer's, the logits and one layer's gradients
        return cfg.num_layers * kept + logits + probabilities
    return cfg.num_layers * kept + max(layer, logits) + probabilities


LOGITS_CHUNK = 1024  # positions a chunk of logits holds when the plan chunks them


@attrs.frozen
class Recommendation:
    """The plan that fits at the least ``relative_time``, the plan of no lever, and
    what each lever alone saves from it (bytes per device)."""

    plan: MemoryPlan
    baseline: MemoryPlan
    savings: tuple[tuple[str, int], ...]


def recommend(
    budget: int,
    plan: Callable[[Levers, MeshShape], MemoryPlan],
    *,
    rows: int,
    devices: int,
    mesh: MeshShape,
) -> Recommendation:
    """The quickest combination of levers (micro-batches of rows halved down to one,
    remat, chunked logits, FSDP over the devices a mesh does not otherwise split) whose plan
    fits ``budget`` bytes per device. ``plan(levers, mesh)`` plans one. Refuses, naming the
    smallest plan, when nothing fits."""
    micro = [0] + [m for m in (rows >> k for k in range(1, rows.bit_length())) if m >= 1]
    meshes = [mesh]
    if mesh.fsdp == 1 and mesh.tensor == 1 and devices > 1:  # FSDP over the data devices
        meshes += [attrs.evolve(mesh, data=devices // f, fsdp=f) for f in _divisors(devices)]
    options = [
        (Levers(m, remat, chunk, remat is not Remat.NONE), shape)
        for shape in meshes
        for m in micro
        for remat in Remat
        for chunk in (0, LOGITS_CHUNK)
    ]

    def cost(option: tuple[Levers, MeshShape]) -> float:
        levers, shape = option
        return relative_time(levers, rows, shape)

    plans = [plan(levers, shape) for levers, shape in sorted(options, key=cost)]
    fitting = [p for p in plans if p.total <= budget]
    if not fitting:
        least = min(plans, key=lambda p: p.total)
        raise ConfigError(
            f"nothing fits in {size_text(budget)} per device: the least any lever "
            f"combination takes is {size_text(least.total)} ({describe(least)}); "
            "shorten max_length, lower batch_size, use LoRA or more devices"
        )
    baseline = plan(Levers(), mesh)
    alone = {
        "micro_batch_size=1": Levers(micro_batch_size=1),
        "remat=dots (scanned)": Levers(remat=Remat.DOTS, scan_layers=True),
        "remat=full (scanned)": Levers(remat=Remat.FULL, scan_layers=True),
        f"logits_chunk={LOGITS_CHUNK}": Levers(logits_chunk=LOGITS_CHUNK),
    }
    savings = tuple((name, baseline.total - plan(lv, mesh).total) for name, lv in alone.items())
    return Recommendation(fitting[0], baseline, savings)


def relative_time(levers: Levers, rows: int, mesh: MeshShape) -> float:
    """A step's time against no lever's, roughly: remat runs a layer's forward again (all of
    it, or its attention and activations), smaller passes use the device less well, chunked
    logits cost a little per chunk, FSDP gathers each layer's weights."""
    remat = {Remat.NONE: 1.0, Remat.DOTS: 1.15, Remat.FULL: 1.33}[levers.remat]
    passes = 1.0 + 0.03 * np.log2(levers.passes_of(rows))
    chunks = 1.02 if levers.logits_chunk else 1.0
    return float(remat * passes * chunks * (1.0 + 0.05 * np.log2(mesh.fsdp)))


def _divisors(n: int) -> list[int]:
    return [f for f in range(2, n + 1) if n % f == 0]


def describe(plan: MemoryPlan) -> str:
    levers = plan.levers
    parts = [
        f"micro_batch_size={levers.micro_batch_size}" if levers.micro_batch_size else "",
        f"remat={levers.remat.value}" if levers.remat is not Remat.NONE else "",
        f"logits_chunk={levers.logits_chunk}" if levers.logits_chunk else "",
        "scan_layers=true" if levers.scan_layers else "",
        f"fsdp={plan.mesh['fsdp']}" if plan.mesh["fsdp"] > 1 else "",
    ]
    return ", ".join(p for p in parts if p) or "no lever"


def size_text(size: int) -> str:
    return f"{size / GIB:.2f} GiB" if size >= GIB else f"{size / (1 << 20):.1f} MiB"


def parse_bytes(text: str) -> int:
    """``24GiB``, ``80GB``, ``512MiB`` or a plain count of bytes."""
    units = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
    units |= {"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
    value = text.strip().lower()
    number = value.rstrip("abcdefghijklmnopqrstuvwxyz").strip()
    unit = value[len(number) :].strip()
    try:
        size = float(number) * units[unit]
    except (KeyError, ValueError):
        raise ConfigError(
            f"--memory: expected a size such as 24GiB, 80GB or 512MiB, got {text!r}"
        ) from None
    if size <= 0:
        raise ConfigError(f"--memory: expected a positive size, got {text!r}")
    return int(size)
