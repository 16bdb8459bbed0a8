"""Multi-label classification: any number of labels per text (topics, intents, tags).

Labels come as a JSON list (``["rates", "inflation"]``, what JSONL files hold) or as one
string split at ``data.label_delimiter`` (``rates|inflation``); ``[]`` is a text with no
label. The model has one sigmoid output per label (Hugging Face ``problem_type:
multi_label_classification``, binary cross-entropy). A label is predicted when its
probability reaches its threshold: 0.5 while training, then one threshold per label tuned
on the validation split for the run's metric (``training.metric``), saved with the model
and used by ``eval`` and ``predict``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.tasks.base import Task
from lmforge.tasks.sequence_classification import with_fixed_labels

THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))


def _micro_f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    tp = float((predicted & truth).sum())
    denominator = float(predicted.sum() + truth.sum())
    return 2 * tp / denominator if denominator else 0.0


def _macro_f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([_micro_f1(predicted[:, j], truth[:, j]) for j in range(truth.shape[1])]))


def _subset_accuracy(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float((predicted == truth).all(axis=1).mean()) if len(truth) else 0.0


class MultiLabelClassification(Task):
    """Label sets, model head, thresholds, metrics and decoding."""

    name = "multi_label_classification"
    peft_task_type = "SEQ_CLS"
    endpoint = "classify"
    onnx_exportable = True
    soft_targets = "sigmoid"  # what distillation matches (training/distillation.py)

    def __init__(self) -> None:
        self.delimiter = "|"
        self.thresholds: list[float] | None = None

    def configure(self, options: dict[str, Any]) -> None:
        """``label_delimiter`` from the data config; ``thresholds`` saved with a trained model."""
        self.delimiter = options.get("label_delimiter") or self.delimiter
        if options.get("thresholds") is not None:
            self.thresholds = [float(t) for t in options["thresholds"]]

    def parse(self, label: str) -> list[str]:
        text = label.strip()
        if text.startswith("["):
            try:
                values = json.loads(text)
            except json.JSONDecodeError:
                raise LmforgeError(
                    f"label {text[:60]!r} starts like a JSON list but is not one; write "
                    f'["a", "b"] or a|b (data.label_delimiter)'
                ) from None
            if not isinstance(values, list):
                raise LmforgeError(f"label {text[:60]!r} is not a list of labels")
            parts = [str(v).strip() for v in values]
        else:
            parts = [p.strip() for p in text.split(self.delimiter)]
        return sorted({p for p in parts if p})

    def label_names(self, train_labels: Sequence[str], fixed: Sequence[str] | None) -> list[str]:
        present = with_fixed_labels(
            sorted({name for label in train_labels for name in self.parse(label)}), fixed
        )
        if len(present) < 2:
            raise LmforgeError(
                f"training data has {len(present)} distinct label(s) {present}; multi-label "
                "classification needs at least two (check data.label_column and "
                "data.label_delimiter)"
            )
        return present

    def encode_labels(
        self, labels: Sequence[str], label_names: Sequence[str], source: str
    ) -> np.ndarray:
        """Multi-hot float32 rows (N, L); a label the model never saw is an error naming it."""
        index = {name: i for i, name in enumerate(label_names)}
        out = np.zeros((len(labels), len(label_names)), dtype=np.float32)
        unseen: set[str] = set()
        for row, label in enumerate(labels):
            for name in self.parse(label):
                if name in index:
                    out[row, index[name]] = 1.0
                else:
                    unseen.add(name)
        if unseen:
            shown = ", ".join(repr(u) for u in sorted(unseen)[:10])
            raise LmforgeError(
                f"{source} has {len(unseen)} label(s) the model was not trained on: {shown}; "
                f"the model knows: {', '.join(label_names)}"
            )
        return out

    def strata(self, labels: Sequence[str]) -> list[str]:
        """Carved splits stratified by each text's first label (its rarest combination would leave
        too few)."""
        return [(self.parse(label) or ["(none)"])[0] for label in labels]

    def load_model(
        self, location: str, label_names: Sequence[str] | None = None, **kwargs: Any
    ) -> Any:
        from transformers import AutoModelForSequenceClassification

        from lmforge.models.loading import load_pretrained

        if label_names is not None:
            kwargs.update(
                num_labels=len(label_names),
                problem_type="multi_label_classification",
                id2label=dict(enumerate(label_names)),
                label2id={name: i for i, name in enumerate(label_names)},
            )
        return load_pretrained(AutoModelForSequenceClassification, location, "model", **kwargs)

    def tune(
        self, logits: np.ndarray, labels: np.ndarray, label_names: Sequence[str], metric: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """One threshold per label, tuned on validation, saved with the model and used from now
        on."""
        thresholds = self.tune_thresholds(logits, labels, metric)
        self.configure({"thresholds": thresholds})
        report = {"thresholds": dict(zip(label_names, thresholds, strict=True))}
        return {"thresholds": thresholds}, report

    def combine(
        self, members: Sequence[tuple[Task, Sequence[str]]], label_names: Sequence[str]
    ) -> None:
        """An ensemble's thresholds: the mean of its members', aligned by label name."""
        rows = []
        for task, names in members:
            own = (isinstance(task, MultiLabelClassification) and task.thresholds) or [0.5] * len(
                names
            )
            rows.append(np.asarray(own)[[list(names).index(n) for n in label_names]])
        self.configure({"thresholds": np.mean(rows, axis=0).tolist()})

    def tune_thresholds(
        self, logits: np.ndarray, targets: np.ndarray, metric: str = "micro_f1"
    ) -> list[float]:
        """One threshold per label that maximizes ``metric`` on these (validation) rows.

        Coordinate ascent from 0.5 over a 0.05 grid, label by label, two sweeps; a change is
        kept only when it raises the metric, so the tuned thresholds never score below 0.5 on
        these rows. Per-label F1 alone is the wrong target for micro-F1: a rare label the
        model barely learned gets its best F1 from a low threshold and many false positives.
        """
        probs = _sigmoid(logits)
        truth = np.asarray(targets) > 0.5
        score = {
            "micro_f1": _micro_f1,
            "macro_f1": _macro_f1,
            "subset_accuracy": _subset_accuracy,
            "loss": _micro_f1,
        }[metric]
        thresholds = np.full(truth.shape[1], 0.5)
        best = score(probs >= thresholds, truth)
        for _ in range(2):
            for j in range(truth.shape[1]):
                for t in THRESHOLD_GRID:
                    trial = thresholds.copy()
                    trial[j] = t
                    value = score(probs >= trial, truth)
                    if value > best + 1e-12:
                        best, thresholds = value, trial
        return [float(t) for t in thresholds]

    def compute_metrics(
        self, logits: np.ndarray, targets: np.ndarray, label_names: Sequence[str]
    ) -> dict[str, Any]:
        """Micro/macro F1, subset accuracy (all labels right), per-label precision/recall/F1."""
        from sklearn.metrics import f1_score, precision_recall_fscore_support

        truth = np.asarray(targets) > 0.5
        thresholds = np.asarray(self.thresholds if self.thresholds else [0.5] * len(label_names))
        predicted = _sigmoid(logits) >= thresholds
        p, r, f, s = precision_recall_fscore_support(truth, predicted, zero_division=0)
        return {
            "n": int(len(truth)),
            "micro_f1": float(f1_score(truth, predicted, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
            "subset_accuracy": float((predicted == truth).all(axis=1).mean())
            if len(truth)
            else 0.0,
            "per_label": {
                name: {
                    "precision": float(p[i]),
                    "recall": float(r[i]),
                    "f1": float(f[i]),
                    "support": int(s[i]),
                    "threshold": float(thresholds[i]),
                }
                for i, name in enumerate(label_names)
            },
        }

    def decode(self, logits: np.ndarray, label_names: Sequence[str]) -> list[dict[str, Any]]:
        """Per row: the labels at or above their thresholds, and every label's probability."""
        thresholds = np.asarray(self.thresholds if self.thresholds else [0.5] * len(label_names))
        probs = _sigmoid(logits)
        return [
            {
                "labels": [
                    name for name, x, t in zip(label_names, row, thresholds, strict=True) if x >= t
                ],
                "probabilities": {
                    name: round(float(x), 6) for name, x in zip(label_names, row, strict=True)
                },
            }
            for row in probs
        ]
