"""The prediction log: one JSON line per scored text, written off the request path, rotated at serve.log_file_mb,
kept under serve.log_max_mb (oldest first out), and readable while it is being written."""

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from tasks.runtime.prediction_log import list_parts, read_prediction_log
from tasks.serving.predlog import MB, PredictionLog, PredictionLogError, part_name
from tasks.serving.scoring import TextScore

LABELS = ["negative", "positive"]


def score(p_positive: float = 0.75, tokens: int = 7, read_tokens: int = 7, unknown: int = 0) -> TextScore:
    probabilities = [1 - p_positive, p_positive]
    return TextScore(label=LABELS[p_positive > 0.5], probabilities=probabilities, tokens=tokens,
                     read_tokens=read_tokens, unknown_tokens=unknown)


def make_log(folder: Path, **overrides) -> PredictionLog:
    settings = {"log_texts": False, "file_mb": 1.0, "max_mb": 8.0, "flush_seconds": 3600.0, **overrides}
    return PredictionLog(folder, **settings)


def wait_for(condition, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_prediction_log_records_carry_what_the_monitor_needs_without_the_text(tmp_path):
    plog = make_log(tmp_path)
    plog.start()
    before = time.time()
    plog.append("v0.2.0", ["a gripping film", "dull"], [score(0.9), score(0.2, tokens=80, read_tokens=64, unknown=2)],
                labels=LABELS)
    plog.close()
    first, second = read_prediction_log(tmp_path)
    assert set(first) == {"time", "model_version", "text_sha256", "chars", "tokens", "unknown_tokens", "label",
                          "confidence", "probabilities", "truncated"}
    assert before <= first["time"] <= time.time()
    assert first["model_version"] == "v0.2.0" and first["label"] == "positive"
    assert first["text_sha256"] == hashlib.sha256(b"a gripping film").hexdigest() and first["chars"] == 15
    assert first["probabilities"] == pytest.approx({"negative": 0.1, "positive": 0.9})
    assert first["confidence"] == pytest.approx(0.9) and first["truncated"] is False
    assert (second["label"], second["tokens"], second["unknown_tokens"], second["truncated"]) == (
        "negative", 80, 2, True)
    assert b"gripping" not in b"".join(p.read_bytes() for p in list_parts(tmp_path))


def test_prediction_log_keeps_texts_only_with_log_texts_one_line_each(tmp_path):
    plog = make_log(tmp_path, log_texts=True)
    plog.start()
    texts = ["two\nlines", "lone \ud800 surrogate", "ünïcode ✓"]
    plog.append("v1", texts, [score() for _ in texts], labels=LABELS)
    plog.close()
    assert [r["text"] for r in read_prediction_log(tmp_path)] == texts
    assert sum(p.read_bytes().count(b"\n") for p in list_parts(tmp_path)) == 3


def test_prediction_log_close_writes_everything_queued(tmp_path):
    plog = make_log(tmp_path, flush_seconds=3600)  # nothing is due before close
    plog.append("v1", ["queued before start"], [score()], labels=LABELS)
    plog.start()
    plog.append("v1", [f"text {i}" for i in range(500)], [score() for _ in range(500)], labels=LABELS)
    plog.close()
    assert len(read_prediction_log(tmp_path)) == 501 and plog.written == 501 and plog.dropped == 0
    plog.append("v1", ["after close"], [score()], labels=LABELS)  # counted, never written
    assert plog.dropped == 1 and len(read_prediction_log(tmp_path)) == 501


def test_prediction_log_writes_records_within_flush_seconds_without_closing(tmp_path):
    plog = make_log(tmp_path, flush_seconds=0.05)
    plog.start()
    try:
        plog.append("v1", ["early"], [score()], labels=LABELS)
        assert wait_for(lambda: len(read_prediction_log(tmp_path)) == 1)
    finally:
        plog.close()


def test_prediction_log_counts_records_a_full_queue_drops(tmp_path):
    plog = PredictionLog(tmp_path, log_texts=False, file_mb=1, max_mb=8, flush_seconds=3600, queue_records=3)
    plog.append("v1", [f"t{i}" for i in range(5)], [score() for _ in range(5)], labels=LABELS)  # not started: no room
    assert plog.dropped == 2
    plog.close()
    assert len(read_prediction_log(tmp_path)) == 3


def test_prediction_log_starts_a_new_part_at_file_mb(tmp_path):
    file_mb = 2048 / MB  # 2 KiB parts: a handful of records each
    plog = make_log(tmp_path, file_mb=file_mb, max_mb=1.0, flush_seconds=0.01)
    plog.start()
    for i in range(60):
        plog.append("v1", [f"review {i}"], [score()], labels=LABELS)
    plog.close()
    parts = list_parts(tmp_path)
    assert len(parts) > 3
    assert all(p.stat().st_size <= 2048 for p in parts)
    assert [r["text_sha256"] for r in read_prediction_log(tmp_path)] == [
        hashlib.sha256(f"review {i}".encode()).hexdigest() for i in range(60)]


def test_prediction_log_stays_under_max_mb_dropping_the_oldest_parts(tmp_path):
    # Another worker's older part: pruned like this process's own.
    other = tmp_path / part_name(time.time() - 3600, os.getpid() + 1, 1)
    other.write_text(json.dumps({"time": time.time() - 3600, "model_version": "v0"}) + "\n")
    plog = make_log(tmp_path, file_mb=2048 / MB, max_mb=8192 / MB, flush_seconds=0.01)
    plog.start()
    for i in range(300):
        plog.append("v1", [f"review {i}"], [score()], labels=LABELS)
    plog.close()
    parts = list_parts(tmp_path)
    assert sum(p.stat().st_size for p in parts) <= 8192
    assert not other.exists()
    kept = [r["text_sha256"] for r in read_prediction_log(tmp_path)]
    newest = [hashlib.sha256(f"review {i}".encode()).hexdigest() for i in range(300)][-len(kept):]
    assert 0 < len(kept) < 300 and kept == newest  # the newest records, in order


def test_prediction_log_writer_moves_on_when_its_part_is_deleted(tmp_path):
    plog = make_log(tmp_path, flush_seconds=0.01)
    plog.start()
    try:
        plog.append("v1", ["first"], [score()], labels=LABELS)
        assert wait_for(lambda: plog.written == 1)
        plog.current_part.unlink()  # another worker's pruning, or an operator
        plog.append("v1", ["second"], [score()], labels=LABELS)
        assert wait_for(lambda: plog.written == 2)
    finally:
        plog.close()
    assert [r["text_sha256"] for r in read_prediction_log(tmp_path)] == [hashlib.sha256(b"second").hexdigest()]


def test_read_prediction_log_skips_a_partly_written_last_line(tmp_path):
    part = tmp_path / part_name(time.time(), 4242, 1)
    whole = [{"time": 1.0, "model_version": "v1"}, {"time": 2.0, "model_version": "v1"}]
    text = "".join(json.dumps(r) + "\n" for r in whole)
    part.write_text(text + '{"time": 3.0, "model_ver')  # a writer mid-line
    assert read_prediction_log(tmp_path) == whole
    with part.open("a") as handle:
        handle.write('sion": "v1"}\n')  # the line completed: now it is read
    assert [r["time"] for r in read_prediction_log(tmp_path)] == [1.0, 2.0, 3.0]


def test_read_prediction_log_reads_every_workers_parts_oldest_first_within_a_window(tmp_path):
    now = time.time()
    for pid, times in ((100, [now - 30, now - 10]), (200, [now - 20, now - 5])):
        part = tmp_path / part_name(now - 40, pid, 1)
        part.write_text("".join(json.dumps({"time": t, "pid": pid}) + "\n" for t in times))
    assert [r["pid"] for r in read_prediction_log(tmp_path)] == [100, 200, 100, 200]
    window = read_prediction_log(tmp_path, since=now - 20, until=now - 5)
    assert [(r["pid"], r["time"]) for r in window] == [(200, now - 20), (100, now - 10)]
    assert read_prediction_log(tmp_path / "never-written") == []


def test_prediction_log_refuses_a_folder_it_cannot_create(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(PredictionLogError, match="serve.log_dir"):
        make_log(blocker / "predictions").start()
