"""Structured pruning: the student keeps the chosen layers and each FFN's most important neurons, loads like any model."""

import pytest
import torch
from transformers import (AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification,
                          DistilBertConfig, DistilBertForSequenceClassification)

from tasks.compression.prune import PruningSpecError, UnsupportedArchitecture, build_student, ffn_importance
from tasks.core.errors import TunegateError

HIDDEN, FFN, LAYERS, VOCAB = 32, 64, 4, 100


def tiny_teacher(seed: int = 0) -> BertForSequenceClassification:
    """A 4-layer, 32-wide random BERT classifier with named labels, in eval mode (as from_pretrained leaves it)."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
                        intermediate_size=FFN, max_position_embeddings=64, num_labels=2,
                        id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    return BertForSequenceClassification(config).eval()


def batches(count: int = 3, rows: int = 4, length: int = 12, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """Random token batches whose rows end in padding of varied length."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(1, VOCAB, (rows, length), generator=generator)
        lengths = torch.randint(3, length + 1, (rows,), generator=generator)
        mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        out.append({"input_ids": ids * mask, "attention_mask": mask})
    return out


def logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def layer_index(name: str) -> tuple[int, str] | None:
    """(layer, rest) for a module name under bert.encoder.layer; None elsewhere."""
    prefix = "bert.encoder.layer."
    if not name.startswith(prefix):
        return None
    index, _, rest = name[len(prefix):].partition(".")
    return int(index), rest


