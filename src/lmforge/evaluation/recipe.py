"""The eval recipe: a trained model on a labeled file -> classification report and JSON."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.config import load_config
from lmforge.data.cleaning import CleaningReport, clean_examples
from lmforge.data.loading import fingerprint, load_splits, reader_options
from lmforge.data.readers import ReaderOptions, decode_file, read_examples
from lmforge.data.token_files import load_token_frame
from lmforge.errors import LmforgeError
from lmforge.inference.predictor import Predictor
from lmforge.tasks.embedding import text_ids
from lmforge.tasks.registry import get_task

log = logging.getLogger(__name__)


def reader_options_for(model: str | Path, overrides: dict[str, Any]) -> ReaderOptions:
    """Reading options: the run's own data settings when ``model`` is a run, then overrides."""
    fields = asdict(
        reader_options(run_config_for(model).data)
    )  # the defaults equal ReaderOptions' own
    fields.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(fields) - set(ReaderOptions.__dataclass_fields__)
    if unknown:
        raise LmforgeError(
            f"unknown reader option(s) {sorted(unknown)}; "
            f"valid: {', '.join(ReaderOptions.__dataclass_fields__)}"
        )
    return ReaderOptions(**fields)


def read_table_for(
    model: str | Path,
    data: str | Path | None,
    overrides: dict[str, Any],
    labeled: bool = True,
    split: str | None = None,
) -> tuple[Any, Any]:
    """Rows of a file read the way ``model``'s run read its data: (clean frame, cleaning report).

    Rows with empty text (or, when ``labeled``, no label) are dropped and counted;
    duplicates are kept (an evaluation set is measured as given). With ``split`` instead of
    ``data``, the run's own validation/test rows (see :func:`read_run_split`).
    """
    if split is not None:
        if data is not None:
            raise LmforgeError("give either --data FILE or --split, not both")
        return read_run_split(model, split), CleaningReport()
    if data is None:
        raise LmforgeError(
            "no evaluation data: give --data FILE (or --split validation for a run's own split)"
        )
    opts = reader_options_for(model, overrides)
    frame, report = clean_examples(
        read_examples(data, opts, require_label=labeled), drop_duplicates=False, has_label=labeled
    )
    if report.dropped:
        log.warning(report.summary(str(data)))
    if frame.empty:
        raise LmforgeError(f"{data} has no usable rows ({report.summary(str(data))})")
    return frame, report


def run_evaluation(
    model: str | Path,
    data: str | Path | None,
    reader_options: dict[str, Any] | None = None,
    batch_size: int = 64,
    precision: str = "auto",
    quantize: str = "none",
    task: str | None = None,
    corpus: str | Path | None = None,
    perturbations: Sequence[str] = (),
    perturb_rate: float = 0.1,
    seed: int = 0,
    split: str | None = None,
) -> dict[str, Any]:
    """Evaluate a run or model directory on a labeled file (or on the run's own ``split``); return the metrics.

    Rows with empty text or no label are dropped and counted; duplicates are kept (an
    evaluation set is measured as given).

    Args:
        task: The task of a model directory lmforge did not train (e.g. 'embedding').
        corpus: Embedding models: more documents to rank besides the file's positives.
        perturbations: Also score the file's texts perturbed this way ("typos", "casing",
            "word_drop"; labels unchanged): ``metrics["robustness"][kind]``.
        perturb_rate: How much each perturbation changes (see :func:`lmforge.data.augmentation.perturb`).
        split: "validation" or "test": the run's own rows instead of ``data`` (text classifiers
            and regressors).
    """
    predictor = Predictor.load(model, precision=precision, quantize=quantize, task=task)
    for flag, wanted in (("--perturb", perturbations), ("--split", split)):
        if wanted and not predictor.task.scores_texts:
            raise LmforgeError(
                f"{flag} works for text classifiers and regressors; this model is a "
                f"{predictor.task.name.replace('_', ' ')} model"
            )
    if predictor.task.language_modeling:
        return evaluate_corpus(predictor, model, data, reader_options or {}, batch_size)
    if predictor.task.word_level:
        return evaluate_token_file(
            predictor, data, (reader_options or {}).get("encoding") or "utf-8", batch_size
        )
    if not predictor.task.labeled:
        return evaluate_retrieval(predictor, model, data, reader_options or {}, batch_size, corpus)
    if corpus is not None:
        raise LmforgeError(
            "--corpus is for embedding models; this model is a "
            f"{predictor.task.name.replace('_', ' ')} model"
        )
    frame, report = read_table_for(model, data, reader_options or {}, split=split)
    source = str(data) if split is None else f"the {split} split of {model}"
    if predictor.pairs and "text_pair" not in frame:
        raise LmforgeError(
            f"this model scores text pairs; {source} needs the second text too (--text-pair-column)"
        )
    label_ids = predictor.task.encode_labels(frame["label"].tolist(), predictor.label_names, source)
    pairs = frame["text_pair"].tolist() if predictor.pairs else None
    logits = predictor.logits(frame["text"].tolist(), batch_size, use_cache=True, pairs=pairs)
    metrics = predictor.task.compute_metrics(logits, label_ids, predictor.label_names)
    metrics["rows_dropped"] = report.dropped
    metrics["data"] = source
    if perturbations:
        metrics["robustness"] = robustness(
            predictor,
            frame["text"].tolist(),
            pairs,
            label_ids,
            metrics,
            perturbations,
            perturb_rate,
            seed,
            batch_size,
        )
    return metrics


