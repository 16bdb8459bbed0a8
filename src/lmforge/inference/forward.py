"""Batched forward passes for evaluation and prediction."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import numpy as np
import torch

from lmforge.data.batching import ragged


@torch.inference_mode()
def collect_logits(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    device: str | torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[np.ndarray, float | None]:
    """Run ``model`` over ``batches``; return float32 logits (N, C) and the mean loss when labeled.

    A token-level model (logits ``(B, T, C)``) gives one ``(T_i, C)`` array per row, cut to
    the row's own length, in a 1-D object array. The loss is averaged over examples (each
    batch's mean weighted by its size), so it does not depend on the batch size.
    """
    was_training = model.training
    if was_training:  # .eval() walks every module (~1.5 ms a call for MiniLM): a cost at batch 1
        model.eval()
    device = torch.device(device)
    cast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype
        else contextlib.nullcontext()
    )
    logits, loss_sum, n = [], 0.0, 0
    with cast:
        for batch in batches:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            out = model(**batch)
            if out.logits.dim() == 3:  # (B, T, C): per token; padding cut off each row
                lengths = batch["attention_mask"].sum(dim=1).tolist()
                logits.extend(
                    row[:n].numpy()
                    for row, n in zip(out.logits.float().cpu(), lengths, strict=True)
                )
            else:
                logits.append(out.logits.float().cpu())  # (B, C)
            if out.loss is not None:
                size = batch["input_ids"].shape[0]
                loss_sum += float(out.loss) * size
                n += size
    if was_training:
        model.train()
    if logits and isinstance(logits[0], np.ndarray):
        stacked = ragged(logits)
    else:
        stacked = torch.cat(logits).numpy() if logits else np.zeros((0, 0), dtype=np.float32)
    return stacked, (loss_sum / n if n else None)
