"""Cut a flat token stream into training blocks for causal-LM pretraining, and batch them.

A corpus is one flat token array plus document offsets (document ``d`` is
``tokens[doc_offsets[d]:doc_offsets[d + 1]]``, each ending with an end-of-document token).
Two ways to turn it into fixed-size work:

- **packed**: consecutive ``block_size`` windows over the whole stream (GPT-2, Megatron). No
  padding; documents may straddle blocks; the final partial window is dropped and counted.
- **documents**: one block per document, a long document cut into ``block_size`` chunks. No
  packing, so rows are padded in the collator; costs compute on short documents.

In a packed block the documents can either see each other (plain packing: the end-of-document
token is the only separator the model gets) or be isolated: a block-diagonal causal mask and
position ids that restart at 0 at each document make every document compute exactly what it
would alone (the property ``tests/data/test_lm_data.py`` checks on Llama and GPT-2).

What transformers 5.23 does with such inputs (read in ``masking_utils.py`` and measured):

- ``create_causal_mask`` returns a 4-D ``attention_mask`` *as is*, for every attention
  implementation. ``sdpa`` hands it to ``F.scaled_dot_product_attention``, which takes a bool
  (True = attend) or an additive float mask; ``eager`` *adds* it to the scores, so a bool mask is
  silently wrong there (True adds 1.0, nothing is masked). Hence the additive float mask below:
  0 = attend, ``finfo(dtype).min`` = blocked, the format HF's own ``eager_mask`` builds.
- Llama (RoPE) gives identical logits with or without restarted positions (attention only sees
  relative offsets); GPT-2 (learned absolute positions) needs the restart. Both honour it.
- ``flash_attention_2`` ignores 4-D masks (it isolates through ``position_ids`` instead) and
  ``flex_attention`` needs a ``BlockMask``; :meth:`CausalLMCollator.supports_document_isolation`
  says no for them, and the caller falls back to plain packing.
- Restarted ``position_ids`` with ``attention_mask=None`` are detected as packing by
  ``find_packed_sequence_indices`` only when no KV cache exists: with the default
  ``use_cache=True`` the model builds an empty ``DynamicCache`` even in training and the
  detection is skipped, so documents silently attend across boundaries. An explicit 4-D mask
  does not depend on that.
"""

from __future__ import annotations

import bisect
import inspect
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from lmforge.data.batching import IGNORE_INDEX, pad_rows
from lmforge.errors import LmforgeError, did_you_mean

MODES = ("packed", "documents")


@dataclass(frozen=True)
class BlockPlan:
    """Token ranges of the training blocks and what cutting them cost."""

    ranges: np.ndarray
    """``(n_blocks, 2)`` int64 ``[start, end)`` indices into the token array."""
    dropped_tokens: int
    """Tokens of the final partial block that no block holds ("packed" only)."""
    split_documents: int
    """Documents whose tokens land in more than one block (or partly in the dropped tail)."""


def plan_blocks(doc_offsets: np.ndarray, block_size: int, mode: str) -> BlockPlan:
    """Cut the token stream described by ``doc_offsets`` into blocks.

    Args:
        doc_offsets: ``n_docs + 1`` non-decreasing token offsets; document ``d`` is
            ``[doc_offsets[d], doc_offsets[d + 1])``.
        block_size: tokens per block ("packed") or the longest chunk of a document ("documents").
        mode: ``"packed"`` or ``"documents"`` (see the module docstring).

    Returns:
        The block ranges, in stream order; every token is in exactly one block, except the
        ``dropped_tokens`` at the end of the stream in "packed" mode.
    """
    offsets = _checked_offsets(doc_offsets)
    if block_size < 1:
        raise LmforgeError(f"block_size must be at least 1, got {block_size}")
    if mode == "packed":
        return _plan_packed(offsets, block_size)
    if mode == "documents":
        return _plan_documents(offsets, block_size)
    raise LmforgeError(
        f"unknown packing mode {mode!r}; use one of {', '.join(MODES)}{did_you_mean(mode, MODES)}"
    )


