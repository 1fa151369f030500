"""The config sections: settings that belong together (the model and its LoRA, the data and
how it is rendered, the optimizer, RL's rollouts, DPO's preference objective, ...). A
workflow's config is made of them (``galley.core.configs``); a run's state holds each whole,
under its name, for the stages that use it.
"""

from __future__ import annotations

from typing import Any

import attrs

from galley.core.checks import (
    at_least,
    boolean,
    choice,
    in_range,
    int_at_least,
    non_empty,
    one_of,
)
from galley.core.configs import Section
from galley.core.domain.chat import TrainOn
from galley.core.domain.dpo import PreferenceLoss, PreferenceObjective
from galley.core.domain.rendering import RENDERERS, Truncation
from galley.core.domain.rewards import resolve_rewards
from galley.core.domain.rl import Normalisation, PolicyLoss
from galley.core.domain.schedules import ScheduleKind
from galley.core.domain.scorers import scorer_specs
from galley.core.domain.weights_source import WeightsSource, optional_source
from galley.core.errors import ValidationError


@attrs.frozen
class BaseModelSection(Section):
    """The model a session runs, and its LoRA shape: what an evaluation needs."""

    # A Hub repo id, a model folder, or registry:NAME (a registered model's base and weights).
    base_model: str = attrs.field(default="galley/tiny-lm", validator=non_empty)
    lora_rank: int = attrs.field(default=16, validator=int_at_least(0))  # 0 = full fine-tuning
    # The LoRA update is scaled by lora_alpha / lora_rank.
    lora_alpha: float = attrs.field(default=32.0, validator=in_range(0.0, 1e6, low_open=True))


def _start(value: Any) -> WeightsSource | None:
    return optional_source(value, "init_from")


@attrs.frozen
class ModelSection(BaseModelSection):
    """The model trained, its LoRA, and where its weights start."""

    # Start from other weights than the base model's: a run id (its newest good checkpoint),
    # or the blob key of a state checkpoint or a LoRA adapter export. Weights only.
    init_from: WeightsSource | None = attrs.field(default=None, converter=_start)


@attrs.frozen
class DataSection(Section):
    """What a run trains on, and what it holds out to evaluate on."""

    # A Hub dataset id, a local file (.jsonl, .json, .csv, .parquet) or a save_to_disk folder.
    dataset: str = attrs.field(default="galley/tiny-instruct", validator=non_empty)
    train_split: str = attrs.field(default="train", validator=non_empty)  # the rows trained on
    # When the dataset lacks it, eval_holdout train rows are held out.
    eval_split: str = attrs.field(default="test", validator=non_empty)
    # At most this many, and at most a tenth of the train rows (none below 10 rows).
    eval_holdout: int = attrs.field(default=32, validator=int_at_least(0))


@attrs.frozen
class FormatSection(Section):
    """How rows become tokens: the chat format and how long rows are cut."""

    max_length: int = attrs.field(default=256, validator=int_at_least(2))  # tokens per row
    # A row longer than max_length: "keep_end" drops its oldest prompt (whole leading messages,
    # then tokens), "keep_start" its end, "error" stops the run; one that still cannot fit
    # without losing what it trains on is skipped and counted.
    truncation: Truncation = choice(Truncation.KEEP_END)
    # "role_colon" (User: ... / Assistant: ...) or "chat_template" (the model's own template).
    renderer: str = attrs.field(default="role_colon", validator=one_of(list(RENDERERS)))


@attrs.frozen
class RenderSection(FormatSection):
    """How rows become tokens (``FormatSection``) and which of their tokens are trained on."""

    # Tokens with loss weight: last_assistant_message, all_assistant_messages, all_messages
    # or all_tokens.
    train_on: TrainOn = choice(TrainOn.LAST_ASSISTANT_MESSAGE)


@attrs.frozen
class OptimSection(Section):
    """AdamW and its learning-rate schedule."""

    # Tuned for the embedded model's LoRA; billion-parameter models want about 1e-4 to 5e-4.
    learning_rate: float = attrs.field(default=3e-3, validator=at_least(0.0))
    # After warmup: "linear" or "cosine" decay to min_lr_ratio x learning_rate, or "constant".
    lr_schedule: ScheduleKind = choice(ScheduleKind.LINEAR)
    warmup_steps: int = attrs.field(default=0, validator=int_at_least(0))  # linear from 0
    # The schedule's floor, as a share of learning_rate.
    min_lr_ratio: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0))
    weight_decay: float = attrs.field(default=0.0, validator=at_least(0.0))  # AdamW's, decoupled
    # Gradients are scaled to at most this global norm (0 = no clipping).
    grad_clip_norm: float = attrs.field(default=1.0, validator=at_least(0.0))
    # Adam's decay of its gradient mean.
    adam_beta1: float = attrs.field(default=0.9, validator=in_range(0.0, 1.0, high_open=True))
    # Tinker's default; 0.999 is PyTorch's.
    adam_beta2: float = attrs.field(default=0.95, validator=in_range(0.0, 1.0, high_open=True))
    # Added to Adam's denominator (Tinker's default).
    adam_eps: float = attrs.field(default=1e-12, validator=in_range(0.0, 1.0, low_open=True))


