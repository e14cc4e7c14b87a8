"""One stage, one name: dvc.yaml, params.yaml, the flow and the CLI agree."""

import ast
from pathlib import Path

import yaml

from flows.cli import build_parser
from tasks.core.config import SERVICE_SECTIONS, SHARED_SECTIONS, STAGES, PipelineConfig, parse_config, read_params
from tests.config_reads import covers, leaves, recorded_reads
from tests.conftest import REPO, tiny_params


def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_stage_names_agree_everywhere():
    not_stages = (*SHARED_SECTIONS, *SERVICE_SECTIONS)
    params_sections = [k for k in read_params(REPO / "params.yaml") if k not in not_stages]
    assert list(dvc_stages()) == list(STAGES) == params_sections
    config_sections = [f.alias or name for name, f in PipelineConfig.model_fields.items()]
    assert [s for s in config_sections if s not in not_stages] == list(STAGES)
    assert not any(s in stage["params"] for stage in dvc_stages().values() for s in SERVICE_SECTIONS)
    stage_choices = build_parser()._subparsers._group_actions[0].choices["stage"]._actions[-1].choices
    assert tuple(stage_choices) == STAGES


def test_each_stage_runs_its_own_cli_shell_and_depends_on_its_source():
    for name, stage in dvc_stages().items():
        assert stage["cmd"] == f"tunegate stage {name}"
        assert f"tasks/{name}.py" in stage["deps"]
        assert name in stage["params"] or any(str(p).startswith(f"{name}.") for p in stage["params"])


def test_each_stage_lists_in_dvc_yaml_exactly_the_params_its_code_reads(staged_run):
    """Both ways, from the keys each stage read while the staged pipeline ran (tests/config_reads.py): a key read
    but not listed would change the stage's output without DVC rerunning it; a key listed but never read reruns
    the stage for nothing. A section listed whole covers every key under it."""
    _, _, reads = staged_run
    for name, stage in dvc_stages().items():
        listed, read = stage["params"], reads[name]
        unlisted = sorted(key for key in leaves(read) if not any(covers(entry, key) for entry in listed))
        assert not unlisted, f"{name} reads {unlisted}: list them under its params in dvc.yaml"
        unread = [entry for entry in listed if not any(covers(entry, key) or covers(key, entry) for key in read)]
        assert not unread, f"{name} never reads {unread}: drop them from its params in dvc.yaml"


def test_the_recorder_sees_fields_read_one_by_one_and_through_dumps(tiny_model_dir):
    cfg = parse_config(tiny_params(tiny_model_dir))
    with recorded_reads() as read:
        cfg.train.max_length, cfg.data.model_dump(include={"label_names"})
        cfg.prepare.model_dump(exclude={"sources", "source_rows"})
        cfg.train.long_text.model_dump(exclude={"candidates": {0: True}})
    assert leaves(read) == {"train.max_length", "data.label_names", "train.long_text.candidates",
                            *(f"prepare.{k}" for k in PipelineConfig.model_fields["prepare"].annotation.model_fields
                              if k not in ("sources", "source_rows")),
                            *(f"train.long_text.{k}" for k in ("train_windows", "max_train_windows", "min_gain_se"))}
    assert covers("train", "train.max_length") and not covers("train.max", "train.max_length")


# Modules that cannot change a stage's output, so editing them need not rerun stages.
# (runlog writes only .tunegate/runs/, never a tracked output.) What they import serves only them (runlog's CPU
# facts from core/host), so the walk below does not go through them.
PLUMBING = {"tasks/core/config.py", "tasks/core/errors.py", "tasks/core/paths.py", "tasks/core/stage.py",
            "tasks/core/runlog.py"}


def module_file(dotted: str) -> str:
    """tasks.core.io -> tasks/core/io.py (a package's own __init__.py for a package)."""
    path = REPO / Path(*dotted.split("."))
    return str((path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).relative_to(REPO))


def tasks_modules_used_by(stage: str) -> set[str]:
    """Every tasks/ file that tasks/<stage>.py imports, directly or through others (also inside functions),
    except through PLUMBING."""
    seen, todo = set(), [f"tasks/{stage}.py"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in PLUMBING:
            continue
        for node in ast.walk(ast.parse((REPO / name).read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tasks."):
                todo.append(module_file(node.module))
            elif isinstance(node, ast.Import):
                todo += [module_file(a.name) for a in node.names if a.name.startswith("tasks.")]
    return {n for n in seen if not n.endswith("__init__.py")}


def test_each_stage_depends_on_every_module_it_runs():
    for name, stage in dvc_stages().items():
        needed = tasks_modules_used_by(name) - PLUMBING
        code_deps = {d for d in stage["deps"] if d.startswith("tasks/")}
        assert needed <= code_deps, f"{name}: add {sorted(needed - code_deps)} to its deps"
        assert code_deps <= needed, f"{name}: {sorted(code_deps - needed)} cannot change its output: drop them"


def test_validate_and_prepare_depend_on_the_suites_they_read():
    params = read_params(REPO / "params.yaml")
    for stage, suite in (("validate", params["validate"]["suite"]), ("prepare", params["prepare"]["contract"])):
        assert suite in dvc_stages()[stage]["deps"] and (REPO / suite).is_file()


def test_stage_outputs_persist_so_a_failed_run_keeps_the_last_good_one():
    for name, stage in dvc_stages().items():
        for key in ("outs", "metrics", "plots"):
            for out in stage.get(key, []):
                assert isinstance(out, dict) and next(iter(out.values())).get("persist") is True, (name, out)


def test_stage_outputs_live_in_their_own_artifact_folder():
    for name, stage in dvc_stages().items():
        outs = [next(iter(o)) if isinstance(o, dict) else o for key in ("outs", "metrics", "plots")
                for o in stage.get(key, [])]
        assert outs and all(o == f"artifacts/{name}" or o.startswith(f"artifacts/{name}/") for o in outs)


def test_distill_depends_on_its_recipe_and_the_judging_stages_on_the_students_bounds():
    from tasks.distill import RECIPE_EXCLUDES

    stages = dvc_stages()
    distill_keys = set(read_params(REPO / "params.yaml")["distill"])
    recipe_params = {p.split(".", 1)[1] for p in stages["distill"]["params"] if str(p).startswith("distill.")}
    assert "distill" not in stages["distill"]["params"]  # the whole section would rerun it for a new bound
    assert recipe_params == distill_keys - set(RECIPE_EXCLUDES)
    for judging in ("quantize", "gate"):
        assert {f"distill.{key}" for key in RECIPE_EXCLUDES} <= set(stages[judging]["params"])
