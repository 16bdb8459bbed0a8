"""Ensembles: several trained runs vote by averaging their probabilities.

Averaging probabilities (not logits, not votes) is the usual deep-ensemble rule
(Lakshminarayanan et al. 2017): it keeps each member's confidence and is calibrated better
than any member. Classification averages softmax probabilities, multi-label the per-label
sigmoids (with the mean of the members' tuned thresholds), regression the predicted values.
The members may differ in method, seed or base model, but must share the task and the label
set; their label orders may differ (they are aligned by name).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.inference.predictor import Predictor

log = logging.getLogger(__name__)


def run_ensemble(
    models: Sequence[str | Path],
    data: str | Path | None,
    reader_options: dict[str, Any] | None = None,
    batch_size: int = 64,
    precision: str = "auto",
    quantize: str = "none",
    split: str | None = None,
) -> dict[str, Any]:
    """Evaluate the probability average of ``models`` on a labeled file (or the first run's own
    ``split``); the members' scores too."""
    from lmforge.runs import read_table_for

    if len(models) < 2:
        raise LmforgeError("an ensemble needs at least two runs")
    members = [Predictor.load(m, precision=precision, quantize=quantize) for m in models]
    first = members[0]
    if not first.task.ensembles:
        raise LmforgeError(
            "ensembles average the probabilities of classifiers, multi-label classifiers and "
            f"regressors; {models[0]} is a {first.task.name.replace('_', ' ')} model"
        )
    for model, member in zip(models[1:], members[1:], strict=True):
        if member.task.name != first.task.name or sorted(member.label_names) != sorted(
            first.label_names
        ):
            raise LmforgeError(
                f"{model} is a {member.task.name} model over {member.label_names}; {models[0]} a "
                f"{first.task.name} model over {first.label_names}: an ensemble needs one task "
                "and one label set"
            )
    frame, report = read_table_for(models[0], data, reader_options or {}, split=split)
    source = str(data) if split is None else f"the {split} split of {models[0]}"
    texts = frame["text"].tolist()
    pairs = frame["text_pair"].tolist() if first.pairs and "text_pair" in frame else None
    label_ids = first.task.encode_labels(frame["label"].tolist(), first.label_names, source)

    scores, per_member = [], {}
    for model, member in zip(models, members, strict=True):
        logits = member.logits(texts, batch_size, pairs=pairs)
        order = [member.label_names.index(name) for name in first.label_names]  # align to the first
        if logits.ndim == 2 and logits.shape[1] == len(order):
            logits = logits[:, order]
        per_member[str(model)] = first.task.compute_metrics(logits, label_ids, first.label_names)
        scores.append(first.task.to_probabilities(logits))
    averaged = first.task.from_probabilities(np.mean(scores, axis=0))
    first.task.combine([(m.task, m.label_names) for m in members], first.label_names)
    metrics = first.task.compute_metrics(averaged, label_ids, first.label_names)
    metrics.update(
        members={k: _scalars(v) for k, v in per_member.items()},
        rows_dropped=report.dropped,
        data=source,
    )
    return metrics


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, float)}
