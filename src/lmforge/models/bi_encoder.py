"""A sentence encoder for contrastive fine-tuning: mean pooling, in-batch negatives, export.

``BiEncoder`` wraps a Hugging Face ``AutoModel``. Queries and positives go through the same
encoder; the loss is MultipleNegativesRankingLoss (every other row's positive is a negative,
plus optional hard negatives). ``write_sentence_transformers_files`` adds the files that let
``sentence_transformers.SentenceTransformer(dir)`` load the saved encoder as
Transformer -> Pooling(mean) [-> Normalize].
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from lmforge.data.batching import pad_rows
from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

# The module paths and config keys of sentence-transformers 2.x-5.x, which 6.x still loads
# (6.x's own save() writes new paths that older versions cannot import): one export for all.
ST_TRANSFORMER = "sentence_transformers.models.Transformer"
ST_POOLING = "sentence_transformers.models.Pooling"
ST_NORMALIZE = "sentence_transformers.models.Normalize"


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors under ``mask`` (as sentence-transformers' mean pooling)."""
    # Half-precision sums over hundreds of tokens lose digits; sentence-transformers
    # accumulates in float32 too.
    dtype = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
    weights = mask.unsqueeze(-1).to(dtype)  # (B, T, 1)
    summed = (hidden.to(dtype) * weights).sum(dim=1)  # (B, H)
    counts = weights.sum(dim=1).clamp(min=1e-9)  # (B, 1)
    return (summed / counts).to(hidden.dtype)  # (B, H)


