"""Pruning: unstructured (single weights, by magnitude) and structured (attention heads, FFN
neurons).

- **Unstructured**: the smallest-magnitude weights of the transformer layers' linear layers,
  ranked globally (one threshold for all of them, as in Han et al. 2015 and Frankle &
  Carbin 2019), are set to zero. Dense CPU kernels multiply zeros as fast as anything else,
  so this shrinks nothing and speeds nothing up by itself; the export report measures it.
- **Structured**: whole attention heads and FFN neurons are removed (``models.surgery``), so
  the matmuls really shrink. Units are ranked by a first-order estimate of how much the loss
  changes without them (Michel et al. 2019, "Are Sixteen Heads Really Better than One?";
  Molchanov et al. 2017): a gate of 1 multiplies each head's output and each neuron's
  activation, and the importance of a unit is the mean absolute gradient of the loss with
  respect to its gate over batches of the run's **training** data. Head scores are
  normalized per layer and ranked globally (every layer keeps at least one head); neurons are
  ranked within each layer, and every layer keeps the same number (``intermediate_size``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from lmforge.errors import LmforgeError
from lmforge.models.structure import transformer_layers
from lmforge.models.surgery import bert_blocks, head_size, remove_heads, shrink_ffn

# A forward pre-hook that scales a module's input: (module, args) -> new args.
_PreHook = Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], tuple[torch.Tensor]]

KINDS = ("unstructured", "heads", "ffn")


@dataclass(frozen=True)
class PruneStep:
    """One pruning step: ``kind`` and the share of its units (weights, heads, neurons) to remove."""

    kind: str
    amount: float

    @property
    def structured(self) -> bool:
        return self.kind != "unstructured"


def parse_prune(text: str) -> list[PruneStep]:
    """``"unstructured:0.5"``, ``"heads:0.25,ffn:0.3"``: structured steps first, each kind once."""
    steps = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        match = re.fullmatch(r"(\w+):([0-9.]+)", part)
        if not match or match.group(1) not in KINDS:
            raise LmforgeError(
                f"--prune {part!r}: expected KIND:SHARE with KIND one of {', '.join(KINDS)}, "
                "e.g. unstructured:0.5 or heads:0.25,ffn:0.25"
            )
        amount = float(match.group(2))
        if not 0.0 < amount < 1.0:
            raise LmforgeError(
                f"--prune {part!r}: the share to remove must be between 0 and 1 (exclusive)"
            )
        steps.append(PruneStep(match.group(1), amount))
    kinds = [s.kind for s in steps]
    if not steps or len(set(kinds)) < len(kinds):
        raise LmforgeError(
            f"--prune {text!r}: give each kind at most once, e.g. heads:0.25,ffn:0.25"
        )
    return sorted(steps, key=lambda s: KINDS.index(s.kind) if s.structured else len(KINDS))


def prunable_weights(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The linear weights of the transformer layers (attention and FFN): what unstructured
    pruning and its sparsity figures cover. Embeddings, pooler and task head stay dense."""
    out = []
    for i, layer in enumerate(transformer_layers(model)):
        for name, module in layer.named_modules():
            if isinstance(module, torch.nn.Linear):
                out.append((f"layer.{i}.{name}", module.weight))
    return out


def prune_unstructured(model: torch.nn.Module, sparsity: float) -> dict[str, float]:
    """Zero the ``sparsity`` share of smallest-magnitude weights (one global threshold); return
    the sparsity."""
    weights = prunable_weights(model)
    magnitudes = torch.cat([w.detach().abs().flatten().float() for _, w in weights])
    k = int(round(sparsity * magnitudes.numel()))
    if k:
        threshold = torch.kthvalue(magnitudes, k).values
        with torch.no_grad():
            for _, weight in weights:
                weight.masked_fill_(weight.abs() <= threshold, 0.0)
    return sparsity_of(model)


def sparsity_of(model: torch.nn.Module) -> dict[str, float]:
    """Zeros among the prunable weights, overall and per matrix (min / max)."""
    weights = prunable_weights(model)
    zeros = [int((w == 0).sum()) for _, w in weights]
    sizes = [w.numel() for _, w in weights]
    shares = [z / n for z, n in zip(zeros, sizes, strict=True)]
    return {
        "weights": sum(sizes),
        "zeros": sum(zeros),
        "sparsity": sum(zeros) / max(sum(sizes), 1),
        "min_matrix_sparsity": min(shares),
        "max_matrix_sparsity": max(shares),
    }


