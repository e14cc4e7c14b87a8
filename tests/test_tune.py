"""`tunegate tune`: the search space in params.yaml, trials as processes the pruner and the budget can stop, the
record the gate and the model card read, and (end to end) trials as real DVC experiments."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from tasks.core.config import ConfigError, override, parse_config, read_params
from tasks.core.io import write_json
from tasks.core.paths import ArtifactPaths
from tasks.judging.selection import (COMPLETE, FAILED, PRUNED, SelectionError, TrialRow, gate_selection,
                                     read_selection, selection_sentence, summarize)
from tasks.tuning.study import TrialCut, TrialFailed, TrialRunner, current_recipe, run_search, suggest
from tests.conftest import BIN, REPO, keyword_reviews, run, tiny_params


def params_with(**tune) -> dict:
    raw = read_params(REPO / "params.yaml")
    raw["tune"].update(tune)
    return raw


# --- the space -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("space, words", [
    ({"serve.port": {"low": 1, "high": 2}}, "may vary only train/distill keys"),
    ({"train.no_such_key": {"low": 1, "high": 2}}, "names train.no_such_key, which is no setting of train"),
    ({"train.batch_size": {"choices": [16, 0]}}, "train.batch_size: the value 0 is refused"),
    ({"train.learning_rate": {"low": 0.0, "high": 1.0e-3, "log": True}}, "a log range needs low > 0"),
    ({"train.learning_rate": {"low": 1.0e-3, "high": 1.0e-4}}, "must be below high"),
    ({"train.epochs": {"choices": [1], "low": 1}}, "either choices or low/high"),
])
def test_a_space_that_cannot_run_is_refused_naming_the_key(space, words):
    with pytest.raises(ConfigError, match="tune") as caught:
        parse_config(params_with(space=space))
    assert words in str(caught.value)


def test_a_search_without_any_budget_is_refused():
    with pytest.raises(ConfigError, match="needs a budget"):
        parse_config(params_with(trials=None, timeout_minutes=None))


def test_overrides_read_back_as_the_same_value_by_yaml_1_1_and_1_2():
    from tasks.core.config import apply_overrides

    for value in (5e-05, 3.0e-4, 0.1, 2, True, "lora"):
        text = override("train.x", value).partition("=")[2]
        assert yaml.safe_load(text) == value, text  # PyYAML is YAML 1.1: `5e-05` alone would be a string
    raw = apply_overrides(read_params(REPO / "params.yaml"), [override("train.learning_rate", 5e-05)])
    assert raw["train"]["learning_rate"] == 5e-05


def test_suggest_draws_each_kind_of_range_within_its_bounds():
    cfg = parse_config(params_with(space={
        "train.learning_rate": {"low": 1.0e-5, "high": 1.0e-3, "log": True},
        "train.epochs": {"low": 1, "high": 3},
        "train.batch_size": {"choices": [16, 32]},
        "train.warmup_ratio": {"low": 0.0, "high": 0.2, "step": 0.05}}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        drawn = {key: suggest(trial, key, search) for key, search in cfg.tune.space.items()}
        assert 1.0e-5 <= drawn["train.learning_rate"] <= 1.0e-3 and isinstance(drawn["train.epochs"], int)
        assert drawn["train.batch_size"] in (16, 32) and round(drawn["train.warmup_ratio"] / 0.05, 6).is_integer()
        study.tell(trial, 0.5)


def test_trial_0_is_the_params_yaml_recipe_when_it_lies_in_the_space():
    cfg = parse_config(read_params(REPO / "params.yaml"))
    recipe = current_recipe(cfg)
    assert recipe == {key: getattr(cfg.train, key.split(".")[1]) for key in cfg.tune.space}
    outside = parse_config(params_with(space={"train.batch_size": {"choices": [8, 16]}}))
    assert current_recipe(outside) is None


# --- the record ----------------------------------------------------------------------------------------------------

def rows() -> list[TrialRow]:
    return [TrialRow(0, COMPLETE, 0.80, {"train.learning_rate": 1e-4}, "recipe-0"),
            TrialRow(1, COMPLETE, 0.83, {"train.learning_rate": 2e-4}, "recipe-1"),
            TrialRow(2, PRUNED, 0.70, {"train.learning_rate": 3e-5}, "recipe-2"),
            TrialRow(3, COMPLETE, 0.83, {"train.learning_rate": 5e-4}, "recipe-3"),
            TrialRow(4, FAILED, None, {"train.learning_rate": 9e-4}, "recipe-4")]


def test_the_record_counts_every_ending_and_ties_go_to_the_earlier_trial():
    search = summarize(rows(), study="recipe", storage="j", target="train", space={}, default_number=0)["search"]
    assert (search["trials"], search["complete"], search["pruned"], search["failed"]) == (5, 3, 1, 1)
    assert search["best"] == {"trial": 1, "experiment": "recipe-1", "dev": 0.83,
                              "params": {"train.learning_rate": 2e-4}}
    assert search["default"]["dev"] == 0.80 and search["spread"] == {"min": 0.80, "median": 0.83, "max": 0.83}
    with pytest.raises(SelectionError, match="no finished trial"):
        summarize(rows()[2:3], study="recipe", storage="j", target="train", space={}, default_number=None)


def test_the_gate_says_whether_the_judged_models_were_trained_with_the_chosen_recipe(tmp_path):
    record = summarize(rows(), study="recipe", storage="j", target="train", space={}, default_number=0)
    applied = gate_selection(record, {"train": {"learning_rate": 2e-4}})
    assert applied["applied"] and applied["differs"] == [] and applied["trials"] == 5
    edited = gate_selection(record, {"train": {"learning_rate": 1e-4}})
    assert not edited["applied"] and edited["differs"] == ["train.learning_rate"]
    assert "not trained with the chosen values of train.learning_rate" in selection_sentence(edited)
    assert gate_selection({"search": None}, {}) is None
    assert "No recipe search is recorded" in selection_sentence(None)
    assert read_selection(tmp_path / "tuning.json") == {"search": None}  # no file: nothing recorded
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(SelectionError, match="`search` key"):
        read_selection(tmp_path / "bad.json")


def test_the_gate_copies_the_applied_search_into_decision_and_report(tmp_path):
    from tasks.gate import recipe_selection

    paths = ArtifactPaths(tmp_path)
    write_json(paths.train_stamp, {"config": {"seed": 42, "train": {"learning_rate": 2e-4, "epochs": 1}}})
    assert recipe_selection(paths) is None
    write_json(paths.selection, summarize(rows(), study="recipe", storage="j", target="train", space={},
                                          default_number=0))
    selection = recipe_selection(paths)
    assert selection["applied"] and selection["best"]["trial"] == 1


# --- trials as processes: the pruner, the budget, failures ---------------------------------------------------------

FAKE_TRIAL = """
import json, os, sys, time
curve = json.loads(sys.argv[1])
for epoch, accuracy in enumerate(curve, start=1):
    with open(os.environ["TUNEGATE_EPOCH_LOG"], "a") as handle:
        handle.write(json.dumps({"epoch": epoch, "step": epoch, "dev_accuracy": accuracy}) + "\\n")
    time.sleep(float(sys.argv[2]))
