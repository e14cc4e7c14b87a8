"""The label queue: its design (disagreements plus a sample of agreements, every prefix a stratified random
sample), the importance-weighted re-judging (unbiased, intervals that cover), the gate's rule on fully labelled
pools, and `tunegate label-queue` end to end on tiny files."""

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.core.config import GateConfig, load_config
from tasks.judging.compare import INCONCLUSIVE, PROMOTE, REJECT, compare_predictions
from tasks.judging.label_queue import (AGREE, DISAGREE, LabelQueueError, build_queue, pool_frame, rejudge,
                                       row_ids)
from tests.conftest import REPO

NAMES = ["negative", "positive"]


def gate_config(**update) -> GateConfig:
    return load_config(REPO / "params.yaml").gate.model_copy(update={"bootstrap_samples": 300, **update})


def pool(rows: int, disagreement: float, candidate_right: float, seed: int):
    """Texts, truth, champion, candidate: champion right 85%, `disagreement` of rows where exactly one is right,
    the candidate with chance `candidate_right` (true difference about disagreement x (2 candidate_right - 1))."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, rows)
    champion = np.where(rng.random(rows) < 0.85, truth, 1 - truth)
    disagree = rng.random(rows) < disagreement
    cand_right = rng.random(rows) < candidate_right
    champion = np.where(disagree, np.where(cand_right, 1 - truth, truth), champion)
    candidate = np.where(disagree, 1 - champion, champion)
    return [f"row {seed} {i}" for i in range(rows)], truth, champion, candidate


@functools.lru_cache(maxsize=4)
def pool_ids(texts: tuple[str, ...]) -> list[str]:
    """row_ids of a pool, hashed once however many queues are drawn from it."""
    return row_ids(list(texts))


def labels_of(queue: pd.DataFrame, texts, truth, count: int):
    by_id = dict(zip(pool_ids(tuple(texts)), truth))
    ids = list(queue["id"][:count])
    return ids, np.array([by_id[i] for i in ids])


def test_queue_holds_every_disagreement_and_a_sample_of_agreements_spread_through_it():
    texts, truth, champion, candidate = pool(2000, 0.1, 0.6, seed=1)
    queue = build_queue(texts, champion, candidate, NAMES, seed=3)
    disagreements = int((champion != candidate).sum())
    assert (queue["stratum"] == DISAGREE).sum() == disagreements
    assert (queue["stratum"] == AGREE).sum() == int(np.ceil(disagreements / 4))
    assert queue["id"].is_unique and list(queue["rank"]) == list(range(1, len(queue) + 1))
    assert queue["label"].isna().all()
    assert set(queue.loc[queue["stratum"] == DISAGREE, "inclusion_probability"]) == {1.0}
    agree_rows = int((champion == candidate).sum())
    assert np.allclose(queue.loc[queue["stratum"] == AGREE, "inclusion_probability"],
                       np.ceil(disagreements / 4) / agree_rows)
    # Interleaved: the first fifth of the queue holds about a fifth of each stratum.
    head = queue.head(len(queue) // 5)
    assert abs((head["stratum"] == AGREE).mean() - (queue["stratum"] == AGREE).mean()) < 0.05
    assert (queue["champion_class"] != queue["candidate_class"]).eq(queue["stratum"] == DISAGREE).all()
    again = build_queue(texts, champion, candidate, NAMES, seed=3)
    assert again.equals(queue), "the same seed gives the same queue"
    assert not build_queue(texts, champion, candidate, NAMES, seed=4)["id"].equals(queue["id"])


@pytest.mark.e2e  # 300 queues drawn and re-judged (10 s or more): out of the quick loop
def test_importance_weighted_difference_is_unbiased_and_its_interval_covers_near_nominal():
    """Over many seeds, a 60-label prefix of the queue: mean error of the difference near 0 and the 95% interval
    covering the pool's own difference about 95% of the time (the pool-sampling term makes it a little wider)."""
    texts, truth, champion, candidate = pool(3000, 0.08, 0.6, seed=2)
    true_difference = (candidate == truth).mean() - (champion == truth).mean()
    true_accuracy = (champion == truth).mean()
    cfg = gate_config(bootstrap_samples=50)
    errors, covered, accuracy_errors = [], [], []
    for seed in range(300):
        queue = build_queue(texts, champion, candidate, NAMES, seed=seed)
        judged = rejudge(queue, *labels_of(queue, texts, truth, 60), 2, cfg, seed)
        d = judged["differences"]["accuracy"]
        errors.append(d["value"] - true_difference)
        covered.append(d["low"] <= true_difference <= d["high"])
        accuracy_errors.append(judged["accuracy"]["champion"]["value"] - true_accuracy)
    se_of_mean = np.std(errors) / np.sqrt(len(errors))
    assert abs(np.mean(errors)) < 3 * se_of_mean + 1e-4, (np.mean(errors), se_of_mean)
    assert abs(np.mean(accuracy_errors)) < 3 * np.std(accuracy_errors) / np.sqrt(300) + 1e-4
    assert 0.92 <= np.mean(covered) <= 1.0, np.mean(covered)


