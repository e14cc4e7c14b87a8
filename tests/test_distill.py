"""distill: transfer texts that never leak dev or test, a distillation loss that pulls the student to the teacher,
and a stage that writes a pruned student folder transformers loads (or, switched off, a record saying so)."""

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.compression.kd import UNLABELLED, concat_tokens, kd_loss, mean_kl
from tasks.compression.transfer import sentences, source_texts, transfer_texts
from tasks.contracts.near_dup import NearDuplicateSettings
from tasks.core.config import DataConfig, TransferConfig, parse_config
from tasks.core.data import default_data_source
from tasks.core.paths import ArtifactPaths
from tasks.core.stage import load_stage
from tasks.judging.compare import row_keys
from tests.conftest import tiny_params

NEAR = NearDuplicateSettings(jaccard=0.8, shingle_words=3, permutations=32, bands=8, seed=0)
DATA = DataConfig(path="data/x.csv", text_column="review", label_column="label", labels=[0, 1],
                  label_names=["negative", "positive"], source_column="origin", split_column=None)
LONG = ("the director builds every scene with patience and the cast answers with warmth so that the whole film "
        "feels like a letter written to someone who has been away for far too long and finally comes home")


def transfer_cfg(**changes) -> TransferConfig:
    return TransferConfig(**{"sources": ["imdb"], "rows": 100, "max_texts": 100, "min_words": 4, **changes})


# --- transfer texts ---------------------------------------------------------------------------------------------


def test_sentences_split_after_end_punctuation_and_read_br_tags_as_spaces():
    text = "A fine start. Then it sags!<br /><br />Does it recover? Barely"
    assert sentences(text) == ["A fine start.", "Then it sags!", "Does it recover?", "Barely"]


def test_source_texts_takes_only_the_named_sources_and_names_those_absent():
    data = pd.DataFrame({"review": ["a b c d", "e f g h", "i j k l", None], "label": [0, 1, 0, 1],
                         "origin": ["imdb", "rotten_tomatoes", "imdb", "imdb"]})
    texts, absent = source_texts(data, DATA, ["imdb", "yelp"])
    assert texts.tolist() == ["a b c d", "i j k l"] and absent == ["yelp"]  # a missing text is no text
    _, absent = source_texts(data.drop(columns="origin"), DATA, ["imdb"])
    assert absent == ["imdb"]
    assert source_texts(data, DATA, [])[0].empty


def test_transfer_never_samples_a_row_of_a_split_and_records_the_rows_it_read():
    rows = pd.Series([f"Review {i} has several words in it. It ends well enough." for i in range(6)])
    in_split = [rows[1].upper(), rows[4]]  # normalised keys match whatever the case
    found = transfer_texts(rows, in_split, [], transfer_cfg(), NEAR, seed=0)
    assert found.counts["rows_in_no_split"] == found.counts["rows_sampled"] == 4
    assert found.row_keys == sorted(row_keys([rows[i] for i in (0, 2, 3, 5)]))
    assert not any(t.startswith(("Review 1 ", "Review 4 ")) for t in found.texts)
    assert "It ends well enough." in found.texts and found.counts["repeated"] == 3  # each sentence once


def test_transfer_drops_sentences_equal_or_near_to_a_dev_or_test_text():
    near_copy = LONG.rsplit(" ", 1)[0] + " tonight"  # the last word changed: Jaccard of 3-word shingles ~0.93
    rows = pd.Series([f"{LONG}. Nothing here is like it.", f"{near_copy}. A wholly different sentence here.",
                      "Short one. An ordinary line of praise for it."])
    held_out = [LONG.upper() + ".", "a wholly different sentence here."]
    found = transfer_texts(rows, [], held_out, transfer_cfg(), NEAR, seed=0)
    assert found.counts["equal_to_dev_or_test"] == 2 and found.counts["near_duplicate_of_dev_or_test"] == 1
    assert found.counts["too_short"] == 1  # "Short one." has 2 words
    assert found.texts == ["Nothing here is like it.", "An ordinary line of praise for it."]


