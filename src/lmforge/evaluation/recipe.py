"""The eval recipe: a trained model on a labeled file -> classification report and JSON."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lmforge.config import load_config
from lmforge.data.cleaning import clean_examples
from lmforge.data.loading import reader_options
from lmforge.data.readers import ReaderOptions, read_examples
from lmforge.errors import LmforgeError
from lmforge.inference.predictor import Predictor

log = logging.getLogger(__name__)


def reader_options_for(model: str | Path, overrides: dict[str, Any]) -> ReaderOptions:
    """Reading options: the run's own data settings when ``model`` is a run, then overrides."""
    fields: dict[str, Any] = {}
    path = Path(model)
    for config_file in (path / "config.yaml", path.parent / "config.yaml"):
        if config_file.is_file():
            fields = asdict(reader_options(load_config(config_file).data))
            break
    fields.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(fields) - set(ReaderOptions.__dataclass_fields__)
    if unknown:
        raise LmforgeError(f"unknown reader option(s) {sorted(unknown)}; "
                           f"valid: {', '.join(ReaderOptions.__dataclass_fields__)}")
    return ReaderOptions(**fields)


def read_table_for(model: str | Path, data: str | Path, overrides: dict[str, Any],
                   labeled: bool = True) -> tuple[Any, Any]:
    """Rows of a file read the way ``model``'s run read its data: (clean frame, cleaning report).

    Rows with empty text (or, when ``labeled``, no label) are dropped and counted;
    duplicates are kept (an evaluation set is measured as given).
    """
    opts = reader_options_for(model, overrides)
    frame, report = clean_examples(read_examples(data, opts, require_label=labeled), drop_duplicates=False,
                                   has_label=labeled)
    if report.dropped:
        log.warning(report.summary(str(data)))
    if frame.empty:
        raise LmforgeError(f"{data} has no usable rows ({report.summary(str(data))})")
    return frame, report


def run_evaluation(model: str | Path, data: str | Path, reader_options: dict[str, Any] | None = None,
                   batch_size: int = 64, precision: str = "auto", quantize: str = "none") -> dict[str, Any]:
    """Evaluate a run or model directory on a labeled file; return the metrics.

    Rows with empty text or no label are dropped and counted; duplicates are kept (an
    evaluation set is measured as given).
    """
    frame, report = read_table_for(model, data, reader_options or {})
    predictor = Predictor.load(model, precision=precision, quantize=quantize)
    if predictor.pairs and "text_pair" not in frame:
        raise LmforgeError(f"this model scores text pairs; {data} needs the second text too (--text-pair-column)")
    label_ids = predictor.task.encode_labels(frame["label"].tolist(), predictor.label_names, str(data))
    pairs = frame["text_pair"].tolist() if predictor.pairs else None
    logits = predictor.logits(frame["text"].tolist(), batch_size, use_cache=True, pairs=pairs)
    metrics = predictor.task.compute_metrics(logits, label_ids, predictor.label_names)
    metrics["rows_dropped"] = report.dropped
    metrics["data"] = str(data)
    return metrics