def unit_importance(
    model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], device: str = "cpu"
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, the importance of each attention head (H_l,) and each FFN neuron (I,): the mean
    absolute gradient of the loss with respect to a gate on the unit (see the module docstring).

    ``batches`` carry labels; the model runs in eval mode (no dropout) with gradients on.
    """
    blocks = bert_blocks(model)
    size = head_size(model)
    head_gates = [
        torch.ones(b.attention_out.in_features // size, device=device, requires_grad=True)
        for b in blocks
    ]
    neuron_gates = [
        torch.ones(b.ffn_out.in_features, device=device, requires_grad=True) for b in blocks
    ]
    head_scores = [torch.zeros_like(g) for g in head_gates]
    neuron_scores = [torch.zeros_like(g) for g in neuron_gates]

    def gate_heads(gate: torch.Tensor) -> _PreHook:
        return lambda module, args: (
            args[0] * gate.repeat_interleave(size),
        )  # (B, T, H*d) * (H*d,)

    def gate_neurons(gate: torch.Tensor) -> _PreHook:
        return lambda module, args: (args[0] * gate,)  # (B, T, I) * (I,)

    hooks = [
        b.attention_out.register_forward_pre_hook(gate_heads(g))
        for b, g in zip(blocks, head_gates, strict=True)
    ]
    hooks += [
        b.ffn_out.register_forward_pre_hook(gate_neurons(g))
        for b, g in zip(blocks, neuron_gates, strict=True)
    ]
    was_training = model.training
    model.eval()
    n = 0
    try:
        for batch in batches:
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            if loss is None:
                raise LmforgeError(
                    "structured pruning scores units by the loss on labelled training data; "
                    "the batches carry no labels"
                )
            model.zero_grad(set_to_none=True)
            gates = head_gates + neuron_gates
            grads = torch.autograd.grad(loss, gates)
            for score, grad in zip(head_scores + neuron_scores, grads, strict=True):
                score += grad.abs()
            n += 1
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if n == 0:
        raise LmforgeError(
            "structured pruning needs training batches to score the units; "
            "the training split is empty"
        )
    return [s / n for s in head_scores], [s / n for s in neuron_scores]


def prune_heads(
    model: torch.nn.Module, share: float, scores: list[torch.Tensor]
) -> dict[int, list[int]]:
    """Remove the ``share`` of all heads with the lowest (per-layer normalized) importance; return
    the removed heads per layer, in the original numbering."""
    already = {
        int(k): set(v) for k, v in (getattr(model.config, "pruned_heads", None) or {}).items()
    }
    present = [
        [h for h in range(model.config.num_attention_heads) if h not in already.get(i, set())]
        for i in range(len(scores))
    ]
    normalized = [
        s / (s.norm() + 1e-12) for s in scores
    ]  # Michel et al.: layers' scores on one scale
    ranked = sorted(
        (float(score), layer, present[layer][j])
        for layer, layer_scores in enumerate(normalized)
        for j, score in enumerate(layer_scores)
    )
    budget = int(round(share * len(ranked)))
    left = [len(p) for p in present]
    removed: dict[int, list[int]] = {}
    for _, layer, head in ranked:
        if budget == 0:
            break
        if left[layer] > 1:  # a layer keeps at least one head
            removed.setdefault(layer, []).append(head)
            left[layer] -= 1
            budget -= 1
    remove_heads(model, removed)
    return {k: sorted(v) for k, v in sorted(removed.items())}


def prune_ffn(model: torch.nn.Module, share: float, scores: list[torch.Tensor]) -> int:
    """Remove the ``share`` of FFN neurons with the lowest importance in each layer; return the
    new width."""
    width = scores[0].numel()
    keep = max(1, int(round((1.0 - share) * width)))
    shrink_ffn(model, {layer: torch.topk(s, keep).indices for layer, s in enumerate(scores)})
    return keep
