"""Token classification (NER): one tag per word, entities scored with seqeval.

Sentences come as words with tags (CoNLL or JSONL token files, see
:mod:`lmforge.data.token_files`). The tokenizer splits words into sub-tokens; the model is
trained on the **first sub-token** of each word (the other sub-tokens are ignored by the
loss, label -100), or on every sub-token with ``data.label_all_tokens`` (continuations of
an entity word get its ``I-`` tag). Predictions are always read from each word's first
sub-token, so both options are scored the same way: per word, then per entity.

Everything the task hands to its metrics is word-level: ``logits`` is one ``(words, C)``
array per sentence (:func:`word_logits`), labels one array of tag ids per sentence. A word
without a sub-token (cut off by ``data.max_length``) has NaN logits and is predicted ``O``.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lmforge.data.batching import IGNORE_INDEX, EncodedDataset, ragged
from lmforge.errors import LmforgeError
from lmforge.tasks.base import Task

if TYPE_CHECKING:
    from lmforge.inference.predictor import Predictor
from lmforge.tasks.sequence_classification import with_fixed_labels

log = logging.getLogger(__name__)

# Raw text to words for `predict`: URLs, @mentions and #hashtags stay whole (as in WNUT-17),
# words keep inner apostrophes and hyphens, every other punctuation mark is a word of its own
# (as in CoNLL files), so "Paris," gives the entity "Paris" without the comma.
WORD = re.compile(r"https?://\S+|[@#]?\w+(?:['’\-]\w+)*|[^\w\s]", re.UNICODE)


def split_words(text: str) -> list[tuple[str, int, int]]:
    """(word, start, end) character spans of ``text``."""
    return [(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]


def word_logits(
    token_logits: Sequence[np.ndarray], word_ids: Sequence[np.ndarray], n_words: Sequence[int]
) -> np.ndarray:
    """Per sentence, the logits (words, C) of each word's first sub-token; NaN for a word without
    one."""
    out = []
    for logits, words, n in zip(token_logits, word_ids, n_words, strict=True):
        words = np.asarray(words)[: len(logits)]
        row = np.full((n, logits.shape[-1]), np.nan, dtype=np.float32)
        first = np.flatnonzero((words >= 0) & np.r_[True, words[1:] != words[:-1]])
        row[words[first]] = logits[first]
        out.append(row)
    return ragged(out)


@functools.lru_cache(maxsize=8)
def _inside_tags(label_names: tuple[str, ...]) -> dict[int, int]:
    """Tag id -> the id of its type's I- tag (what continuation sub-tokens learn with
    label_all_tokens)."""
    index = {name: i for i, name in enumerate(label_names)}
    return {
        i: index[f"I-{name[2:]}"]
        for i, name in enumerate(label_names)
        if name[:2] in ("B-", "I-", "E-", "S-") and f"I-{name[2:]}" in index
    }


def _tag_order(tag: str) -> tuple[str, int]:
    prefix, _, kind = tag.partition("-")
    return (kind, "BIES".find(prefix)) if tag != "O" else ("", -1)


class TokenClassification(Task):
    """Tag set, sub-token labels, model head, entity metrics and span decoding."""

    name = "token_classification"
    peft_task_type = "TOKEN_CLS"
    word_level = True
    smoothable = True  # one class per target: label smoothing applies
    endpoint = "tag"
    onnx_exportable = True
    soft_targets = "softmax"  # per labelled sub-token (training/distillation.py)

    def __init__(self) -> None:
        self.scheme = "bio"
        self.label_all_tokens = False

    def configure(self, options: dict[str, Any]) -> None:
        """``tag_scheme`` (bio or bioes) and ``label_all_tokens`` from the data config or a saved
        model."""
        self.scheme = options.get("tag_scheme") or self.scheme
        self.label_all_tokens = bool(options.get("label_all_tokens", self.label_all_tokens))

    def label_names(
        self, train_labels: Sequence[Sequence[str]], fixed: Sequence[str] | None
    ) -> list[str]:
        """``O`` first, then each entity type's B-/I-(/E-/S-) tags, types sorted."""
        present = sorted({tag for tags in train_labels for tag in tags} | {"O"}, key=_tag_order)
        names = with_fixed_labels(present, fixed)
        if len(names) < 2:
            raise LmforgeError(
                "training data has only 'O' tags; token classification needs entity tags "
                "(B-x / I-x) in the training file"
            )
        return names

    def encode_labels(
        self, labels: Sequence[Sequence[str]], label_names: Sequence[str], source: str
    ) -> np.ndarray:
        """Tag ids per sentence (a ragged array); tags the model never saw are an error naming
        them."""
        index = {name: i for i, name in enumerate(label_names)}
        unseen = sorted({tag for tags in labels for tag in tags if tag not in index})
        if unseen:
            shown = ", ".join(repr(u) for u in unseen[:10])
            raise LmforgeError(
                f"{source} has {len(unseen)} tag(s) the model was not trained on: {shown}; "
                f"the model knows: {', '.join(label_names)}"
            )
        return ragged([np.array([index[tag] for tag in tags], dtype=np.int64) for tags in labels])

    def align(
        self, word_ids: np.ndarray, tags: np.ndarray, label_names: Sequence[str]
    ) -> np.ndarray:
        """Sub-token labels: each word's tag on its first sub-token, -100 elsewhere (special tokens,
        and continuation sub-tokens unless ``label_all_tokens``)."""
        out = np.full(len(word_ids), IGNORE_INDEX, dtype=np.int64)
        inside = _inside_tags(tuple(label_names)) if self.label_all_tokens else {}
        previous = -1
        for position, word in enumerate(word_ids):
            if word >= 0:
                if word != previous:
                    out[position] = tags[word]
                elif self.label_all_tokens:
                    out[position] = inside.get(int(tags[word]), tags[word])
            previous = word
        return out

    def encode(
        self, frame: Any, name: str, tokenizer: Any, label_names: list[str], max_length: int
    ) -> Any:
        """Sub-token ids of pre-split sentences, word tags (for metrics) and sub-token labels (for
        the loss)."""
        from lmforge.data.batching import EncodedDataset
        from lmforge.data.tokenization import tokenize_words

        encoded = tokenize_words(frame["tokens"].tolist(), tokenizer, max_length)
        tags = self.encode_labels(frame["label"].tolist(), label_names, f"{name} data")
        targets = [
            self.align(words, row, label_names)
            for words, row in zip(encoded.word_ids, tags, strict=True)
        ]
        cut = sum(
            int(words.max(initial=-1)) + 1 < len(row)
            for words, row in zip(encoded.word_ids, tags, strict=True)
        )
        if cut:
            log.warning(
                "%s: %d of %d sentences are longer than data.max_length=%d sub-tokens; their last "
                "words are not trained on and are predicted O (raise data.max_length to keep them)",
                name,
                cut,
                len(tags),
                max_length,
            )
        return EncodedDataset(
            encoded.ids, tags, token_labels=targets, word_ids=ragged(encoded.word_ids)
        )

    def split_outputs(self, predictor: Any, frame: Any, batch_size: int) -> np.ndarray:
        """Word logits of a split's sentences."""
        return predictor.word_logits(frame["tokens"].tolist(), batch_size, use_cache=True)

    def rows_outputs(
        self, logits: np.ndarray, dataset: EncodedDataset, rows: np.ndarray
    ) -> np.ndarray:
        """Per sub-token logits of ``rows`` -> per word (each word's first sub-token), as the
        final evaluation scores them."""
        lengths = [len(row) for row in dataset.labels[rows]]
        return word_logits(logits, dataset.word_ids[rows], lengths)

    def strata(self, labels: Sequence[Sequence[str]]) -> list[str]:
        """Carved validation/test sets keep the share of sentences that mention an entity."""
        return ["entity" if any(tag != "O" for tag in tags) else "none" for tags in labels]

    def load_model(
        self, location: str, label_names: Sequence[str] | None = None, **kwargs: Any
    ) -> Any:
        """A token-classification model; a new head when ``label_names`` is given."""
        from transformers import AutoModelForTokenClassification

        from lmforge.models.loading import load_pretrained

        if label_names is not None:
            kwargs.update(
                num_labels=len(label_names),
                id2label=dict(enumerate(label_names)),
                label2id={name: i for i, name in enumerate(label_names)},
            )
        return load_pretrained(AutoModelForTokenClassification, location, "model", **kwargs)

    def predicted_tags(self, logits: np.ndarray, label_names: Sequence[str]) -> list[list[str]]:
        """Per sentence, the argmax tag of each word (``O`` for a word without logits)."""
        outside = label_names.index("O") if "O" in label_names else 0
        return [
            [label_names[outside if np.isnan(row).any() else int(row.argmax())] for row in sentence]
            for sentence in logits
        ]

    def compute_metrics(
        self, logits: np.ndarray, label_ids: np.ndarray, label_names: Sequence[str]
    ) -> dict[str, Any]:
        """Entity-level precision, recall and F1 (micro over entities) and per entity type
        (seqeval); also the share of words tagged right and how many words had no prediction (cut
        off)."""
        from seqeval.metrics import classification_report
        from seqeval.scheme import IOB2, IOBES

        predicted = self.predicted_tags(logits, label_names)
        truth = [[label_names[i] for i in row] for row in label_ids]
        # seqeval's strict mode scores an entity only when its boundaries and type are right and the
        # tags form a valid entity under the scheme (the CoNLL-2003 / WNUT-17 convention).
        report = classification_report(
            truth,
            predicted,
            mode="strict",
            scheme=IOBES if self.scheme == "bioes" else IOB2,
            output_dict=True,
            zero_division=0,
        )
        overall = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
        words = sum(len(row) for row in truth)
        right = sum(
            p == t
            for ps, ts in zip(predicted, truth, strict=True)
            for p, t in zip(ps, ts, strict=True)
        )
        return {
            "n": len(truth),
            "precision": float(overall["precision"]),
            "recall": float(overall["recall"]),
            "f1": float(overall["f1-score"]),
            "accuracy": right / words if words else 0.0,
            "entities_true": sum(
                int(r["support"]) for k, r in report.items() if not k.endswith(" avg")
            ),
            "words": words,
            "words_cut_off": int(sum(np.isnan(row).any(axis=-1).sum() for row in logits)),
            "per_type": {
                kind: {
                    "precision": float(r["precision"]),
                    "recall": float(r["recall"]),
                    "f1": float(r["f1-score"]),
                    "support": int(r["support"]),
                }
                for kind, r in sorted(report.items())
                if not kind.endswith(" avg")
            },
        }

    def predict(
        self,
        predictor: Predictor,
        texts: Sequence[str],
        batch_size: int,
        pairs: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Entity spans with character offsets: each text split into words, one tag per word."""
        words = [split_words(text) for text in texts]
        logits = predictor.word_logits([[w for w, _, _ in row] for row in words], batch_size)
        return [
            {"entities": self.entities(text, row, sentence, predictor.label_names)}
            for text, row, sentence in zip(texts, words, logits, strict=True)
        ]

    def decode(self, logits: np.ndarray, label_names: Sequence[str]) -> list[dict[str, Any]]:
        """Per sentence of given words: the tag of each word."""
        return [{"tags": tags} for tags in self.predicted_tags(logits, label_names)]

    def entities(
        self,
        text: str,
        words: Sequence[tuple[str, int, int]],
        logits: np.ndarray,
        label_names: Sequence[str],
    ) -> list[dict[str, Any]]:
        """Entity spans of one raw text: type, text, character offsets and a mean word
        probability."""
        from seqeval.metrics.sequence_labeling import get_entities

        tags = self.predicted_tags([logits], label_names)[0]
        shifted = np.nan_to_num(logits, nan=0.0)
        probs = np.exp(shifted - shifted.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        spans = []
        for kind, first, last in get_entities(tags):
            start, end = words[first][1], words[last][2]
            score = float(
                np.mean([probs[w, label_names.index(tags[w])] for w in range(first, last + 1)])
            )
            spans.append(
                {
                    "type": kind,
                    "text": text[start:end],
                    "start": start,
                    "end": end,
                    "score": round(score, 6),
                }
            )
        return spans
