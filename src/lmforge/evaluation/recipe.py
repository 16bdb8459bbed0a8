"""The eval recipe: a trained model on a labeled file -> classification report and JSON."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.data.readers import ReaderOptions, decode_file, read_examples
from lmforge.data.token_files import load_token_frame
from lmforge.errors import LmforgeError
from lmforge.inference.predictor import Predictor
from lmforge.runs import read_table_for, run_config_for
from lmforge.tasks.embedding import text_ids

log = logging.getLogger(__name__)


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
    """Evaluate a run or model directory on a labeled file (or on the run's own ``split``); return
    the metrics.

    Rows with empty text or no label are dropped and counted; duplicates are kept (an
    evaluation set is measured as given).

    Args:
        task: The task of a model directory lmforge did not train (e.g. 'embedding').
        corpus: Embedding models: more documents to rank besides the file's positives.
        perturbations: Also score the file's texts perturbed this way ("typos", "casing",
            "word_drop"; labels unchanged): ``metrics["robustness"][kind]``.
        perturb_rate: How much each perturbation changes (see
            :func:`lmforge.data.augmentation.perturb`).
        split: "validation" or "test": the run's own rows instead of ``data`` (text
            classifiers and regressors).
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
    """Documents: one per line of a text file, or the ``text`` column of a CSV/TSV/JSONL/Parquet
    file."""
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
    token and perplexity, over blocks of the model's training length cut the way its run cut
    them."""
    from lmforge.tasks.language_modeling import evaluate_loss

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
    task.bind(predictor.tokenizer)
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
