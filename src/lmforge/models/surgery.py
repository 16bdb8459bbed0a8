"""Make a trained transformer smaller by removing parts of it: layers, attention heads, FFN neurons.

The smaller model is a real smaller model (fewer matmul rows), not a masked one, and it
saves as a Hugging Face directory:

- fewer **layers**: ``num_hidden_layers`` in config.json; plain ``transformers`` loads it.
- fewer **FFN neurons**, the same count in every layer: ``intermediate_size``; plain
  ``transformers`` loads it.
- fewer **attention heads**: config.json records the removed heads per layer as
  ``pruned_heads`` (the key transformers 4.x reads and prunes on load). transformers 5
  dropped head pruning, so :func:`load_head_pruned` rebuilds the shapes before loading the
  weights; lmforge's loaders call it for any directory whose config has ``pruned_heads``.

Heads and neurons are found by name in BERT-style encoders (BERT, RoBERTa, XLM-R, MiniLM,
ELECTRA: ``attention.self.query/key/value``, ``attention.output.dense``,
``intermediate.dense``, ``output.dense``), whose attention infers the head count from the
projection's width at run time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmforge.errors import LmforgeError
from lmforge.models.structure import transformer_layers

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def keep_layers(model: torch.nn.Module, keep: int | Sequence[int]) -> list[int]:
    """Keep only some of the transformer layers (a distillation student initialized from its
    teacher).

    Args:
        keep: Indices of the layers to keep, in order; or a count N, which keeps N evenly
            spaced layers ending with the last one (6 -> 3 keeps 1, 3, 5: the top layer feeds the
            trained head).

    Returns:
        The indices kept.
    """
    layers = transformer_layers(model)
    total = len(layers)
    if isinstance(keep, int):
        if not 1 <= keep <= total:
            raise LmforgeError(
                f"model.keep_layers: {keep} layers asked, the model has {total}; give 1 to {total}"
            )
        indices = [total - 1 - round(i * total / keep) for i in reversed(range(keep))]
    else:
        indices = list(keep)
        bad = [i for i in indices if not 0 <= i < total]
        if not indices or bad or sorted(set(indices)) != indices:
            raise LmforgeError(
                f"model.keep_layers: {indices} must be increasing layer indices "
                f"from 0 to {total - 1}"
            )
    kept = torch.nn.ModuleList([layers[i] for i in indices])
    for new_index, layer in enumerate(kept):  # attention modules that index a KV cache by layer
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    _replace_module(model, layers, kept)
    model.config.num_hidden_layers = len(indices)
    return indices


@dataclass
class BertBlock:
    """The linear layers of one BERT-style block that head and neuron pruning resize."""

    query: torch.nn.Linear
    key: torch.nn.Linear
    value: torch.nn.Linear
    attention_out: torch.nn.Linear  # input: the heads' outputs side by side (H * d)
    ffn_in: torch.nn.Linear  # output: the FFN neurons
    ffn_out: torch.nn.Linear
    attention: torch.nn.Module  # BertSelfAttention: holds the head size
    parent: dict[
        str, tuple[torch.nn.Module, str]
    ]  # where each linear hangs, to swap it for a smaller one


def bert_blocks(model: torch.nn.Module) -> list[BertBlock]:
    """The prunable linear layers of each block; a one-line error for other architectures."""
    blocks = []
    for layer in transformer_layers(model):
        try:
            attn, out = layer.attention.self, layer.attention.output.dense
            ffn_in, ffn_out = layer.intermediate.dense, layer.output.dense
            parent = {
                "query": (attn, "query"),
                "key": (attn, "key"),
                "value": (attn, "value"),
                "attention_out": (layer.attention.output, "dense"),
                "ffn_in": (layer.intermediate, "dense"),
                "ffn_out": (layer.output, "dense"),
            }
            blocks.append(
                BertBlock(attn.query, attn.key, attn.value, out, ffn_in, ffn_out, attn, parent)
            )
        except AttributeError:
            raise LmforgeError(
                f"structured pruning works on BERT-style encoders (BERT, RoBERTa, MiniLM, ...); "
                f"{type(model).__name__} has other block names"
            ) from None
    return blocks


def head_size(model: torch.nn.Module) -> int:
    return int(model.config.hidden_size // model.config.num_attention_heads)


def remove_heads(model: torch.nn.Module, heads: dict[int, Sequence[int]]) -> None:
    """Remove attention heads: ``{layer: [head indices of the original numbering]}``.

    Records them in ``config.pruned_heads`` (merged with heads removed before), so a saved
    directory rebuilds the same shapes on load.
    """
    size = head_size(model)
    already = {
        int(k): list(v) for k, v in (getattr(model.config, "pruned_heads", None) or {}).items()
    }
    blocks = bert_blocks(model)
    for layer, removed in heads.items():
        removed = sorted(set(removed))
        if not removed:
            continue
        block = blocks[layer]
        # Heads present now, by their original numbers: the rows of the current projections.
        present = [
            h for h in range(model.config.num_attention_heads) if h not in already.get(layer, [])
        ]
        if set(removed) - set(present):
            raise LmforgeError(
                f"layer {layer} has no head(s) {sorted(set(removed) - set(present))} to remove"
            )
        if len(removed) >= len(present):
            raise LmforgeError(f"layer {layer} would keep no attention head; keep at least one")
        keep_rows = torch.cat(
            [
                torch.arange(i * size, (i + 1) * size)
                for i, h in enumerate(present)
                if h not in removed
            ]
        )
        for name in ("query", "key", "value"):
            _swap(block, name, _slice_linear(getattr(block, name), keep_rows, dim=0))
        _swap(block, "attention_out", _slice_linear(block.attention_out, keep_rows, dim=1))
        # BertSelfAttention reshapes with -1 heads; keep its bookkeeping true anyway.
        block.attention.num_attention_heads = len(present) - len(removed)
        block.attention.all_head_size = block.attention.num_attention_heads * size
        already[layer] = sorted(set(already.get(layer, [])) | set(removed))
    model.config.pruned_heads = {str(k): v for k, v in sorted(already.items()) if v}


def shrink_ffn(model: torch.nn.Module, keep: dict[int, torch.Tensor]) -> None:
    """Keep only these FFN neurons (indices of the current layer) in each layer; every layer must
    keep the same number, which becomes ``config.intermediate_size``."""
    sizes = {len(v) for v in keep.values()}
    if len(sizes) != 1:
        raise LmforgeError(
            "FFN pruning keeps the same number of neurons in every layer (config.intermediate_size)"
        )
    blocks = bert_blocks(model)
    if len(keep) != len(blocks):
        raise LmforgeError(
            f"FFN pruning needs neurons for all {len(blocks)} layers, got {len(keep)}"
        )
    for layer, rows in keep.items():
        block = blocks[layer]
        rows = torch.sort(torch.as_tensor(rows, dtype=torch.long)).values
        _swap(block, "ffn_in", _slice_linear(block.ffn_in, rows, dim=0))
        _swap(block, "ffn_out", _slice_linear(block.ffn_out, rows, dim=1))
    model.config.intermediate_size = sizes.pop()


def load_head_pruned(
    loader: Any, location: str, pruned: Mapping[str, Sequence[int]], **kwargs: Any
) -> PreTrainedModel:
    """A head-pruned model directory under transformers 5: the full-size model, its heads
    removed, then the saved (smaller) weights loaded strictly."""
    import logging

    from safetensors.torch import load_file

    files = sorted(Path(location).glob("*.safetensors"))
    if not files:
        raise LmforgeError(
            f"{location} records pruned attention heads but has no .safetensors weights; "
            "export the model again"
        )
    previous = logging.getLogger("transformers").level
    logging.getLogger("transformers").setLevel(
        logging.ERROR
    )  # the size mismatches are expected here
    try:
        model = loader.from_pretrained(location, ignore_mismatched_sizes=True, **kwargs)
    finally:
        logging.getLogger("transformers").setLevel(previous)
    model.config.pruned_heads = {}
    remove_heads(model, {int(k): list(v) for k, v in pruned.items()})
    saved: dict[str, torch.Tensor] = {}
    for file in files:
        saved.update(load_file(str(file)))
    own = model.state_dict()
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    renamed = {}
    for key, tensor in saved.items():  # a base model read from a task model's file, or the reverse
        name = (
            key
            if key in own
            else key.removeprefix(prefix)
            if key.removeprefix(prefix) in own
            else prefix + key
        )
        if name in own:
            renamed[name] = tensor
    missing = [k for k in own if k not in renamed and not _initialized_head(k)]
    if missing:
        raise LmforgeError(
            f"{location}: the saved weights do not fit the pruned structure "
            f"(missing {missing[:3]}); export the model again"
        )
    model.load_state_dict(renamed, strict=False)
    return model


def _initialized_head(key: str) -> bool:
    """Weights a loader may add on purpose: a new task head, or buffers it computes."""
    return key.startswith(("classifier.", "score.")) or key.endswith("position_ids")


def _slice_linear(layer: torch.nn.Linear, index: torch.Tensor, dim: int) -> torch.nn.Linear:
    """A new Linear with only the rows (dim 0) or input columns (dim 1) in ``index``."""
    weight = layer.weight.detach().index_select(dim, index.to(layer.weight.device)).clone()
    bias = (
        None
        if layer.bias is None
        else (layer.bias.detach()[index] if dim == 0 else layer.bias.detach()).clone()
    )
    new = torch.nn.Linear(
        weight.shape[1],
        weight.shape[0],
        bias=bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _swap(block: BertBlock, name: str, new: torch.nn.Linear) -> None:
    owner, attribute = block.parent[name]
    setattr(owner, attribute, new)
    setattr(block, name, new)


def _replace_module(model: torch.nn.Module, old: torch.nn.Module, new: torch.nn.Module) -> None:
    for module in model.modules():
        for child_name, child in module.named_children():
            if child is old:
                setattr(module, child_name, new)
                return
    raise LmforgeError(f"cannot find the layer stack of {type(model).__name__}")
