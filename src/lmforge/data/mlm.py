"""Masked-LM batches: pad, pick 15% of the maskable tokens, corrupt them BERT's way.

BERT (Devlin et al., 2019, section 3.1) predicts a random 15% of the tokens; of those, 80% are
replaced by ``[MASK]``, 10% by a random token and 10% left unchanged, so the model cannot learn
that only ``[MASK]`` positions matter. Whole-word masking (the later BERT release) selects all
WordPiece pieces of a word together, so a word is never half given away by its other pieces.

Written by hand rather than wrapping transformers' ``DataCollatorForLanguageModeling`` (5.23),
which differs from this contract in ways the tests would catch:

- its random replacement draws from the whole vocabulary, special tokens included, so
  ``[CLS]``/``[SEP]``/``[PAD]`` turn up in the middle of text;
- its whole-word mode needs ``offset_mapping`` per item (our token files have none) and then
  forces ``mask_replace_prob=1``: no random or unchanged tokens at all;
- it takes a seed but not a shared generator, and builds the special-token mask with a Python
  loop per row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from lmforge.data.batching import IGNORE_INDEX
from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MASK_SHARE = 0.8  # of the selected tokens: replaced by [MASK]
RANDOM_SHARE = 0.1  # replaced by a random token; the remaining 10% stay unchanged


class MaskedLMCollator:
    """Pad a batch of ``{"input_ids": (L,)}`` items and mask it for masked-LM training.

    Selection: each maskable token (not padding, not in ``tokenizer.all_special_ids``, which
    covers ``[CLS] [SEP] [PAD] [MASK] [UNK]`` and BOS/EOS where a tokenizer has them) is selected
    with probability ``mlm_probability``. With ``whole_word`` the draw is made per word and every
    token of a selected word is selected, which still selects ``mlm_probability`` of the tokens
    in expectation (each token is selected exactly when its word is). The 80/10/10 corruption is
    then drawn per token, as in the original whole-word BERT. Random replacements come from the
    vocabulary minus the special ids.

    Words: an item may carry ``word_ids`` ``(L,)`` int (consecutive tokens with equal ids form a
    word, e.g. a fast tokenizer's ``word_ids()`` with None written as -1); otherwise words come
    from the WordPiece rule: a token whose text starts with the continuation prefix (``##``)
    continues the previous word (Google's BERT ``create_pretraining_data.py`` does the same).
    Tokenizers without such a prefix (BPE, SentencePiece) need ``word_ids`` for whole-word masking.

    Randomness: with ``seed`` a private ``torch.Generator`` makes the masks reproducible; with
    ``seed=None`` the global RNG is used (the training engine seeds it). Inside a DataLoader worker
    the collator always uses the worker's global RNG, which PyTorch seeds per worker and per epoch
    from the loader's generator: one generator copied into every worker would repeat the same
    masks in each worker and each epoch.

    Args:
        tokenizer: a Hugging Face tokenizer with a mask and a pad token.
        mlm_probability: share of the maskable tokens to predict.
        whole_word: select whole words instead of single tokens.
        seed: seed of the collator's generator; None to use the global RNG.
        pad_to_multiple_of: round the batch width up (tensor-core friendly shapes).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        mlm_probability: float = 0.15,
        whole_word: bool = False,
        seed: int | None = None,
        pad_to_multiple_of: int | None = None,
    ):
        if not 0.0 < mlm_probability < 1.0:
            raise LmforgeError(f"mlm_probability must be between 0 and 1, got {mlm_probability}")
        if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
            raise LmforgeError(
                "masked-LM training needs a tokenizer with a mask and a pad token "
                "(BERT-style tokenizers have [MASK] and [PAD])"
            )
        self.mlm_probability = mlm_probability
        self.whole_word = whole_word
        self.seed = seed
        self.multiple = pad_to_multiple_of
        self.mask_id = int(tokenizer.mask_token_id)
        self.pad_id = int(tokenizer.pad_token_id)
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        vocab = torch.arange(len(tokenizer))
        self.random_ids = vocab[~torch.isin(vocab, self.special_ids)]  # (V',)
        self.continues_word = _continuation_table(tokenizer) if whole_word else None  # (V,) bool
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def __call__(self, batch: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        ids, valid = self._pad([item["input_ids"] for item in batch], self.pad_id)  # (B, T), (B, T)
        generator = self._current_generator()
        maskable = valid & ~torch.isin(ids, self.special_ids)  # (B, T)
        starts = (
            self._word_starts(batch, ids) if self.whole_word else torch.ones_like(valid)
        )  # (B, T)

        # Draw once per word start; every token takes the draw of the last start at or before it.
        draws = torch.rand(ids.shape, generator=generator) < self.mlm_probability  # (B, T)
        columns = torch.arange(ids.shape[1]).expand_as(ids)  # (B, T)
        word_start = torch.cummax(torch.where(starts, columns, 0), dim=1).values  # (B, T)
        selected = draws.gather(1, word_start) & maskable  # (B, T)

        corruption = torch.rand(ids.shape, generator=generator)  # (B, T)
        to_mask = selected & (corruption < MASK_SHARE)
        to_random = selected & (corruption >= MASK_SHARE) & (corruption < MASK_SHARE + RANDOM_SHARE)
        random_ids = self.random_ids[
            torch.randint(len(self.random_ids), ids.shape, generator=generator)
        ]

        inputs = ids.masked_fill(to_mask, self.mask_id)
        inputs = torch.where(to_random, random_ids, inputs)  # (B, T)
        labels = ids.masked_fill(~selected, IGNORE_INDEX)  # (B, T)
        return {"input_ids": inputs, "attention_mask": valid.long(), "labels": labels}

    def _current_generator(self) -> torch.Generator | None:
        if torch.utils.data.get_worker_info() is not None:
            return None  # the worker's own RNG, seeded per worker and epoch by the DataLoader
        return self.generator

    def _pad(self, rows: list[np.ndarray], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(row) for row in rows)
        if self.multiple:
            width = -(-width // self.multiple) * self.multiple
        out = torch.full((len(rows), width), fill, dtype=torch.long)  # (B, T)
        valid = torch.zeros((len(rows), width), dtype=torch.bool)  # (B, T)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.as_tensor(np.asarray(row, dtype=np.int64))
            valid[i, : len(row)] = True
        return out, valid

    def _word_starts(self, batch: list[dict[str, np.ndarray]], ids: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` True where a token begins a word."""
        if "word_ids" in batch[0]:
            words, _ = self._pad([item["word_ids"] for item in batch], -1)  # (B, T)
            starts = torch.ones_like(ids, dtype=torch.bool)
            starts[:, 1:] = words[:, 1:] != words[:, :-1]
            return starts
        if self.continues_word is None:
            raise LmforgeError(
                "whole-word masking needs word_ids in each item: this tokenizer has no "
                "'##'-style continuation prefix to find words by"
            )
        starts = ~self.continues_word[ids]  # (B, T)
        starts[:, 0] = True
        return starts


def _continuation_table(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor | None:
    """``(V,)`` bool: True for tokens that continue a word (WordPiece ``##x``); None without a
    prefix."""
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    prefix = getattr(model, "continuing_subword_prefix", None)
    if type(model).__name__ != "WordPiece" or not prefix:
        return None
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return torch.tensor([piece.startswith(prefix) for piece in pieces], dtype=torch.bool)
