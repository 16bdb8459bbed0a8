"""Embeddings and retrieval: contrastive fine-tuning of a sentence encoder.

Training data are (query, positive[, hard negative]) text pairs: ``data.text_column`` is
the query, ``data.text_pair_column`` the positive, ``data.negative_column`` an optional hard
negative. Every other row's positive in the batch is a negative too (in-batch negatives;
:class:`lmforge.models.bi_encoder.BiEncoder`), so larger batches give a harder task. Rows
that share a positive text (many queries of one intent) are never negatives of each other.

The model is the encoder with mean pooling (L2-normalized); it saves as a plain Hugging
Face directory that ``AutoModel`` and ``sentence_transformers.SentenceTransformer`` load.
Metrics rank a corpus for every distinct query of a split: the corpus is the split's
distinct positives (plus, for ``lmforge eval --corpus``, extra documents), a query's
relevant documents every positive it is paired with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lmforge.errors import LmforgeError
from lmforge.evaluation.retrieval import retrieval_metrics
from lmforge.models.bi_encoder import BiEncoder, PairCollator
from lmforge.tasks.base import Task


class ContrastiveDataset(torch.utils.data.Dataset):
    """Query ids with their positive (and hard negative) ids; ``labels`` (N, 2) holds the ids of
    each row's query text and positive text, so that metrics know which rows share them."""

    def __init__(
        self,
        input_ids: Sequence[np.ndarray],
        positive_ids: Sequence[np.ndarray],
        labels: np.ndarray,
        negative_ids: Sequence[np.ndarray] | None = None,
    ):
        self.input_ids = input_ids
        self.positive_ids = positive_ids
        self.negative_ids = negative_ids
        self.labels = labels

    @property
    def lengths(self) -> list[int]:
        """Tokens of each query."""
        return [len(row) for row in self.input_ids]

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, object]:
        item: dict[str, object] = {
            "input_ids": self.input_ids[i],
            "positive_ids": self.positive_ids[i],
            "positive_group": int(self.labels[i, 1]),
        }
        if self.negative_ids is not None:
            item["negative_ids"] = self.negative_ids[i]
        return item

    def collator(self, pad_token_id: int, pad_to_multiple_of: int | None) -> PairCollator:
        return PairCollator(pad_token_id, pad_to_multiple_of)


def text_ids(texts: Sequence[str]) -> np.ndarray:
    """The same id for the same text (first-seen order)."""
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(text, len(ids)) for text in texts], dtype=np.int64)


class Embedding(Task):
    """Pairs, the bi-encoder, retrieval metrics and embedding output."""

    name = "embedding"
    peft_task_type = None  # PEFT wraps the encoder inside the bi-encoder as a plain module
    labeled = False  # pairs, not labels
    scores_pairs = False  # a text pair is a training positive; each text is embedded alone
    endpoint = "embed"

    def __init__(self) -> None:
        self.max_length = 128

    def configure(self, options: dict[str, Any]) -> None:
        """``max_length`` (written into the sentence-transformers config of the saved model)."""
        self.max_length = int(options.get("max_length") or self.max_length)

    def label_names(self, train_labels: Sequence[str], fixed: Sequence[str] | None) -> list[str]:
        if fixed:
            raise LmforgeError(
                "data.labels lists class names; task embedding learns from (query, positive) "
                "pairs: remove data.labels"
            )
        return []

    def strata(self, labels: Sequence[str]) -> list[str]:
        """Carved validation/test rows are drawn at random (pairs have no classes to stratify
        by)."""
        return ["all"] * len(labels)

    def encode(
        self, frame: Any, name: str, tokenizer: Any, label_names: list[str], max_length: int
    ) -> ContrastiveDataset:
        """Token ids of queries, positives and negatives (each cached), and the text ids of each
        row."""
        from lmforge.data.tokenization import tokenize

        if "text_pair" not in frame:
            raise LmforgeError(
                "task embedding trains on (query, positive) pairs: set data.text_pair_column to "
                "the column of the positive texts (data.text_column holds the queries)"
            )
        queries, positives = frame["text"].tolist(), frame["text_pair"].tolist()
        negatives = (
            tokenize(frame["negative"].tolist(), tokenizer, max_length).ids
            if "negative" in frame
            else None
        )
        return ContrastiveDataset(
            tokenize(queries, tokenizer, max_length).ids,
            tokenize(positives, tokenizer, max_length).ids,
            np.stack([text_ids(queries), text_ids(positives)], axis=1),
            negatives,
        )

    def split_outputs(self, predictor: Any, frame: Any, batch_size: int) -> np.ndarray:
        """Query and positive embeddings of a split's rows, side by side (N, 2H)."""
        return np.concatenate(
            [
                predictor.logits(frame["text"].tolist(), batch_size, use_cache=True),
                predictor.logits(frame["text_pair"].tolist(), batch_size, use_cache=True),
            ],
            axis=1,
        )

    def load_model(
        self, location: str, label_names: Sequence[str] | None = None, **kwargs: Any
    ) -> BiEncoder:
        """The encoder (``AutoModel``, no task head) with mean pooling."""
        from transformers import AutoModel

        from lmforge.models.loading import load_pretrained

        encoder = load_pretrained(AutoModel, location, "model", **kwargs)
        encoder.config.id2label = {}  # no classes: the model's label list is empty
        return BiEncoder(encoder, max_length=self.max_length)

    def compute_metrics(
        self,
        logits: np.ndarray,
        labels: np.ndarray,
        label_names: Sequence[str],
        extra_corpus: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """recall@1/5/10, MRR and nDCG@10 of every distinct query against the distinct positives.

        Args:
            logits: Query and positive embeddings side by side (N, 2H).
            labels: The ids of each row's query text and positive text (N, 2).
            extra_corpus: Embeddings of more documents to rank (distractors), (D, H).
        """
        width = logits.shape[1] // 2
        queries, positives = logits[:, :width], logits[:, width:]
        query_ids, positive_ids = labels[:, 0], labels[:, 1]
        _, first_query = np.unique(query_ids, return_index=True)
        doc_ids, first_doc = np.unique(positive_ids, return_index=True)
        corpus = positives[first_doc]
        if extra_corpus is not None and len(extra_corpus):
            corpus = np.concatenate([corpus, extra_corpus])
        column = {int(d): c for c, d in enumerate(doc_ids)}
        relevant = {}
        for q, d in zip(query_ids.tolist(), positive_ids.tolist(), strict=True):
            relevant.setdefault(q, set()).add(column[d])
        metrics = retrieval_metrics(
            queries[first_query], corpus, [relevant[int(q)] for q in query_ids[first_query]]
        )
        return {
            "n": int(len(first_query)),
            **{k: float(v) if isinstance(v, float) else v for k, v in metrics.items()},
        }

    def decode(self, logits: np.ndarray, label_names: Sequence[str]) -> list[dict[str, Any]]:
        return [{"embedding": [round(float(x), 6) for x in row]} for row in logits]
