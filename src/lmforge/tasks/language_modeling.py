"""Self-supervised pretraining: causal LM (next token) and masked LM (15% masked, 80/10/10).

The data are raw text corpora (plain text, JSONL, CSV; files or globs), read as a stream
once and tokenized into an on-disk token file in the token cache
(:func:`lmforge.data.corpus.write_token_file`); training reads fixed-size blocks of
``data.max_length`` tokens from it through a memory map, so a corpus larger than memory
trains with bounded memory and batches stay index-addressable (exact resume works as for
every other task). A second run on the same files and tokenizer reuses the token file.

- ``data.packing: packed`` cuts the token stream into full blocks (no padding); for causal
  LM, ``data.isolate_documents`` (default) gives each document inside a block a
  block-diagonal causal mask and restarted positions where the model supports it, so
  documents never attend to each other; elsewhere the end-of-document token separates them.
- ``data.packing: documents`` gives one (padded) block per document, long documents split.

Models start from a pretrained checkpoint (continued / domain-adaptive pretraining) or from
scratch (``model.from_scratch``), with a tokenizer trained on the training corpus (byte-level
BPE for llama/gpt2, WordPiece for bert) unless one is given. Metrics are the loss per
predicted token and its exponent, the perplexity.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lmforge.errors import LmforgeError
from lmforge.tasks.base import Task

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    from lmforge.config import DataConfig, RunConfig
    from lmforge.data.corpus import CorpusSpec, TokenFile
    from lmforge.data.packing import BlockPlan, PackedBlocks
    from lmforge.distributed.context import DistContext

log = logging.getLogger(__name__)

# a batch of examples -> the model's keyword arguments
Collator = Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]


class BlockDataset(torch.utils.data.Dataset):
    """Training blocks of a corpus and the collator that batches them."""

    labels = None  # no per-example labels: the text is the target

    def __init__(self, blocks: PackedBlocks, task: LanguageModeling, source: str):
        self.blocks = blocks
        self.task = task
        self.source = source

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def lengths(self) -> list[int]:
        """Tokens of each block."""
        return self.blocks.lengths

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.blocks[i]

    def collator(self, pad_token_id: int, pad_to_multiple_of: int | None) -> Collator:
        return self.task.collator(pad_to_multiple_of)


def corpus_spec(cfg: DataConfig, path: str) -> CorpusSpec:
    """How to read one configured corpus file (or glob)."""
    from lmforge.data.corpus import CorpusSpec

    fmt = {"csv": "csv", "tsv": "csv", "jsonl": "jsonl", "text": "text"}.get(cfg.format, "auto")
    if cfg.format in ("parquet", "delimited"):
        raise LmforgeError(
            f"data.format {cfg.format} is not a corpus format; use text, jsonl or csv"
        )
    return CorpusSpec(
        sources=[path],
        format=fmt,
        text_field=cfg.text_column,
        documents=cfg.documents,
        encoding=cfg.encoding,
    )


def corpus_key(spec: CorpusSpec, *settings: object) -> str:
    """A cache key for what is built from a corpus: its files (path, size, modification time), how
    they are read, and ``settings`` (the tokenizer, a vocabulary size, ...)."""
    from lmforge.data.corpus import expand_sources

    key = hashlib.sha256(
        json.dumps(
            [spec.format, spec.text_field, spec.documents, spec.encoding, *map(str, settings)]
        ).encode()
    )
    for path in expand_sources(spec.sources):
        stat = path.stat()
        key.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return key.hexdigest()[:32]


def corpus_token_file(spec: CorpusSpec, tokenizer: PreTrainedTokenizerBase) -> TokenFile:
    """The corpus tokenized into the token cache (built once per files, settings and tokenizer)."""
    from lmforge.data.corpus import TokenFile, iter_documents, write_token_file
    from lmforge.data.tokenization import cache_root, tokenizer_fingerprint

    path = cache_root() / "corpora" / corpus_key(spec, tokenizer_fingerprint(tokenizer))
    try:
        return TokenFile.open(path)
    except LmforgeError:
        pass  # not built yet (or damaged): build it
    path.parent.mkdir(parents=True, exist_ok=True)
    out = write_token_file(iter_documents(spec), tokenizer, path)
    log.info(
        "tokenized %s: %s documents, %s tokens",
        ", ".join(spec.sources),
        f"{out.n_documents:,}",
        f"{out.n_tokens:,}",
    )
    return out


class LanguageModeling(Task):
    """What causal and masked LM share: corpus data, from-scratch models, loss-only metrics."""

    name = ""
    arch_kinds: tuple[str, ...] = ()
    labeled = False
    # Evaluation is the loss per predicted token; no logits are kept.
    language_modeling = True

    def __init__(self) -> None:
        self.block_size = 128
        self.packing = "packed"
        self.from_scratch: dict[str, Any] | None = None
        self.seed = 0
        self.tokenizer: PreTrainedTokenizerBase | None = None  # bind() sets it
        self.pad_id = 0

    def configure(self, options: dict[str, Any]) -> None:
        self.block_size = int(options.get("max_length") or self.block_size)
        self.packing = options.get("packing") or self.packing
        self.from_scratch = options.get("from_scratch")
        self.seed = int(options.get("seed") or 0)

    def label_names(self, train_labels: Sequence[str], fixed: Sequence[str] | None) -> list[str]:
        if fixed:
            raise LmforgeError(
                f"data.labels lists class names; task {self.name} learns from raw text: "
                "remove data.labels"
            )
        return []

    def strata(self, labels: Sequence[str]) -> list[str]:
        return ["all"] * len(labels)

    def bind(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Take the tokenizer the collators need (its pad id: the end token when it has none)."""
        self.tokenizer = tokenizer
        self.pad_id = (
            tokenizer.pad_token_id
            if tokenizer.pad_token_id is not None
            else (tokenizer.eos_token_id or 0)
        )

    # --- data ----------------------------------------------------------------------------
    def load_corpus(
        self, cfg: RunConfig, tokenizer: PreTrainedTokenizerBase
    ) -> tuple[dict[str, BlockDataset], dict[str, Any]]:
        """Blocks for train / validation / test, and a summary of what reading and cutting did.

        Without a validation file, ``data.validation_size`` of the training blocks (drawn with
        the seed) are held out instead.
        """
        from lmforge.data.packing import BlockPlan, PackedBlocks, plan_blocks

        files = {
            "train": cfg.data.train_file,
            "validation": cfg.data.validation_file,
            "test": cfg.data.test_file,
        }
        if not cfg.data.train_file:
            raise LmforgeError(
                f"task {self.name} needs a training corpus: set data.train_file (text, JSONL or "
                "CSV files; a glob such as 'corpus/*.txt' reads many)"
            )
        datasets: dict[str, BlockDataset] = {}
        summary: dict[str, Any] = {
            "rows": {},
            "cleaning": {},
            "carved_from_train": {},
            "corpus": {},
        }
        boundaries = self.isolate  # position ids restart per document (causal LM isolation)
        for name, path in files.items():
            if not path:
                continue
            tokens = corpus_token_file(corpus_spec(cfg.data, path), tokenizer)
            plan = plan_blocks(tokens.doc_offsets, self.block_size, self.packing)
            summary["corpus"][name] = self.describe(tokens, plan, name)
            if name == "train" and not cfg.data.validation_file and cfg.data.validation_size > 0:
                order = np.random.default_rng(cfg.training.seed).permutation(len(plan.ranges))
                held = max(1, int(round(len(order) * cfg.data.validation_size)))
                if held >= len(order):
                    raise LmforgeError(
                        f"the training corpus gives only {len(order)} block(s) of "
                        f"{self.block_size} tokens; add text, lower data.max_length, or give "
                        "data.validation_file"
                    )
                parts = {"validation": np.sort(order[:held]), "train": np.sort(order[held:])}
                summary["carved_from_train"]["validation"] = cfg.data.validation_size
                for part, index in parts.items():
                    sub = BlockPlan(plan.ranges[index], 0, 0)
                    datasets[part] = BlockDataset(
                        PackedBlocks(tokens.tokens, tokens.doc_offsets, sub, boundaries), self, path
                    )
                continue
            datasets[name] = BlockDataset(
                PackedBlocks(tokens.tokens, tokens.doc_offsets, plan, boundaries), self, path
            )
        summary["rows"] = {name: len(d) for name, d in datasets.items()}
        return datasets, summary

    def describe(self, tokens: TokenFile, plan: BlockPlan, name: str) -> dict[str, int]:
        """What cutting a corpus into blocks did (logged when documents were split)."""
        if plan.split_documents and self.packing == "documents":
            log.info(
                "%s: %d documents are longer than data.max_length=%d tokens and were split into "
                "several blocks",
                name,
                plan.split_documents,
                self.block_size,
            )
        return {
            "documents": tokens.n_documents,
            "tokens": tokens.n_tokens,
            "blocks": len(plan.ranges),
            "dropped_tokens": plan.dropped_tokens,
            "split_documents": plan.split_documents,
        }

    def file_dataset(
        self, data_cfg: DataConfig, path: str, tokenizer: PreTrainedTokenizerBase
    ) -> tuple[BlockDataset, dict[str, int]]:
        """All blocks of one corpus file (or glob), e.g. for ``lmforge eval``."""
        from lmforge.data.packing import PackedBlocks, plan_blocks

        tokens = corpus_token_file(corpus_spec(data_cfg, path), tokenizer)
        plan = plan_blocks(tokens.doc_offsets, self.block_size, self.packing)
        blocks = PackedBlocks(tokens.tokens, tokens.doc_offsets, plan, self.isolate)
        return BlockDataset(blocks, self, path), self.describe(tokens, plan, path)

    # --- model ---------------------------------------------------------------------------
    def load_model(
        self, location: str, label_names: Sequence[str] | None = None, **kwargs: Any
    ) -> PreTrainedModel:
        """The pretrained model at ``location``, or a new one from ``model.from_scratch``
        (training)."""
        from lmforge.models.loading import load_pretrained

        if label_names is not None and self.from_scratch:
            return self.model_class().from_config(self.scratch_config(self.from_scratch))
        return load_pretrained(self.model_class(), location, "model", **kwargs)

    def scratch_config(self, options: dict[str, Any]) -> PretrainedConfig:
        """A transformers config for a new model of ``options`` (arch, layers, hidden, heads,
        ...)."""
        from transformers import BertConfig, GPT2Config, LlamaConfig

        arch = options["arch"]
        if arch not in self.arch_kinds:
            raise LmforgeError(
                f"model.from_scratch.arch {arch} does not fit task {self.name}; use one of "
                f"{', '.join(self.arch_kinds)}"
            )
        hidden, layers, heads = options["hidden"], options["layers"], options["heads"]
        inner = options.get("intermediate") or 4 * hidden
        vocab, positions = options["vocab_size"], options.get("max_positions") or self.block_size
        special = {
            k: options[k]
            for k in ("bos_token_id", "eos_token_id", "pad_token_id")
            if options.get(k) is not None
        }
        if arch == "llama":
            return LlamaConfig(
                vocab_size=vocab,
                hidden_size=hidden,
                intermediate_size=inner,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                num_key_value_heads=options.get("kv_heads") or heads,
                max_position_embeddings=positions,
                tie_word_embeddings=True,
                **special,
            )
        if arch == "gpt2":
            return GPT2Config(
                vocab_size=vocab,
                n_embd=hidden,
                n_layer=layers,
                n_head=heads,
                n_inner=inner,
                n_positions=positions,
                **special,
            )
        return BertConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=inner,
            max_position_embeddings=positions,
            **{k: v for k, v in special.items() if k == "pad_token_id"},
        )

    # --- metrics -------------------------------------------------------------------------
    def metrics_from(self, loss_sum: float, tokens: int, blocks: int) -> dict[str, Any]:
        """Mean loss per predicted token, its exponent (perplexity), and what was scored."""
        loss = loss_sum / max(tokens, 1)
        return {
            "n": blocks,
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "tokens": tokens,
        }

    def compute_metrics(
        self, logits: np.ndarray, labels: Any, label_names: Sequence[str]
    ) -> dict[str, Any]:
        raise LmforgeError(
            f"task {self.name} is scored by its loss (lmforge eval RUN --input CORPUS)"
        )

    def decode(self, logits: np.ndarray, label_names: Sequence[str]) -> list[dict[str, Any]]:
        raise LmforgeError(
            f"a {self.name} model generates text: use `lmforge generate`, not predict"
        )


