"""A simulated week of live traffic, replayed in minutes with no network: Rotten Tomatoes sentences the prod model
never trained on, then IMDB reviews (another domain), scored one text per request through `tunegate serve`
(a subprocess on the shipped folder, --log-texts, a scratch --log-dir), monitored every window with the monitor's
own judge (tasks.monitoring.judge.judge_window) against the reference (reference_from_folder: the gate's release
and the prepare train split).

Windows by record count, not by clock: the prediction log stamps records with wall time, and a week cannot pass in
minutes. So a window is `--texts-per-window` texts (default monitor.min_window_texts: the least traffic the monitor
judges, so the noisiest windows it would ever judge) and a day is 24 h / monitor.window_minutes windows (hourly in
the defaults: 24 a day, 168 a week), as the monitor deployment would cut them. Each window's records are read back
from the log with read_prediction_log(since, until) between the wall times of its first request and last answer,
exactly as the monitor flow reads a window; texts are posted one at a time, so windows never overlap.

Streams (seeded): in-domain = the dev and test splits (the training data's mix of sources, never trained on; dev
picked the epoch), cycled with a fresh shuffle per pass; shifted = the `--shift-source` rows (IMDB) not in the train
split, cycled likewise: all reviews, where the training data holds a capped sample of them. The shift starts
`--shift-day` days in, half a window late by default (drift does not wait for a window boundary).

Figures: detection delay (texts after the shift until the end of the first window that alarms), false alarms on
the unshifted windows (target: none), and the share of alarming windows among `--shuffled-windows` windows drawn at
random from the logged in-domain records (target <= 5%). `--retrain` (opt-in: one training run of the default takes
~11 min on 2 cores, .tunegate/runs/train.json) retrains on a scratch copy of the project with the shifted texts the
service saw (and their labels) added to the data, gated against the shipped release, and reports the gate's
decision. Ends with one JSON line (also written to --out):
  {"detection_delay_texts": ..., "false_alarms_unshifted": ..., "false_alarm_share_shuffled": ..., "windows": ...,
   "texts_per_window": ..., "retrain": {"ran": ..., "decision": ...}, ...}

    python benchmarks/simulate_week.py [--project .] [--days 7] [--shift-day 5] [--texts-per-window N] [--retrain]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.serving import READY_TIMEOUT_S, Server, free_port, server_env  # noqa: E402
from tasks.core.config import PipelineConfig, load_config  # noqa: E402
from tasks.core.data import load_dataset  # noqa: E402
from tasks.core.io import write_json  # noqa: E402
from tasks.core.paths import ArtifactPaths  # noqa: E402

MINUTES_A_DAY = 24 * 60
LOG_WAIT_S = 60.0  # how long a window's records may take to reach the log (flushed every LOG_FLUSH_S)
LOG_FLUSH_S = 0.05  # the service's log_flush_seconds here: a window is judged as soon as it is served
TARGET_SHUFFLED_SHARE = 0.05


class SimulationError(RuntimeError):
    """The service failed a request, or the log lost records; carries the evidence."""


# ---- pure: streams, windows, figures ----------------------------------------------------------------------------

def in_domain_pool(held_out: list[pd.DataFrame], train_texts: set[str]) -> list[str]:
    """Texts of the splits prepare held out (dev, test) that are not in the train split: the training data's own mix
    of sources (prepare.sources, prepare.source_rows), never trained on. Not every unused row of the data: with a
    source capped (the default keeps 1,000 of 25,000 IMDB reviews) those would be mostly that source, a stream unlike
    the training data from its first window."""
    texts = [t for frame in held_out for t in frame["text"] if isinstance(t, str) and t not in train_texts]
    return list(dict.fromkeys(texts))  # distinct, in split order (the shuffle is seeded later)


def shifted_pool(data: pd.DataFrame, text_column: str, source_column: str | None, source: str) -> list[str]:
    """Distinct texts of the shifted source."""
    if not source_column or source_column not in data.columns:
        return []
    return list(dict.fromkeys(t for t in data.loc[data[source_column] == source, text_column] if isinstance(t, str)))


def cycle(pool: list[str], count: int, rng: np.random.Generator) -> list[str]:
    """`count` texts from `pool`: whole passes, each in a fresh shuffle."""
    out: list[str] = []
    while len(out) < count:
        out.extend(pool[i] for i in rng.permutation(len(pool)))
    return out[:count]


def first_alarm_delay(alarmed: list[bool], texts_per_window: int, shift_at: int) -> int | None:
    """Texts served after the shift until the end of the first alarming window that holds shifted texts."""
    for index, alarm in enumerate(alarmed):
        end = (index + 1) * texts_per_window
        if alarm and end > shift_at:
            return end - shift_at
    return None


def unshifted_alarms(alarmed: list[bool], texts_per_window: int, shift_at: int) -> int:
    """Alarming windows made only of in-domain texts (every one is a false alarm)."""
    return sum(alarm for index, alarm in enumerate(alarmed) if (index + 1) * texts_per_window <= shift_at)


def random_windows(count: int, pool_size: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`count` windows of `size` distinct indices into a pool (each window its own random draw)."""
    size = min(size, pool_size)
    return [np.sort(rng.choice(pool_size, size=size, replace=False)) for _ in range(count)]