def robustness(
    predictor: Predictor,
    texts: list[str],
    pairs: list[str] | None,
    label_ids: Any,
    clean: dict[str, Any],
    kinds: Sequence[str],
    rate: float,
    seed: int,
    batch_size: int,
) -> dict[str, dict[str, float]]:
    """The headline metrics on perturbed copies of ``texts`` (labels unchanged), and how much
    each fell from the clean score."""
    from lmforge.data.augmentation import perturb

    out = {}
    for kind in kinds:
        changed = perturb(texts, kind, rate, seed)
        logits = predictor.logits(changed, batch_size, pairs=pairs)
        metrics = predictor.task.compute_metrics(logits, label_ids, predictor.label_names)
        scores = {k: v for k, v in metrics.items() if isinstance(v, float)}
        out[kind] = {
            **scores,
            **{f"{k}_drop": clean[k] - v for k, v in scores.items() if k in clean},
            "texts_changed": sum(a != b for a, b in zip(texts, changed, strict=True)),
        }
    return out


def evaluate_token_file(
    predictor: Predictor, data: str | Path, encoding: str, batch_size: int
) -> dict[str, Any]:
    """A token-classification model on a CoNLL/JSONL file: entity precision/recall/F1 per type.

    Invalid tag transitions in the file are repaired the way seqeval reads them and counted.
    """
    frame, report = load_token_frame(data, predictor.task.scheme, repair=True, encoding=encoding)
    if report.repaired_tags:
        log.warning(report.summary(str(data)))
    tags = predictor.task.encode_labels(frame["label"].tolist(), predictor.label_names, str(data))
    logits = predictor.word_logits(frame["tokens"].tolist(), batch_size, use_cache=True)
    metrics = predictor.task.compute_metrics(logits, tags, predictor.label_names)
    metrics["repaired_tags"] = report.repaired_tags
    metrics["rows_dropped"] = 0
    metrics["data"] = str(data)
    return metrics


def evaluate_retrieval(
    predictor: Predictor,
    model: str | Path,
    data: str | Path,
    overrides: dict[str, Any],
    batch_size: int,
    corpus: str | Path | None,
) -> dict[str, Any]:
    """An embedding model on (query, positive) pairs: every distinct query ranks the distinct
    positives (plus the ``corpus`` file's texts); recall@k, MRR, nDCG@10."""
    frame, report = read_table_for(model, data, overrides, labeled=False)
    if "text_pair" not in frame:
        raise LmforgeError(
            f"{data}: retrieval evaluation needs (query, positive) pairs; name the positive "
            "column with --text-pair-column (and the query column with --text-column)"
        )
    labels = np.stack(
        [text_ids(frame["text"].tolist()), text_ids(frame["text_pair"].tolist())], axis=1
    )
    outputs = predictor.task.split_outputs(predictor, frame, batch_size)
    extra = None
    if corpus is not None:
        positives = set(frame["text_pair"])
        documents = [
            t
            for t in read_corpus(corpus, overrides.get("encoding") or "utf-8")
            if t not in positives
        ]
        extra = predictor.logits(list(dict.fromkeys(documents)), batch_size, use_cache=True)
    metrics = predictor.task.compute_metrics(outputs, labels, [], extra_corpus=extra)
    metrics["rows_dropped"] = report.dropped
    metrics["data"] = str(data)
    return metrics


