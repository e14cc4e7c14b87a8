"""Scoring a served folder: the same probabilities `tunegate predict` gives, token counts for the prediction log,
a version named by the model's hash, and a holder that swaps versions only once the old one is drained."""

import asyncio
import hashlib
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from tasks.runtime.onnx_model import OnnxClassifier
from tasks.runtime.predict import predict_texts
from tasks.serving.scoring import ModelClosed, ModelHolder, ServedFolderError, length_groups, load_served

MAX_LENGTH = 16  # tokens: short, so a sentence already overflows the window
TEXTS = ["a gripping, beautiful film", "dull", "far too long and far too loud, with a plot that never starts and "
         "an ending that never comes", "an odd one 🦜 indeed", "fine"]


@pytest.fixture(scope="module")
def fp32_folder(served_folders):
    """The tiny random BERT exported as an FP32 served folder (model.onnx, tokenizer, serving.json; MAX_LENGTH)."""
    return served_folders[0]


def test_served_model_gives_predicts_probabilities_at_batch_one(fp32_folder):
    served = load_served(fp32_folder, "tunegate", None, threads=1)
    expected = predict_texts(OnnxClassifier(fp32_folder), TEXTS, 1)[["p_negative", "p_positive"]].to_numpy()
    scores = served.score(TEXTS, 1)
    assert np.allclose([s.probabilities for s in scores], expected, atol=1e-6, rtol=0)
    assert [s.label for s in scores] == list(np.array(["negative", "positive"])[expected.argmax(axis=1)])


def test_served_model_batches_by_length_without_changing_fp32_answers(fp32_folder):
    served = load_served(fp32_folder, "tunegate", None, threads=1)
    one_by_one = [s.probabilities for s in served.score(TEXTS, 1)]
    batched = served.score(TEXTS, 4)  # padded per group: an FP32 model ignores padding up to float noise
    assert np.allclose([s.probabilities for s in batched], one_by_one, atol=1e-5)
    assert all(abs(sum(s.probabilities) - 1) < 1e-5 for s in batched)


def test_length_groups_cover_every_text_once_within_the_batch_size_and_keep_a_long_outlier_apart():
    lengths = [5, 5, 5, 5, 60, 6, 7, 30, 31, 29, 5, 6]
    groups = length_groups(lengths, 4)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(1 <= len(g) <= 4 for g in groups)
    assert [4] in groups, "the 60-token text is not padded onto short ones"
    assert all(max(lengths[i] for i in g) - min(lengths[i] for i in g) <= 2 for g in groups if 4 not in g)
    assert length_groups([], 4) == [] and length_groups([9] * 8, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_length_groups_count_texts_not_windows_and_never_split_a_text():
    groups = length_groups([16, 16, 16, 16], 2, [5, 1, 3, 1])  # 10 windows of 4 texts: two calls of two texts
    assert sorted(len(g) for g in groups) == [2, 2] and sorted(i for g in groups for i in g) == [0, 1, 2, 3]


def test_served_model_counts_whole_text_tokens_read_tokens_and_unknown_tokens(fp32_folder):
    served = load_served(fp32_folder, "tunegate", None, threads=1)
    short, long, odd = served.score(["dull", TEXTS[2], "an odd one 🦜 indeed"], 8)
    assert (short.tokens, short.read_tokens, short.unknown_tokens) == (3, 3, 0)  # [CLS] dull [SEP]
    assert long.read_tokens == MAX_LENGTH and long.tokens > MAX_LENGTH
    assert odd.unknown_tokens == 1 and odd.tokens == odd.read_tokens


def test_load_served_names_a_folder_by_its_model_hash_and_reads_a_releases_precision(fp32_folder, tmp_path):
    digest = hashlib.sha256((fp32_folder / "model.onnx").read_bytes()).hexdigest()
    served = load_served(fp32_folder, "reviews", None, threads=2)
    assert served.info.version == "sha256:" + digest[:12] and served.info.model_sha256 == digest
    assert (served.info.name, served.info.labels, served.info.max_length) == ("reviews", ["negative", "positive"],
                                                                              MAX_LENGTH)
    assert served.info.long_text == {"rule": "head"} and served.info.precision is None
    release = shutil.copytree(fp32_folder, tmp_path / "release")
    (release / "release.json").write_text(json.dumps({"precision": "fp32", "sha256": digest}))
    registered = load_served(release, "reviews", "v1.2.0", threads=1)
    assert (registered.info.version, registered.info.precision) == ("v1.2.0", "fp32")


def test_load_served_sets_the_sessions_intra_op_threads(fp32_folder):
    served = load_served(fp32_folder, "tunegate", None, threads=2)
    options = served._classifier.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)


def test_load_served_refuses_a_folder_that_is_not_a_served_one(tmp_path):
    with pytest.raises(ServedFolderError, match="no serving.json"):
        load_served(tmp_path, "tunegate", None, threads=1)


def test_a_closed_model_refuses_to_score(fp32_folder):
    served = load_served(fp32_folder, "tunegate", None, threads=1)
    served.close()
    with pytest.raises(ModelClosed, match=served.info.version):
        served.score(["late"], 1)


class Closable:
    def __init__(self, version: str):
        self.info, self.closed = SimpleNamespace(version=version), False

    def close(self) -> None:
        self.closed = True


def test_model_holder_admits_new_requests_to_the_new_version_at_once_and_closes_the_old_once_drained():
    async def scenario():
        old, new = Closable("v1"), Closable("v2")
        holder = ModelHolder(old)
        with holder.acquire() as held:
            swap = asyncio.create_task(holder.swap(new, drain_timeout_s=30))
            await asyncio.sleep(0.05)
            with holder.acquire() as admitted:
                assert admitted is new
            assert held is old and not swap.done() and not old.closed
        return await swap, old, new

    closed, old, new = asyncio.run(scenario())
    assert closed is old and old.closed and not new.closed


def test_model_holder_closes_the_old_version_after_the_drain_timeout_even_if_still_held():
    async def scenario():
        old, holder = Closable("v1"), None
        holder = ModelHolder(old)
        with holder.acquire():
            closed = await holder.swap(Closable("v2"), drain_timeout_s=0.05)
            return closed, holder.in_flight(old)

    closed, still_held = asyncio.run(scenario())
    assert closed.closed and still_held == 1