def test_student_has_the_kept_layers_and_a_narrower_ffn_of_every_linear_shape():
    teacher = tiny_teacher()
    keep = [0, 2, 3]
    student = build_student(teacher, keep, 0.5, ffn_importance(teacher, batches(), keep))
    assert student.config.num_hidden_layers == 3 and len(student.bert.encoder.layer) == 3
    assert student.config.intermediate_size == FFN // 2
    assert student.config.id2label == {0: "neg", 1: "pos"}
    teacher_linears = {name: m for name, m in teacher.named_modules() if isinstance(m, torch.nn.Linear)}
    checked = 0
    for name, module in student.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        where = layer_index(name)
        if where is None:
            expected = tuple(teacher_linears[name].weight.shape)  # pooler, classifier
        elif where[1] == "intermediate.dense":
            expected = (FFN // 2, HIDDEN)
        elif where[1] == "output.dense":
            expected = (HIDDEN, FFN // 2)
        else:  # attention: untouched
            expected = tuple(teacher_linears[f"bert.encoder.layer.{keep[where[0]]}.{where[1]}"].weight.shape)
        assert tuple(module.weight.shape) == expected, name
        checked += 1
    assert checked == 3 * 6 + 2  # q, k, v, attention out, FFN in, FFN out per layer; pooler; classifier
    # The teacher is untouched.
    assert teacher.config.num_hidden_layers == LAYERS and teacher.bert.encoder.layer[0].intermediate.dense.out_features == FFN


def test_kept_layers_carry_the_teachers_weights_in_keep_order():
    teacher = tiny_teacher()
    keep = [1, 3]
    student = build_student(teacher, keep, 0.5, ffn_importance(teacher, batches(), keep))
    for new, old in enumerate(keep):
        mine, theirs = student.bert.encoder.layer[new], teacher.bert.encoder.layer[old]
        for part in ("self.query", "self.key", "self.value", "output.dense", "output.LayerNorm"):
            a, b = mine.attention.get_submodule(part), theirs.attention.get_submodule(part)
            assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias), (new, part)
        assert torch.equal(mine.output.LayerNorm.weight, theirs.output.LayerNorm.weight)
        assert torch.equal(mine.output.dense.bias, theirs.output.dense.bias)
    for name in ("bert.embeddings.word_embeddings.weight", "bert.pooler.dense.weight", "classifier.weight"):
        assert torch.equal(student.get_parameter(name), teacher.get_parameter(name)), name
    # A new model: training the student leaves the teacher as it was.
    before = teacher.bert.encoder.layer[1].attention.self.query.weight.clone()
    with torch.no_grad():
        student.bert.encoder.layer[0].attention.self.query.weight.add_(1.0)
    assert torch.equal(teacher.bert.encoder.layer[1].attention.self.query.weight, before)


def test_ffn_slice_keeps_the_most_important_neurons_in_order():
    teacher = tiny_teacher()
    planted = 37
    ffn = teacher.bert.encoder.layer[2].intermediate.dense
    with torch.no_grad():
        ffn.bias[planted] = 50.0  # a neuron that fires hard on every token
    importance = ffn_importance(teacher, batches(), [0, 2])
    assert set(importance) == {0, 2} and importance[2].shape == (FFN,)
    assert int(importance[2].argmax()) == planted
    student = build_student(teacher, [0, 2], 0.25, importance)
    kept = torch.sort(torch.argsort(importance[2], descending=True)[:FFN // 4]).values
    assert planted in kept.tolist()
    mine, theirs = student.bert.encoder.layer[1], teacher.bert.encoder.layer[2]
    assert torch.equal(mine.intermediate.dense.weight, theirs.intermediate.dense.weight[kept])
    assert torch.equal(mine.intermediate.dense.bias, theirs.intermediate.dense.bias[kept])
    assert torch.equal(mine.output.dense.weight, theirs.output.dense.weight[:, kept])


def test_importance_weighs_a_neurons_outgoing_weights():
    teacher = tiny_teacher()
    before = ffn_importance(teacher, batches(), [1])[1]
    with torch.no_grad():
        teacher.bert.encoder.layer[1].output.dense.weight[:, 5] *= 10.0  # same activation, ten times the effect
    after = ffn_importance(teacher, batches(), [1])[1]
    assert torch.allclose(after[5], before[5] * 10.0, rtol=1e-4)
    assert torch.allclose(torch.cat([after[:5], after[6:]]), torch.cat([before[:5], before[6:]]))


def test_importance_ignores_padding():
    teacher = tiny_teacher()
    padded = batches(count=1, rows=4)[0]
    one_by_one = [{"input_ids": padded["input_ids"][i:i + 1, :int(m.sum())],
                   "attention_mask": padded["attention_mask"][i:i + 1, :int(m.sum())]}
                  for i, m in enumerate(padded["attention_mask"])]
    together = ffn_importance(teacher, [padded], [0, 3])
    apart = ffn_importance(teacher, one_by_one, [0, 3])
    for layer in (0, 3):
        assert torch.allclose(together[layer], apart[layer], rtol=1e-4, atol=1e-6)
    assert not teacher.training  # left in the mode it was in


def test_keeping_everything_reproduces_the_teachers_logits():
    teacher = tiny_teacher()
    student = build_student(teacher, list(range(LAYERS)), 1.0, None)
    for batch in batches():
        assert torch.allclose(logits(student, batch), logits(teacher, batch), atol=1e-5)


def test_student_saves_and_reloads_to_the_same_logits(tmp_path):
    teacher = tiny_teacher()
    keep = [0, 3]
    student = build_student(teacher, keep, 0.5, ffn_importance(teacher, batches(), keep))
    student.save_pretrained(tmp_path / "student")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student").eval()
    assert reloaded.config.num_hidden_layers == 2 and reloaded.config.intermediate_size == FFN // 2
    assert reloaded.config.id2label == {0: "neg", 1: "pos"}
    for batch in batches():
        assert torch.allclose(logits(reloaded, batch), logits(student.eval(), batch), atol=1e-6)


@pytest.mark.parametrize("keep_layers, words", [
    ([], "empty"), ([0, 4], "out of range"), ([-1, 2], "out of range"), ([1, 1], "twice"), ([2, 1], "increasing"),
])
def test_bad_keep_layers_are_named(keep_layers, words):
    with pytest.raises(PruningSpecError, match=words):
        build_student(tiny_teacher(), keep_layers, 1.0, None)


@pytest.mark.parametrize("ffn_keep", [0.0, -0.5, 1.5])
def test_ffn_keep_outside_zero_to_one_is_refused(ffn_keep):
    with pytest.raises(PruningSpecError, match="distill.ffn_keep"):
        build_student(tiny_teacher(), [0, 1], ffn_keep, None)


def test_ffn_pruning_without_importance_is_refused():
    with pytest.raises(PruningSpecError, match="importance"):
        build_student(tiny_teacher(), [0, 1], 0.5, None)


def test_a_non_bert_encoder_is_refused_with_the_way_out():
    config = DistilBertConfig(vocab_size=VOCAB, dim=HIDDEN, n_layers=2, n_heads=2, hidden_dim=FFN, num_labels=2)
    model = DistilBertForSequenceClassification(config)
    with pytest.raises(UnsupportedArchitecture, match=r"'distilbert'.*distill\.enabled: false"):
        build_student(model, [0], 1.0, None)
    with pytest.raises(UnsupportedArchitecture):
        ffn_importance(model, batches(), [0])
    assert issubclass(UnsupportedArchitecture, TunegateError) and issubclass(PruningSpecError, TunegateError)
