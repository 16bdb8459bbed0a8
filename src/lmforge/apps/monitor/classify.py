"""Sentiment and topic for a batch of documents, from lmforge run or export directories.

The engine's :class:`~lmforge.inference.predictor.Predictor` does the work (length-sorted
batches, bf16 autocast or ONNX Runtime, whichever the directory holds); this module only maps
its outputs to what the monitor stores and checks that each model is of the right task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lmforge.apps.monitor.config import Models, SentimentModel, TopicModel
from lmforge.apps.monitor.documents import ALL, OTHER
from lmforge.errors import LmforgeError
from lmforge.inference.predictor import Predictor
from lmforge.models.loading import resolve_model_path

CPU_FORWARD_BATCH = 8  # as lmforge serve's (serving/app.py), measured again here: forward_size


@dataclass(frozen=True)
class Labels:
    """What the models say of one document."""

    sentiment: str
    negative: float  # probability of the negative class
    positive: float
    topic: str
    topic_score: float | None


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class Classifier:
    """Both models, loaded once; :meth:`__call__` labels a batch of texts."""

    def __init__(
        self,
        models: Models,
        device: str = "auto",
        precision: str = "auto",
        forward_batch_size: int | None = None,
    ):
        self.forward_batch_size = forward_batch_size
        self.sentiment_setting = models.sentiment
        self.sentiment = self._load_sentiment(models.sentiment, device, precision)
        self.topic_setting = models.topic
        self.topic: Predictor | None = None
        self.topic_vectors: np.ndarray | None = None  # (K, H) unit rows, with descriptions
        self.topic_names: list[str] = []
        if models.topic is not None:
            self._load_topics(models.topic, device, precision)
        self.identity = self._identity(models)

    @staticmethod
    def _load_sentiment(setting: SentimentModel, device: str, precision: str) -> Predictor:
        predictor = Predictor.load(setting.run, device=device, precision=precision)
        if not _single_label(predictor):
            raise LmforgeError(
                f"models.sentiment: {setting.run} is a {predictor.task.name} model; the "
                "sentiment model must be a sequence_classification run or export"
            )
        for role, label in (("negative", setting.negative), ("positive", setting.positive)):
            if label not in predictor.label_names:
                raise LmforgeError(
                    f"models.sentiment.{role}: label {label!r} is not one of the model's labels "
                    f"{predictor.label_names}; set models.sentiment.{role}"
                )
        return predictor

    def _load_topics(self, setting: TopicModel, device: str, precision: str) -> None:
        if setting.descriptions:
            self.topic = Predictor.load(
                resolve_model_path(setting.run or "default"),
                device=device,
                precision=precision,
                task="embedding",
            )
            self.topic_names = list(setting.descriptions)
            self.topic_vectors = _unit(self.topic.logits(list(setting.descriptions.values())))
            return
        self.topic = Predictor.load(setting.run, device=device, precision=precision)
        if self.topic.task.soft_targets not in ("softmax", "sigmoid") or self.topic.task.word_level:
            raise LmforgeError(
                f"models.topic: {setting.run} is a {self.topic.task.name} model; use a "
                "sequence_classification or multi_label_classification run, or give topics "
                "as descriptions:"
            )
        self.topic_names = list(self.topic.label_names)

    def _identity(self, models: Models) -> str:
        """Which models labeled a document, stored with its prediction."""
        parts = [f"sentiment={models.sentiment.run} ({self.sentiment.backend})"]
        if models.topic is not None:
            kind = "descriptions" if models.topic.descriptions else "classifier"
            parts.append(f"topic={models.topic.run or 'default'} ({kind})")
        return "; ".join(parts)

    def forward_size(self, batch_size: int) -> int:
        """Texts per forward pass: ``forward_batch_size``, else 8 on a CPU (length-sorted
        passes of 8 pad less: two MiniLM int8 models on FPB sentences, 2 cores, 408 and 415
        texts/s in passes of 8 against 194 and 208 in passes of 64), else the whole batch."""
        if self.forward_batch_size:
            return self.forward_batch_size
        on_cpu = getattr(self.sentiment, "device", "cpu") == "cpu"
        return min(batch_size, CPU_FORWARD_BATCH) if on_cpu else batch_size

    def __call__(self, texts: Sequence[str], batch_size: int) -> list[Labels]:
        if not texts:
            return []
        batch_size = self.forward_size(batch_size)
        probabilities = _softmax(self.sentiment.logits(list(texts), batch_size))  # (N, C)
        names = self.sentiment.label_names
        negative = probabilities[:, names.index(self.sentiment_setting.negative)]
        positive = probabilities[:, names.index(self.sentiment_setting.positive)]
        sentiment = [names[i] for i in probabilities.argmax(axis=1)]
        topics, scores = self._topics(texts, batch_size)
        return [
            Labels(sentiment[i], float(negative[i]), float(positive[i]), topics[i], scores[i])
            for i in range(len(texts))
        ]

    def _topics(
        self, texts: Sequence[str], batch_size: int
    ) -> tuple[list[str], list[float | None]]:
        if self.topic is None:
            return [ALL] * len(texts), [None] * len(texts)
        outputs = self.topic.logits(list(texts), batch_size)
        if self.topic_vectors is not None:  # cosine to each description
            similarity = _unit(outputs) @ self.topic_vectors.T  # (N, K)
            best = similarity.argmax(axis=1)
            floor = self.topic_setting.min_similarity if self.topic_setting else 0.0
            scores = similarity[np.arange(len(texts)), best]
            topics = [
                self.topic_names[k] if s >= floor else OTHER
                for k, s in zip(best, scores, strict=True)
            ]
            return topics, [float(s) for s in scores]
        task = self.topic.task
        if task.soft_targets == "softmax":
            probabilities = _softmax(outputs)
            best = probabilities.argmax(axis=1)
            scores = probabilities[np.arange(len(texts)), best]
            return [self.topic_names[k] for k in best], [float(p) for p in scores]
        # Multi-label: the most probable of the labels at or above their (tuned) thresholds;
        # a text with none is 'other', scored by its most probable label.
        topics, scores = [], []
        for answer in task.decode(outputs, self.topic_names):
            probability = answer["probabilities"]
            passed = answer["labels"] or [OTHER]
            topic = max(passed, key=lambda name: probability.get(name, -1.0))
            topics.append(topic)
            scores.append(probability.get(topic, max(probability.values())))
        return topics, scores


def _single_label(predictor: Predictor) -> bool:
    """One softmax label per text (what a sequence-classification run predicts)."""
    task = predictor.task
    return task.scores_texts and task.soft_targets == "softmax"


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