# ---- the service -------------------------------------------------------------------------------------------------

def start_service(args, cfg: PipelineConfig, log_dir: Path, scratch: Path) -> Server:
    """`tunegate serve` on the shipped folder, logging texts to a scratch folder, no reload polling."""
    port = free_port()
    command = [args.tunegate, "serve", "--project", str(args.project), "--model", str(args.model),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--log-dir", str(log_dir),
               "--log-texts", "--log-flush-seconds", str(LOG_FLUSH_S), "--reload-seconds", "0",
               "--log-max-mb", str(max(cfg.serve.log_max_mb, 4096))]  # a week of texts: nothing pruned mid-run
    if args.threads:
        command += ["--threads", str(args.threads)]
    log = scratch / "serve.log"
    with log.open("w") as handle:
        process = subprocess.Popen(command, cwd=args.project, env=server_env(scratch), stdout=handle,
                                   stderr=subprocess.STDOUT)
    server = Server("tunegate_serve", process, port, "/v2/health/ready", log)
    server.wait_ready(time.monotonic() + READY_TIMEOUT_S)
    return server


class Client:
    """One keep-alive connection; posts one text per request, as a client of the service would."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def predict(self, text: str) -> None:
        body = json.dumps({"texts": [text]})
        for attempt in (1, 2):
            try:
                self.conn.request("POST", "/v1/predict", body, {"Content-Type": "application/json"})
                response = self.conn.getresponse()
                payload = response.read()
                break
            except (ConnectionError, http.client.HTTPException):
                if attempt == 2:
                    raise
                self.conn.close()  # a dropped keep-alive connection: reconnect once
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        if response.status != 200:
            raise SimulationError(f"the service answered {response.status} to a {len(text)}-character text: "
                                  f"{payload[:500]!r}")

    def close(self) -> None:
        self.conn.close()


def window_records(log_dir: Path, since: float, until: float, expected: int) -> list[dict]:
    """The window's records as the monitor reads them; waits for the writer (flushes every LOG_FLUSH_S)."""
    from tasks.runtime.prediction_log import read_prediction_log

    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        records = read_prediction_log(log_dir, since=since, until=until)
        if len(records) >= expected or time.monotonic() > deadline:
            break
        time.sleep(LOG_FLUSH_S)
    if len(records) != expected:
        raise SimulationError(f"the prediction log holds {len(records)} records for a window of {expected} served "
                              f"texts ({log_dir}, {since:.3f} <= time < {until:.3f})")
    return records


