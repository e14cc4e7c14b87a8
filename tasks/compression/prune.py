"""Structured pruning of a BERT-style encoder: whole layers dropped, FFN neurons kept by importance.

The student is a plain transformers model of the teacher's own class with a smaller config (fewer layers, a
narrower FFN), so it saves and loads with AutoModelForSequenceClassification and exports like the teacher.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch

from tasks.core.errors import TunegateError


class UnsupportedArchitecture(TunegateError):
    """The model's encoder is not BERT-style (base_model.encoder.layer[i].intermediate.dense / .output.dense)."""


class PruningSpecError(TunegateError):
    """distill.keep_layers or distill.ffn_keep does not describe a student of this teacher."""


def encoder_layers(model: Any) -> torch.nn.ModuleList:
    """The model's encoder layers; UnsupportedArchitecture unless every one has a Linear FFN pair of one width."""
    layers = getattr(getattr(getattr(model, "base_model", None), "encoder", None), "layer", None)
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise UnsupportedArchitecture(
            f"distillation prunes BERT-style encoders (bert, roberta, xlm-roberta, electra: "
            f"base_model.encoder.layer); model type '{model_type}' has none. Set distill.enabled: false")
    for i, layer in enumerate(layers):
        intermediate = getattr(getattr(layer, "intermediate", None), "dense", None)
        output = getattr(getattr(layer, "output", None), "dense", None)
        if not (isinstance(intermediate, torch.nn.Linear) and isinstance(output, torch.nn.Linear)):
            raise UnsupportedArchitecture(
                f"distillation prunes BERT-style encoders; layer {i} of model type '{model_type}' has no "
                "intermediate.dense / output.dense Linear pair. Set distill.enabled: false")
        if intermediate.out_features != getattr(model.config, "intermediate_size", None):
            # One FFN width per model: a config cannot describe layers of different widths.
            raise UnsupportedArchitecture(
                f"layer {i} of model type '{model_type}' has {intermediate.out_features} FFN neurons, not the "
                f"config's intermediate_size {getattr(model.config, 'intermediate_size', None)} (already pruned?). "
                "Set distill.enabled: false")
    return layers


def check_keep_layers(keep_layers: list[int], layer_count: int) -> None:
    """PruningSpecError unless keep_layers is a non-empty, strictly increasing list of valid layer indices."""
    if not keep_layers:
        raise PruningSpecError("distill.keep_layers is empty: the student needs at least one encoder layer")
    bad = [i for i in keep_layers if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < layer_count]
    if bad:
        raise PruningSpecError(f"distill.keep_layers {keep_layers}: {bad} out of range; the teacher has "
                               f"{layer_count} layers (0..{layer_count - 1})")
    if len(set(keep_layers)) != len(keep_layers):
        raise PruningSpecError(f"distill.keep_layers {keep_layers} names a layer twice")
    if any(b <= a for a, b in zip(keep_layers, keep_layers[1:])):
        raise PruningSpecError(f"distill.keep_layers {keep_layers} must be increasing (layers keep their order)")


def check_ffn_keep(ffn_keep: float) -> None:
    """PruningSpecError unless 0 < ffn_keep <= 1."""
    if not 0.0 < ffn_keep <= 1.0:
        raise PruningSpecError(f"distill.ffn_keep is {ffn_keep}: it is the share of FFN neurons kept, in (0, 1]")