def test_transfer_respects_max_texts_and_rows_with_a_seeded_sample():
    rows = pd.Series([f"Sentence number {i} of this review. Another sentence of review {i} here." for i in range(50)])
    first = transfer_texts(rows, [], [], transfer_cfg(rows=10, max_texts=7), NEAR, seed=3)
    assert first.counts["rows_sampled"] == 10 and len(first.row_keys) == 10
    assert len(first.texts) == 7 and first.counts["over_max_texts"] == 13
    assert first == transfer_texts(rows, [], [], transfer_cfg(rows=10, max_texts=7), NEAR, seed=3)
    assert first.texts != transfer_texts(rows, [], [], transfer_cfg(rows=10, max_texts=7), NEAR, seed=4).texts


def test_transfer_min_words_counts_words_not_characters():
    rows = pd.Series(["Four words right here. Only three words."])
    found = transfer_texts(rows, [], [], transfer_cfg(min_words=4), NEAR, seed=0)
    assert found.texts == ["Four words right here."] and found.counts["too_short"] == 1


# --- the loss ----------------------------------------------------------------------------------------------------


def test_kd_loss_is_zero_for_a_student_equal_to_the_teacher_on_unlabelled_rows():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    unlabelled = torch.full((2,), UNLABELLED)
    assert kd_loss(logits, logits, unlabelled, temperature=2.0, alpha=0.5).item() == pytest.approx(0.0, abs=1e-7)
    # A label adds (1 - alpha) x cross-entropy for its row only (the mean is over every row).
    labels = torch.tensor([1, UNLABELLED])
    ce = torch.nn.functional.cross_entropy(logits[:1], labels[:1]).item()
    assert kd_loss(logits, logits, labels, 2.0, 0.5).item() == pytest.approx(0.5 * ce / 2)


def test_kd_loss_soft_term_shrinks_as_the_student_nears_the_teacher():
    teacher = torch.tensor([[3.0, -3.0]])
    far, near = torch.tensor([[-3.0, 3.0]]), torch.tensor([[2.0, -2.0]])
    unlabelled = torch.tensor([UNLABELLED])
    assert kd_loss(near, teacher, unlabelled, 2.0, 1.0) < kd_loss(far, teacher, unlabelled, 2.0, 1.0)
    assert mean_kl(teacher.numpy(), near.numpy()) < mean_kl(teacher.numpy(), far.numpy())


def test_concat_tokens_keeps_both_stores_rows_in_order(tiny_model_dir):
    from transformers import AutoTokenizer

    from tasks.training.tokens import tokenize

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    a, b = tokenize(tokenizer, ["one two", "three"], 16), tokenize(tokenizer, ["four five six"], 16)
    both = concat_tokens(a, b)
    assert len(both) == 3 and both.owners.tolist() == [0, 1, 2]
    assert both.batch([2])["input_ids"].tolist() == b.batch([0])["input_ids"].tolist()
    assert both.batch([1])["input_ids"].tolist() == a.batch([1])["input_ids"].tolist()


# --- the stage ---------------------------------------------------------------------------------------------------


@pytest.mark.heavy
def test_distillation_lowers_the_students_kl_to_the_teacher_on_training_rows(tiny_model_dir, reviews_frame,
                                                                              tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from tasks.distill import distill_student, training_rows

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # Weights 10x the usual init scale: each layer then matters, and dropping one moves the outputs (a random
    # teacher at the usual scale gives every text the same near-uniform output, nothing to distil).
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, initializer_range=0.2, num_labels=2))
    raw = tiny_params(tiny_model_dir)
    raw["distill"]["alpha"] = 1.0  # the teacher is random: its soft targets alone (labels would pull elsewhere)
    cfg = parse_config(raw)
    rows = training_rows(tokenizer, reviews_frame.head(200), [], cfg, ArtifactPaths(tmp_path))
    report = distill_student(teacher, rows, cfg, torch.device("cpu")).report
    kl = report["kl_to_teacher"]
    assert kl["rows"] == 64 and kl["before"] > 0.1, "the setup: the pruned student starts away from the teacher"
    assert kl["after"] < kl["before"] / 3
    assert report["layers"] == {"teacher": 2, "student": 1} and report["ffn_size"] == {"teacher": 64, "student": 32}


