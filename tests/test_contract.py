"""One stage, one name: dvc.yaml, params.yaml, the flow and the CLI agree."""

import yaml

from flows.cli import build_parser
from tasks.config import SHARED_SECTIONS, STAGES, PipelineConfig, read_params
from tests.conftest import REPO


def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_stage_names_agree_everywhere():
    params_sections = [k for k in read_params(REPO / "params.yaml") if k not in SHARED_SECTIONS]
    assert list(dvc_stages()) == list(STAGES) == params_sections
    config_sections = [f.alias or name for name, f in PipelineConfig.model_fields.items()]
    assert [s for s in config_sections if s not in SHARED_SECTIONS] == list(STAGES)
    stage_choices = build_parser()._subparsers._group_actions[0].choices["stage"]._actions[-1].choices
    assert tuple(stage_choices) == STAGES


def test_each_stage_runs_its_own_cli_shell_and_depends_on_its_source():
    for name, stage in dvc_stages().items():
        assert stage["cmd"] == f"tunegate stage {name}"
        assert f"tasks/{name}.py" in stage["deps"]
        assert name in stage["params"] or any(str(p).startswith(f"{name}") for p in stage["params"])


def test_validate_depends_on_the_suites_it_reads():
    suite = read_params(REPO / "params.yaml")["validate"]["suite"]
    assert suite in dvc_stages()["validate"]["deps"] and (REPO / suite).is_file()


def test_stage_outputs_live_in_their_own_artifact_folder():
    for name, stage in dvc_stages().items():
        outs = [next(iter(o)) if isinstance(o, dict) else o for key in ("outs", "metrics", "plots")
                for o in stage.get(key, [])]
        assert outs and all(o == f"artifacts/{name}" or o.startswith(f"artifacts/{name}/") for o in outs)