@dataclass
class BiEncoderOutput(ModelOutput):
    """``loss`` when positives were given; ``logits`` is q (B, H) or [q, p] (B, 2H)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class BiEncoder(torch.nn.Module):
    """One encoder for queries and documents, trained with in-batch negatives."""

    def __init__(
        self,
        encoder: torch.nn.Module,
        scale: float = 20.0,
        normalize: bool = True,
        max_length: int = 512,
    ):
        super().__init__()
        self.encoder = encoder
        self.scale = scale
        self.normalize = normalize
        self.max_length = (
            max_length  # recorded for sentence-transformers, which truncates the same way
        )

    def save_pretrained(
        self, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None, **kwargs: Any
    ) -> None:
        """The encoder as a plain Hugging Face directory plus the sentence-transformers files.

        ``state_dict``: full weights of this module (``encoder.``-prefixed), e.g. gathered from
        FSDP shards.
        """
        if state_dict is not None:
            state_dict = {k.removeprefix("encoder."): v for k, v in state_dict.items()}
        self.encoder.save_pretrained(path, state_dict=state_dict, **kwargs)
        write_sentence_transformers_files(
            Path(path), self.encoder.config.hidden_size, self.max_length, self.normalize
        )

    @property
    def config(self) -> PretrainedConfig:
        return self.encoder.config

    @property
    def supports_gradient_checkpointing(self) -> bool:
        return bool(getattr(self.encoder, "supports_gradient_checkpointing", False))

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.encoder.gradient_checkpointing_enable(**kwargs)

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean-pooled last hidden state (B, H), unit length when ``normalize``."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:  # not every encoder takes token types (DistilBERT does not)
            inputs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**inputs).last_hidden_state  # (B, T, H)
        pooled = mean_pool(hidden, attention_mask)  # (B, H)
        return F.normalize(pooled, p=2, dim=-1) if self.normalize else pooled

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        positive_input_ids: torch.Tensor | None = None,
        positive_attention_mask: torch.Tensor | None = None,
        negative_input_ids: torch.Tensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        positive_groups: torch.Tensor | None = None,
    ) -> BiEncoderOutput:
        """Embed queries; with positives, also the in-batch ranking loss.

        Row i's target is its own positive (column i). Hard negatives, when given, are
        extra candidate columns B..2B-1 for every row. Rows whose ``positive_groups`` match
        share a positive text, so they are not negatives for each other.
        """
        q = self.embed(input_ids, attention_mask, token_type_ids)  # (B, H)
        if positive_input_ids is None:
            return BiEncoderOutput(loss=None, logits=q)
        p = self.embed(positive_input_ids, positive_attention_mask)  # (B, H)
        candidates = p
        if negative_input_ids is not None:
            n = self.embed(negative_input_ids, negative_attention_mask)  # (B, H)
            candidates = torch.cat([p, n], dim=0)  # (2B, H)
        scores = self.scale * q @ candidates.T  # (B, B) or (B, 2B)
        if positive_groups is not None:
            # Hand-written: sentence-transformers' MultipleNegativesRankingLoss has no such mask.
            # With few distinct positives (150 intent names in CLINC150) a batch of 64 holds
            # about 13 pairs of rows with the same positive (64*63/2/150), and without the mask
            # the loss would push each of those queries away from its own answer.
            duplicates = _same_positive(positive_groups, scores.shape[1])  # (B, B) or (B, 2B)
            scores = scores.masked_fill(duplicates, float("-inf"))
        targets = torch.arange(len(q), device=q.device)  # (B,)
        loss = F.cross_entropy(scores, targets)
        return BiEncoderOutput(loss=loss, logits=torch.cat([q, p], dim=-1))  # logits: (B, 2H)


def _same_positive(groups: torch.Tensor, n_columns: int) -> torch.Tensor:
    """(B, n_columns) True where column j < B is another row's copy of row i's positive."""
    same = groups.unsqueeze(1) == groups.unsqueeze(0)  # (B, B)
    same &= ~torch.eye(len(groups), dtype=torch.bool, device=groups.device)
    return F.pad(same, (0, n_columns - len(groups)), value=False)  # negative columns never masked


class PairCollator:
    """Pad queries, positives and hard negatives, each side to its own longest row."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids, mask = self._pad([item["input_ids"] for item in batch])
        out = {"input_ids": ids, "attention_mask": mask}
        for key, prefix in (("positive_ids", "positive"), ("negative_ids", "negative")):
            if _present(batch, key):
                ids, mask = self._pad([item[key] for item in batch])
                out[f"{prefix}_input_ids"], out[f"{prefix}_attention_mask"] = ids, mask
        if _present(batch, "positive_group"):
            out["positive_groups"] = torch.tensor(
                [int(item["positive_group"]) for item in batch], dtype=torch.long
            )  # (B,)
        return out

    def _pad(self, rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_rows(rows, self.pad_token_id, self.multiple)


def _present(batch: list[dict[str, Any]], key: str) -> bool:
    """Whether ``key`` is in every item; an error when only some items have it."""
    count = sum(key in item for item in batch)
    if 0 < count < len(batch):
        raise ValueError(f"{count} of {len(batch)} items have {key!r}; give it for all or none")
    return count > 0


def write_sentence_transformers_files(
    model_dir: Path, hidden_size: int, max_length: int, normalize: bool
) -> None:
    """Make a saved Hugging Face encoder loadable by ``SentenceTransformer(model_dir)``.

    Writes the module list and configs for Transformer -> Pooling(mean) [-> Normalize] in
    the layout of sentence-transformers 2.x-5.x, which 6.x reads too (the packaged
    all-MiniLM-L6-v2 uses it); the model and tokenizer files are left as they are.

    Args:
        model_dir: A directory holding config.json, the weights and the tokenizer.
        hidden_size: The encoder's hidden size (the embedding dimension).
        max_length: Longest input in tokens; longer texts are truncated, as in training.
        normalize: Whether embeddings are L2-normalized (adds a Normalize module).
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise LmforgeError(
            f"{model_dir} has no config.json; save the encoder there with "
            "save_pretrained before writing the sentence-transformers files"
        )
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": ST_TRANSFORMER},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": ST_POOLING},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": ST_NORMALIZE})
    _write_json(model_dir / "modules.json", modules)
    _write_json(
        model_dir / "sentence_bert_config.json",
        {"max_seq_length": max_length, "do_lower_case": False},
    )
    _write_json(
        model_dir / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": hidden_size,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    )
    if normalize:
        (model_dir / "2_Normalize").mkdir(exist_ok=True)
    _write_json(
        model_dir / "config_sentence_transformers.json",
        {
            "__version__": _versions(),
            "prompts": {},
            "default_prompt_name": None,
            # Normalized embeddings make dot product and cosine the same ranking; without
            # normalization training scored with the dot product.
            "similarity_fn_name": "cosine" if normalize else "dot",
        },
    )


def _versions() -> dict[str, str]:
    """Library versions as recorded by sentence-transformers (installed ones only)."""
    versions = {}
    for key, dist in (
        ("pytorch", "torch"),
        ("sentence_transformers", "sentence-transformers"),
        ("transformers", "transformers"),
    ):
        try:
            versions[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
