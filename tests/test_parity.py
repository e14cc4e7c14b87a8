"""The parity certificate: a release's reference outputs (texts scored one per call on the judging host) re-scored on
the host that serves it; `tunegate verify`, `tunegate serve` (start and reload) and `tunegate rollback` act on it."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from flows import cli
from flows.cli import registry as registry_commands  # verify, history, models print here
from tasks.core.host import cpu_facts
from tasks.core.io import file_sha256
from tasks.core.metrics import softmax
from tasks.judging.compare import row_keys
from tasks.registry import tags
from tasks.registry import rollback as rollback_module
from tasks.runtime.files import PARITY_FILE, RELEASE_FILE
from tasks.runtime.onnx_model import OnnxClassifier
from tasks.serving.app import create_app
from tasks.runtime.parity import (NUMERIC_FACTS, WIDTH, CertificateError, NoCertificate, ParityError,
                                  build_certificate, certificate_rows, compare, read_certificate, summary_lines,
                                  verify_folder, write_certificate)
from tasks.runtime.settings import API_KEYS_ENV
from tests.conftest import REPO, SERVED_LABELS
from tests.test_rollback_history import git
from tests.test_serve_app import call, metric, serve_settings

TOLERANCE = 1.0e-4
# Short sentences and texts longer than the tiny served model's 16-token window (read as its long_text rule says).
TEXTS = ["a gripping, beautiful film", "dull", "an ok film", "the cast is wonderful and the music is moving",
         "far too long and far too loud, with a plot that never starts and an ending that never comes " * 3,
         "boring", "a triumph", "I wanted to like it, but the second half drags on and on without any point",
         "charming", "the worst film of the year by a distance, and the year was not short of bad films " * 5,
         "fine", "a clumsy, bland script"]


# ---------------------------------------------------------------- pure parts

def test_certificate_rows_spread_over_lengths_with_the_shortest_and_longest():
    lengths = [5, 300, 12, 40, 7, 900, 33, 18, 64, 21]
    rows = certificate_rows(lengths, 4)
    assert len(rows) == 4 == len(set(rows)) and rows == sorted(rows)
    assert lengths.index(5) in rows and lengths.index(900) in rows
    assert certificate_rows(lengths, 20) == list(range(10)), "fewer texts than asked: every one"


def reference(probs: list[list[float]]) -> dict:
    texts = [f"text {i}" for i in range(len(probs))]
    return build_certificate(texts, row_keys(texts), np.asarray(probs), SERVED_LABELS, "model.onnx", "ab" * 32,
                             TOLERANCE, cpu_facts())


def test_compare_passes_identical_answers_and_names_each_kind_of_difference():
    probs = [[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]]
    same = compare(reference(probs), np.asarray(probs), 0.998, "f", 0.1)
    assert same.passed and same.agreement == 1.0 and same.max_prob_delta == 0.0 and same.differing == 0
    moved = np.asarray(probs)
    moved[2] = [0.4, 0.6]  # a label changes
    moved[0] = [0.9 - 5e-5, 0.1 + 5e-5]  # within the tolerance: not a difference
    moved[3] = [0.19, 0.81]  # beyond it, same label
    report = compare(reference(probs), moved, 0.5, "f", 0.1)
    assert report.agreeing == 3 and report.differing == 2 and not report.passed
    assert [(d.text, d.reference_label, d.label) for d in report.shown] == [
        ("text 2", "negative", "positive"), ("text 3", "positive", "positive")], "label changes first"
    assert report.max_prob_delta == pytest.approx(0.2)
    assert any("tolerance" in f for f in report.failures()) and not any("agree" in f for f in report.failures())
    assert compare(reference(probs), moved, 0.99, "f", 0.1).failures()[0].startswith("labels agree on 0.7500 <")


def test_a_certificate_keeps_only_the_numeric_cpu_facts(tmp_path):
    certificate = reference([[0.5, 0.5]])
    assert set(certificate["judged_on"]) == set(NUMERIC_FACTS), "no CPU model name: same flags, same bytes"
    (tmp_path / PARITY_FILE).write_text(json.dumps({**certificate, "format": 99}))
    with pytest.raises(CertificateError, match="format 99"):
        read_certificate(tmp_path)
    (tmp_path / PARITY_FILE).write_text("{not json")
    with pytest.raises(CertificateError, match="cannot be read"):
        read_certificate(tmp_path)
    with pytest.raises(NoCertificate, match="carries no parity certificate"):
        read_certificate(tmp_path / "elsewhere")


# ---------------------------------------------------------------- a real (tiny) model

def certify(folder: Path, served: Path) -> Path:
    """A copy of a served folder with a release.json and a parity certificate of TEXTS made on this host."""
    shutil.copytree(served, folder)
    model = OnnxClassifier(folder)
    (folder / RELEASE_FILE).write_text(json.dumps({"sha256": file_sha256(folder / "model.onnx"),
                                                   "labels": SERVED_LABELS, "decision": "PROMOTE"}))
    lengths = [len(model.content_ids([t])[0]) for t in TEXTS]
    write_certificate(folder, model, TEXTS, row_keys(TEXTS), lengths, len(TEXTS), TOLERANCE)
    return folder


def perturb(folder: Path, flip: int | None = None, shift: int | None = None) -> Path:
    """Edit the stored references: swap row `flip`'s probabilities (its label changes), move row `shift`'s by 0.001
    towards its own label (the label stays)."""
    path = folder / PARITY_FILE
    certificate = json.loads(path.read_text())
    rows = certificate["texts"]
    if flip is not None:
        rows[flip]["probabilities"] = rows[flip]["probabilities"][::-1]
    if shift is not None:
        p = rows[shift]["probabilities"]
        top = int(np.argmax(p))
        assert p[top] + 1e-3 < 1.0
        p[top], p[1 - top] = p[top] + 1e-3, p[1 - top] - 1e-3
    path.write_text(json.dumps(certificate))
    return folder


@pytest.fixture
def certified(tmp_path, served_folders) -> Path:
    return certify(tmp_path / "release", served_folders[0])


def test_write_certificate_records_one_per_call_probabilities_the_model_and_this_host(certified):
    certificate = read_certificate(certified)
    model = OnnxClassifier(certified)
    alone = np.vstack([softmax(model.logits([text], 1)) for text in TEXTS])  # each text in a call of its own
    assert [row["text"] for row in certificate["texts"]] == TEXTS
    assert np.array_equal(np.asarray([row["probabilities"] for row in certificate["texts"]], dtype=np.float32),
                          alone.astype(np.float32))
    assert certificate["model_sha256"] == file_sha256(certified / "model.onnx")
    assert certificate["judged_on"] == {k: cpu_facts()[k] for k in NUMERIC_FACTS}
    assert certificate["max_prob_delta"] == TOLERANCE and certificate["labels"] == SERVED_LABELS
    assert max(len(model.content_ids([t])[0]) for t in TEXTS) > model.max_length, "long texts are among them"


def test_verify_passes_on_the_host_that_made_the_certificate_with_no_difference_at_all(certified):
    report = verify_folder(certified, 0.998)
    assert report.passed and report.agreement == 1.0 and report.max_prob_delta == 0.0
    lines = summary_lines(report)
    assert lines[0].endswith(": PASSED") and all(len(line) <= WIDTH for line in lines)


def test_verify_of_a_flipped_label_fails_naming_the_text_and_both_hosts(certified):
    report = verify_folder(perturb(certified, flip=4), 0.998)
    assert not report.passed and report.agreeing == len(TEXTS) - 1
    assert report.shown[0].key == row_keys(TEXTS)[4] and report.shown[0].label != report.shown[0].reference_label
    message = report.explain()
    assert "far too long and far too loud" in message and row_keys(TEXTS)[4][:8] in message
    assert message.count(cpu_facts()["kind"]) >= 2, "both hosts' CPU features"
    lines = summary_lines(report)
    assert lines[0].endswith(": FAILED") and all(len(line) <= WIDTH for line in lines)
    assert any("serve.min_parity_agreement" in line for line in lines)


def test_verify_of_a_shifted_probability_fails_on_the_tolerance_alone(certified):
    report = verify_folder(perturb(certified, shift=1), 0.998)
    assert report.agreement == 1.0 and report.max_prob_delta == pytest.approx(1e-3, rel=1e-6)
    assert not report.passed and report.failures() == [
        f"max |delta p| {report.max_prob_delta:.6f} > the certificate's tolerance {TOLERANCE}"]
    assert report.shown[0].text == TEXTS[1]


def test_verify_refuses_a_certificate_made_for_another_model(certified, served_folders):
    shutil.copy2(served_folders[1] / "model.onnx", certified / "model.onnx")
    with pytest.raises(CertificateError, match="do not belong together"):
        verify_folder(certified, 0.998)


def run_cli(monkeypatch, *args: str) -> tuple[int, list[str]]:
    monkeypatch.setattr(registry_commands, "console", Console(width=WIDTH, record=True))
    code = cli.main(list(args))
    return code, registry_commands.console.export_text().splitlines()


def test_verify_command_exits_0_on_a_pass_1_on_a_failure_and_on_a_folder_without_certificate(
        certified, served_folders, monkeypatch, capsys):
    code, lines = run_cli(monkeypatch, "verify", str(certified), "--project", str(REPO))
    assert code == 0 and lines[0] == "parity certificate: PASSED" and str(certified)[-20:] in "".join(lines[1:3])
    perturb(certified, flip=0)
    code, lines = run_cli(monkeypatch, "verify", str(certified), "--project", str(REPO))
    assert code == 1 and lines[0].endswith(": FAILED") and any(row_keys(TEXTS)[0][:8] in line for line in lines)
    code, _ = run_cli(monkeypatch, "verify", str(served_folders[0]), "--project", str(REPO))
    assert code == 1 and "carries no parity certificate" in capsys.readouterr().err


def test_verify_without_folder_checks_serve_models_folder_or_the_gates_copy_of_its_model(
        tmp_path, served_folders, monkeypatch):
    project = tmp_path / "project"
    release = certify(project / "artifacts" / "gate" / "release", served_folders[0])
    shutil.copytree(served_folders[0], project / "artifacts" / "quantize" / "onnx")
    params = (REPO / "params.yaml").read_text()
    assert "  model: artifacts/gate/release" in params, "serve.model's default: the release, with its certificate"
    (project / "params.yaml").write_text(params.replace("  model: artifacts/gate/release",
                                                        "  model: artifacts/quantize/onnx"))
    code, lines = run_cli(monkeypatch, "verify", "--project", str(project))
    note = " ".join(lines[:lines.index("parity certificate: PASSED")])
    assert code == 0 and note == ("serve.model artifacts/quantize/onnx carries no certificate; checking the gate's "
                                  "release artifacts/gate/release, which holds the same model file")
    assert all(len(line) <= WIDTH for line in lines) and release.is_dir()


# ---------------------------------------------------------------- tunegate serve


@pytest.fixture
def no_keys(monkeypatch):
    monkeypatch.delenv(API_KEYS_ENV, raising=False)


def test_serve_refuses_to_start_on_a_perturbed_certificate_with_parity_action_refuse(certified, tmp_path, no_keys):
    perturb(certified, flip=2)
    app = create_app(serve_settings(tmp_path, model=str(certified), parity_action="refuse"), tmp_path)
    with pytest.raises(ParityError, match="refused by its parity check") as refused:
        call(app, ("GET", "/v2/health/ready", {}))
    assert TEXTS[2] in str(refused.value) and cpu_facts()["kind"] in str(refused.value)


def test_serve_with_warn_serves_a_perturbed_version_and_reports_it(certified, tmp_path, no_keys):
    perturb(certified, flip=2)
    app = create_app(serve_settings(tmp_path, model=str(certified), parity_action="warn"), tmp_path)
    answer, info, scraped = call(app, ("POST", "/v1/predict", {"json": {"texts": ["a fine film"]}}),
                                 ("GET", "/v2/models/tunegate", {}), ("GET", "/metrics", {}))
    assert answer.status_code == 200
    parity, version = info.json()["parity"], info.json()["version"]
    assert parity["status"] == "failed" and parity["action"] == "warn"
    assert parity["agreement"] == (len(TEXTS) - 1) / len(TEXTS) and parity["shown"][0]["key"] == row_keys(TEXTS)[2]
    assert parity["judged_on"]["kind"] == parity["this_host"]["kind"] and parity["same_numerics"] is True
    assert metric(scraped.text, "tunegate_parity_passed", version=version) == 0
    assert metric(scraped.text, "tunegate_parity_agreement", version=version) == pytest.approx(parity["agreement"])
    assert metric(scraped.text, "tunegate_parity_max_prob_delta", version=version) == pytest.approx(
        parity["max_prob_delta"])


def test_serve_reports_a_passed_check_and_warns_about_a_folder_without_certificate(certified, served_folders,
                                                                                  tmp_path, no_keys, caplog):
    app = create_app(serve_settings(tmp_path, model=str(certified)), tmp_path)
    info, scraped = call(app, ("GET", "/v2/models/tunegate", {}), ("GET", "/metrics", {}))
    parity = info.json()["parity"]
    assert parity["status"] == "passed" and parity["max_prob_delta"] == 0.0 and parity["texts"] == len(TEXTS)
    assert metric(scraped.text, "tunegate_parity_passed", version=info.json()["version"]) == 1
    app = create_app(serve_settings(tmp_path, model=str(served_folders[0]), parity_action="refuse"), tmp_path)
    (info,) = call(app, ("GET", "/v2/models/tunegate", {}))
    assert info.json()["parity"]["status"] == "no_certificate", "older releases keep serving"
    assert "serving it unchecked" in caplog.text


def test_serve_reload_refuses_a_perturbed_new_version_and_keeps_the_old_one(certified, served_folders, tmp_path,
                                                                           no_keys):
    live = tmp_path / "live"
    shutil.copytree(certified, live)
    app = create_app(serve_settings(tmp_path, model=str(live)), tmp_path)
    new = perturb(certify(tmp_path / "new", served_folders[1]), shift=0)

    def replace_release():
        for item in new.iterdir():
            shutil.copyfile(item, live / item.name)  # a new mtime: the folder source sees a new version
        return ("POST", "/v2/repository/models/tunegate/load", {})

    async def go():
        from tests.test_serve_app import serving

        async with serving(app) as client:
            before = (await client.get("/v2/models/tunegate")).json()["version"]
            method, path, kw = replace_release()
            load = await client.request(method, path, **kw)
            after = (await client.get("/v2/models/tunegate")).json()
            scraped = (await client.get("/metrics")).text
            return before, load, after, scraped

    import asyncio

    before, load, after, scraped = asyncio.run(go())
    assert load.status_code == 503 and load.json()["error"] == "reload_failed"
    assert "refused by its parity check" in load.json()["detail"] and f"still serving {before}" in load.json()["detail"]
    assert after["version"] == before and after["parity"]["status"] == "passed"
    new_version = "sha256:" + file_sha256(new / "model.onnx")[:12]
    assert metric(scraped, "tunegate_parity_passed", version=new_version) == 0


# ---------------------------------------------------------------- tunegate rollback


@pytest.fixture
def two_versions_in_prod(tmp_path) -> Path:
    """A tags-only registry: v0.1.0 then v0.2.0 in prod, with the project's params.yaml (its serve section)."""
    root = tmp_path / "registry"
    root.mkdir()
    shutil.copy2(REPO / ".gto", root / ".gto")
    shutil.copy2(REPO / "params.yaml", root / "params.yaml")
    (root / "dvc.yaml").write_text(f"artifacts:\n  {tags.ARTIFACT}:\n    type: model\n    path: {tags.RELEASE_PATH}\n")
    git(root, "init", "-q")
    git(root, "config", "user.name", "Ana Tester")
    git(root, "config", "user.email", "ana@tunegate.invalid")
    for name in ("v0.1.0", "v0.2.0"):
        (root / "model.txt").write_text(name)
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", f"model {name}")
        tags.register(root, git(root, "rev-parse", "HEAD"), name, tags.tag_message(f"register {name}", {}))
        tags.assign(root, name, tags.PROD, tags.tag_message(f"prod <- {name}", {}))
    return root


def test_rollback_refuses_a_version_whose_certificate_this_host_does_not_reproduce(two_versions_in_prod, certified,
                                                                                  monkeypatch):
    root = two_versions_in_prod
    monkeypatch.setattr(rollback_module, "fetch_release", lambda paths, version: certified)
    perturb(certified, flip=5)
    before = git(root, "tag")
    with pytest.raises(ParityError, match="rollback of prod to v0.1.0 refused") as refused:
        rollback_module.rollback(root, reason="v0.2.0 misbehaves")
    assert TEXTS[5] in str(refused.value)
    assert git(root, "tag") == before, "the stage did not move"
    assert tags.in_stage(root, tags.PROD).version == "v0.2.0"


def test_rollback_records_the_parity_check_in_the_stage_tag(two_versions_in_prod, certified, monkeypatch):
    root = two_versions_in_prod
    monkeypatch.setattr(rollback_module, "fetch_release", lambda paths, version: certified)
    done = rollback_module.rollback(root, reason="v0.2.0 misbehaves")
    assert done.moved and done.parity.startswith(f"passed: {len(TEXTS)}/{len(TEXTS)} labels agree")
    assert f"parity: {done.parity}" in git(root, "tag", "-l", "--format=%(contents)", done.tag)