def _checked_offsets(doc_offsets: np.ndarray) -> np.ndarray:
    offsets = np.asarray(doc_offsets)
    if offsets.ndim != 1 or len(offsets) < 2 or not np.issubdtype(offsets.dtype, np.integer):
        raise LmforgeError(
            f"document offsets must be a 1-D integer array of n_docs + 1 values, "
            f"got shape {offsets.shape} of {offsets.dtype}"
        )
    offsets = offsets.astype(np.int64)
    if offsets[0] < 0 or np.any(np.diff(offsets) < 0):
        raise LmforgeError(
            "document offsets must be non-negative and non-decreasing; the offsets file is corrupt"
        )
    return offsets


def _plan_packed(offsets: np.ndarray, block_size: int) -> BlockPlan:
    first, total = int(offsets[0]), int(offsets[-1] - offsets[0])
    n_blocks, dropped = divmod(total, block_size)
    if n_blocks == 0:
        raise LmforgeError(
            f"the corpus has {total} tokens, fewer than one block of {block_size}; "
            "lower block_size or add text"
        )
    starts = first + np.arange(n_blocks, dtype=np.int64) * block_size
    ranges = np.stack([starts, starts + block_size], axis=1)  # (n_blocks, 2)
    # A cut splits a document when it falls strictly inside it; the end of the last block is a
    # cut too when a tail is dropped.
    cuts = first + np.arange(1, n_blocks + (dropped > 0), dtype=np.int64) * block_size
    doc = np.searchsorted(offsets, cuts, side="right") - 1
    split = len(np.unique(doc[offsets[doc] != cuts]))
    return BlockPlan(ranges, int(dropped), split)


