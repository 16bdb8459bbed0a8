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
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """``$LMFORGE_CACHE`` or ``~/.cache/lmforge``."""
    return Path(os.environ.get("LMFORGE_CACHE", Path.home() / ".cache" / "lmforge"))


def tokenizer_fingerprint(tokenizer: Any) -> str:
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


def tokenize_texts(texts: Sequence[str], tokenizer: Any, max_length: int,
                   use_cache: bool = True) -> tuple[list[np.ndarray], bool]:
    """Token ids (with special tokens, truncated to ``max_length``) for each text.

    Returns:
        The id arrays, and whether they came from the cache.
    """
    if not texts:
        return [], False
    key = hashlib.sha256()
    key.update(f"{tokenizer_fingerprint(tokenizer)}|{max_length}|{len(texts)}".encode())
    for text in texts:
        key.update(text.encode("utf-8", "surrogatepass") + b"\x00")
    path = cache_root() / "tokens" / f"{key.hexdigest()[:32]}.npz"
    if use_cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as cached:
                ids, offsets = cached["ids"], cached["offsets"]
            if len(offsets) == len(texts) + 1:
                return [ids[offsets[i]:offsets[i + 1]] for i in range(len(texts))], True
        except Exception:  # any damage (truncated zip, garbage, wrong arrays): rebuild it
            log.warning("token cache %s is unreadable; tokenizing again", path)
    with tokenizer_threads():
        encoded = tokenizer(list(texts), truncation=True, max_length=max_length,
                            add_special_tokens=True, return_attention_mask=False)["input_ids"]
    rows = [np.asarray(row, dtype=np.int32) for row in encoded]
    if use_cache:
        _save_atomically(path, rows)
    return rows, False


def _save_atomically(path: Path, rows: list[np.ndarray]) -> None:
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    ids = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, ids=ids, offsets=offsets)
        os.replace(tmp, path)
    except OSError as err:  # a read-only cache must not stop training
        log.warning("could not write token cache %s: %s", path, err)