class CausalLM(LanguageModeling):
    """Next-token prediction (GPT-2, Llama)."""

    name = "causal_lm"
    peft_task_type = "CAUSAL_LM"
    generative = True
    endpoint = "generate"
    arch_kinds = ("llama", "gpt2")

    def __init__(self) -> None:
        super().__init__()
        self.isolate = True
        self.mask_dtype = torch.float32

    def configure(self, options: dict[str, Any]) -> None:
        super().configure(options)
        self.isolate = (
            bool(options.get("isolate_documents", self.isolate)) and self.packing == "packed"
        )

    @staticmethod
    def model_class() -> type[_BaseAutoModelClass]:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def check_model(self, model: PreTrainedModel) -> None:
        """Fall back to plain packing (documents separated by their end token) where the model
        cannot take a block-diagonal mask."""
        from lmforge.data.packing import CausalLMCollator

        if self.isolate and not CausalLMCollator.supports_document_isolation(model):
            log.warning(
                "%s cannot isolate the documents of a packed block (attention %s); they are "
                "separated by their end-of-document token only",
                type(model).__name__,
                getattr(model.config, "_attn_implementation", "?"),
            )
            self.isolate = False

    def collator(self, pad_to_multiple_of: int | None) -> Collator:
        from lmforge.data.packing import CausalLMCollator

        return CausalLMCollator(
            self.pad_id, self.isolate, pad_to_multiple_of, mask_dtype=self.mask_dtype
        )

    @staticmethod
    def predicted_tokens(labels: torch.Tensor) -> int:
        """Tokens the loss averages over: each label after the first of its row (the model
        shifts)."""
        return int((labels[:, 1:] != -100).sum())