# ---- the week ----------------------------------------------------------------------------------------------------

@dataclass
class Week:
    texts_per_window: int
    windows_per_day: int
    shift_at: int
    judgements: list[dict] = field(default_factory=list)  # WindowJudgement.to_dict() per window
    alarmed: list[bool] = field(default_factory=list)
    in_domain_records: list[dict] = field(default_factory=list)  # for the shuffled windows
    shifted_texts: list[str] = field(default_factory=list)  # distinct shifted texts served (for --retrain)
    serve_seconds: float = 0.0
    judge_seconds: float = 0.0
    gate_figures: dict | None = None  # the release's test figures: the label-free estimate's baseline and level
    truth: dict[str, str] = field(default_factory=dict)  # text -> true label name (every stream text has one)
    estimates: list[dict] = field(default_factory=list)  # per window: the label-free estimate and the realised accuracy


def judge(records: list[dict], reference, cfg: PipelineConfig, start: float, end: float,
          gate_figures: dict | None = None):
    from tasks.monitoring.judge import judge_window

    return judge_window(records, reference, cfg.monitor, labelled=None, gate_figures=gate_figures, seed=cfg.seed,
                        start=start, end=end)


def release_decision(args) -> Path:
    """The gate's decision.json beside the release folder (artifacts/gate/decision.json for the default)."""
    return (args.project / args.release).parent / "decision.json"


def estimate_record(judgement, records: list[dict], truth: dict[str, str]) -> dict:
    """The window's label-free accuracy estimate beside the accuracy its texts' true labels give."""
    realised = float(np.mean([r["label"] == truth[r["text"]] for r in records]))
    found = judgement.estimate
    if found is None:
        return {"estimate": None, "realised": realised}
    return {"estimate": found["value"], "low": found["low"], "high": found["high"], "realised": realised,
            "covered": bool(found["low"] <= realised <= found["high"])}


def estimate_summary(estimates: list[dict], first: int, last: int) -> dict | None:
    """Mean error (estimate - realised), mean absolute error and interval coverage over windows [first, last)."""
    picked = [e for e in estimates[first:last] if e["estimate"] is not None]
    if not picked:
        return None
    errors = np.array([e["estimate"] - e["realised"] for e in picked])
    return {"windows": len(picked), "mean_error": round(float(errors.mean()), 4),
            "mean_abs_error": round(float(np.abs(errors).mean()), 4),
            "coverage": round(float(np.mean([e["covered"] for e in picked])), 4)}


def is_alarm(judgement) -> bool:
    return bool(judgement.judged and judgement.alarms)