def test_an_unweighted_mean_of_the_queue_would_be_biased():
    """The weights matter: the labelled rows' plain difference overstates the pool's by the disagreement share."""
    texts, truth, champion, candidate = pool(3000, 0.08, 0.7, seed=5)
    queue = build_queue(texts, champion, candidate, NAMES, seed=0)
    ids, labels = labels_of(queue, texts, truth, len(queue))
    plain = ((queue["candidate_class"] == labels).mean() - (queue["champion_class"] == labels).mean())
    true_difference = (candidate == truth).mean() - (champion == truth).mean()
    judged = rejudge(queue, ids, labels, 2, gate_config(), 0)
    assert abs(judged["differences"]["accuracy"]["value"] - true_difference) < 1e-12
    assert abs(plain - true_difference) > 0.05


def first_settled(design: pd.DataFrame, ids, labels, cfg, step=10):
    for count in range(step, len(ids) + step, step):
        judged = rejudge(design, ids[:count], labels[:count], 2, cfg, 0)
        if judged["outcome"] != INCONCLUSIVE:
            return judged["outcome"], count
    return INCONCLUSIVE, len(ids)


@pytest.mark.heavy
def test_the_queue_settles_a_real_difference_with_fewer_labels_than_uniform_sampling():
    texts, truth, champion, candidate = pool(4000, 0.1, 0.65, seed=7)
    cfg = gate_config(bootstrap_samples=100)
    frame = pool_frame(texts, champion, candidate, NAMES)
    by_id = dict(zip(frame["id"], truth))
    queue_labels, uniform_labels = [], []
    for seed in range(5):
        queue = build_queue(texts, champion, candidate, NAMES, seed=seed)
        verdict, count = first_settled(queue, list(queue["id"]), np.array([by_id[i] for i in queue["id"]]), cfg)
        assert verdict == PROMOTE
        queue_labels.append(count)
        order = np.random.default_rng(seed).permutation(len(frame))
        verdict, count = first_settled(frame, list(frame["id"].to_numpy()[order]), truth[order], cfg, step=50)
        uniform_labels.append(count)
    assert np.median(uniform_labels) > 2 * np.median(queue_labels), (queue_labels, uniform_labels)


@pytest.mark.parametrize("candidate_right", [0.2, 0.5, 0.8])
def test_a_fully_labelled_pool_gets_the_gates_verdict(candidate_right):
    texts, truth, champion, candidate = pool(3000, 0.1, candidate_right, seed=11)
    cfg = gate_config(bootstrap_samples=1000)
    gate = compare_predictions(truth, candidate, champion, 2, cfg, 0)
    frame = pool_frame(texts, champion, candidate, NAMES)
    judged = rejudge(frame, row_ids(texts), truth, 2, cfg, 0)
    assert judged["outcome"] == gate["outcome"]
    assert judged["outcome"] == {0.2: REJECT, 0.5: INCONCLUSIVE, 0.8: PROMOTE}[candidate_right]
    ours, theirs = judged["differences"]["accuracy"], gate["differences"]["accuracy"]
    assert ours["value"] == pytest.approx(theirs["value"]) and ours["se"] == pytest.approx(theirs["se"], rel=0.01)
    assert judged["accuracy"]["champion"]["value"] == pytest.approx((champion == truth).mean())