class MaskedLM(LanguageModeling):
    """Masked-token prediction (BERT): 15% of tokens, 80% [MASK], 10% random, 10% unchanged."""

    name = "masked_lm"
    peft_task_type = None
    arch_kinds = ("bert",)

    def __init__(self) -> None:
        super().__init__()
        self.isolate = (
            False  # bidirectional: documents in a packed block see each other (RoBERTa style)
        )
        self.mlm_probability = 0.15
        self.whole_word = False
        self.tokenizer: PreTrainedTokenizerBase | None = None

    def configure(self, options: dict[str, Any]) -> None:
        super().configure(options)
        self.mlm_probability = float(options.get("mlm_probability") or self.mlm_probability)
        self.whole_word = bool(options.get("whole_word_masking", self.whole_word))

    @staticmethod
    def model_class() -> type[_BaseAutoModelClass]:
        from transformers import AutoModelForMaskedLM

        return AutoModelForMaskedLM

    def check_model(self, model: PreTrainedModel) -> None:
        """Nothing to check (no document isolation for a bidirectional model)."""

    def collator(self, pad_to_multiple_of: int | None, seed: int | None = None) -> Collator:
        from lmforge.data.mlm import MaskedLMCollator

        if self.tokenizer.mask_token_id is None:
            raise LmforgeError(
                "task masked_lm needs a tokenizer with a mask token ([MASK]); this one has none"
            )
        return MaskedLMCollator(
            self.tokenizer,
            self.mlm_probability,
            self.whole_word,
            seed=seed,
            pad_to_multiple_of=pad_to_multiple_of,
        )

    @staticmethod
    def predicted_tokens(labels: torch.Tensor) -> int:
        return int((labels != -100).sum())