@attrs.frozen
class CheckpointSection(Section):
    """When the run saves its state, and which saves it keeps."""

    checkpoint_every: int = attrs.field(default=0, validator=int_at_least(0))  # 0 = final only
    keep_checkpoints: int = attrs.field(default=0, validator=int_at_least(0))  # 0 = keep all
    # Keep the keep_best checkpoints whose step scored best on keep_metric (lowest, or highest
    # with keep_max) as well as the newest keep_checkpoints; 0 = no ranking.
    keep_best: int = attrs.field(default=0, validator=int_at_least(0))
    keep_metric: str = attrs.field(default="eval/nll", validator=non_empty)  # for keep_best
    keep_max: bool = attrs.field(default=False, validator=boolean)  # keep_metric: higher wins
    # Save sampler weights (a LoRA adapter) with every checkpoint, so any step can be sampled.
    checkpoint_sampler: bool = attrs.field(default=False, validator=boolean)


@attrs.frozen
class EvalSection(Section):
    """How often the held-out rows are measured, and in batches of how many."""

    eval_every: int = attrs.field(default=64, validator=int_at_least(0))  # 0 = start and end
    eval_batch_size: int = attrs.field(default=16, validator=int_at_least(1))  # rows a forward


@attrs.frozen
class SamplingSection(Section):
    """The held-out prompts answered before and after training, side by side."""

    num_samples: int = attrs.field(default=16, validator=int_at_least(0))  # prompts answered
    sample_max_tokens: int = attrs.field(default=48, validator=int_at_least(1))  # per answer


def _reward_specs(value: Any) -> tuple[str, ...]:
    return scorer_specs(value, "rewards")


def _floats(value: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in value)


@attrs.frozen
class RewardSection(Section):
    """What an RL run's answers score: reward functions and their weights."""

    # Scorer names or module:function, TRL's batched form.
    rewards: tuple[str, ...] = attrs.field(default=("char_similarity",), converter=_reward_specs)
    # One weight per reward (empty: all 1); the step's reward is the weighted sum.
    reward_weights: tuple[float, ...] = attrs.field(default=(), converter=_floats)

    def __attrs_post_init__(self) -> None:
        resolve_rewards(self.rewards, self.reward_weights)  # one not found: refused now


@attrs.frozen
class RolloutSection(Section):
    """How an RL run samples: completions per prompt, their length and temperature, and how
    far sampling may run ahead of training."""

    group_size: int = attrs.field(default=8, validator=int_at_least(2))  # completions a prompt
    max_tokens: int = attrs.field(default=16, validator=int_at_least(1))  # new tokens an answer
    # Sampling temperature of the rollouts.
    temperature: float = attrs.field(default=1.0, validator=in_range(0.0, 100.0, low_open=True))
    # k >= 1: sample the next k steps' batches while this one trains, from this step's
    # starting weights (at most k updates stale, corrected by the loss's importance ratio);
    # 0: on-policy.
    max_steps_off_policy: int = attrs.field(default=0, validator=int_at_least(0))
    # Optimizer steps that share one sampled batch (of batch_size x num_substeps prompts),
    # each on its own batch_size prompts: later ones train on samples of older weights.
    num_substeps: int = attrs.field(default=1, validator=int_at_least(1))
    # With environments: answers an episode may have at most.
    max_turns: int = attrs.field(default=8, validator=int_at_least(1))


@attrs.frozen
class PolicySection(Section):
    """How sampled answers become a gradient: their advantages and the policy loss."""

    # Divide each advantage by its group's reward std (TRL's scale_rewards="group").
    scale_rewards: bool = attrs.field(default=True, validator=boolean)
    # How token losses are summed: "tokens" (over every token of the batch) or "sequence" (each
    # completion's mean).
    loss_normalisation: Normalisation = choice(Normalisation.TOKENS)
    # A penalty on sampled tokens the starting weights find less likely (0: none, no second
    # session); added to the advantages as tinker-cookbook does.
    kl_penalty_coef: float = attrs.field(default=0.0, validator=at_least(0.0))
    # The policy loss: importance_sampling, ppo or cispo (Tinker's names).
    loss_fn: PolicyLoss = choice(PolicyLoss.IMPORTANCE_SAMPLING)
    clip_low_threshold: float = attrs.field(default=0.8, validator=at_least(0.0))  # ppo, cispo
    # The ratio's upper clip (ppo, cispo).
    clip_high_threshold: float = attrs.field(default=1.2, validator=at_least(0.0))

    def __attrs_post_init__(self) -> None:
        if self.clip_low_threshold > self.clip_high_threshold:
            raise ValidationError(
                "PolicySection.clip_low_threshold",
                f"{self.clip_low_threshold} is above clip_high_threshold "
                f"{self.clip_high_threshold}",
            )

    @property
    def clip(self) -> tuple[float, float]:
        return (self.clip_low_threshold, self.clip_high_threshold)


@attrs.frozen
class PreferenceSection(Section):
    """DPO's objective (TRL's names) and what it is measured against."""

    # TRL's loss_type: "sigmoid" (DPO) or "ipo".
    loss_type: PreferenceLoss = choice(PreferenceLoss.SIGMOID)
    # The strength of the pull towards the reference (TRL's beta).
    beta: float = attrs.field(default=0.1, validator=in_range(0.0, 1e6, low_open=True))
    # The assumed share of pairs whose preference is flipped (cDPO; sigmoid only).
    label_smoothing: float = attrs.field(default=0.0, validator=in_range(0.0, 0.5, high_open=True))
    # A model to score the pairs with instead of the weights the run starts from.
    reference_model: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(non_empty)
    )

    def __attrs_post_init__(self) -> None:
        self.objective  # noqa: B018  # a mix the objective refuses is refused here

    @property
    def objective(self) -> PreferenceObjective:
        return PreferenceObjective(self.loss_type, self.beta, self.label_smoothing)
