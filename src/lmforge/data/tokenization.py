"""Tokenize texts once: results are cached on disk, keyed by tokenizer, length and texts.

The cache is a ``.npz`` of a flat int32 token array plus row offsets, read with
``allow_pickle=False``, so a cache file can never execute code. A second run on the same
data and tokenizer skips tokenization entirely.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """``$LMFORGE_CACHE`` or ``~/.cache/lmforge``."""
    return Path(os.environ.get("LMFORGE_CACHE", Path.home() / ".cache" / "lmforge"))


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A stable hash of everything that decides the token ids of a text."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Truncation/padding settings change with every call; they do not change the ids we store.
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        state = json.dumps(state, sort_keys=True)
    else:
        state = repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{type(tokenizer).__name__}|{state}".encode()).hexdigest()[:16]


@contextlib.contextmanager
def tokenizer_threads() -> Iterator[None]:
    """Let the fast tokenizer encode a batch on all cores, then switch its threads off again.

    Measured on 200k texts (benchmarks/preprocess.py, 2 cores): the tokenizer's own threads
    1.45x one thread, Datasets ``map(num_proc=2)`` 1.24x (process start-up and pickling). Off
    outside this block (the CLI's default), so DataLoader workers forked later do not inherit
    a thread pool.
    """
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


@dataclass
class Tokenized:
    """Token ids per row; for text pairs, where each row's second segment starts (token types);
    for pre-split words (NER), the word each sub-token belongs to (-1: a special token)."""

    ids: list[np.ndarray]
    pair_starts: np.ndarray | None
    cached: bool
    word_ids: list[np.ndarray] | None = None


def tokenize_texts(
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    use_cache: bool = True,
) -> tuple[list[np.ndarray], bool]:
    """Token ids (with special tokens, truncated to ``max_length``) for each text.

    Returns:
        The id arrays, and whether they came from the cache.
    """
    out = tokenize(texts, tokenizer, max_length, use_cache)
    return out.ids, out.cached


def _cache_path(
    tokenizer: PreTrainedTokenizerBase, max_length: int, kind: str, rows: Sequence[Sequence[str]]
) -> Path:
    """The cache file of these rows (each row one or more strings: a text, a pair, a sentence's
    words)."""
    key = hashlib.sha256()
    key.update(f"{tokenizer_fingerprint(tokenizer)}|{max_length}|{len(rows)}|{kind}".encode())
    for row in rows:
        for part in row:
            key.update(part.encode("utf-8", "surrogatepass") + b"\x1f")
        key.update(b"\x00")
    return cache_root() / "tokens" / f"{key.hexdigest()[:32]}.npz"


def _load_cache(path: Path, n: int) -> Tokenized | None:
    """The cached rows, or None when there is no usable cache file."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as cached:
            ids, offsets = cached["ids"], cached["offsets"]
            starts, words = cached.get("starts"), cached.get("words")
    except Exception:  # any damage (truncated zip, garbage, wrong arrays): rebuild it
        log.warning("token cache %s is unreadable; tokenizing again", path)
        return None
    if len(offsets) != n + 1:
        return None
    cut = [slice(offsets[i], offsets[i + 1]) for i in range(n)]
    return Tokenized(
        [ids[s] for s in cut], starts, True, [words[s] for s in cut] if words is not None else None
    )


def tokenize(
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    use_cache: bool = True,
    pairs: Sequence[str] | None = None,
) -> Tokenized:
    """Token ids of texts, or of text pairs (``[CLS] a [SEP] b [SEP]``, the longer side truncated
    first).

    For models with token types (BERT), ``pair_starts[i]`` is the position where row i's
    second text begins, so the collator can rebuild ``token_type_ids`` without storing them.
    """
    if not texts:
        return Tokenized([], None, False)
    if pairs is not None and len(pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs")
    rows = [(t,) for t in texts] if pairs is None else list(zip(texts, pairs, strict=True))
    # The key hashes the whole tokenizer (~90 ms for a 30k vocabulary): only when the cache is used.
    path = (
        _cache_path(tokenizer, max_length, "pairs" if pairs is not None else "texts", rows)
        if use_cache
        else None
    )
    if path is not None and (hit := _load_cache(path, len(texts))) is not None:
        return hit
    typed = pairs is not None and "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    with tokenizer_threads():
        encoded = tokenizer(
            list(texts),
            list(pairs) if pairs is not None else None,
            truncation="longest_first" if pairs is not None else True,
            max_length=max_length,
            add_special_tokens=True,
            return_attention_mask=False,
            return_token_type_ids=typed,
        )
    ids = [np.asarray(row, dtype=np.int32) for row in encoded["input_ids"]]
    starts = None
    if typed:
        # Where token type 1 begins (the row's length when the second text was truncated away).
        starts = np.array(
            [
                next((i for i, t in enumerate(types) if t == 1), len(types))
                for types in encoded["token_type_ids"]
            ],
            dtype=np.int32,
        )
    out = Tokenized(ids, starts, False)
    if path is not None:
        _save_atomically(path, out)
    return out


def tokenize_words(
    sentences: Sequence[Sequence[str]],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    use_cache: bool = True,
) -> Tokenized:
    """Token ids of pre-split sentences (NER), with the word index of every sub-token.

    ``word_ids[i][j]`` is the word that sub-token ``j`` of sentence ``i`` belongs to, or -1
    for special tokens. Words past ``max_length`` sub-tokens are cut off (they have no
    sub-token); a word the tokenizer reduces to nothing (a lone control character) neither.
    """
    if not sentences:
        return Tokenized([], None, False, [])
    if not getattr(tokenizer, "is_fast", False):
        from lmforge.errors import LmforgeError

        raise LmforgeError(
            "token classification needs a fast (Rust) tokenizer to align words and sub-tokens; "
            "this model only ships a slow one"
        )
    path = _cache_path(tokenizer, max_length, "words", sentences) if use_cache else None
    if path is not None and (hit := _load_cache(path, len(sentences))) is not None:
        return hit
    with tokenizer_threads():
        encoded = tokenizer(
            [list(words) for words in sentences],
            is_split_into_words=True,
            truncation=True,
            max_length=max_length,
            add_special_tokens=True,
            return_attention_mask=False,
        )
    ids = [np.asarray(row, dtype=np.int32) for row in encoded["input_ids"]]
    words = [
        np.array([-1 if w is None else w for w in encoded.word_ids(i)], dtype=np.int32)
        for i in range(len(ids))
    ]
    out = Tokenized(ids, None, False, words)
    if path is not None:
        _save_atomically(path, out)
    return out


def _save_atomically(path: Path, out: Tokenized) -> None:
    offsets = np.zeros(len(out.ids) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in out.ids], out=offsets[1:])
    arrays = {
        "ids": np.concatenate(out.ids) if out.ids else np.zeros(0, dtype=np.int32),
        "offsets": offsets,
    }
    if out.pair_starts is not None:
        arrays["starts"] = out.pair_starts
    if out.word_ids is not None:
        arrays["words"] = (
            np.concatenate(out.word_ids) if out.word_ids else np.zeros(0, dtype=np.int32)
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError as err:  # a read-only cache must not stop training
        log.warning("could not write token cache %s: %s", path, err)