def read_corpus(path: str | Path, encoding: str = "utf-8") -> list[str]:
    """Documents: one per line of a text file, or the ``text`` column of a CSV/TSV/JSONL/Parquet file."""
    path = Path(path)
    if path.suffix.lower() in (".txt", ""):
        if not path.is_file():
            raise LmforgeError(f"corpus file {path} not found")
        texts = [line.strip() for line in decode_file(path, encoding).split("\n") if line.strip()]
    else:
        frame = read_examples(
            path, ReaderOptions(encoding=encoding, label_column=None), require_label=False
        )
        texts = [t.strip() for t in frame["text"] if t and t.strip()]
    if not texts:
        raise LmforgeError(f"corpus file {path} has no documents")
    return texts


def evaluate_corpus(
    predictor: Predictor,
    model: str | Path,
    data: str | Path,
    overrides: dict[str, Any],
    batch_size: int,
) -> dict[str, Any]:
    """A language model on a text corpus (or a chat model on conversations): loss per predicted
    token and perplexity, over blocks of the model's training length cut the way its run cut them."""
    from lmforge.tasks.language_modeling import bind_tokenizer, evaluate_loss

    cfg = run_config_for(model)
    data_cfg = cfg.data.model_copy(
        update={
            k: v
            for k, v in {
                "text_column": overrides.get("text_column"),
                "encoding": overrides.get("encoding"),
                "format": overrides.get("format"),
            }.items()
            if v
        }
    )
    task = predictor.task
    bind_tokenizer(task, predictor.tokenizer)
    task.check_model(predictor.model)
    dataset, info = task.file_dataset(data_cfg, str(data), predictor.tokenizer)
    metrics = evaluate_loss(
        predictor.model,
        dataset,
        batch_size,
        task,
        predictor.device,
        autocast_dtype=predictor.autocast_dtype,
    )
    metrics.update(info, data=str(data))
    return metrics


def read_run_split(model: str | Path, split: str) -> Any:
    """A run's own ``split`` rows, derived again from its config.yaml: the same files,
    cleaning and seeded stratified split as in training (augmentation only ever touches
    train). An error when ``model`` is no run, or when the rows differ from those the run
    recorded (``data.fingerprints`` in its metrics.json): the files changed since training."""
    run_dir = run_dir_for(model)
    if run_dir is None:
        raise LmforgeError(
            f"--split {split} re-reads a run's data, and {model} is no run directory "
            "(it has no config.yaml); give --data FILE"
        )
    cfg = load_config(run_dir / "config.yaml")
    task = get_task(cfg.task)
    if not task.scores_texts:
        raise LmforgeError(
            f"--split works for text classifiers and regressors; {run_dir} is a "
            f"{cfg.task.replace('_', ' ')} run: give --data FILE"
        )
    frames = load_splits(cfg.data, cfg.training.seed, strata=task.strata).frames
    if split not in frames:
        raise LmforgeError(
            f"{run_dir} has no {split} split (its data.{split}_file and data.{split}_size "
            "are unset); give --data FILE"
        )
    metrics_file = run_dir / "metrics.json"
    recorded = (
        json.loads(metrics_file.read_text(encoding="utf-8")).get("data", {})
        if metrics_file.is_file()
        else {}
    )
    expected = recorded.get("fingerprints", {}).get(split)
    if expected is not None and expected != fingerprint(frames[split]):
        raise LmforgeError(
            f"the {split} split of {run_dir} is not the one it was trained with "
            f"({len(frames[split])} rows now, {recorded.get('rows', {}).get(split)} then): its data "
            "files changed; give --data FILE"
        )
    return frames[split]


def run_dir_for(model: str | Path) -> Path | None:
    """The run directory of a run (or its model/) directory; None for a bare model directory."""
    path = Path(model)
    return next((d for d in (path, path.parent) if (d / "config.yaml").is_file()), None)


def run_config_for(model: str | Path) -> Any:
    """The run's config when ``model`` is a run (or its model/) directory, else the defaults."""
    from lmforge.config import RunConfig

    run_dir = run_dir_for(model)
    return load_config(run_dir / "config.yaml") if run_dir else RunConfig()
