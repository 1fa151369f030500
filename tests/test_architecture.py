"""The layout and the dependency rule, checked on the source and on a fresh interpreter."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {
    "core": "galley.core",
    "ports": "galley.ports",
    "adapters": "galley.adapters",
    "workflows": "galley.workflows",
}
HEAVY = {
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "datasets",
    "huggingface_hub",
    "fsspec",
    "safetensors",
    "tokenizers",
    "torch",
    "transformers",
    "wandb",
    "mlflow",
    "tensorboard",
}
# Third-party packages each layer may import (beyond the standard library and galley itself).
ALLOWED = {
    "core": {"attrs", "cattrs", "structlog", "numpy"},
    "ports": {"attrs", "cattrs", "structlog", "numpy"},
    "workflows": {"attrs", "cattrs", "structlog", "numpy"},
}
# Which galley layers each layer may import.
MAY_IMPORT = {
    "core": {"galley.core", "galley.ports"},
    "ports": {"galley.core", "galley.ports"},
    "workflows": {"galley.core", "galley.ports", "galley.workflows"},
}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("layer", ["core", "ports", "workflows"])
def test_dependency_rule_in_source(layer: str) -> None:
    problems = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for module in imports(path):
            top = module.split(".")[0]
            if top == "galley":
                if not any(module == m or module.startswith(m + ".") for m in MAY_IMPORT[layer]):
                    problems.append(f"{path.relative_to(ROOT)} imports {module}")
            elif top not in sys.stdlib_module_names and top not in ALLOWED[layer]:
                problems.append(f"{path.relative_to(ROOT)} imports {module}")
    assert problems == []


# The rooms of adapters/ and which others each may import. The composition root (composition,
# settings) and the kinds modules that register with it are the "root" group.
ADAPTER_GROUPS: dict[str, set[str]] = {
    "helpers": set(),  # building blocks for adapter authors: imports no adapter
    "wrappers": {"helpers"},  # an adapter of any kind wrapped, its port kept
    "root": {"helpers", "wrappers"},
    "noop": {"root", "helpers"},
    "hf": {"root", "helpers", "embedded"},  # the default hub and datasets read the embedded ones
    "fsspec": {"root", "helpers"},
    "sqlite": {"root", "helpers"},
    "trackers": {"root", "helpers"},  # W&B, MLflow, TensorBoard
    # Contract suites, the pytest plugin (its fault wrappers).
    "testing": {"root", "helpers", "wrappers", "noop", "fsspec"},
    "jax": {"root", "helpers", "hf"},  # tokenizers, chat templates, model files
    "embedded": {"root", "helpers", "hf", "fsspec", "jax"},  # data; build.py is a dev tool
    "serve": {"root", "helpers", "hf"},  # driving: the Tinker API over the ports
    "tinker": {"root", "helpers", "hf"},  # training and sampling through the tinker SDK
    # Driving: nothing imports it. `galley plan` reads the JAX adapter's options and memory.
    "cli": {"root", "helpers", "wrappers", "hf", "fsspec", "serve", "jax"},
}


def adapter_group(module: str) -> str | None:
    """The group of a ``galley.adapters...`` module (None for one that belongs to none)."""
    parts = module.split(".")[2:]
    if not parts or parts[0] in {"composition", "settings"}:
        return "root"
    return parts[0] if parts[0] in ADAPTER_GROUPS else None


def test_every_adapter_module_belongs_to_a_group() -> None:
    strays = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "adapters").rglob("*.py"))
        if adapter_group(module_of(path)) is None
    ]
    assert strays == [], "put each module in a group folder (or declare the group)"


def module_of(path: Path) -> str:
    rel = path.relative_to(ROOT / "adapters").with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["galley", "adapters", *parts])


def test_adapter_groups_import_only_what_they_may() -> None:
    problems = []
    for path in sorted((ROOT / "adapters").rglob("*.py")):
        group = adapter_group(module_of(path))
        assert group is not None
        for module in imports(path):
            if not module.startswith("galley.adapters"):
                continue
            target = adapter_group(module)
            if target != group and target not in ADAPTER_GROUPS[group]:
                problems.append(f"{path.relative_to(ROOT)} ({group}) imports {module} ({target})")
    assert problems == []


def test_listing_adapters_and_a_noop_run_import_no_framework(tmp_path: Path) -> None:
    """Kinds are lazy: `galley adapters` and a noop run load none of the heavy libraries."""
    code = (
        "import sys\n"
        "from galley.adapters.cli import main\n"
        "assert main(['adapters']) == 0\n"
        "assert main(['run', 'sft', '--adapters', 'noop', '--set', 'max_steps=2']) == 0\n"
        f"print(sorted(m for m in {sorted(HEAVY)!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_importing_core_ports_and_workflows_loads_no_framework() -> None:
    code = (
        "import sys, galley.core, galley.core.stages, galley.ports, galley.workflows.sft;"
        "import galley.adapters.noop;"
        f"print(sorted(m for m in {sorted(HEAVY)!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_every_package_folder_is_packaged_with_py_typed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {package: folder for folder, package in LAYERS.items()}
    on_disk = set()
    for folder, package in LAYERS.items():
        assert (ROOT / folder / "py.typed").exists(), f"{folder}/ lacks py.typed"
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            on_disk.add(".".join([package, *rel.parts]))
    assert set(config["packages"]) == on_disk


def test_wheel_installs_the_layers_as_galley_subpackages(tmp_path: Path) -> None:
    """A normal (non-editable) build puts each layer folder under galley/ with py.typed."""
    import shutil
    import zipfile

    # Build from a copy: setuptools writes build/ next to the sources.
    source = tmp_path / "src"
    local = shutil.ignore_patterns(".git", "build", "*cache*", ".venv")

    def ignore(folder: str, names: list[str]) -> set[str]:
        # runs/ at the top is what the CLI wrote here; core/runs/ is a package
        return set(local(folder, names)) | ({"runs"} if Path(folder) == ROOT else set())

    shutil.copytree(ROOT, source, ignore=ignore)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("galley-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("core", "ports", "adapters", "workflows"):
        assert f"galley/{package}/__init__.py" in names and f"galley/{package}/py.typed" in names
    assert "galley/core/engine/runner.py" in names and "galley/adapters/noop/training.py" in names
    assert not any(n.startswith(("tests/", "core/")) for n in names)


def test_no_code_runs_from_data() -> None:
    """No pickle-family module is imported and nothing is eval'd or exec'd in package code."""
    unsafe_modules = {"pickle", "cPickle", "cloudpickle", "dill", "marshal", "shelve", "joblib"}
    problems = []
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for module in imports(path):
                if module.split(".")[0] in unsafe_modules:
                    problems.append(f"{path.relative_to(ROOT)} imports {module}")
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id in {"eval", "exec"}
                ):
                    problems.append(f"{path.relative_to(ROOT)}:{node.lineno} calls {node.func.id}")
    assert problems == []


# -- the shape of the code: no import cycle, small stages, one writer per key -------------


def galley_modules() -> dict[str, Path]:
    found = {}
    for folder, package in LAYERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            found[".".join([package, *(p for p in parts if p != "__init__")])] = path
    return found


def runtime_imports(path: Path, modules: Mapping[str, Path]) -> set[str]:
    """The galley modules ``path`` imports when it runs, deferred imports in functions
    included (they hide a cycle, they do not remove it); imports only a type checker reads
    (under ``if TYPE_CHECKING:``) left out."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test).endswith("TYPE_CHECKING")
        for node in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                inner = f"{node.module}.{alias.name}"
                found.add(inner if inner in modules else node.module)
    return {m for m in found if m in modules}