def _plan_documents(offsets: np.ndarray, block_size: int) -> BlockPlan:
    lengths = np.diff(offsets)  # (n_docs,)
    chunks = -(-lengths // block_size)  # (n_docs,) 0 for an empty document
    n_blocks = int(chunks.sum())
    if n_blocks == 0:
        raise LmforgeError("the corpus has no tokens; every document is empty")
    doc = np.repeat(np.arange(len(lengths)), chunks)  # (n_blocks,)
    chunk_in_doc = np.arange(n_blocks) - np.repeat(
        np.cumsum(chunks) - chunks, chunks
    )  # (n_blocks,)
    starts = offsets[doc] + chunk_in_doc * block_size
    ends = np.minimum(starts + block_size, offsets[doc + 1])
    return BlockPlan(np.stack([starts, ends], axis=1), 0, int(np.count_nonzero(chunks > 1)))


class PackedBlocks(Dataset):
    """The blocks of a :class:`BlockPlan`, read lazily from a (memory-mapped) token array.

    Each item is ``{"input_ids": (L,) int64}``; with ``boundaries`` also ``"position_ids"``:
    ``(L,)`` int64 restarting at 0 at every document start inside the block and at the block
    start (a document continued from the previous block starts over at 0). The collator derives
    the document segments from the zeros, so no separate document ids are carried.
    """

    def __init__(
        self, tokens: np.ndarray, doc_offsets: np.ndarray, plan: BlockPlan, boundaries: bool
    ):
        self.tokens = tokens
        self.offsets = _checked_offsets(doc_offsets)
        self.ranges = plan.ranges
        self.boundaries = boundaries
        if len(self.ranges) and int(self.ranges[:, 1].max()) > len(tokens):
            raise LmforgeError(
                f"the block plan reaches token {int(self.ranges[:, 1].max())} but the token "
                f"array holds {len(tokens)}; plan and tokens come from different files"
            )

    def __len__(self) -> int:
        return len(self.ranges)

    @property
    def lengths(self) -> list[int]:
        """Tokens of each block."""
        return (self.ranges[:, 1] - self.ranges[:, 0]).tolist()

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        start, end = (int(x) for x in self.ranges[i])
        item = {"input_ids": np.asarray(self.tokens[start:end], dtype=np.int64)}  # (L,)
        if self.boundaries:
            index = np.arange(start, end, dtype=np.int64)  # (L,)
            doc = np.searchsorted(self.offsets, index, side="right") - 1  # (L,)
            item["position_ids"] = index - np.maximum(self.offsets[doc], start)  # (L,)
        return item


class CausalLMCollator:
    """Batch blocks for a Hugging Face causal LM: ``input_ids``, ``labels`` and a mask.

    ``labels`` equal ``input_ids`` (the model shifts them: logits at ``t`` predict label
    ``t + 1``), with ``-100`` on padding; items that carry their own ``labels`` (packed chat
    conversations, -100 outside the assistant's turns) keep them. Plain packing
    (``isolate_documents=False``) keeps the label after each end-of-document token: the model
    sees the previous document, so learning what starts a document is a fair task, and the
    ``(B, T)`` mask only hides padding (items' ``position_ids`` are ignored: the model numbers
    the block 0..T-1 itself).

    With ``isolate_documents`` every document is computed as if alone: the ``(B, 1, T, T)``
    additive mask is causal and block-diagonal, ``position_ids`` restart per document, and the
    label of each segment's first token is ``-100``, because nothing of its own document precedes
    it (the same rule as ``DataCollatorWithFlattening``). Padding tokens attend only to padding,
    so no row of the mask is fully blocked: kernels disagree on such rows (NaN in some), and a
    NaN in a padding row would leak into real tokens through ``0 * NaN`` in the next layer.

    Args:
        pad_token_id: id written into padding ("documents" blocks are shorter than the batch).
        isolate_documents: build the block-diagonal mask; items need ``position_ids``
            (``PackedBlocks(..., boundaries=True)``). Check :meth:`supports_document_isolation`.
        pad_to_multiple_of: round the batch width up (tensor-core friendly shapes).
        mask_dtype: dtype of the 4-D mask; pass the model's dtype (bf16 halves the memory of a
            mask that grows as ``B * T * T``; CPU SDPA accepted a float32 mask with a bf16 model,
            other kernels may insist on matching dtypes).
    """

    def __init__(
        self,
        pad_token_id: int,
        isolate_documents: bool,
        pad_to_multiple_of: int | None = None,
        mask_dtype: torch.dtype = torch.float32,
    ):
        self.pad_token_id = pad_token_id
        self.isolate_documents = isolate_documents
        self.multiple = pad_to_multiple_of
        self.mask_dtype = mask_dtype

    @staticmethod
    def supports_document_isolation(model: torch.nn.Module) -> bool:
        """Whether ``model`` honours this collator's 4-D mask and restarted ``position_ids``.

        True for models whose modeling file builds its mask with transformers'
        ``create_causal_mask`` (which passes a 4-D mask through untouched) and takes
        ``position_ids``, running ``eager`` or ``sdpa`` attention. Verified on Llama and GPT-2.
        """
        from transformers import masking_utils

        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wrapper
        implementation = getattr(base.config, "_attn_implementation", None)
        if implementation not in ("eager", "sdpa"):
            return False
        modeling = sys.modules.get(type(base).__module__)
        builds_mask_with_hf = (
            getattr(modeling, "create_causal_mask", None) is masking_utils.create_causal_mask
        )
        return builds_mask_with_hf and "position_ids" in inspect.signature(base.forward).parameters

    def __call__(self, batch: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        lengths = [len(item["input_ids"]) for item in batch]
        ids, mask = pad_rows(
            [item["input_ids"] for item in batch], self.pad_token_id, self.multiple
        )
        valid, width = mask.bool(), ids.shape[1]  # (B, T)
        if "labels" in batch[0]:  # per-token targets (chat: the assistant's tokens only)
            labels = torch.full_like(ids, IGNORE_INDEX)  # (B, T)
            for row, (item, n) in enumerate(zip(batch, lengths, strict=True)):
                labels[row, :n] = torch.as_tensor(item["labels"], dtype=torch.long)
        else:
            labels = ids.masked_fill(~valid, IGNORE_INDEX)  # (B, T)
        if not self.isolate_documents:
            return {"input_ids": ids, "attention_mask": valid.long(), "labels": labels}

        if "position_ids" not in batch[0]:
            raise LmforgeError(
                "document isolation needs position ids in each block; "
                "build the dataset with PackedBlocks(..., boundaries=True)"
            )
        positions = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T) padding at 0
        for row, (item, n) in enumerate(zip(batch, lengths, strict=True)):
            positions[row, :n] = torch.as_tensor(item["position_ids"], dtype=torch.long)
        starts = (positions == 0) & valid  # (B, T)
        labels = labels.masked_fill(starts, IGNORE_INDEX)
        return {
            "input_ids": ids,
            "attention_mask": self._block_causal_mask(starts, valid),
            "position_ids": positions,
            "labels": labels,
        }

    def _block_causal_mask(self, starts: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        segment = torch.cumsum(starts, dim=1).masked_fill(
            ~valid, -1
        )  # (B, T) padding is segment -1
        width = starts.shape[1]
        causal = torch.ones((width, width), dtype=torch.bool).tril()  # (T, T)
        allowed = causal & (segment[:, :, None] == segment[:, None, :])  # (B, T, T)
        blocked = torch.finfo(self.mask_dtype).min
        mask = torch.zeros(allowed.shape, dtype=self.mask_dtype).masked_fill_(
            ~allowed, blocked
        )  # (B, T, T)
        return mask.unsqueeze(1)  # (B, 1, T, T)


def pack_sequences(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group whole sequences into rows of at most ``capacity`` tokens (best-fit decreasing).

    Longest first, each sequence goes into the row it fills most tightly, or a new row. Unlike
    packing a token stream, no sequence is ever cut (a conversation split across rows would lose
    the context of its answer). Rows list their sequences in input order; the result is a pure
    function of ``lengths``.
    """
    free: list[tuple[int, int]] = []  # (room left, row), sorted
    rows: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        need = int(lengths[i])
        if need > capacity:
            raise LmforgeError(f"a sequence of {need} tokens does not fit in a row of {capacity}")
        k = bisect.bisect_left(free, (need, -1))
        if k < len(free):
            room, row = free.pop(k)
            rows[row].append(i)
            bisect.insort(free, (room - need, row))
        else:
            rows.append([i])
            bisect.insort(free, (capacity - need, len(rows) - 1))
    return [sorted(row) for row in rows]


class PackedSequences(Dataset):
    """Rows of several whole sequences (:func:`pack_sequences`), each with its own labels.

    Each item is ``{"input_ids", "labels", "position_ids"}``, all ``(L,)`` int64; positions
    restart at 0 where each sequence starts, which is what :class:`CausalLMCollator` builds its
    block-diagonal mask from.
    """

    def __init__(
        self, input_ids: Sequence[np.ndarray], labels: Sequence[np.ndarray], capacity: int
    ):
        self.input_ids = input_ids
        self.token_labels = labels
        self.rows = pack_sequences([len(row) for row in input_ids], capacity)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def lengths(self) -> list[int]:
        """Tokens of each row."""
        return [sum(len(self.input_ids[j]) for j in row) for row in self.rows]

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        members = self.rows[i]
        return {
            "input_ids": np.concatenate([self.input_ids[j] for j in members]).astype(np.int64),
            "labels": np.concatenate([self.token_labels[j] for j in members]).astype(np.int64),
            "position_ids": np.concatenate(
                [np.arange(len(self.input_ids[j]), dtype=np.int64) for j in members]
            ),
        }