def ffn_importance(model: Any, batches: Iterable[dict[str, torch.Tensor]],
                   layers: list[int]) -> dict[int, torch.Tensor]:
    """Per layer, each FFN neuron's mean |activation| over real tokens times the L2 norm of its output column.

    The product estimates how much the neuron moves the layer's output (a loud neuron with tiny outgoing weights
    matters little). Padding is masked out so batch shapes do not weigh in. Float32 on CPU, [intermediate_size].
    """
    encoder = encoder_layers(model)
    check_keep_layers(layers, len(encoder))
    device = next(model.parameters()).device
    sums = {i: torch.zeros(encoder[i].intermediate.dense.out_features, dtype=torch.float64) for i in layers}
    count = 0
    mask: torch.Tensor | None = None

    def recorder(layer: int) -> Callable[..., None]:
        def hook(_module: Any, _inputs: Any, output: torch.Tensor) -> None:
            weights = mask.unsqueeze(-1).float()  # [B, T, 1]: 1 on real tokens; float32 sums (bf16 would round)
            sums[layer] += (output.float().abs() * weights).sum(dim=(0, 1)).double().cpu()
        return hook

    handles = [encoder[i].intermediate.register_forward_hook(recorder(i)) for i in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
                mask = inputs.get("attention_mask")
                if mask is None:
                    mask = torch.ones(inputs["input_ids"].shape, dtype=torch.long, device=device)
                count += int(mask.sum())
                model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if count == 0:
        raise PruningSpecError("no tokens to rank FFN neurons on (distill.importance_rows gave empty batches)")
    return {i: (sums[i] / count).float() * out_norms(encoder[i]) for i in layers}


def out_norms(layer: Any) -> torch.Tensor:
    """L2 norm of each FFN neuron's column in the output projection, float32 on CPU."""
    return layer.output.dense.weight.detach().float().norm(dim=0).cpu()


def kept_neurons(importance: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` most important neurons, ascending (the FFN keeps its order); ties by lower index."""
    order = torch.argsort(importance, descending=True, stable=True)
    return torch.sort(order[:keep]).values


def ffn_size(teacher_size: int, ffn_keep: float) -> int:
    """The student's FFN width: the kept share of the teacher's, at least one neuron."""
    return max(1, round(ffn_keep * teacher_size))


def student_config(teacher: Any, layer_count: int, intermediate_size: int) -> Any:
    """The teacher's config (labels, vocabulary, widths) with fewer layers and a narrower FFN."""
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = layer_count
    config.intermediate_size = intermediate_size
    return config


def layer_neurons(keep_layers: list[int], teacher_size: int, keep: int,
                  importance: dict[int, torch.Tensor] | None) -> dict[int, torch.Tensor]:
    """For each kept layer, the FFN neuron indices the student keeps (all of them when nothing is pruned)."""
    if keep == teacher_size:
        return {i: torch.arange(teacher_size) for i in keep_layers}
    missing = [i for i in keep_layers if importance is None or i not in importance]
    if missing:
        raise PruningSpecError(f"FFN pruning needs neuron importance for kept layers {missing}")
    wrong = {i: tuple(importance[i].shape) for i in keep_layers if tuple(importance[i].shape) != (teacher_size,)}
    if wrong:
        raise PruningSpecError(f"FFN importance must be [{teacher_size}] per layer; got {wrong}")
    return {i: kept_neurons(importance[i].detach().float().cpu(), keep) for i in keep_layers}


def student_state(teacher: Any, layers_prefix: str, neurons: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The teacher's weights renamed and sliced for the student: kept layers renumbered in order, FFN sliced."""
    new_index = {old: new for new, old in enumerate(neurons)}
    state: dict[str, torch.Tensor] = {}
    for name, tensor in teacher.state_dict().items():
        if not name.startswith(layers_prefix):
            state[name] = tensor  # embeddings, pooler, classifier: copied whole
            continue
        index, _, rest = name[len(layers_prefix):].partition(".")
        old = int(index)
        if old not in new_index:
            continue
        kept = neurons[old].to(tensor.device)
        if rest in ("intermediate.dense.weight", "intermediate.dense.bias"):
            tensor = tensor.index_select(0, kept)  # rows: one per FFN neuron
        elif rest == "output.dense.weight":
            tensor = tensor.index_select(1, kept)  # columns: one per FFN neuron
        state[f"{layers_prefix}{new_index[old]}.{rest}"] = tensor
    return state


def build_student(teacher: Any, keep_layers: list[int], ffn_keep: float,
                  importance: dict[int, torch.Tensor] | None) -> Any:
    """A new model of the teacher's class: the kept layers (in order), each FFN cut to its most important neurons.

    The teacher is left untouched. ffn_keep 1.0 keeps every neuron (importance may then be None).
    """
    encoder = encoder_layers(teacher)
    check_keep_layers(keep_layers, len(encoder))
    check_ffn_keep(ffn_keep)
    teacher_size = teacher.config.intermediate_size
    keep = ffn_size(teacher_size, ffn_keep)
    neurons = layer_neurons(keep_layers, teacher_size, keep, importance)
    names = {id(module): name for name, module in teacher.named_modules()}
    layers_prefix = f"{names[id(encoder)]}."
    reference = next(teacher.parameters())
    student = type(teacher)(student_config(teacher, len(keep_layers), keep))
    student.to(device=reference.device, dtype=reference.dtype)
    student.load_state_dict(student_state(teacher, layers_prefix, neurons), strict=True)
    student.train(teacher.training)
    return student
