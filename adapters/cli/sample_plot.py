"""``galley sample`` and ``galley plot``: use a trained adapter, chart a run's metrics."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from galley.adapters.composition import AdapterChoice, build_adapters
from galley.adapters.fsspec.blobs import FsspecBlobStore
from galley.adapters.fsspec.kinds import galley_home
from galley.adapters.fsspec.metrics import JsonlMetricsStore
from galley.core.domain.chat import Conversation, Message
from galley.core.domain.rendering import make_renderer
from galley.core.domain.types import CheckpointRef, ModelRef, SamplingParams
from galley.core.domain.weights_source import SourceForm, WeightsSource
from galley.core.errors import ConfigError, NotFoundError, ValidationError
from galley.core.runs.manifest import MANIFEST_NAME
from galley.core.runs.records import EVAL, TRAIN, MetricRecord
from galley.core.runs.registry import sampler_of, show_model


def sampler_ref(checkpoint: Path) -> tuple[FsspecBlobStore, ModelRef]:
    """A local sampler-weights folder (``runs/<id>/sampler/<name>``) as a ModelRef."""
    manifest_path = checkpoint / MANIFEST_NAME
    if not manifest_path.is_file():
        raise NotFoundError(
            f"{str(checkpoint)!r} is not exported sampler weights (no {MANIFEST_NAME})"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValidationError(
            "--checkpoint", f"{str(manifest_path)!r} is unreadable: {e}"
        ) from None
    if not isinstance(manifest, dict):
        raise ValidationError("--checkpoint", f"{str(manifest_path)!r} is not a JSON object")
    if manifest.get("kind") != "sampler":
        raise ValidationError(
            "--checkpoint",
            f"{str(checkpoint)!r} holds a {manifest.get('kind')} checkpoint, not sampler weights",
        )
    meta = manifest.get("meta")
    base = meta.get("base_model") if isinstance(meta, dict) else None
    if not base or not isinstance(base, str):
        raise ValidationError(
            "--checkpoint", f"{str(manifest_path)!r} does not name its base model"
        )
    blobs = FsspecBlobStore(str(checkpoint.parent))
    # The folder may have been copied or renamed: the ref says what its manifest says it is.
    try:
        ref = CheckpointRef(
            "sampler",
            manifest["name"],
            checkpoint.name,
            manifest["run_id"],
            int(manifest["step"]),
            base,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValidationError(
            "--checkpoint", f"{str(manifest_path)!r} is not a galley manifest ({e})"
        ) from None
    return blobs, ModelRef(base, ref)


def registered_sampler(name: str) -> Path:
    """The sampler-weights folder of registered model ``registry:NAME`` in the local stores."""
    source = WeightsSource.parse(name, "--model")
    if source.form is not SourceForm.REGISTERED:
        raise ConfigError(f"--model {name!r}: expected registry:NAME")
    adapters = build_adapters({"blobs": AdapterChoice("fsspec")})
    entry = show_model(adapters, source.registered_name)
    return Path(galley_home()) / sampler_of(adapters, entry)


def sample(
    console: Console,
    checkpoint: Path,
    prompts: list[str],
    max_tokens: int,
    temperature: float,
    renderer: str,
) -> None:
    blobs, model = sampler_ref(checkpoint)
    adapters = build_adapters({"completer": AdapterChoice("jax")}, blobs=blobs)
    completer = adapters.completer
    from galley.adapters.hf.model_files import resolve_model_folder
    from galley.adapters.hf.tokenizer import HFTokenizerAdapter

    tokenizer = HFTokenizerAdapter(resolve_model_folder(model.base_model, adapters.hub))
    chat = make_renderer(renderer, tokenizer)
    params = SamplingParams(
        max_tokens=max_tokens, temperature=temperature, stop=chat.stop_sequences, seed=0
    )
    inputs = [chat.generation_prompt(Conversation([Message("user", p)])) for p in prompts]
    for prompt, completion in zip(
        prompts, completer.complete_batch(inputs, params, model=model), strict=True
    ):
        console.print(f"> {prompt}", style="bold")
        console.print(completion.text.strip())


# What each workflow records, panel by panel: (title, [(stream, metric, label)]). A panel is
# drawn when the run recorded any of its curves, so SFT, DPO, RL, distillation and eval runs
# each get their own.
PANELS: tuple[tuple[str, tuple[tuple[str, str, str], ...]], ...] = (
    ("loss", ((TRAIN, "loss", "train"), (EVAL, "eval/loss", "held-out"))),
    ("reward", ((TRAIN, "reward", "train"), (EVAL, "eval/reward", "held-out"))),
    ("KL, sampler to learner", ((TRAIN, "kl", "train"),)),
    ("KL to the teacher", ((TRAIN, "teacher_kl", "train"), (EVAL, "eval/teacher_kl", "held-out"))),
    (
        "preference accuracy",
        ((TRAIN, "rewards/accuracies", "train"), (EVAL, "eval/rewards/accuracies", "held-out")),
    ),
    (
        "reward margin",
        ((TRAIN, "rewards/margins", "train"), (EVAL, "eval/rewards/margins", "held-out")),
    ),
    ("held-out NLL", ((EVAL, "eval/nll", "held-out"),)),
    ("held-out exact match", ((EVAL, "eval/exact_match", "held-out"),)),
    ("learning rate", ((TRAIN, "lr", ""),)),
)

Curve = tuple[str, list[tuple[int, float]]]


def panels(rows: Sequence[MetricRecord]) -> list[tuple[str, list[Curve]]]:
    """The panels a run's rows fill, each with its labelled curves (step, value). Per stream,
    the last row of a step wins: a resumed run trained some steps again."""
    latest: dict[tuple[str, int, str], float] = {}
    for r in rows:
        for name, value in r.metrics.items():
            latest[(r.stream, r.step, name)] = value

    def curve(stream: str, name: str) -> list[tuple[int, float]]:
        return sorted((s, v) for (st, s, n), v in latest.items() if (st, n) == (stream, name))

    filled = []
    for title, wanted in PANELS:
        curves = [
            (label, points) for stream, name, label in wanted if (points := curve(stream, name))
        ]
        if curves:
            filled.append((title, curves))
    if not filled:  # metrics of someone else's: each of them, as recorded
        names = sorted({(st, n) for st, _, n in latest})
        filled = [(f"{st} {n}", [("", curve(st, n))]) for st, n in names]
    return filled


def plot(run_dir: Path) -> tuple[Path, list[str]]:
    """The panels of what the run recorded (``panels``) against step, from
    ``<run_dir>/metrics.jsonl``, as a PNG; its path and the panels' titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = JsonlMetricsStore(str(run_dir.parent)).read(run_dir.name)
    if not rows:
        raise NotFoundError(f"no metrics in {str(run_dir / 'metrics.jsonl')!r}")
    filled = panels(rows)
    columns = min(len(filled), 3)
    lines = -(-len(filled) // columns)
    fig, grid = plt.subplots(lines, columns, figsize=(4.4 * columns, 3.6 * lines), squeeze=False)
    axes = list(grid.flat)
    for ax, (title, curves) in zip(axes, filled, strict=False):
        for label, points in curves:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, label=label or None)
        if any(label for label, _ in curves) and len(curves) > 1:
            ax.legend()
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[len(filled) :]:
        ax.axis("off")
    fig.suptitle(f"galley run {run_dir.name}")
    fig.tight_layout()
    out = run_dir / "metrics.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out, [title for title, _ in filled]