def test_distill_disabled_writes_a_record_saying_so_and_no_student(tmp_path, tiny_model_dir):
    raw = tiny_params(tiny_model_dir)
    raw["distill"]["enabled"] = False
    paths = ArtifactPaths(tmp_path)
    result = load_stage("distill").fn(parse_config(raw), paths)
    assert result.enabled is False and "off" in result.key_figure
    assert json.loads((paths.stage_dir("distill") / "distill.json").read_text()) == {"enabled": False}
    assert json.loads(paths.result("distill").read_text())["enabled"] is False
    assert not paths.student_dir.exists()


def test_distill_stage_writes_a_pruned_student_that_loads_and_nears_the_teacher(staged_pipeline):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cfg, paths = staged_pipeline
    student = AutoModelForSequenceClassification.from_pretrained(paths.student_dir, use_safetensors=True)
    teacher = AutoModelForSequenceClassification.from_pretrained(paths.model_dir, use_safetensors=True)
    assert student.config.num_hidden_layers == len(cfg.distill.keep_layers) == 1
    assert student.config.intermediate_size == round(cfg.distill.ffn_keep * teacher.config.intermediate_size)
    assert student.config.id2label == teacher.config.id2label
    tokenizer = AutoTokenizer.from_pretrained(paths.student_dir)
    with torch.no_grad():
        logits = student(**tokenizer(["a fine film", "a dull one"], return_tensors="pt", padding=True)).logits
    assert logits.shape == (2, 2)

    report = json.loads((paths.stage_dir("distill") / "distill.json").read_text())
    assert report["enabled"] is True and report["layers_kept"] == [1]
    assert report["params"]["student"] < report["params"]["teacher"]
    assert report["encoder_params"]["ratio"] < 0.5  # one of two layers, half its FFN
    kl = report["kl_to_teacher"]  # a teacher trained one epoch is near uniform: see the test above for the drop
    assert kl["rows"] == min(cfg.distill.importance_rows, report["rows"]["training_rows"])
    assert np.isfinite([kl["before"], kl["after"]]).all()
    dev = report["dev"]
    assert dev["rows"] == len(pd.read_parquet(paths.split("dev"))) and 0 <= dev["agreement"] <= 1
    assert json.loads(paths.result("distill").read_text())["key_figure"].startswith("student 1 layer x FFN 32")


@pytest.mark.heavy
def test_distill_takes_transfer_texts_from_rows_in_no_split_and_is_deterministic(staged_pipeline, tmp_path):
    cfg, staged = staged_pipeline
    # More IMDB reviews in the data than the splits hold: those rows lend transfer texts.
    extra = pd.read_csv(default_data_source())
    extra = extra[extra["source"] == "imdb"].iloc[1000:1012]
    digests = []
    for run in ("first", "second"):
        root = tmp_path / run
        for item in ("data", "artifacts/prepare", "artifacts/train"):
            shutil.copytree(staged.root / item, root / item)
        data = pd.read_csv(root / "data" / "movie_reviews.csv")
        pd.concat([data, extra], ignore_index=True).to_csv(root / "data" / "movie_reviews.csv", index=False)
        paths = ArtifactPaths(root)
        load_stage("distill").fn(cfg, paths)
        report = json.loads((paths.stage_dir("distill") / "distill.json").read_text())
        digests.append((hashlib.sha256((paths.student_dir / "model.safetensors").read_bytes()).hexdigest(), report))
    counts = report["transfer"]
    assert counts["rows_in_no_split"] == counts["rows_sampled"] == 12 and counts["absent_sources"] == []
    assert 0 < counts["texts"] <= cfg.distill.transfer.max_texts == report["rows"]["transfer_texts"]
    keys = json.loads((paths.stage_dir("distill") / "transfer_rows.json").read_text())["rows"]
    splits = pd.concat([pd.read_parquet(paths.split(s)) for s in ("train", "dev", "test")])
    assert set(keys) == set(row_keys(extra["text"].tolist())) and not set(keys) & set(row_keys(list(splits["text"])))
    assert digests[0] == digests[1], "the same inputs give the same student, byte for byte, on CPU"
    assert np.isfinite(report["kl_to_teacher"]["after"])