def replay_week(client: Client, stream: list[str], shift_at: int, week: Week, reference, cfg: PipelineConfig,
                log_dir: Path, progress) -> None:
    """Serve the stream window by window; judge each window as soon as its records are in the log."""
    n = week.texts_per_window
    for index in range(len(stream) // n):
        texts = stream[index * n:(index + 1) * n]
        started = time.perf_counter()
        since = time.time()
        for text in texts:
            client.predict(text)
        until = time.time() + 1e-6  # `until` is exclusive: the last record may carry this very instant
        week.serve_seconds += time.perf_counter() - started
        started = time.perf_counter()
        records = window_records(log_dir, since, until, len(texts))
        judgement = judge(records, reference, cfg, since, until, week.gate_figures)
        week.judge_seconds += time.perf_counter() - started
        week.estimates.append(estimate_record(judgement, records, week.truth))
        week.judgements.append(judgement.to_dict())
        week.alarmed.append(is_alarm(judgement))
        first = index * n
        week.in_domain_records.extend(r for i, r in enumerate(records) if first + i < shift_at)
        progress(index, judgement)


def shuffled_share(records: list[dict], reference, cfg: PipelineConfig, windows: int, size: int,
                   rng: np.random.Generator) -> tuple[float | None, dict[str, int]]:
    """Share of alarming windows among `windows` random windows of logged in-domain records (each text once: the
    stream cycles the pool, so a text was served several times), and alarms by check."""
    records = list({r["text_sha256"]: r for r in records}.values())  # one record per distinct text
    if not records or windows <= 0:
        return None, {}
    alarms, by_check = 0, {}
    for picked in random_windows(windows, len(records), size, rng):
        window = [records[i] for i in picked]
        judgement = judge(window, reference, cfg, window[0]["time"], window[-1]["time"] + 1e-6)
        alarms += is_alarm(judgement)
        for name in judgement.alarms if judgement.judged else []:
            by_check[name] = by_check.get(name, 0) + 1
    return round(alarms / windows, 4), by_check


# ---- opt-in retraining -------------------------------------------------------------------------------------------

def retrain_on_copy(args, cfg: PipelineConfig, shifted: list[str], data: pd.DataFrame, scratch: Path) -> dict:
    """Train on a scratch copy of the project whose data takes in shifted texts the service saw (with their true
    labels, as a labelling team would send them, under a source of their own), gated against the shipped release;
    returns the run's figures and the gate's decision. The project itself is not touched."""
    root = scratch / "retrain-project"
    root.mkdir()
    # dvc.yaml's deps include the stage code: the copy carries it, as a checkout would.
    for item in ("dvc.yaml", "params.yaml", "expectations", ".gto", "tasks", "flows"):
        source = args.project / item
        if source.is_dir():
            shutil.copytree(source, root / item, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, root / item)
    text, source_col = cfg.data.text_column, cfg.data.source_column
    # The first `retrain_rows` distinct shifted texts served, labelled (as a labelling team would label a first
    # batch): they are rows of the data already (with their true labels), so the new data version re-tags them with
    # a source of their own that prepare.sources then takes in; appending them again would only duplicate texts.
    wanted = set(list(dict.fromkeys(shifted))[:args.retrain_rows])
    new_source = f"{args.shift_source}_live"
    retagged = data.copy()
    picked = retagged[text].isin(wanted)
    if source_col:
        retagged.loc[picked, source_col] = new_source
    data_path = root / cfg.data.path
    data_path.parent.mkdir(parents=True, exist_ok=True)
    retagged.to_csv(data_path, index=False)
    overrides = [f"gate.champion={(args.project / args.release).resolve()}"]
    if source_col and cfg.prepare.sources:
        overrides.append(f"prepare.sources={json.dumps([*cfg.prepare.sources, new_source])}")
    (root / ".gitignore").write_text("/artifacts/\n/.tunegate/\n__pycache__/\n")
    env = {**os.environ, "PATH": f"{Path(args.tunegate).parent}{os.pathsep}{os.environ['PATH']}"}
    dvc = str(Path(args.tunegate).parent / "dvc")
    git = ["git", "-c", "user.email=simulate-week@tunegate.invalid", "-c", "user.name=simulate week"]
    for command in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "config", "core.analytics", "false"],
                    [dvc, "add", "-q", str(Path(cfg.data.path).parent)], ["git", "add", "-A"],
                    [*git, "commit", "-q", "-m", "the project with the shifted texts labelled"]):
        subprocess.run(command, cwd=root, env=env, check=True, capture_output=True)
    started = time.perf_counter()
    done = subprocess.run([args.tunegate, "run", *sum((["-S", o] for o in overrides), [])], cwd=root, env=env,
                          capture_output=True, text=True)
    seconds = round(time.perf_counter() - started, 1)
    decision_file = ArtifactPaths(root).decision
    verdict = json.loads(decision_file.read_text()) if decision_file.is_file() else {}
    decision = verdict.get("decision")
    # Why, kept before the scratch copy goes: the gate's own sentence and every check that failed, with its figure.
    failed = [f"{c['check']}: {c['value']:.4f} (needs {c['rule']} {c['threshold']})" if isinstance(c.get("value"), float)
              else f"{c['check']}: {c.get('value')}" for c in verdict.get("checks", []) if c.get("passed") is False]
    return {"ran": True, "decision": decision, "why": verdict.get("why"), "failed_checks": failed,
            "comparison": verdict.get("comparison"), "seconds": seconds, "exit_code": done.returncode,
            "new_rows": int(picked.sum()), "project": str(root),
            "log_tail": "" if done.returncode == 0 else (done.stdout[-1500:] + done.stderr[-1500:])}