def import_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = [stack.pop()]
            while component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle_anywhere_in_galley() -> None:
    modules = galley_modules()
    graph = {name: runtime_imports(path, modules) - {name} for name, path in modules.items()}
    assert import_cycles(graph) == []
    # The check sees a cycle, a deferred import in it included.
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# core/'s rooms, lowest first; a room imports from its own and the rooms it lists. The
# kernel is core's top-level modules (errors, validators, keys, retry, logs; the config
# sections and the serialiser, which name domain types; the adapter set); core/__init__.py
# re-exports for users and is no room.
CORE_ROOMS = {
    "domain": {"kernel"},  # the pure domain: types, rendering, the maths of each method
    "runs": {"kernel", "domain"},  # run bookkeeping: layout, records, checkpoints, registry
    "engine": {"kernel", "domain", "runs"},  # stages, data flow, runner, the run driver
    "stages": {"kernel", "domain", "runs", "engine"},
}
KERNEL_MAY_IMPORT = {"kernel", "domain"}


def core_room(module: str) -> str | None:
    """``galley.core.domain.rl`` -> ``domain``; a top-level module -> ``kernel``."""
    parts = module.split(".")
    if parts[:2] != ["galley", "core"] or len(parts) < 3:
        return None
    return parts[2] if parts[2] in CORE_ROOMS else "kernel"


def test_core_rooms_import_only_the_rooms_below_them() -> None:
    modules = {n: p for n, p in galley_modules().items() if n.startswith("galley.core.")}
    assert {core_room(n) for n in modules} == {*CORE_ROOMS, "kernel"}
    wrong = []
    for name, path in modules.items():
        room = core_room(name)
        allowed = KERNEL_MAY_IMPORT if room == "kernel" else CORE_ROOMS[str(room)] | {room}
        for target in runtime_imports(path, galley_modules()):
            if target != "galley.core" and core_room(target) not in allowed | {None}:
                wrong.append(f"{name} ({room}) imports {target} ({core_room(target)})")
    assert wrong == []
    assert len([p for p in (ROOT / "core").glob("*.py") if p.name != "__init__.py"]) <= 10


