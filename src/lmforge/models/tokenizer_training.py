"""Train a tokenizer from scratch on a streamed corpus, for pretraining a model from scratch.

Two kinds, after the models they serve:

- ``bpe``: byte-level BPE, GPT-2 style, for causal (decoder) models. Text is first mapped to
  bytes, so every string encodes, nothing is ever unknown, and decoding gives back the exact
  input. ``<|endoftext|>`` is bos, eos and unk (as in GPT-2); padding has its own token
  ``<|pad|>``, because collators mask pad positions out of the loss and a shared eos/pad
  id would teach the model never to end a document.
- ``wordpiece``: BERT style, for masked-LM (encoder) models: ``[PAD] [UNK] [CLS] [SEP] [MASK]``,
  BERT's normalizer and pre-tokenizer, and ``[CLS] a [SEP] (b [SEP])`` added on encoding.

Training streams: ``Tokenizer.train_from_iterator`` counts words batch by batch, so memory
grows with the number of distinct words, not with the corpus. The result is saved with
``save_pretrained``, so ``AutoTokenizer.from_pretrained(out_dir)`` loads it like any hub tokenizer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

log = logging.getLogger(__name__)

TokenizerKind = Literal["bpe", "wordpiece"]

BPE_END = "<|endoftext|>"
BPE_PAD = "<|pad|>"
WORDPIECE_SPECIALS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
# BERT's WordPiece keeps the 1000 most frequent characters (HF BertWordPieceTokenizer); rarer
# ones (a stray emoji, one CJK character) become [UNK] instead of crowding out subwords.
_WORDPIECE_ALPHABET_LIMIT = 1000


def train_tokenizer(
    documents: Iterable[str],
    kind: TokenizerKind,
    vocab_size: int,
    out_dir: str | Path,
    min_frequency: int = 2,
    lowercase: bool = False,
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE or a WordPiece tokenizer on a stream of documents and save it.

    Args:
        documents: The training text, e.g. ``lmforge.data.corpus.iter_documents(spec)``;
            consumed once.
        kind: ``bpe`` (causal LM) or ``wordpiece`` (masked LM).
        vocab_size: Size of the vocabulary, special tokens and alphabet included. A small
            corpus may stop short of it (no pair occurs ``min_frequency`` times any more).
        out_dir: Where ``save_pretrained`` writes the tokenizer.
        min_frequency: How often a pair must occur to be merged.
        lowercase: WordPiece only: lowercase and strip accents (an uncased model).
        model_max_length: The longest sequence the model will take, stored with the tokenizer.

    Returns:
        The trained tokenizer, as loaded by ``AutoTokenizer.from_pretrained(out_dir)``.
    """
    if kind not in ("bpe", "wordpiece"):
        raise LmforgeError(
            f"unknown tokenizer kind {kind!r}; use bpe (causal LM) or wordpiece (masked LM)"
        )
    if kind == "bpe" and lowercase:
        raise LmforgeError(
            "lowercase applies to wordpiece tokenizers; byte-level BPE keeps text exactly"
        )
    if min_frequency < 1:
        raise LmforgeError(f"min_frequency must be at least 1, not {min_frequency}")
    if model_max_length < 1:
        raise LmforgeError(f"model_max_length must be at least 1, not {model_max_length}")
    counted = _CountingIterator(documents)
    backend = (
        _train_bpe(counted, vocab_size, min_frequency)
        if kind == "bpe"
        else _train_wordpiece(counted, vocab_size, min_frequency, lowercase)
    )
    if counted.count == 0:
        raise LmforgeError("no documents to train the tokenizer on; check the corpus")
    trained = backend.get_vocab_size()
    if trained < vocab_size:
        log.warning(
            "the tokenizer has %d tokens, fewer than vocab_size %d: no pair left occurs at least "
            "%d times in the %d documents",
            trained,
            vocab_size,
            min_frequency,
            counted.count,
        )
    return _save(backend, kind, Path(out_dir), model_max_length)


class _CountingIterator:
    """Passes documents through and counts them (an empty corpus must not train silently)."""

    def __init__(self, documents: Iterable[str]):
        self._documents = documents
        self.count = 0

    def __iter__(self) -> Iterator[str]:
        for document in self._documents:
            self.count += 1
            yield document


def _train_bpe(documents: Iterable[str], vocab_size: int, min_frequency: int) -> Tokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = [BPE_END, BPE_PAD]
    if vocab_size < len(alphabet) + len(specials):
        raise LmforgeError(
            f"vocab_size {vocab_size} is too small for byte-level BPE: its {len(alphabet)} bytes "
            f"and {len(specials)} special tokens need at least {len(alphabet) + len(specials)}"
        )
    tokenizer = Tokenizer(models.BPE())
    # add_prefix_space=False: decode(encode(text)) must give back text exactly, first word included.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer)
    return tokenizer


def _train_wordpiece(
    documents: Iterable[str], vocab_size: int, min_frequency: int, lowercase: bool
) -> Tokenizer:
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    specials = list(WORDPIECE_SPECIALS.values())
    if vocab_size <= len(specials):
        raise LmforgeError(
            f"vocab_size {vocab_size} is too small for WordPiece: it must exceed the "
            f"{len(specials)} special tokens plus the corpus alphabet"
        )
    tokenizer = Tokenizer(models.WordPiece(unk_token=WORDPIECE_SPECIALS["unk_token"]))
    # Accents are stripped (after NFD) only for an uncased model, as in BERT's uncased vocabularies.
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        limit_alphabet=_WORDPIECE_ALPHABET_LIMIT,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer)
    trained = tokenizer.get_vocab_size()
    if trained > vocab_size:
        # The trainer keeps every character (and its ## continuation) whatever vocab_size says.
        raise LmforgeError(
            f"vocab_size {vocab_size} is too small for this corpus: its characters, their ## "
            f"continuations and the special tokens already make {trained}; raise vocab_size "
            f"well above {trained}"
        )
    cls, sep = WORDPIECE_SPECIALS["cls_token"], WORDPIECE_SPECIALS["sep_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))],
    )
    return tokenizer


def _save(
    backend: Tokenizer, kind: str, out_dir: Path, model_max_length: int
) -> PreTrainedTokenizerFast:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if kind == "bpe":
        # No token_type_ids: GPT-2 would add the embedding of token id 0 to every position.
        wrapped = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            bos_token=BPE_END,
            eos_token=BPE_END,
            unk_token=BPE_END,
            pad_token=BPE_PAD,
            model_max_length=model_max_length,
            model_input_names=["input_ids", "attention_mask"],
            clean_up_tokenization_spaces=False,
        )
    else:
        # token_type_ids: segment ids for text pairs, as BERT-style encoders expect.
        wrapped = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            model_max_length=model_max_length,
            model_input_names=["input_ids", "token_type_ids", "attention_mask"],
            clean_up_tokenization_spaces=False,
            **WORDPIECE_SPECIALS,
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        wrapped.save_pretrained(out_dir)
    except OSError as err:
        raise LmforgeError(
            f"cannot save the tokenizer to {out_dir}: {err.strerror}; choose a writable directory"
        ) from None
    # Return what a later run will load, so a save/load difference shows up now, not then.
    return AutoTokenizer.from_pretrained(out_dir)