sys.exit(int(sys.argv[3]))
"""


class FakeTrial(TrialRunner):
    """A trial that writes a given dev curve as train would (one row per epoch), then exits; its value is the
    curve's best. The learning rate picks the curve, so each trial's fate is known in advance."""

    curves = {1e-4: [0.60, 0.99], 2e-4: [0.80, 0.85], 3e-4: [0.81, 0.90], 4e-4: [0.82, 0.83]}
    seconds, exit_code, poll_s = 0.2, 0, 0.05

    def start(self, name, params, env, output):
        self._curve = self.curves[params["train.learning_rate"]]
        return subprocess.Popen([sys.executable, "-c", FAKE_TRIAL, json.dumps(self._curve), str(self.seconds),
                                 str(self.exit_code)], env=env, stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def value(self, name):
        return max(self._curve)


def committed(root: Path) -> ArtifactPaths:
    root.mkdir(exist_ok=True)
    run(["git", "init", "-q"], root)
    run(["git", "-c", "user.email=t@t.invalid", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "x"], root)
    return ArtifactPaths(root)


def fake_config(**tune):
    space = {"train.learning_rate": {"choices": list(FakeTrial.curves)}}
    settings = {"space": space, "trials": 4, "timeout_minutes": None, "workers": 1, "random_trials": 4,
                "study": "fake", "storage": None,
                "pruning": {"percentile": 50.0, "startup_trials": 2, "warmup_epochs": 0}}
    settings.update(tune)
    raw = read_params(REPO / "params.yaml")
    raw["tune"] = settings
    raw["train"]["learning_rate"] = 2e-4  # trial 0: the params.yaml recipe
    return parse_config(raw)


@pytest.mark.heavy
def test_a_trial_below_the_pruning_percentile_is_stopped_after_its_first_epoch(tmp_path):
    from tasks.tuning.study import open_study

    paths = committed(tmp_path / "p")
    cfg = fake_config()
    study, _ = open_study(cfg, paths, create=True)
    # In this order: two to the end, then one whose first epoch is the worst (its second would be the best of
    # all: it is stopped before it), then a good one.
    for rate in (2e-4, 4e-4, 1e-4, 3e-4):
        study.enqueue_trial({"train.learning_rate": rate})
    said = []
    record = run_search(cfg, paths, said.append, runner_type=FakeTrial)["search"]
    assert (record["trials"], record["complete"], record["pruned"]) == (4, 3, 1)
    trials = optuna.load_study(study_name="fake", storage=study._storage).trials
    worst = trials[2]
    assert worst.state == optuna.trial.TrialState.PRUNED and worst.user_attrs["epochs"] == [0.60]
    assert [t.user_attrs["epochs"] for t in trials if t.number != 2] == [[0.80, 0.85], [0.82, 0.83], [0.81, 0.90]]
    assert record["best"] == {"trial": 3, "experiment": "fake-3", "dev": 0.90,
                              "params": {"train.learning_rate": 3e-4}}
    assert any(line.startswith("tune: trial 2 pruned") for line in said)


@pytest.mark.heavy
def test_trial_0_runs_the_params_yaml_recipe(tmp_path):
    said = []
    record = run_search(fake_config(trials=1), committed(tmp_path / "p"), said.append, runner_type=FakeTrial)
    assert record["search"]["default"] == {"trial": 0, "dev": 0.85, "params": {"train.learning_rate": 2e-4}}
    assert said[0] == "tune: trial 0 (fake-0) started: learning_rate 0.0002"


@pytest.mark.heavy
def test_a_second_call_continues_the_study_until_tune_trials_in_all(tmp_path):
    paths = committed(tmp_path / "p")
    run_search(fake_config(trials=2), paths, lambda _: None, runner_type=FakeTrial)
    record = run_search(fake_config(trials=3), paths, lambda _: None, runner_type=FakeTrial)["search"]
    assert record["trials"] == 3
    said = []
    assert run_search(fake_config(trials=3), paths, said.append, runner_type=FakeTrial)["search"]["trials"] == 3
    assert "already holds 3 finished trials" in said[0]


@pytest.mark.heavy
def test_a_changed_space_refuses_to_join_the_old_study(tmp_path):
    from tasks.tuning.study import TuneError

    paths = committed(tmp_path / "p")
    run_search(fake_config(trials=1), paths, lambda _: None, runner_type=FakeTrial)
    raw = fake_config(trials=2).dump()
    raw["tune"]["space"]["train.learning_rate"]["choices"] = [1e-4, 2e-4]
    with pytest.raises(TuneError, match="searched another space"):
        run_search(parse_config(raw), paths, lambda _: None, runner_type=FakeTrial)


class SlowTrial(FakeTrial):
    seconds = 30.0


@pytest.mark.heavy
def test_the_time_budget_stops_a_running_trial_and_no_process_is_left(tmp_path):
    import time

    import psutil

    paths = committed(tmp_path / "p")
    started = time.monotonic()
    with pytest.raises(SelectionError, match="no finished trial"):
        run_search(fake_config(trials=2, timeout_minutes=0.01), paths, lambda _: None, runner_type=SlowTrial)
    assert time.monotonic() - started < 25  # a trial alone would sleep 30 s per epoch
    ours = [p for p in psutil.Process().children(recursive=True) if "TUNEGATE_EPOCH_LOG" in " ".join(p.cmdline())]
    assert ours == []


class FailingTrial(FakeTrial):
    exit_code = 3


@pytest.mark.heavy
def test_a_failed_trial_is_recorded_with_the_end_of_its_log_and_the_search_goes_on(tmp_path):
    paths = committed(tmp_path / "p")
    runner = FailingTrial(paths.root, "fake", "train", None, print)
    study = optuna.create_study(direction="maximize")
    trial = study.ask({"train.learning_rate": optuna.distributions.CategoricalDistribution([2e-4])})
    with pytest.raises(TrialFailed, match="fake-0.*failed"):
        runner(trial, {"train.learning_rate": 2e-4})
    assert trial.user_attrs["note"] == "dvc exp run exited 3"
    assert issubclass(TrialCut, Exception)


# --- end to end: trials as DVC experiments -------------------------------------------------------------------------

def test_tune_runs_trials_as_dvc_experiments_and_apply_writes_only_the_chosen_values(make_project, tiny_model_dir):
    params = tiny_params(tiny_model_dir)
    params["tune"].update(space={"train.learning_rate": {"low": 5.0e-4, "high": 3.0e-3, "log": True}},
                          trials=2, workers=2, random_trials=2, timeout_minutes=None)
    root = make_project(frame=keyword_reviews(240), params=params)
    before = (root / "params.yaml").read_text()
    done = run([str(BIN / "tunegate"), "tune", "--json"], root)
    search = json.loads(done.stdout.strip().splitlines()[-1])["search"]
    assert search["trials"] == search["complete"] == 2 and search["default"]["trial"] == 0
    assert (root / "params.yaml").read_text() == before, "params.yaml changes only with --apply"
    listed = run([str(BIN / "dvc"), "exp", "list", "--name-only"], root).stdout.split()
    assert sorted(listed) == ["recipe-0", "recipe-1"]
    # Each trial's value is what its experiment recorded: train's dev accuracy in its result.json.
    shown = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], root).stdout)
    values = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            data = exp["revs"][0]["data"]
            values[exp["name"]] = data["metrics"]["artifacts/train/live/metrics.json"]["data"]["best_dev_accuracy"]
    best = search["best"]
    assert values[best["experiment"]] == best["dev"] == max(values.values())
    run([str(BIN / "tunegate"), "tune", "--show", "--apply"], root)
    changed = [line for line in run(["git", "diff", "-U0", "params.yaml"], root).stdout.splitlines()
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    # Only the searched key's line changes (when trial 0, params.yaml's own recipe, won: nothing changes).
    assert len(changed) == (0 if best["trial"] == 0 else 2), changed
    assert all("learning_rate:" in line for line in changed), changed
    assert read_params(root / "params.yaml")["train"]["learning_rate"] == pytest.approx(best["params"]["train.learning_rate"])
    assert read_selection(root / "tuning.json")["search"]["best"] == best


@pytest.mark.heavy
def test_two_hosts_share_one_study_through_a_database_url(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first, second = committed(tmp_path / "host-a"), committed(tmp_path / "host-b")
    run_search(fake_config(trials=2, storage=storage), first, lambda _: None, runner_type=FakeTrial)
    said = []
    record = run_search(fake_config(trials=4, storage=storage), second, said.append, runner_type=FakeTrial)["search"]
    # tune.trials counts the whole study: the second host ran the two trials left, numbered after the first's.
    assert record["trials"] == 4 and record["storage"] == storage
    assert [line.split()[2] for line in said if " started: " in line] == ["2", "3"]
    assert record["default"]["trial"] == 0  # the first host ran params.yaml's recipe; the second did not repeat it


def test_a_database_password_never_reaches_the_record():
    from tasks.tuning.study import open_storage

    cfg = fake_config(storage="postgresql://tuner:s3cret@db.internal/optuna")
    storage, shown = open_storage(cfg.tune, ArtifactPaths(Path("/nonexistent")))
    assert storage == cfg.tune.storage and shown == "postgresql://tuner:***@db.internal/optuna"


def test_pruning_percentile_is_the_share_stopped_not_the_share_kept(tmp_path):
    from optuna.distributions import CategoricalDistribution
    from tasks.tuning.study import open_study

    cfg = fake_config(pruning={"percentile": 25.0, "startup_trials": 0, "warmup_epochs": 0})
    study, _ = open_study(cfg, committed(tmp_path / "p"), create=True)
    rate = {"train.learning_rate": CategoricalDistribution([2e-4])}
    for value in (0.80, 0.81, 0.82, 0.83):
        study.add_trial(optuna.trial.create_trial(params={"train.learning_rate": 2e-4}, distributions=rate,
                                                  value=value, intermediate_values={1: value}))
    # The finished trials' 25th percentile at epoch 1 is 0.8075: below it is the lowest quarter, stopped.
    for value, stopped in ((0.805, True), (0.81, False)):
        trial = study.ask(rate)
        trial.report(value, 1)
        assert bool(trial.should_prune()) is stopped, value
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)


@pytest.mark.heavy
def test_trials_stop_at_sigint_even_when_the_search_was_started_with_sigint_ignored(tmp_path):
    """A CI runner or `nohup ... &` starts the search with SIGINT ignored; its trials must still stop at SIGINT
    (DVC cleans its temporary workspace up then), not only at SIGTERM after the grace period."""
    import signal
    import time

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        started = time.monotonic()
        with pytest.raises(SelectionError, match="no finished trial"):
            run_search(fake_config(trials=1, timeout_minutes=0.01), committed(tmp_path / "p"), lambda _: None,
                       runner_type=SlowTrial)
        assert time.monotonic() - started < 25
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # the caller's setting is back
    finally:
        signal.signal(signal.SIGINT, previous)


def test_show_of_a_study_that_does_not_exist_says_so_and_creates_nothing(tmp_path):
    from tasks.tuning.study import TuneError, open_study

    paths = committed(tmp_path / "p")
    with pytest.raises(TuneError, match="no study named 'fake'"):
        open_study(fake_config(), paths, create=False)
    assert not paths.tune_journal("fake").exists()
