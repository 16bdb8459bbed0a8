"""``lmforge monitor replay --ray``: the classification stage as a Ray Data job.

A backfill of years of news is bound by the models, not by reading, storing or judging. So the
driver reads the records and works out, batch by batch, exactly which new documents the local
pipeline would classify (the same batches, the same deduplication against the store and
within the run); Ray Data classifies each batch in a pool of actors that load the models once
(on a local Ray or a cluster: ``--ray ADDRESS``); then the ordinary pipeline stores the
batches in order with those answers. Each batch is classified as one call, as locally, so the
labels, aggregates and alerts equal a local replay's (a test compares them).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from lmforge.apps.monitor import store
from lmforge.apps.monitor.classify import Labels
from lmforge.apps.monitor.config import Fields, FileSource, Models, MonitorConfig
from lmforge.apps.monitor.documents import Document, Rejected, to_document
from lmforge.apps.monitor.sources import Record
from lmforge.errors import LmforgeError

log = logging.getLogger(__name__)


class Precomputed:
    """A classifier that hands out answers computed elsewhere, one pipeline batch per call, in
    order (the pipeline asks once per batch, an empty batch included)."""

    def __init__(self, answers: list[list[Labels]], identity: str):
        self.answers = answers
        self.identity = identity
        self.calls = 0

    def __call__(self, texts: Sequence[str], batch_size: int) -> list[Labels]:
        answer = self.answers[self.calls] if self.calls < len(self.answers) else []
        self.calls += 1
        if len(answer) != len(texts):
            raise LmforgeError(
                "replay --ray: the stream changed while it was classified; run it again"
            )
        return answer


class _ClassifyBatch:
    """A Ray Data actor: loads the models once, then classifies one pipeline batch per row."""

    def __init__(
        self,
        models: dict[str, Any],
        device: str,
        precision: str,
        batch_size: int,
        forward_batch_size: int | None,
    ):
        from lmforge.apps.monitor.classify import Classifier

        settings = Models.model_validate(models)
        self.classifier = Classifier(settings, device, precision, forward_batch_size)
        self.batch_size = batch_size

    def __call__(self, rows: dict[str, Any]) -> dict[str, Any]:
        answers = []
        for texts in rows["texts"]:
            labels = self.classifier(json.loads(texts), self.batch_size)
            answers.append(json.dumps([asdict(label) for label in labels]))
        return {
            "group": rows["group"],
            "labels": answers,
            "identity": [self.classifier.identity] * len(answers),
        }


def batches_to_classify(
    cfg: MonitorConfig, source: FileSource, records: list[Record], engine: Any
) -> list[list[str]]:
    """The texts each pipeline batch of ``records`` will classify: its valid documents not
    stored before it (in the store, or by an earlier batch of this run)."""
    docs = [_document(record, source.fields, cfg.max_text_chars) for record in records]
    with engine.connect() as connection:
        seen = store.known_ids(connection, sorted({d.id for d in docs if d is not None}))
    groups = []
    for start in range(0, len(records), cfg.batch_size):
        texts: dict[str, str] = {}
        for doc in docs[start : start + cfg.batch_size]:
            if doc is not None and doc.id not in seen and doc.id not in texts:
                texts[doc.id] = doc.text
        seen.update(texts)
        groups.append(list(texts.values()))
    return groups


def _document(record: Record, fields: Fields, max_chars: int) -> Document | None:
    if record.fields is None:
        return None
    try:
        return to_document(record.fields, record.source, fields, max_chars)
    except Rejected:
        return None


def classify_on_ray(
    cfg: MonitorConfig,
    models: Models,
    groups: list[list[str]],
    address: str | None,
    workers: int,
) -> Precomputed:
    """Classify every group as one Ray Data job (one row per group, so each is one call to
    the models, as in a local replay)."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise LmforgeError("--ray needs Ray Data: pip install 'ray[data]'") from None
    if workers < 1:
        raise LmforgeError(f"--ray-workers must be at least 1 (got {workers})")
    if address and address != "local":
        ray.init(address=address, ignore_reinit_error=True)
    else:
        ray.init(include_dashboard=False, ignore_reinit_error=True)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)
    items = [{"group": n, "texts": json.dumps(texts)} for n, texts in enumerate(groups) if texts]
    if not items:
        return Precomputed([[] for _ in groups], "")
    dataset = ray.data.from_items(items).map_batches(
        _ClassifyBatch,
        fn_constructor_kwargs={
            "models": models.model_dump(mode="json"),
            "device": cfg.device,
            "precision": cfg.precision,
            "batch_size": cfg.batch_size,
            "forward_batch_size": cfg.forward_batch_size,
        },
        batch_size=1,
        concurrency=workers,
        num_cpus=cpus,
    )
    answers: list[list[Labels]] = [[] for _ in groups]
    identity = ""
    for row in dataset.iter_rows():
        answers[int(row["group"])] = [Labels(**answer) for answer in json.loads(row["labels"])]
        identity = str(row["identity"])
    log.info("ray: classified %d documents in %d batches", sum(map(len, groups)), len(items))
    return Precomputed(answers, identity)
