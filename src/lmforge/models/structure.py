"""Where the parts of a transformer are: its stack of layers, its input embeddings, its dropouts.

Freezing, layer-wise learning rates and dropout overrides work on any Hugging Face model
through these few structural facts instead of per-architecture tables.
"""

from __future__ import annotations

import torch

from lmforge.errors import LmforgeError


def transformer_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's stack of transformer blocks: the longest ``ModuleList`` of identical blocks
    (``encoder.layer`` in BERT, ``model.layers`` in Llama, ``transformer.h`` in GPT-2)."""
    stacks = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.ModuleList) and len(m) and len({type(block) for block in m}) == 1
    ]
    if not stacks:
        raise LmforgeError(
            f"method freeze: {type(model).__name__} has no stack of transformer layers to freeze"
        )
    return max(stacks, key=len)


def embedding_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The input embeddings: BERT's whole ``embeddings`` block where there is one (word, position,
    type, LayerNorm), else the token embedding plus GPT-2's learned positions."""
    token = model.get_input_embeddings()
    for name, module in model.named_modules():
        if name.split(".")[-1] == "embeddings" and any(m is token for m in module.modules()):
            return [module]
    extra = [m for name, m in model.named_modules() if name.split(".")[-1] == "wpe"]
    return [token, *extra]


# Task heads that start new (PEFT's modules_to_save for classification).
NEW_HEADS = ("classifier", "score")


def head_modules(model: torch.nn.Module, task_type: str | None) -> list[str]:
    """The modules a classifier's prediction passes through above the encoder, which
    parameter-efficient methods train in full: the new head, and BERT's pooler where a
    sequence classifier reads the pooled output. PEFT's default leaves that pretrained
    pooler (a dense layer trained for next-sentence prediction) frozen (docs/methods.md)."""
    names = list(NEW_HEADS)
    if task_type != "SEQ_CLS":
        return names
    for name, module in model.named_modules():
        if (
            name.split(".")[-1] == "pooler"
        ):  # its linear layers: PEFT merges a saved module by its weight
            names += [
                f"pooler.{child}"
                for child, layer in module.named_children()
                if isinstance(layer, torch.nn.Linear) and f"pooler.{child}" not in names
            ]
    return names


def layer_depths(model: torch.nn.Module) -> tuple[dict[int, int], int]:
    """Depth of each parameter (by ``id``): 0 for the embeddings, ``i + 1`` for layer ``i``, and
    ``layers + 1`` for everything above (pooler, task head); and that top depth."""
    layers = transformer_layers(model)
    top = len(layers) + 1
    depths = {id(p): top for p in model.parameters()}
    for module in embedding_modules(model):
        depths.update({id(p): 0 for p in module.parameters()})
    for i, layer in enumerate(layers):
        depths.update({id(p): i + 1 for p in layer.parameters()})
    return depths, top


def set_dropout(model: torch.nn.Module, probability: float) -> int:
    """Every dropout of ``model`` at ``probability``: the ``nn.Dropout`` modules and the float
    dropout settings that attention kernels read from the config (Llama's
    ``attention_dropout``). Returns how many modules changed."""
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = probability
            changed += 1
        elif isinstance(
            getattr(module, "attention_dropout", None), float
        ):  # a float read at each forward
            module.attention_dropout = probability
    config = getattr(model, "config", None)
    for key, value in vars(config).items() if config is not None else []:
        if isinstance(value, float) and ("dropout" in key or key.endswith("pdrop")):
            setattr(config, key, probability)
    return changed
