"""Knowledge distillation: the student learns the teacher's soft predictions as well as the labels.

Loss = alpha * T^2 * soft(student / T, teacher / T) + (1 - alpha) * hard(student, labels)
(Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"; the T^2 keeps the soft
term's gradients on the scale of the hard term's whatever the temperature). The soft term
depends on what the task predicts (its ``soft_targets``): KL divergence between the
tempered softmaxes for classes (per labelled token for NER), binary cross-entropy against
the teacher's tempered sigmoids for multi-label, squared error for a regression score.

The teacher runs alongside the student (one extra forward pass per batch, no gradients,
under the run's bf16 autocast) rather than from precomputed logits: it then sees the
batch exactly as the student does, augmentation, adversarial perturbation and all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from lmforge.data.batching import IGNORE_INDEX
from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from lmforge.tasks.base import Task


def soft_target_loss(
    kind: str,
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """The soft-target term for logits (B, C), or (B, T, C) with sub-token ``labels`` (B, T)."""
    s, t = student.float(), teacher.float()
    if kind == "value":  # regression: match the teacher's score
        return F.mse_loss(s.squeeze(-1), t.squeeze(-1))
    if (
        s.dim() == 3
    ):  # per token: only the positions that carry a label (first sub-tokens, no padding)
        keep = labels.flatten() != IGNORE_INDEX
        s, t = s.flatten(0, 1)[keep], t.flatten(0, 1)[keep]
    s, t = s / temperature, t / temperature
    if kind == "softmax":
        soft = F.kl_div(
            F.log_softmax(s, dim=-1),
            F.log_softmax(t, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
    elif kind == "sigmoid":
        soft = F.binary_cross_entropy_with_logits(s, torch.sigmoid(t))
    else:
        raise ValueError(f"unknown soft-target kind {kind!r}")
    return soft * temperature**2


def load_teacher(
    location: str,
    task: Task,
    label_names: list[str],
    tokenizer: PreTrainedTokenizerBase,
    device: torch.device | str,
) -> torch.nn.Module:
    """The teacher model, frozen, in eval mode on ``device``; checked to share the student's
    labels and tokenizer (the loss compares their outputs class by class, token by token)."""
    from lmforge.models.loading import load_tokenizer, resolve_model_path

    if task.soft_targets is None:
        raise LmforgeError(
            f"distillation: task {task.name} has no soft targets to learn from (classification, "
            "multi-label, regression and NER do); remove distillation.teacher"
        )
    path = resolve_model_path(location)
    teacher = task.load_model(path)
    labels = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]
    if task.labeled and labels != list(label_names):
        raise LmforgeError(
            f"distillation.teacher {location} predicts labels {labels[:10]}, the student "
            f"{list(label_names)[:10]}; distil from a teacher trained on the same labels"
        )
    if load_tokenizer(path).get_vocab() != tokenizer.get_vocab():
        raise LmforgeError(
            f"distillation.teacher {location} has another tokenizer than the student; the student "
            "must start from a model with the teacher's vocabulary (e.g. model.keep_layers)"
        )
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def distillation_loss(
    teacher: torch.nn.Module,
    task: Task,
    temperature: float,
    alpha: float,
    hard_loss: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor],
    autocast_dtype: torch.dtype | None = None,
) -> Callable[[Any, dict[str, torch.Tensor]], Any]:
    """``(model, batch) -> loss`` for the loop: the soft term against ``teacher`` plus
    ``hard_loss`` (the run's own loss, label smoothing included) on the same forward pass."""
    device = next(teacher.parameters()).device
    cast = (
        (lambda: torch.autocast(device_type=device.type, dtype=autocast_dtype))
        if autocast_dtype
        else contextlib.nullcontext
    )

    def loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        captured: dict[str, torch.Tensor] = {}
        hard = hard_loss(_Capture(model, captured), batch)
        with torch.no_grad(), cast():
            target = teacher(**inputs).logits
        soft = soft_target_loss(
            task.soft_targets, captured["logits"], target, batch.get("labels"), temperature
        )
        return alpha * soft + (1.0 - alpha) * hard

    return loss


class _Capture:
    """Calls the model and keeps its logits, so the hard loss and the soft term share one forward
    pass."""

    def __init__(self, model: Any, into: dict[str, torch.Tensor]):
        self.model, self.into = model, into

    def __call__(self, **batch: torch.Tensor) -> Any:
        out = self.model(**batch)
        self.into["logits"] = out.logits
        return out
