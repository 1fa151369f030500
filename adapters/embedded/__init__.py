"""galley's embedded defaults: a small base model and an instruction dataset shipped in the
package, so ``galley run sft`` fine-tunes a real model with no network.

``python -m galley.adapters.embedded.build`` rebuilds both reproducibly (the model is
pretrained with galley itself, full fine-tuning on the JAX adapter)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
MODELS = ROOT / "models"  # a local hub: <MODELS>/<org>/<name>
DATASETS = ROOT / "datasets"  # <DATASETS>/<org>/<name>/{train,test}.jsonl
DEFAULT_MODEL = "galley/tiny-lm"
DEFAULT_DATASET = "galley/tiny-instruct"
PREFERENCE_DATASET = "galley/tiny-prefs"  # TRL's preference format, the same skill