@torch.inference_mode()
def evaluate_loss(
    model: torch.nn.Module,
    dataset: BlockDataset,
    batch_size: int,
    task: LanguageModeling,
    device: torch.device | str,
    ctx: DistContext | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Loss per predicted token and perplexity of ``model`` on every block of ``dataset``.

    Masked LM draws its masks from a fixed seed, so every evaluation masks the same tokens
    and successive scores are comparable. In a distributed run each rank scores every N-th
    batch (the same number of forward passes on each) and the sums are added up.
    """
    import contextlib

    from lmforge.distributed.context import DistContext

    ctx = ctx or DistContext()
    # The dataset's own collator: packed blocks go through the task's, one chat conversation per
    # row through plain padding.
    collate = (
        task.collator(None, seed=task.seed)
        if isinstance(task, MaskedLM)
        else dataset.collator(task.pad_id, None)
    )
    batches = [
        list(range(i, min(i + batch_size, len(dataset))))
        for i in range(0, len(dataset), batch_size)
    ]
    mine = batches[ctx.rank :: ctx.world_size]
    rounds = -(-len(batches) // ctx.world_size)
    was_training = model.training
    model.eval()
    device = torch.device(device)
    cast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype
        else contextlib.nullcontext()
    )
    loss_sum, tokens = 0.0, 0
    with cast:
        for step in range(rounds):
            batch = collate([dataset[i] for i in (mine[step] if step < len(mine) else batches[0])])
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch).loss
            if step < len(
                mine
            ):  # a rank short of a batch repeats the first one and drops it (FSDP)
                n = task.predicted_tokens(batch["labels"])
                loss_sum += float(loss) * n
                tokens += n
    if was_training:
        model.train()
    return task.metrics_from(ctx.sum(loss_sum), int(ctx.sum(tokens)), len(dataset))


def default_scratch_tokenizer(cfg: RunConfig, task: LanguageModeling) -> PreTrainedTokenizerBase:
    """The tokenizer of a from-scratch model: ``model.from_scratch.tokenizer``, or one trained on
    the training corpus (cached by corpus and settings)."""
    from lmforge.data.corpus import iter_documents
    from lmforge.data.tokenization import cache_root
    from lmforge.models.loading import load_tokenizer, resolve_model_path
    from lmforge.models.tokenizer_training import train_tokenizer

    scratch = cfg.model.from_scratch
    if scratch.tokenizer:
        return load_tokenizer(resolve_model_path(scratch.tokenizer))
    kind = "wordpiece" if scratch.arch == "bert" else "bpe"
    spec = corpus_spec(cfg.data, cfg.data.train_file)
    out = cache_root() / "tokenizers" / corpus_key(spec, kind, scratch.vocab_size, task.block_size)
    if (out / "tokenizer.json").is_file():
        return load_tokenizer(str(out))
    log.info(
        "training a %s tokenizer (%d tokens) on %s", kind, scratch.vocab_size, cfg.data.train_file
    )
    staging = out.with_name(
        f".{out.name}.{os.getpid()}"
    )  # renamed when complete: no half-written tokenizer
    train_tokenizer(
        iter_documents(spec), kind, scratch.vocab_size, staging, model_max_length=task.block_size
    )
    if out.exists():  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    else:
        os.replace(staging, out)
    return load_tokenizer(str(out))


def scratch_options(cfg: RunConfig, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """``model.from_scratch`` with the tokenizer's vocabulary size and special token ids."""
    options = cfg.model.from_scratch.model_dump()
    options["vocab_size"] = len(tokenizer)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        options[name] = getattr(tokenizer, name, None)
    return options
