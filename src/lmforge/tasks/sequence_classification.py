"""Sequence classification: one label per text, softmax over the label set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.tasks.base import Task


def with_fixed_labels(present: list[str], fixed: Sequence[str] | None) -> list[str]:
    """``fixed`` (data.labels) when configured, checked to cover every train label; else
    ``present``."""
    if not fixed:
        return present
    unknown = sorted(set(present) - set(fixed))
    if unknown:
        raise LmforgeError(
            f"train labels {unknown[:10]} are not in data.labels {list(fixed)}; "
            "add them to data.labels or fix the data"
        )
    return list(fixed)


class SequenceClassification(Task):
    """Label space, model head, metrics and decoding for single-label text classification."""

    name = "sequence_classification"
    peft_task_type = "SEQ_CLS"
    smoothable = True  # one class per target: label smoothing applies
    endpoint = "classify"
    onnx_exportable = True
    soft_targets = "softmax"  # what distillation matches (training/distillation.py)

    def configure(self, options: dict[str, Any]) -> None:
        """Nothing to configure (multi-label tasks take a delimiter and thresholds)."""

    def label_names(self, train_labels: Sequence[str], fixed: Sequence[str] | None) -> list[str]:
        """The ordered label list: ``fixed`` when configured, else the sorted train labels."""
        names = with_fixed_labels(sorted(set(train_labels)), fixed)
        if len(names) < 2:
            raise LmforgeError(
                f"training data has a single class {names}; classification needs at least "
                "two labels (check data.label_column)"
            )
        return names

    def strata(self, labels: Sequence[str]) -> list[str]:
        """Carved validation/test sets keep each label's share."""
        return list(labels)

    def encode_labels(
        self, labels: Sequence[str], label_names: Sequence[str], source: str
    ) -> np.ndarray:
        """Label strings to ids; labels the model never saw are an error naming them."""
        index = {name: i for i, name in enumerate(label_names)}
        unseen = sorted({label for label in labels if label not in index})
        if unseen:
            shown = ", ".join(repr(u) for u in unseen[:10])
            raise LmforgeError(
                f"{source} has {len(unseen)} label(s) the model was not trained on: {shown}; "
                f"the model knows: {', '.join(label_names)}"
            )
        return np.array([index[label] for label in labels], dtype=np.int64)

    def load_model(
        self, location: str, label_names: Sequence[str] | None = None, **kwargs: Any
    ) -> Any:
        """A sequence-classification model; a new head when ``label_names`` is given."""
        from transformers import AutoModelForSequenceClassification

        from lmforge.models.loading import load_pretrained

        if label_names is not None:
            kwargs.update(
                num_labels=len(label_names),
                id2label=dict(enumerate(label_names)),
                label2id={name: i for i, name in enumerate(label_names)},
            )
        return load_pretrained(AutoModelForSequenceClassification, location, "model", **kwargs)

    def compute_metrics(
        self, logits: np.ndarray, label_ids: np.ndarray, label_names: Sequence[str]
    ) -> dict[str, Any]:
        """accuracy, macro/weighted F1, per-class precision/recall/F1/support, confusion matrix."""
        from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

        predictions = logits.argmax(axis=-1)
        ids = list(range(len(label_names)))
        p, r, f, s = precision_recall_fscore_support(
            label_ids, predictions, labels=ids, zero_division=0
        )
        # Macro averages follow sklearn: over the labels present in the truth or the predictions.
        macro = precision_recall_fscore_support(
            label_ids, predictions, average="macro", zero_division=0
        )
        return {
            "n": int(len(label_ids)),
            "accuracy": float((predictions == label_ids).mean()),
            "macro_f1": float(f1_score(label_ids, predictions, average="macro", zero_division=0)),
            "macro_precision": float(macro[0]),
            "macro_recall": float(macro[1]),
            "weighted_f1": float(
                f1_score(label_ids, predictions, average="weighted", zero_division=0)
            ),
            "per_class": {
                name: {
                    "precision": float(p[i]),
                    "recall": float(r[i]),
                    "f1": float(f[i]),
                    "support": int(s[i]),
                }
                for i, name in enumerate(label_names)
            },
            "confusion_matrix": confusion_matrix(label_ids, predictions, labels=ids).tolist(),
            "labels": list(label_names),
        }

    def decode(self, logits: np.ndarray, label_names: Sequence[str]) -> list[dict[str, Any]]:
        """Per row: the label, its probability, and every label's probability."""
        shifted = logits - logits.max(axis=-1, keepdims=True)
        probs = np.exp(shifted)
        probs /= probs.sum(axis=-1, keepdims=True)
        best = probs.argmax(axis=-1)
        return [
            {
                "label": label_names[b],
                "score": round(float(row[b]), 6),
                "probabilities": {
                    name: round(float(x), 6) for name, x in zip(label_names, row, strict=True)
                },
            }
            for b, row in zip(best, probs, strict=True)
        ]