def test_too_few_labels_leave_it_inconclusive_and_other_rows_are_counted_apart():
    texts, truth, champion, candidate = pool(1000, 0.1, 0.8, seed=3)
    queue = build_queue(texts, champion, candidate, NAMES, seed=0)
    first = queue[queue["stratum"] == DISAGREE].head(1)
    by_id = dict(zip(row_ids(texts), truth))
    judged = rejudge(queue, [first["id"].iloc[0], "nope", first["id"].iloc[0]],
                     np.array([by_id[first["id"].iloc[0]], 0, by_id[first["id"].iloc[0]]]), 2, gate_config(), 0)
    assert judged["outcome"] == INCONCLUSIVE and "too few labelled rows" in judged["why"]
    assert judged["not_in_queue"] == 1 and judged["repeated"] == 1 and judged["labelled"] == 1
    small = rejudge(queue, *labels_of(queue, texts, truth, len(queue)), 2, gate_config(min_compare_rows=5000), 0)
    assert small["outcome"] == INCONCLUSIVE and "min_compare_rows" in small["why"]
    with pytest.raises(LabelQueueError, match="no column"):
        rejudge(queue.drop(columns="stratum"), [], np.array([]), 2, gate_config(), 0)


def test_labels_needed_shrink_as_labels_arrive_and_vanish_once_settled():
    texts, truth, champion, candidate = pool(4000, 0.1, 0.65, seed=13)
    queue = build_queue(texts, champion, candidate, NAMES, seed=1)
    cfg = gate_config(bootstrap_samples=200)
    early = rejudge(queue, *labels_of(queue, texts, truth, 20), 2, cfg, 0)
    assert early["outcome"] == INCONCLUSIVE and early["labels_needed"] > 20
    done = rejudge(queue, *labels_of(queue, texts, truth, len(queue)), 2, cfg, 0)
    assert done["outcome"] == PROMOTE and done["labels_needed"] is None


# ----- the command line -------------------------------------------------------------------------------------


def run_cli(*args: str) -> int:
    from flows.cli import main

    return main(list(args))


def test_cli_refuses_without_an_inconclusive_verdict(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    assert run_cli("label-queue", "--project", str(tmp_path), "--pool", "test") == 1
    assert "decision.json is missing" in capsys.readouterr().err.replace("\n", "")
    gate = tmp_path / "artifacts" / "gate"
    gate.mkdir(parents=True)
    (gate / "decision.json").write_text(json.dumps({"decision": "PROMOTE", "comparison": None}))
    assert run_cli("label-queue", "--project", str(tmp_path), "--pool", "test") == 1
    assert "not INCONCLUSIVE" in capsys.readouterr().err.replace("\n", "")


def test_cli_queues_then_judges_labelled_rows_end_to_end(tmp_path, monkeypatch, capsys):
    """Both models' labels stubbed (scoring is predict's, tested elsewhere): queue a file pool, label it from
    the truth into a labelled folder, and judge."""
    import flows.cli.label_queue as cli

    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    texts, truth, champion, candidate = pool(1500, 0.1, 0.9, seed=21)
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "pool.csv", index=False)
    gate = tmp_path / "artifacts" / "gate"
    gate.mkdir(parents=True)
    (gate / "decision.json").write_text(json.dumps({"decision": "INCONCLUSIVE", "comparison": {
        "disagreement": 0.1, "differences": {"accuracy": {"value": 0.0}}}}))
    answers = {"champ": dict(zip(texts, champion)), "cand": dict(zip(texts, candidate))}
    monkeypatch.setattr(cli, "predicted_classes",
                        lambda folder, ts, labels: np.array([answers[Path(folder).name][t] for t in ts]))
    code = run_cli("label-queue", "--project", str(tmp_path), "--pool", "pool.csv", "--champion",
                   str(tmp_path / "champ"), "--candidate", str(tmp_path / "cand"))
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert max(len(line) for line in printed.splitlines() if str(tmp_path) not in line) <= 80
    assert "pool of 1500 texts" in printed and "labels needed" in printed
    queue = pd.read_csv(gate / "label_queue.csv")
    assert len(queue) == (queue["stratum"] == DISAGREE).sum() * 5 // 4 + ((queue["stratum"] == DISAGREE).sum() % 4 > 0)
    labelled = tmp_path / "incoming"
    labelled.mkdir()
    by_text = dict(zip(texts, truth))
    queue.assign(label=queue["text"].map(by_text)).to_csv(labelled / "batch.csv", index=False)
    assert run_cli("label-queue", "judge", "--project", str(tmp_path)) == 0
    printed = capsys.readouterr().out
    assert max(len(line) for line in printed.splitlines() if str(tmp_path) not in line) <= 80, printed
    verdict = json.loads((gate / "label_queue.verdict.json").read_text())
    assert verdict["outcome"] == PROMOTE and "verdict: PROMOTE" in printed
    assert verdict["labelled"] == len(queue) and verdict["bad_rows"] == 0
    # Bound to the decision it was queued for: promote would accept it (the decision's checks all held here).
    from tasks.core.io import file_sha256
    assert verdict["decision_sha256"] == file_sha256(gate / "decision.json")

    # A monitor run re-judges a waiting queue by itself, from what monitor.labelled_dir holds so far.
    from tasks.core.config import load_config
    from tasks.monitoring.label_verdict import waiting_queue_verdict

    (gate / "label_queue.verdict.json").unlink()
    assert waiting_queue_verdict(tmp_path, load_config(tmp_path / "params.yaml"))["outcome"] == PROMOTE
    assert json.loads((gate / "label_queue.verdict.json").read_text())["outcome"] == PROMOTE
    (gate / "decision.json").write_text(json.dumps({"decision": "PROMOTE"}))  # a new gate run: nothing to settle
    assert waiting_queue_verdict(tmp_path, load_config(tmp_path / "params.yaml")) is None


