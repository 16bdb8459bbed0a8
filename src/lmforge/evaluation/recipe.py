"""The eval recipe: a trained model on a labeled file -> classification report and JSON."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from lmforge.data.cleaning import clean_examples
from lmforge.data.readers import ReaderOptions, read_examples
from lmforge.errors import LmforgeError
from lmforge.inference.predictor import Predictor

log = logging.getLogger(__name__)


def reader_options_for(model: str | Path, overrides: dict[str, Any]) -> ReaderOptions:
    """Reading options: the run's own data settings when ``model`` is a run, then overrides."""
    fields = {}
    path = Path(model)
    for config_file in (path / "config.yaml", path.parent / "config.yaml"):
        if config_file.is_file():
            data = (yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}).get("data", {})
            fields = {k: data[k] for k in ("format", "delimiter", "header", "encoding", "text_column",
                                           "label_column") if k in data}
            break
    fields.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(fields) - set(ReaderOptions.__dataclass_fields__)
    if unknown:
        raise LmforgeError(f"unknown reader option(s) {sorted(unknown)}; "
                           f"valid: {', '.join(ReaderOptions.__dataclass_fields__)}")
    return ReaderOptions(**fields)


def run_evaluation(model: str | Path, data: str | Path, reader_options: dict[str, Any] | None = None,
                   batch_size: int = 64, precision: str = "auto") -> dict[str, Any]:
    """Evaluate a run or model directory on a labeled file; return the metrics.

    Rows with empty text or no label are dropped and counted; duplicates are kept (an
    evaluation set is measured as given).
    """
    opts = reader_options_for(model, reader_options or {})
    frame = read_examples(data, opts)
    frame, report = clean_examples(frame, normalize_whitespace=True, drop_duplicates=False)
    if report.dropped:
        log.warning(report.summary(str(data)))
    if frame.empty:
        raise LmforgeError(f"{data} has no usable rows ({report.summary(str(data))})")
    predictor = Predictor.load(model, precision=precision)
    label_ids = predictor.task.encode_labels(frame["label"].tolist(), predictor.label_names, str(data))
    logits = predictor.logits(frame["text"].tolist(), batch_size)
    metrics = predictor.task.compute_metrics(logits, label_ids, predictor.label_names)
    metrics["rows_dropped"] = report.dropped
    metrics["data"] = str(data)
    return metrics
