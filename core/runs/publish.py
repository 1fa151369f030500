"""What publishing a checkpoint sends: its weights exported as a Completer (or transformers)
loads them, the LoRA adapter or the merged model, and a model card saying what they are.

The export goes through the TrainingClient port: a session of the run's base model and LoRA
shape loads the checkpoint's weights and exports them, so any adapter that trains can
publish. Where the files go (the Hub, any fsspec URL) is an adapter's business."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from galley.core.adapter_set import Adapters
from galley.core.errors import ConfigError, NotFoundError
from galley.core.runs.checkpoint_catalog import checkpoint_record, metrics_by_step
from galley.core.runs.checkpoint_index import read_index
from galley.core.runs.layout import RunPaths
from galley.core.runs.manifest import read_checkpoint
from galley.core.runs.run_record import RunRecord, plain_saved_settings, read_run_record
from galley.core.runs.sessions import run_session_config
from galley.core.sections import BaseModelSection

# Settings a model card lists, when the run has them.
CARD_SETTINGS = (
    "learning_rate",
    "lr_schedule",
    "warmup_steps",
    "max_steps",
    "num_epochs",
    "batch_size",
    "group_size",
    "lora_rank",
    "lora_alpha",
    "max_length",
    "loss_fn",
    "beta",
    "seed",
)


def model_card(record: RunRecord, step: int, metrics: Mapping[str, float], merged: bool) -> str:
    """A Hub model card: YAML front matter (base model, library, tags, datasets) and tables
    of the run's settings and its metrics at ``step``."""
    settings = plain_saved_settings(record)
    base, dataset = settings.get("base_model", ""), settings.get("dataset")
    lora = bool(settings.get("lora_rank")) and not merged
    front = [f"base_model: {base}", *(["library_name: peft"] if lora else [])]
    front += [
        f"tags: [galley, {record.workflow}]",
        *([f"datasets: [{dataset}]"] if dataset else []),
    ]
    what = "a LoRA adapter" if lora else "a full model"
    lines = [
        "---",
        *front,
        "---",
        "",
        f"# {record.run_id}, step {step}",
        "",
        f"{what} of `{base}`, trained with galley's `{record.workflow}` workflow"
        + (f" on `{dataset}`." if dataset else "."),
        "",
        "## Settings",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {k} | {settings[k]} |" for k in CARD_SETTINGS if k in settings),
        "",
        f"## Metrics at step {step}",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {k} | {v:.6g} |" for k, v in sorted(metrics.items())),
        "",
    ]
    return "\n".join(lines)


def export_for_publishing(
    adapters: Adapters,
    run_id: str,
    step: int | None = None,
    *,
    merged: bool = False,
    output: str = "runs",
) -> dict[str, bytes]:
    """The files to publish for run ``run_id``'s checkpoint at ``step`` (the newest without
    it): its weights exported (verified against their manifest) and ``README.md``."""
    record = read_run_record(adapters, output, run_id)
    if record is None:
        raise NotFoundError(f"run {run_id!r} has no record under {output!r}")
    entry = checkpoint_record(read_index(adapters.blobs, RunPaths(output, run_id)), run_id, step)
    settings = plain_saved_settings(record)
    model = BaseModelSection(
        str(settings["base_model"]),
        int(settings.get("lora_rank", 0)),
        float(settings.get("lora_alpha", 1.0)),
    )
    seed = int(settings.get("seed", 0))
    config = run_session_config(model, seed, RunPaths(output, run_id), "publish")
    session: Any = adapters.training.start_session(config)
    try:
        session.load_weights(entry.state).result()
        if merged and not callable(getattr(session, "save_merged_weights", None)):
            raise ConfigError("this training adapter cannot merge weights; publish the adapter")
        save = session.save_merged_weights if merged else session.save_weights_for_sampler
        ref = save(f"step-{entry.step:06d}").result()
    finally:
        session.close()
    _, files = read_checkpoint(adapters.blobs, ref)
    metrics = metrics_by_step(adapters, run_id).get(entry.step, {})
    return {**files, "README.md": model_card(record, entry.step, metrics, merged).encode()}
