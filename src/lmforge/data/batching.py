"""Datasets of token ids and the collator that pads each batch to its own longest row."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

IGNORE_INDEX = -100  # label positions the loss skips (PyTorch's and Hugging Face's default)


class EncodedDataset(Dataset):
    """Token-id rows with optional labels (class ids, float targets, or tag ids per word) and
    pair starts.

    For token classification ``labels`` holds each sentence's word tags (what metrics compare
    with), ``token_labels`` the sub-token labels the model trains on, and ``word_ids`` which
    word each sub-token belongs to.
    """

    def __init__(
        self,
        input_ids: Sequence[np.ndarray],
        labels: np.ndarray | None = None,
        pair_starts: np.ndarray | None = None,
        token_labels: Sequence[np.ndarray] | None = None,
        word_ids: np.ndarray | None = None,
    ):
        if labels is not None and len(labels) != len(input_ids):
            raise ValueError(f"{len(input_ids)} rows but {len(labels)} labels")
        self.input_ids = input_ids
        self.labels = labels
        self.pair_starts = pair_starts
        self.token_labels = token_labels
        self.word_ids = word_ids

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        """Tokens of each row."""
        return [len(row) for row in self.input_ids]

    def __getitem__(self, i: int) -> dict[str, object]:
        item: dict[str, object] = {"input_ids": self.input_ids[i]}
        if self.pair_starts is not None:
            item["pair_start"] = int(self.pair_starts[i])
        if self.token_labels is not None:
            item["token_labels"] = self.token_labels[i]
        elif self.labels is not None:
            item["labels"] = self.labels[i]
        return item

    def collator(self, pad_token_id: int, pad_to_multiple_of: int | None) -> PaddingCollator:
        """The collator that batches this dataset's items."""
        return PaddingCollator(pad_token_id, pad_to_multiple_of)


def pad_rows(
    rows: Sequence[np.ndarray], pad_id: int, multiple: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Id rows right-padded to the longest (rounded up to ``multiple``): ids (B, T) and the
    attention mask (B, T), 1 on real tokens. Every collator pads through here."""
    width = max(len(row) for row in rows)
    if multiple:
        width = -(-width // multiple) * multiple
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(np.asarray(row), dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


class PaddingCollator:
    """Pad to the longest row of the batch (dynamic padding), optionally to a multiple of 8.

    A multiple of 8 keeps matmul shapes friendly to bf16/tensor-core kernels at the cost of
    at most 7 pad tokens per row.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = 8):
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, batch: list[dict[str, object]]) -> dict[str, torch.Tensor]:
        ids, mask = pad_rows(
            [item["input_ids"] for item in batch], self.pad_token_id, self.multiple
        )
        width = ids.shape[1]
        out = {"input_ids": ids, "attention_mask": mask}
        if "pair_start" in batch[0]:  # text pairs: token type 1 from the second text on (BERT)
            starts = torch.tensor([item["pair_start"] for item in batch]).unsqueeze(1)  # (B, 1)
            out["token_type_ids"] = (
                (torch.arange(width).unsqueeze(0) >= starts) & mask.bool()
            ).long()  # (B, T)
        if "labels" in batch[0]:
            out["labels"] = torch.as_tensor(np.stack([item["labels"] for item in batch]))
        if "token_labels" in batch[0]:  # one label per sub-token; padding is ignored by the loss
            labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
            for row, item in enumerate(batch):
                labels[row, : len(item["token_labels"])] = torch.as_tensor(item["token_labels"])
            out["labels"] = labels
        return out


def ragged(rows: Sequence[np.ndarray]) -> np.ndarray:
    """A 1-D object array holding one array per row (sentences differ in length).

    Unlike ``np.array(rows, dtype=object)`` it never turns equal-length rows into a 2-D array.
    """
    out = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):
        out[i] = row
    return out


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first) for inference.

    Sorting by length wastes almost no compute on padding; callers restore input order.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def padded_tokens(batch: Sequence[int], lengths: Sequence[int]) -> int:
    """Tokens a dynamically padded batch computes on: rows x its longest row."""
    return len(batch) * max(lengths[i] for i in batch)
