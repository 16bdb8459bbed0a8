"""What a training run builds before its first step: device and precision, seeded RNGs, data
(read, augmented, tokenized and cached), the model with its method applied, and the batch
loader. The fine-tuning recipe and the planner's dry run (:mod:`lmforge.planning.probe`) both
start here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmforge.config import RunConfig
from lmforge.data.batching import EncodedDataset
from lmforge.data.loading import load_splits
from lmforge.devices import resolve_device, resolve_precision
from lmforge.distributed.context import DistContext
from lmforge.errors import LmforgeError
from lmforge.methods.base import MethodSetting
from lmforge.methods.registry import get_method
from lmforge.models.loading import load_pretrained, load_tokenizer, resolve_model_path
from lmforge.models.structure import set_dropout
from lmforge.runs import task_options
from lmforge.tasks.language_modeling import (
    default_scratch_tokenizer,
    scratch_options,
)
from lmforge.tasks.registry import get_task
from lmforge.training.dropout import use_fast_dropout
from lmforge.training.loop import total_optimizer_steps
from lmforge.training.sampler import EpochBatchSampler

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase

    from lmforge.data.loading import Splits
    from lmforge.methods.base import Method
    from lmforge.tasks.base import Task

log = logging.getLogger(__name__)


@dataclass
class RunSetup:
    """Everything a run (or the planner's dry run) builds before the first step."""

    task: Task
    splits: Splits | CorpusSplits
    label_names: list[str]
    tokenizer: PreTrainedTokenizerBase
    datasets: dict[str, EncodedDataset]
    model: torch.nn.Module
    method: Method
    device: str
    precision: str
    accelerator: Accelerator


@dataclass
class CorpusSplits:
    """What reading and cutting the corpora did (the counterpart of data.loading.Splits)."""

    info: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return self.info


def prepare_run(
    cfg: RunConfig, parent: dict[str, Any] | None = None, ctx: DistContext | None = None
) -> RunSetup:
    """Device, precision, seeded RNGs, data (tokenized, cached) and the model with its method
    applied."""
    from accelerate.utils import set_seed

    if cfg.training.num_threads:
        torch.set_num_threads(cfg.training.num_threads)
    device = resolve_device(cfg.training.device)
    precision = resolve_precision(cfg.training.precision, device)
    accelerator = make_accelerator(precision, device)
    set_seed(cfg.training.seed)
    task = get_task(cfg.task)
    task.configure(task_options(cfg))

    if task.language_modeling:  # raw-text corpora, tokenized to disk and cut into blocks
        label_names = task.label_names([], cfg.data.labels)
        with (
            ctx or DistContext()
        ).main_first():  # rank 0 trains the tokenizer and fills the token cache
            model_location = resolve_model_path(cfg.model.name_or_path)
            tokenizer = (
                default_scratch_tokenizer(cfg, task)
                if cfg.model.from_scratch
                else load_tokenizer(model_location, cfg.model.revision, cfg.model.trust_remote_code)
            )
            task.bind(tokenizer)
            if cfg.model.from_scratch:
                task.configure(
                    {**task_options(cfg), "from_scratch": scratch_options(cfg, tokenizer)}
                )
            datasets, summary = task.load_corpus(cfg, tokenizer)
        splits = CorpusSplits(summary)
    else:
        splits = load_splits(
            cfg.data,
            cfg.training.seed,
            strata=task.strata,
            tokens=task.word_level,
            labeled=task.labeled,
        )
        train = splits.frames["train"]
        label_names = task.label_names(
            train["label"].tolist() if "label" in train else [],
            parent["labels"] if parent else cfg.data.labels,
        )
        with (
            ctx or DistContext()
        ).main_first():  # rank 0 downloads and fills the token cache, the others reuse it
            model_location = resolve_model_path(cfg.model.name_or_path)
            tokenizer = load_tokenizer(
                model_location, cfg.model.revision, cfg.model.trust_remote_code
            )
            if cfg.augment.operations or cfg.augment.back_translation:
                augment_training_split(splits, cfg, task, model_location, tokenizer)
            datasets = {
                name: task.encode(frame, name, tokenizer, label_names, cfg.data.max_length)
                for name, frame in splits.frames.items()
            }
    log.info(
        "data: %s%s",
        ", ".join(f"{n} {len(d)}" for n, d in datasets.items()),
        f"; labels: {label_names}" if label_names else "",
    )

    start_from, adapter_dir = (
        (model_location, None) if parent is None else parent_weights(parent, cfg)
    )
    model = task.load_model(
        start_from,
        label_names,
        revision=cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    if cfg.model.keep_layers is not None:  # a smaller student, initialized from some of the layers
        from lmforge.models.surgery import keep_layers

        log.info("model: kept layers %s", keep_layers(model, cfg.model.keep_layers))
    if cfg.training.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise LmforgeError(
                f"training.gradient_checkpointing: {type(model).__name__} does not support it; "
                "set it to false"
            )
        # Non-reentrant checkpointing also works when the inputs need no grad (frozen embeddings,
        # LoRA).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.regularization.dropout is not None:
        log.info(
            "dropout %.2f in %d modules",
            cfg.regularization.dropout,
            set_dropout(model, cfg.regularization.dropout),
        )
    if cfg.training.fast_dropout and device == "cpu":
        log.debug("fast dropout in %d modules", use_fast_dropout(model))
    if task.language_modeling:
        task.check_model(model)  # e.g. whether packed documents can be isolated
    method = get_method(cfg.method.name)
    # Rows the task added to the embeddings (chat markers): adapter methods must train them too.
    steps = total_optimizer_steps(
        -(-len(datasets["train"]) // cfg.training.batch_size),
        cfg.training.gradient_accumulation_steps,
        cfg.training.epochs,
        cfg.training.max_steps,
    )
    model = method.apply(
        model,
        MethodSetting(
            cfg.method.options, task.peft_task_type, adapter_dir, tuple(task.new_token_ids), steps
        ),
    )
    return RunSetup(
        task,
        splits,
        label_names,
        tokenizer,
        datasets,
        model,
        method,
        device,
        precision,
        accelerator,
    )


def parent_weights(parent: dict[str, Any], cfg: RunConfig) -> tuple[str, Path | None]:
    """Where the continued run's weights come from: (model to load, adapter to keep training).

    A method that continues adapters (LoRA after LoRA) keeps training the parent's adapter on
    its base model, so its optimizer state fits; any other combination starts from the
    parent's full (merged) model.
    """
    adapter = parent["dir"] / "adapter"
    if (
        get_method(cfg.method.name).continues_adapter
        and parent["method"] == cfg.method.name
        and (adapter / "adapter_config.json").is_file()
    ):
        return resolve_model_path(parent["base_model"] or cfg.model.name_or_path), adapter
    if cfg.continue_optimizer and parent["method"] != cfg.method.name:
        raise LmforgeError(
            f"continue_optimizer: the parent run used method {parent['method']}, this run "
            f"{cfg.method.name}; their optimizer states do not fit (drop continue_optimizer)"
        )
    return str(parent["dir"] / "model"), None


def augment_training_split(
    splits: Splits,
    cfg: RunConfig,
    task: Task,
    model_location: str,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """Add augmented copies of the training texts (validation and test stay as they are)."""
    from lmforge.data.augmentation import (
        EmbeddingNeighbours,
        augment_rows,
        back_translate,
    )

    frame = splits.frames["train"]
    if task.word_level or "text_pair" in frame or "text" not in frame:
        raise LmforgeError(
            f"augment: works on single-text tasks; task {cfg.task} with these columns cannot be "
            "augmented word by word: remove augment"
        )
    texts, labels = frame["text"].tolist(), frame["label"].tolist()
    added = {}
    if cfg.augment.operations:
        neighbours = None
        if "synonym" in cfg.augment.operations:
            from transformers import AutoModel

            encoder = load_pretrained(AutoModel, model_location, "model")
            neighbours = EmbeddingNeighbours.from_model(encoder, tokenizer)
            del encoder
        new_texts, new_labels, summary = augment_rows(
            texts, labels, cfg.augment, cfg.training.seed, neighbours
        )
        added["eda"] = summary
        texts_out, labels_out = new_texts, new_labels
    else:
        texts_out, labels_out = list(texts), list(labels)
    if cfg.augment.back_translation:
        there, back = cfg.augment.back_translation
        translated = back_translate(texts, there, back)
        kept = [
            (t, y)
            for t, o, y in zip(translated, texts, labels, strict=True)
            if t.strip() and t != o
        ]
        added["back_translation"] = {"added": len(kept), "unchanged": len(texts) - len(kept)}
        texts_out += [t for t, _ in kept]
        labels_out += [y for _, y in kept]
    import pandas as pd

    splits.frames["train"] = pd.DataFrame({"text": texts_out, "label": labels_out})
    splits.augmented = added
    log.info("augment: %d training texts -> %d", len(texts), len(texts_out))


def make_train_loader(
    cfg: RunConfig,
    dataset: EncodedDataset,
    tokenizer: Any,
    device: str,
    ctx: DistContext | None = None,
) -> tuple[EpochBatchSampler, torch.utils.data.DataLoader]:
    """The resumable batch sampler (length-grouped unless disabled) and its DataLoader.

    In a distributed run the sampler yields this rank's share of each global batch.
    """
    ctx = ctx or DistContext()
    # Multiples of 8 suit GPU tensor cores. On a CPU they add pad tokens (85% of the slots are
    # real tokens instead of 94% on FPB) but cut ~50 batch widths to ~11: oneDNN and the
    # allocator keep per-shape buffers, so the peak RSS drops 2.83 -> 2.39 GB for ~5% more
    # time, with the same accuracy over six seeds (docs/benchmarks.md, "Peak memory").
    multiple = cfg.training.pad_to_multiple_of if cfg.training.pad_to_multiple_of > 1 else None
    collate = dataset.collator(tokenizer.pad_token_id or 0, pad_to_multiple_of=multiple)
    # Corpus blocks have no input_ids list (they are read from disk) and share one length anyway.
    rows = getattr(dataset, "input_ids", None)
    lengths = (
        [len(row) for row in rows] if cfg.training.group_by_length and rows is not None else None
    )
    sampler = EpochBatchSampler(
        len(dataset),
        cfg.training.batch_size,
        cfg.training.seed,
        lengths=lengths,
        window=cfg.training.group_window,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    # Its own generator: creating an epoch's iterator must not draw from the global RNG,
    # or a resumed run's dropout masks would differ from the uninterrupted run's.
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.training.num_workers,
        pin_memory=device == "cuda",
        generator=torch.Generator().manual_seed(cfg.training.seed),
    )
    return sampler, loader


def make_accelerator(precision: str, device: str) -> Accelerator:
    """A fresh Accelerator for this run (gradient accumulation is done by the loop itself).

    Accelerate keeps its state in a process-wide singleton, so a second run in the same
    process (a notebook, a test, a benchmark) with another precision would be refused.
    The per-run part is reset; the process-group part (distributed launch) is kept.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(mixed_precision=precision, cpu=device == "cpu")


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` with dynamic shapes: padded lengths vary per batch, one graph serves them
    all."""
    if not hasattr(torch, "compile"):
        raise LmforgeError("training.compile needs PyTorch >= 2.0; set it to false")
    return torch.compile(model, dynamic=True)