def test_cli_judge_needs_the_queue_and_labelled_files(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    assert run_cli("label-queue", "judge", "--project", str(tmp_path)) == 1
    assert "run `tunegate label-queue` first" in capsys.readouterr().err.replace("\n", "")
    queue = tmp_path / "q.csv"
    pd.DataFrame({"id": ["a"], "stratum": [DISAGREE], "stratum_rows": [1]}).to_csv(queue, index=False)
    assert run_cli("label-queue", "judge", "--project", str(tmp_path), "--queue", str(queue)) == 1
    assert "no labelled" in capsys.readouterr().err.replace("\n", "")


def settled_case(**changes):
    """An INCONCLUSIVE decision whose checks hold and whose comparison is unsettled, and a verdict of the label
    queue built for it that settles PROMOTE; `changes` replace parts of either."""
    decision = {"decision": "INCONCLUSIVE", "checks": [{"check": "test accuracy", "outcome": "pass"}],
                "comparison": {"outcome": "INCONCLUSIVE"}}
    verdict = {"outcome": "PROMOTE", "decision_sha256": "abc", "labelled": 80,
               "differences": {"accuracy": {"value": 0.01, "low": -0.004, "high": 0.024}}}
    for key, value in changes.items():
        (verdict if key in verdict else decision)[key] = value
    return decision, verdict


def test_promote_accepts_an_inconclusive_comparison_the_label_queue_settled_promote():
    from tasks.registry.promote import decision_refusal, settled_by_labels

    decision, verdict = settled_case()
    settled = settled_by_labels(decision, "abc", verdict)
    assert settled and "settled PROMOTE by 80 labelled rows" in settled
    assert decision_refusal(decision, False, None, settled) is None
    assert decision_refusal(decision, False, None, None) is not None


@pytest.mark.parametrize("changes, sha", [
    ({"outcome": "INCONCLUSIVE"}, "abc"),  # the labels did not settle it
    ({"outcome": "REJECT"}, "abc"),
    ({}, "another decision"),  # a queue built for an earlier decision
    ({"checks": [{"check": "quantized accuracy drop", "outcome": "inconclusive"}]}, "abc"),  # labels cannot settle it
    ({"decision": "REJECT"}, "abc"),
])
def test_promote_refuses_what_the_label_queue_did_not_settle_for_this_decision(changes, sha):
    from tasks.registry.promote import settled_by_labels

    decision, verdict = settled_case(**changes)
    assert settled_by_labels(decision, sha, verdict) is None
    assert settled_by_labels(decision, sha, None) is None
