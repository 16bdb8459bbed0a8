"""The contract every task implements, with the defaults most tasks keep.

A task is what turns a model into something that answers one kind of question: its label
space, its model head, how examples become tensors, its metrics and how logits become
answers. Callers outside ``tasks/`` only use this interface and its capability flags; they
never name a task. A new task subclasses :class:`Task`, overrides what differs, and adds one
line to :mod:`lmforge.tasks.registry`.

The flags say what a task can do, so that recipes ask the task instead of branching on its name:

- ``labeled``: examples carry a label column (classification, regression, NER).
- ``word_level``: one prediction per word (NER), read from token files.
- ``language_modeling``: raw-text corpora cut into blocks, scored by the loss alone
  (trained by the pretraining recipe, :mod:`lmforge.pretraining.recipe`).
- ``generative``: generates text (``lmforge generate``, ``/v1/generate``, the OpenAI routes).
- ``smoothable``: one class per target, so label smoothing applies.
- ``soft_targets``: what distillation and ensembles compare: "softmax" (class
  probabilities), "sigmoid" (per-label probabilities), "value" (a number), or None.
- ``endpoint``: the serving endpoint (``/v1/<endpoint>``), or None when it is not served.
- ``onnx_exportable``: the model is a plain Hugging Face model whose ``logits`` output is the
  answer, so an ONNX graph of it serves the task (classifiers, regressors, taggers).
- ``scores_pairs``: with a text pair column, the model reads both texts as one input (a
  cross-encoder); False where pairs are something else (the embedding task's positives).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from lmforge.data.batching import EncodedDataset
    from lmforge.inference.predictor import Predictor


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities of each row (numerically stable)."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class Task:
    """Label space, model head, data encoding, metrics and decoding of one kind of task."""

    name: ClassVar[str] = ""
    peft_task_type: ClassVar[str | None] = None  # PEFT's TaskType (None: a plain module)
    labeled: ClassVar[bool] = True
    word_level: ClassVar[bool] = False
    language_modeling: ClassVar[bool] = False
    generative: ClassVar[bool] = False
    smoothable: ClassVar[bool] = False
    soft_targets: ClassVar[str | None] = None
    endpoint: ClassVar[str | None] = None
    scores_pairs: ClassVar[bool] = True
    onnx_exportable: ClassVar[bool] = False

    # Embedding rows this task added to the tokenizer (chat markers): adapter methods train them.
    new_token_ids: Sequence[int] = ()

    # --- what callers ask -----------------------------------------------------------------
    @property
    def scores_texts(self) -> bool:
        """Whether one text (or pair) maps to one label or score: what ``--split`` and
        ``--perturb`` evaluate, and what a table of texts and labels trains."""
        return self.labeled and not self.word_level and not self.language_modeling

    @property
    def ensembles(self) -> bool:
        """Whether the probabilities of several models of this task can be averaged."""
        return self.soft_targets in ("softmax", "sigmoid", "value") and not self.word_level

    # --- labels ---------------------------------------------------------------------------
    def configure(self, options: Mapping[str, Any]) -> None:
        """Read the data settings saved with a model (``lmforge.json``); most tasks need none."""

    def label_names(self, train_labels: Sequence[str], fixed: Sequence[str] | None) -> list[str]:
        """The ordered label list of a new model, from the training labels or ``data.labels``."""
        if fixed:
            raise LmforgeError(
                f"data.labels lists class names; task {self.name} has no classes: "
                "remove data.labels"
            )
        return []

    def strata(self, labels: Sequence[str]) -> list[str]:
        """What carved validation/test splits keep the shares of (default: nothing)."""
        return ["all"] * len(labels)

    def encode_labels(
        self, labels: Sequence[str], label_names: Sequence[str], source: str
    ) -> np.ndarray:
        """Label strings to what the model is trained against (ids, targets)."""
        raise LmforgeError(f"task {self.name} has no labels to encode ({source})")

    # --- data -----------------------------------------------------------------------------
    def encode(
        self,
        frame: pd.DataFrame,
        name: str,
        tokenizer: PreTrainedTokenizerBase,
        label_names: list[str],
        max_length: int,
    ) -> torch.utils.data.Dataset:
        """One split as a dataset that names its collator: token ids (cached), pair starts for
        text pairs, and label ids or targets. Tasks whose examples are not one text with a
        label (NER's words, embedding pairs) override it."""
        import logging

        from lmforge.data.batching import EncodedDataset
        from lmforge.data.tokenization import tokenize

        pairs = frame["text_pair"].tolist() if "text_pair" in frame else None
        encoded = tokenize(frame["text"].tolist(), tokenizer, max_length, pairs=pairs)
        logging.getLogger(__name__).debug(
            "%s: %d rows tokenized%s", name, len(encoded.ids), " (cached)" if encoded.cached else ""
        )
        labels = self.encode_labels(frame["label"].tolist(), label_names, f"{name} data")
        return EncodedDataset(encoded.ids, labels, encoded.pair_starts)

    def split_outputs(
        self, predictor: Predictor, frame: pd.DataFrame, batch_size: int
    ) -> np.ndarray:
        """The saved model's outputs on one split's rows (what ``compute_metrics`` reads). The
        split's texts were tokenized for training: the saved tokenizer hits the same cache."""
        pairs = frame["text_pair"].tolist() if "text_pair" in frame else None
        return predictor.logits(frame["text"].tolist(), batch_size, use_cache=True, pairs=pairs)

    def rows_outputs(
        self, logits: np.ndarray, dataset: EncodedDataset, rows: np.ndarray
    ) -> np.ndarray:
        """The model's raw logits of ``dataset``'s ``rows`` (in that order) as
        ``compute_metrics`` reads them (NER: per word, not per sub-token)."""
        return logits

    # --- model ----------------------------------------------------------------------------
    def load_model(
        self, location: str, label_names: Sequence[str] | None = None, **kwargs: Any
    ) -> PreTrainedModel:
        """The model at ``location``; with ``label_names``, a new head for them (training)."""
        raise NotImplementedError

    # --- results --------------------------------------------------------------------------
    def compute_metrics(
        self, logits: np.ndarray, labels: np.ndarray, label_names: Sequence[str]
    ) -> dict[str, Any]:
        """Metrics of ``logits`` against ``labels`` (floats for the headline numbers)."""
        raise LmforgeError(f"task {self.name} is scored by its loss, not by predictions")

    def decode(self, logits: np.ndarray, label_names: Sequence[str]) -> list[dict[str, Any]]:
        """One answer per row (a label and probabilities, a score, a vector, ...)."""
        raise LmforgeError(
            f"a {self.name} model generates text: use `lmforge generate`, not predict"
        )

    def predict(
        self,
        predictor: Predictor,
        texts: Sequence[str],
        batch_size: int,
        pairs: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """One answer per text: the logits decoded (NER answers with entity spans)."""
        return self.decode(predictor.logits(texts, batch_size, pairs=pairs), predictor.label_names)

    def tune(
        self, logits: np.ndarray, labels: np.ndarray, label_names: Sequence[str], metric: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Settings tuned on validation after training and saved with the model (multi-label
        thresholds): (settings for ``lmforge.json``, entries for ``metrics.json``)."""
        return {}, {}

    # --- ensembles ------------------------------------------------------------------------
    def to_probabilities(self, logits: np.ndarray) -> np.ndarray:
        """What an ensemble averages (Lakshminarayanan et al. 2017: probabilities, not logits)."""
        if self.soft_targets == "softmax":
            return softmax(logits)
        if self.soft_targets == "sigmoid":
            return 1.0 / (1.0 + np.exp(-logits))
        if self.soft_targets == "value":
            return logits
        raise LmforgeError(f"task {self.name} has no probabilities to average")

    def combine(
        self, members: Sequence[tuple[Task, Sequence[str]]], label_names: Sequence[str]
    ) -> None:
        """Take the settings of an ensemble of ``members`` ((task, its label order) each) that
        answers in ``label_names`` order; most tasks have none."""

    def from_probabilities(self, probabilities: np.ndarray) -> np.ndarray:
        """Back to the logit space ``compute_metrics`` reads (argmax and thresholds unchanged)."""
        tiny = np.finfo(np.float32).tiny
        if self.soft_targets == "softmax":
            return np.log(np.maximum(probabilities, tiny))
        if self.soft_targets == "sigmoid":
            p = np.clip(probabilities, tiny, 1 - 1e-7)
            return np.log(p) - np.log1p(-p)
        return probabilities
