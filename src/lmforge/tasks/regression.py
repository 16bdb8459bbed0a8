"""Regression / scoring: one number per text (or text pair), e.g. a sentiment score in [-1, 1].

The model is a sequence-classification model with one output and ``problem_type:
regression`` (mean squared error), so it saves, loads and exports like any Hugging Face
classifier.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.tasks.base import Task

TARGET = "score"
STRATA_BINS = 5  # validation/test carved from train keep the score distribution (quintiles)


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class Regression(Task):
    """Targets, model head, metrics and decoding for numeric targets."""

    name = "regression"
    peft_task_type = "SEQ_CLS"
    endpoint = "score"
    onnx_exportable = True
    soft_targets = "value"  # what distillation matches (training/distillation.py)

    def configure(self, options: dict[str, Any]) -> None:
        """Nothing to configure (multi-label tasks take a delimiter and thresholds)."""

    def label_names(self, train_labels: Sequence[str], fixed: Sequence[str] | None) -> list[str]:
        if fixed:
            raise LmforgeError(
                "data.labels lists class names; task regression predicts a number: remove "
                "data.labels"
            )
        self.encode_labels(
            train_labels, [TARGET], "train data"
        )  # fail early on non-numeric targets
        return [TARGET]

    def encode_labels(
        self, labels: Sequence[str], label_names: Sequence[str], source: str
    ) -> np.ndarray:
        """Targets as float32; a value that is not a finite number is an error naming it."""
        values = [_number(label) for label in labels]
        bad = [
            (i, label) for i, (label, v) in enumerate(zip(labels, values, strict=True)) if v is None
        ]
        if bad:
            shown = ", ".join(f"row {i + 1}: {label!r}" for i, label in bad[:3])
            raise LmforgeError(
                f"{source} has {len(bad)} target(s) that are not numbers ({shown}); task "
                "regression needs a numeric label column (check data.label_column)"
            )
        return np.asarray(values, dtype=np.float32)

    def strata(self, labels: Sequence[str]) -> list[str]:
        """Score quintiles, so that carved validation/test sets span the whole range."""
        values = np.array([np.nan if (v := _number(label)) is None else v for label in labels])
        finite = values[np.isfinite(values)]
        if len(finite) < STRATA_BINS:
            return ["all"] * len(labels)
        edges = np.quantile(finite, np.linspace(0, 1, STRATA_BINS + 1)[1:-1])
        return [
            f"q{int(np.searchsorted(edges, v, side='right'))}" if np.isfinite(v) else "?"
            for v in values
        ]

    def load_model(
        self, location: str, label_names: Sequence[str] | None = None, **kwargs: Any
    ) -> Any:
        from transformers import AutoModelForSequenceClassification

        from lmforge.models.loading import load_pretrained

        if label_names is not None:
            kwargs.update(
                num_labels=1, problem_type="regression", id2label={0: TARGET}, label2id={TARGET: 0}
            )
        return load_pretrained(AutoModelForSequenceClassification, location, "model", **kwargs)

    def compute_metrics(
        self, logits: np.ndarray, targets: np.ndarray, label_names: Sequence[str]
    ) -> dict[str, Any]:
        """MSE, RMSE, MAE, Pearson and Spearman correlation (0.0 when either side is constant)."""
        from scipy.stats import pearsonr, spearmanr

        predictions = logits.reshape(len(logits), -1)[:, 0].astype(np.float64)
        targets = np.asarray(targets, dtype=np.float64)
        errors = predictions - targets
        constant = len(targets) < 2 or np.ptp(predictions) == 0 or np.ptp(targets) == 0
        return {
            "n": int(len(targets)),
            "mse": float(np.mean(errors**2)),
            "rmse": float(np.sqrt(np.mean(errors**2))),
            "mae": float(np.mean(np.abs(errors))),
            "pearson": 0.0 if constant else float(pearsonr(predictions, targets).statistic),
            "spearman": 0.0 if constant else float(spearmanr(predictions, targets).statistic),
            "target_mean": float(targets.mean()) if len(targets) else 0.0,
            "prediction_mean": float(predictions.mean()) if len(targets) else 0.0,
        }

    def decode(self, logits: np.ndarray, label_names: Sequence[str]) -> list[dict[str, Any]]:
        return [{"score": round(float(row), 6)} for row in logits.reshape(len(logits), -1)[:, 0]]