def registered_stages() -> dict[str, Any]:
    from galley.core.domain.envs import EnvGroupBuilder
    from galley.workflows import WORKFLOWS, rl

    stages = {}
    for spec in WORKFLOWS.values():
        for stage in spec.build(spec.config_type()).stages():
            stages[f"{spec.name}.{stage.name}"] = stage
    env = rl.build_workflow(rl.RLConfig(), env=cast(EnvGroupBuilder, object()))
    stages |= {f"rl-env.{stage.name}": stage for stage in env.stages()}
    return stages


MAX_STAGE_INPUTS = 6


def test_no_stage_reads_more_than_six_inputs() -> None:
    """Settings come as whole sections and results that travel together as one value, so no
    stage of any registered workflow reads more than six keys."""
    over = {
        name: sorted(stage.reads)
        for name, stage in registered_stages().items()
        if len(stage.reads) > MAX_STAGE_INPUTS
    }
    assert over == {}


def test_every_registered_workflow_has_one_writer_per_key() -> None:
    """The data-flow check refuses a stage that writes over a key without reading it or
    declaring that it replaces it; every registered workflow passes it."""
    from galley.core.configs import stage_inputs
    from galley.core.engine import check_data_flow
    from galley.workflows import WORKFLOWS

    for spec in WORKFLOWS.values():
        config = spec.config_type()
        provided = {*stage_inputs(config), "paths", "run_record", "start_step"}
        check_data_flow(spec.build(config), provided)
    replaced = {n: s.replaces for n, s in registered_stages().items() if s.replaces}
    assert replaced == {
        "sft.resume_from_checkpoint": {"start_step"},
        "dpo.resume_from_checkpoint": {"start_step"},
        "rl.resume_from_checkpoint": {"start_step"},
        "distill.resume_from_checkpoint": {"start_step"},
        "rl-env.resume_from_checkpoint": {"start_step"},
        "distill.start_teacher": {"advantages"},
    }


RUN_KEY_BUILDING = re.compile(r"join_key\(\s*output,\s*run_id|f\"\{output\}/\{run_id\}")


def test_only_the_run_layout_builds_a_runs_keys() -> None:
    builders = [
        str(path.relative_to(ROOT))
        for path in galley_modules().values()
        if RUN_KEY_BUILDING.search(path.read_text())
    ]
    assert builders == []
    assert RUN_KEY_BUILDING.search('key = join_key(output, run_id, "rollouts")')


# Telling a reference's form by its characters: a path's slash, a scheme, a registry prefix,
# a run's state folder.
REFERENCE_SNIFFING = re.compile(
    r"\"/\" in |\"://\" in |/state/\"\)|startswith\(\"registry:\"\)|startswith\(PREFIX\)"
)
# The one parser of references to weights, and the key check it builds on.
REFERENCE_PARSERS = {"core/domain/weights_source.py", "core/keys.py"}
# A dataset id (not weights) the HF dataset store looks up under its local root.
DATASET_ID_CHECK = "adapters/hf/datasets.py"


def test_references_to_weights_are_parsed_in_one_place() -> None:
    found = []
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            if name in REFERENCE_PARSERS | {DATASET_ID_CHECK}:
                continue
            text = path.read_text()
            found += [f"{name}: {m.group(0)}" for m in REFERENCE_SNIFFING.finditer(text)]
    assert found == []
    assert REFERENCE_SNIFFING.search('if "/" in init_from:')  # the pattern finds what it bans


CLI_FLAGS = re.compile(r"--(?:resume|set|accept-changes|force)\b")


def test_core_says_remedies_as_hints_never_as_flags() -> None:
    """A refusal in core carries its remedy as data (``GalleyError.hints``); the CLI spells
    it as flags, so core never names one."""
    named = [
        f"{path.relative_to(ROOT)}: {m.group(0)}"
        for path in sorted((ROOT / "core").rglob("*.py"))
        for m in CLI_FLAGS.finditer(path.read_text())
    ]
    assert named == []
    assert CLI_FLAGS.search("resume it with --resume r")  # the pattern finds what it bans


MAX_ADAPTER_MODULE_LINES = 450


def test_no_adapter_module_is_over_450_lines() -> None:
    """The busiest adapters are split by concern; none grows back into several."""
    long = {
        str(path.relative_to(ROOT)): lines
        for path in sorted((ROOT / "adapters").rglob("*.py"))
        if (lines := len(path.read_text().splitlines())) > MAX_ADAPTER_MODULE_LINES
    }
    assert long == {}
