"""A workflow of one's own from the shared stages and the one run function: the run id, the
claim, the metric rows and the session's clean-up come with it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import attrs
import pytest

from galley.adapters.noop import noop_adapters
from galley.core.configs import RunConfig
from galley.core.domain.types import Datum
from galley.core.engine import StageContext, Workflow, stage
from galley.core.engine.run import rows_by_stream, run_workflow
from galley.core.errors import GalleyError
from galley.core.runs.records import EVAL, TRAIN, MetricRecord
from galley.core.runs.run_record import RunExistsError
from galley.core.sections import DataSection, EvalSection, ModelSection, RenderSection
from galley.core.stages import heldout_nll, load_dataset, render_dataset, start_session
from galley.ports.training import TrainingSession


# -- the toy workflow: the held-out NLL of a base model (what follows is all it takes) -----
@attrs.frozen(init=False)
class NllConfig(RunConfig):  # seed, output, run_id, resume: what every run has
    model: ModelSection = attrs.field(factory=ModelSection)  # base_model, lora_rank, ...
    data: DataSection = attrs.field(factory=DataSection)  # dataset, splits
    render: RenderSection = attrs.field(factory=RenderSection)  # chat format, max_length
    evaluation: EvalSection = attrs.field(factory=EvalSection)  # eval_batch_size
    CONFIG_VERSION: ClassVar[int] = 1
    CONFIG_UPGRADES: ClassVar[dict[int, Any]] = {}


@stage(writes=("nll",), ports=("training", "metrics"))
def measure(
    ctx: StageContext,
    session: TrainingSession,
    eval_data: Sequence[Datum],
    evaluation: EvalSection,
) -> dict[str, Any]:
    nll = heldout_nll(ctx, session, eval_data, evaluation.eval_batch_size)
    ctx.record_metrics(EVAL, 0, nll)
    return {"nll": nll["eval/nll"]}


def build(config: NllConfig) -> Workflow:
    return Workflow("nll", [load_dataset, start_session, render_dataset, measure])


# -- the tests ---------------------------------------------------------------------------


def test_a_toy_workflow_runs_on_the_one_run_function() -> None:
    adapters = noop_adapters()
    done = run_workflow("nll", build, NllConfig(run_id="toy"), adapters)
    assert done.run_id == "toy" and done.state["nll"] > 0
    (row,) = done.stream(EVAL)
    assert row["step"] == 0.0 and row["eval/nll"] == done.state["nll"]
    assert adapters.metrics.read("toy")[0].metrics["eval/nll"] == done.state["nll"]
    with pytest.raises(GalleyError, match="closed"):  # the run closed its session
        done.state["session"].forward(done.state["eval_data"][:1])
    with pytest.raises(RunExistsError):  # the id is claimed like any run's
        run_workflow("nll", build, NllConfig(run_id="toy"), adapters)


def test_a_new_run_gets_an_id_named_after_its_workflow() -> None:
    done = run_workflow("nll", build, NllConfig(), noop_adapters())
    assert done.run_id.startswith("nll-")


def test_rows_across_resumes_keep_one_row_per_step() -> None:
    """Earlier rows before the checkpoint (and train rows at it) are kept; later rows of a
    step update earlier ones; the start's eval is the new attempt's."""
    earlier = [
        MetricRecord("r", TRAIN, 1, {"loss": 3.0}),
        MetricRecord("r", EVAL, 2, {"eval/nll": 9.0}),
        MetricRecord("r", TRAIN, 2, {"loss": 2.0}),
        MetricRecord("r", TRAIN, 3, {"loss": 1.5}),  # after the checkpoint: trained again
        MetricRecord("r", TRAIN, 1, {"loss": 3.0, "tokens": 5.0}),  # an earlier resume's
    ]
    current = [
        MetricRecord("r", EVAL, 2, {"eval/nll": 8.0}),
        MetricRecord("r", TRAIN, 3, {"loss": 1.4}),
    ]
    rows = rows_by_stream(earlier, current, resumed_at=2)
    assert rows[TRAIN] == [
        {"step": 1.0, "loss": 3.0, "tokens": 5.0},
        {"step": 2.0, "loss": 2.0},
        {"step": 3.0, "loss": 1.4},
    ]
    assert rows[EVAL] == [{"step": 2.0, "eval/nll": 8.0}]


def test_the_train_stage_takes_its_loss_as_a_parameter() -> None:
    """A loss the data cannot feed reaches the session: PPO needs advantages SFT data lacks."""
    from galley.core.engine import Loop
    from galley.core.errors import WorkflowError
    from galley.core.stages import plan_training
    from galley.core.stages.train import forward_backward_stage
    from galley.workflows.sft import SFTConfig

    ppo = forward_backward_stage("ppo", {"clip_low_threshold": 0.8}, prepare=list)
    assert "ppo" in ppo.doc and ppo.reads == {
        "session",
        "train_data",
        "batch_plan",
        "step",
        "pipeline",
    }

    def build(config: Any) -> Workflow:
        steps = [load_dataset, start_session, render_dataset, plan_training]
        return Workflow("ppo-ish", [*steps, Loop("train", [ppo])])

    with pytest.raises(WorkflowError, match="advantages"):
        run_workflow("ppo-ish", build, SFTConfig(max_steps=1, run_id="p"), noop_adapters())


# -- starting from another run's weights ---------------------------------------------------


def test_a_run_starts_from_another_runs_weights_alone() -> None:
    from galley.workflows.sft import SFTConfig
    from galley.workflows.sft import run as train

    adapters = noop_adapters()
    first = train(SFTConfig(max_steps=10, num_samples=0, run_id="a"), adapters)
    tuned_nll = first.eval[-1]["eval/nll"]
    for init_from in ("a", "runs/a/sampler/final", "runs/a/state/step-000010"):
        run_id = f"b-{init_from.replace('/', '-')}"
        second = train(
            SFTConfig(max_steps=2, num_samples=0, run_id=run_id, init_from=init_from), adapters
        )
        assert second.eval[0]["eval/nll"] == pytest.approx(tuned_nll, rel=1e-9), init_from
        assert second.metrics[0]["lr"] == SFTConfig().learning_rate  # its own schedule, anew
        record = adapters.blobs.read(f"runs/{run_id}/run.json").decode()
        assert f'"init_from": "{init_from}"' in record


def test_starting_from_weights_of_another_shape_or_from_itself_is_refused() -> None:
    from galley.core.errors import WorkflowError
    from galley.workflows.sft import SFTConfig
    from galley.workflows.sft import run as train

    adapters = noop_adapters()
    train(SFTConfig(max_steps=2, num_samples=0, run_id="r8", lora_rank=8), adapters)
    with pytest.raises(WorkflowError, match="lora_rank 8; this session has 16"):
        train(SFTConfig(max_steps=2, num_samples=0, run_id="r16", init_from="r8"), adapters)
    with pytest.raises(WorkflowError, match="cannot start from itself"):
        train(SFTConfig(max_steps=2, num_samples=0, run_id="me", init_from="me"), adapters)
    with pytest.raises(WorkflowError, match="is not a checkpoint"):
        train(SFTConfig(max_steps=2, num_samples=0, run_id="x", init_from="runs/none"), adapters)


# -- config sections -------------------------------------------------------------------------


def test_a_setting_may_be_given_by_its_plain_name_or_in_its_section() -> None:
    from galley.adapters.settings import settings_from_mapping
    from galley.core.errors import ConfigError
    from galley.core.sections import OptimSection
    from galley.workflows.sft import SFTConfig

    plain = SFTConfig(learning_rate=0.01, adam_beta2=0.99, max_steps=3)
    assert plain == SFTConfig(optim=OptimSection(learning_rate=0.01, adam_beta2=0.99), max_steps=3)
    assert plain.learning_rate == plain.optim.learning_rate == 0.01
    assert attrs.evolve(plain, learning_rate=0.02).optim == OptimSection(0.02, adam_beta2=0.99)
    read = settings_from_mapping(
        SFTConfig, {"optim": {"learning_rate": 0.01}, "adam_beta2": 0.99, "max_steps": 3}, "t"
    )
    assert read == plain
    with pytest.raises(ConfigError, match="optim.learning_rate is given twice"):
        settings_from_mapping(SFTConfig, {"learning_rate": 1, "optim.learning_rate": 2}, "t")
    with pytest.raises(ConfigError, match="unknown key.*optim.nope"):
        settings_from_mapping(SFTConfig, {"optim": {"nope": 1}}, "t")


def test_adamw_betas_reach_the_optimizer() -> None:
    from galley.workflows.sft import SFTConfig
    from galley.workflows.sft import run as train

    def losses(beta2: float) -> list[float]:
        config = SFTConfig(max_steps=5, num_samples=0, adam_beta2=beta2, run_id=f"b{beta2}")
        return [m["loss"] for m in train(config, noop_adapters()).metrics]

    assert losses(0.95)[0] == losses(0.5)[0]  # the first step's loss is before any update
    assert losses(0.95)[1:] != losses(0.5)[1:]