# ---- main --------------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path("."), help="project root (its params.yaml, data)")
    parser.add_argument("--model", default=None, help="served folder (default: the project's serve.model)")
    parser.add_argument("--release", default="artifacts/gate/release", help="the gate's release (the reference model)")
    parser.add_argument("--train", default="artifacts/prepare/train.parquet", help="the train split it learned from")
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--shift-day", type=float, default=5.0, help="days of in-domain traffic before the shift")
    parser.add_argument("--shift-offset", type=int, default=None,
                        help="texts after the window boundary where the shift starts (default: half a window)")
    parser.add_argument("--shift-source", default="imdb", help="the data.source_column value of the shifted stream")
    parser.add_argument("--texts-per-window", type=int, default=None, help="default: monitor.min_window_texts")
    parser.add_argument("--windows-per-day", type=int, default=None, help="default: 24 h / monitor.window_minutes")
    parser.add_argument("--shuffled-windows", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="the service's onnxruntime threads")
    parser.add_argument("--retrain", action="store_true", help="retrain on a scratch copy after the alarm (slow)")
    # 400 labelled shifted texts: the retraining run (long ones cut into training windows) takes a little longer
    # than the default run.
    parser.add_argument("--retrain-rows", type=int, default=400, help="labelled shifted texts added for --retrain")
    parser.add_argument("--out", type=Path, default=None, help="also write the result JSON here")
    parser.add_argument("--tunegate", default=str(Path(sys.executable).parent / "tunegate"))
    args = parser.parse_args(argv)
    args.project = args.project.resolve()
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from tasks.monitoring.performance import read_gate_figures
    from tasks.monitoring.reference import reference_from_folder

    cfg = load_config(args.project / "params.yaml")
    args.model = args.model or cfg.serve.model
    n = args.texts_per_window or cfg.monitor.min_window_texts
    per_day = args.windows_per_day or max(1, round(MINUTES_A_DAY / cfg.monitor.window_minutes))
    windows = args.days * per_day
    shift_at = int(round(args.shift_day * per_day)) * n + (n // 2 if args.shift_offset is None else args.shift_offset)
    shift_at = min(shift_at, windows * n)
    rng = np.random.default_rng(cfg.seed)

    data = load_dataset(args.project, cfg.data)
    train_path = args.project / args.train
    train_texts = set(pd.read_parquet(train_path)["text"])
    held_out = [pd.read_parquet(train_path.with_name(f"{split}.parquet")) for split in ("dev", "test")]
    pool = in_domain_pool(held_out, train_texts)
    other = [t for t in shifted_pool(data, cfg.data.text_column, cfg.data.source_column, args.shift_source)
             if t not in train_texts]
    if not pool or (shift_at < windows * n and not other):
        raise SimulationError(f"no texts to replay: {len(pool)} in-domain texts outside the train split, "
                              f"{len(other)} texts of source {args.shift_source!r}")
    stream = cycle(pool, shift_at, rng) + (cycle(other, windows * n - shift_at, rng) if other else [])
    print(f"week: {args.days} days x {per_day} windows x {n} texts = {windows * n} texts; shift to "
          f"{args.shift_source!r} at text {shift_at}; pools: {len(pool)} in-domain, {len(other)} shifted", flush=True)

    started = time.perf_counter()
    reference = reference_from_folder(args.project / args.release, args.project / args.train, cfg)
    reference_seconds = time.perf_counter() - started
    names = dict(zip(cfg.data.labels, cfg.data.label_names))
    week = Week(n, per_day, shift_at, gate_figures=read_gate_figures(release_decision(args), cfg.gate),
                truth={**{str(t): names[v] for t, v in zip(data[cfg.data.text_column], data[cfg.data.label_column])
                          if v in names},
                       **{t: cfg.data.label_names[int(c)] for f in held_out for t, c in zip(f["text"], f["label"])}})
    with tempfile.TemporaryDirectory(prefix="tunegate-week-") as tmp:
        scratch = Path(tmp)
        log_dir = scratch / "predictions"
        started = time.perf_counter()
        server = start_service(args, cfg, log_dir, scratch)
        serve_start_seconds = time.perf_counter() - started
        client = Client(server.port)

        def progress(index: int, judgement) -> None:
            if is_alarm(judgement) or (index + 1) % per_day == 0:
                day, hour = divmod(index, per_day)
                state = f"ALARM {','.join(judgement.alarms)}" if is_alarm(judgement) else "ok"
                print(f"  day {day + 1} window {hour + 1:>2}: {state}{'' if judgement.judged else ' (not judged)'}",
                      flush=True)

        try:
            replay_week(client, stream, shift_at, week, reference, cfg, log_dir, progress)
        finally:
            client.close()
            server.stop()
        shifted_seen = list(dict.fromkeys(stream[shift_at:]))
        share, share_by_check = shuffled_share(week.in_domain_records, reference, cfg, args.shuffled_windows, n, rng)
        retrain = {"ran": False, "decision": None}
        delay = first_alarm_delay(week.alarmed, n, shift_at)
        if args.retrain and delay is not None:
            retrain = retrain_on_copy(args, cfg, shifted_seen, data, scratch)
            shutil.rmtree(retrain.pop("project"), ignore_errors=True)
        elif args.retrain:
            retrain["why_not"] = "no alarm after the shift"
        else:
            retrain["why_not"] = "opt-in (--retrain): one default training run takes over 10 minutes on 2 cores"

    first_alarm = next((j for j, a in zip(week.judgements, week.alarmed) if a), None)
    result = {
        "detection_delay_texts": delay,
        "false_alarms_unshifted": unshifted_alarms(week.alarmed, n, shift_at),
        "false_alarm_share_shuffled": share,
        "windows": windows,
        "texts_per_window": n,
        "retrain": retrain,
        "windows_per_day": per_day, "days": args.days, "shift_at_text": shift_at,
        "unshifted_windows": shift_at // n, "shifted_windows_alarmed": sum(
            a for i, a in enumerate(week.alarmed) if (i + 1) * n > shift_at),
        "shifted_windows": windows - shift_at // n, "shuffled_windows": args.shuffled_windows,
        "shuffled_alarms_by_check": share_by_check,
        # The label-free accuracy estimate (monitor check estimated_accuracy_drop) against each window's realised
        # accuracy: before the shift (windows wholly in-domain) and after it (windows wholly shifted).
        "estimate_unshifted": estimate_summary(week.estimates, 0, shift_at // n),
        "estimate_shifted": estimate_summary(week.estimates, -(-shift_at // n), windows),
        "first_alarm_checks": first_alarm["alarms"] if first_alarm else [],
        "pools": {"in_domain": len(pool), "shifted": len(other)},
        "seconds": {"reference": round(reference_seconds, 1), "serve_start": round(serve_start_seconds, 1),
                    "serving": round(week.serve_seconds, 1), "judging": round(week.judge_seconds, 1)},
        "texts_per_second_served": round(windows * n / week.serve_seconds, 1) if week.serve_seconds else None,
        "targets": {"false_alarms_unshifted": "== 0", "false_alarm_share_shuffled": f"<= {TARGET_SHUFFLED_SHARE}"},
    }
    if args.out:
        write_json(args.out, {**result, "window_judgements": week.judgements})
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
