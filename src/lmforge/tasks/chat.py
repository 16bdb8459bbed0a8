"""Generative fine-tuning: a causal LM learns to answer, from conversations or instructions.

Each JSONL line is ``{"messages": [{"role": "system" | "user" | "assistant", "content": ...}]}``
or ``{"instruction": ..., "input": ... (optional), "output": ...}`` (Alpaca); both tasks
(``chat``, ``instruction``) read both. Conversations are rendered with the tokenizer's chat
template; a tokenizer without one gets lmforge's default (ChatML, with ``<|im_start|>`` and
``<|im_end|>`` added as special tokens and the embeddings resized). The loss sees only the
assistant's tokens (its content and end-of-turn marker): the model learns to answer, not to
write the user's questions (:func:`lmforge.generation.chat.encode_conversation`).

Conversations longer than ``data.max_length`` lose tokens from the right (counted); one left
without any assistant token teaches nothing and is dropped (counted). By default each row holds
one conversation, padded per batch; ``data.packing: packed`` puts several whole conversations in
a row of up to ``data.max_length`` tokens (best-fit, never cut), kept apart by the same
block-diagonal mask and restarted positions as packed pretraining documents, so each is computed
exactly as alone while short conversations stop costing padding. Evaluation is the loss per
assistant token and its perplexity; ``lmforge generate RUN --chat`` answers prompts through the
same template.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from lmforge.data.batching import EncodedDataset, PaddingCollator
from lmforge.errors import LmforgeError
from lmforge.tasks.language_modeling import CausalLM

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


class Chat(CausalLM):
    """Conversations in, a causal LM trained on the assistant turns out."""

    name = "chat"

    def __init__(self) -> None:
        super().__init__()
        self.packing = "documents"  # one conversation per row unless data.packing: packed
        self.isolate = False
        self.tokens_added = 0
        self.new_token_ids: list[
            int
        ] = []  # the chat markers added to the vocabulary: new embedding rows
        self.chat_template: str | None = None

    def configure(self, options: dict[str, Any]) -> None:
        super().configure(options)
        self.chat_template = options.get("chat_template") or self.chat_template
        if self.packing not in ("packed", "documents"):
            raise LmforgeError(
                f"data.packing: {self.packing!r}; task {self.name} takes 'packed' or 'documents'"
            )

    def bind(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Give the tokenizer a chat template when it has none (new special tokens are counted,
        so that :meth:`check_model` resizes the embeddings)."""
        from lmforge.generation.chat import ensure_chat_template

        template = self.chat_template
        custom = template not in (None, "chatml")
        setup = ensure_chat_template(tokenizer, _template_text(template) if custom else template)
        if setup.template_set and not custom:
            log.info(
                "%s: using lmforge's default (ChatML)%s",
                "data.chat_template: chatml" if template else "the tokenizer has no chat template",
                f", {setup.tokens_added} special tokens added" if setup.tokens_added else "",
            )
        self.tokens_added = setup.tokens_added
        self.new_token_ids = list(range(len(tokenizer) - setup.tokens_added, len(tokenizer)))
        super().bind(tokenizer)

    def check_model(self, model: Any) -> None:
        """Make room for added special tokens; stop generation at the end of a turn too; packed
        conversations fall back to plain packing where the model cannot isolate them."""
        from lmforge.generation.chat import end_of_turn_token_id

        super().check_model(model)
        if len(self.tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(self.tokenizer))
        end = end_of_turn_token_id(self.tokenizer)
        eos = model.generation_config.eos_token_id
        stops = [e for e in ([eos] if isinstance(eos, int) else list(eos or [])) if e is not None]
        if end is not None and end not in stops:
            model.generation_config.eos_token_id = [
                *stops,
                end,
            ]  # saved with the model for any HF tool

    def collator(self, pad_to_multiple_of: int | None, seed: int | None = None) -> Any:
        from lmforge.data.packing import CausalLMCollator

        if self.packing == "packed":
            return CausalLMCollator(
                self.pad_id, self.isolate, pad_to_multiple_of, mask_dtype=self.mask_dtype
            )
        return PaddingCollator(self.pad_id, pad_to_multiple_of)

    def packed(self, dataset: EncodedDataset, name: str) -> tuple[Any, dict[str, Any]]:
        """``dataset`` as rows of several conversations, when packing is on; how full the rows
        are."""
        from lmforge.data.packing import PackedSequences
        from lmforge.tasks.language_modeling import BlockDataset

        if self.packing != "packed":
            return dataset, {}
        rows = PackedSequences(dataset.input_ids, dataset.token_labels, self.block_size)
        tokens = sum(len(row) for row in dataset.input_ids)
        info = {"packed_rows": len(rows), "fill": round(tokens / (len(rows) * self.block_size), 4)}
        log.info(
            "%s: %d conversations packed into %d rows of %d tokens (%.0f%% full)",
            name,
            len(dataset),
            len(rows),
            self.block_size,
            100 * info["fill"],
        )
        return BlockDataset(rows, self, name), info

    def file_dataset(
        self, data_cfg: Any, path: str, tokenizer: Any
    ) -> tuple[EncodedDataset, dict[str, Any]]:
        """Encode every conversation of a JSONL file; counts of what truncation did."""
        from lmforge.data.readers import decode_file
        from lmforge.generation.chat import encode_conversation, records_to_messages

        file = _existing(path)
        ids, labels, truncated, dropped = [], [], 0, 0
        lines = [
            (n, line)
            for n, line in enumerate(decode_file(file, data_cfg.encoding).split("\n"), start=1)
            if line.strip()
        ]
        if not lines:
            raise LmforgeError(f"{file} is empty; it needs one conversation per line")
        for number, line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise LmforgeError(
                    f"{file}: line {number} is not valid JSON ({err.msg}); a chat file holds one "
                    '{"messages": [...]} or {"instruction", "output"} object per line'
                ) from None
            messages = records_to_messages(record, str(file), number)
            try:
                encoded = encode_conversation(messages, tokenizer, self.block_size)
            except LmforgeError as err:
                raise LmforgeError(f"{file} line {number}: {err}") from None
            truncated += encoded.truncated_tokens > 0
            if not encoded.has_targets:
                dropped += 1
                continue
            ids.append(encoded.input_ids.astype(np.int64))
            labels.append(encoded.labels.astype(np.int64))
        if truncated:
            log.warning(
                "%s: %d of %d conversations are longer than data.max_length=%d tokens and were "
                "cut from the right%s",
                file,
                truncated,
                len(lines),
                self.block_size,
                f"; {dropped} lost every assistant token and were dropped" if dropped else "",
            )
        if not ids:
            raise LmforgeError(
                f"{file}: no conversation keeps an assistant token within data.max_length="
                f"{self.block_size}; raise data.max_length"
            )
        info = {
            "conversations": len(lines),
            "truncated": truncated,
            "dropped": dropped,
            "assistant_tokens": int(sum((row != -100).sum() for row in labels)),
        }
        return EncodedDataset(ids, token_labels=labels), info

    def load_corpus(self, cfg: Any, tokenizer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Train / validation / test conversations; without a validation file,
        ``data.validation_size`` of the training conversations (drawn with the seed) are held
        out."""
        files = {
            "train": cfg.data.train_file,
            "validation": cfg.data.validation_file,
            "test": cfg.data.test_file,
        }
        if not cfg.data.train_file:
            raise LmforgeError(
                f"task {self.name} needs data.train_file: a JSONL file of conversations"
            )
        datasets: dict[str, Any] = {}
        summary: dict[str, Any] = {
            "rows": {},
            "cleaning": {},
            "carved_from_train": {},
            "conversations": {},
        }
        for name, path in files.items():
            if not path:
                continue
            dataset, info = self.file_dataset(cfg.data, path, tokenizer)
            summary["conversations"][name] = info
            if name == "train" and not cfg.data.validation_file and cfg.data.validation_size > 0:
                order = np.random.default_rng(cfg.training.seed).permutation(len(dataset))
                held = max(1, int(round(len(order) * cfg.data.validation_size)))
                if held >= len(order):
                    raise LmforgeError(
                        f"{path} has too few conversations ({len(order)}) to hold some out; give "
                        "data.validation_file or set data.validation_size: 0"
                    )
                summary["carved_from_train"]["validation"] = cfg.data.validation_size
                for part, index in (
                    ("validation", np.sort(order[:held])),
                    ("train", np.sort(order[held:])),
                ):
                    datasets[part] = EncodedDataset(
                        [dataset.input_ids[i] for i in index],
                        token_labels=[dataset.token_labels[i] for i in index],
                    )
                continue
            datasets[name] = dataset
        for name in list(datasets):
            datasets[name], info = self.packed(datasets[name], name)
            summary["conversations"].setdefault(name, {}).update(info)
        summary["rows"] = {name: len(d) for name, d in datasets.items()}
        return datasets, summary


class Instruction(Chat):
    """The same task under the name users of instruction data look for."""

    name = "instruction"


def _template_text(value: str) -> str:
    """``data.chat_template``: a Jinja string as it is, or the contents of the file it names."""
    from pathlib import Path

    from lmforge.config.loader import is_template_file

    if not is_template_file(value):
        return value
    file = Path(value)
    if not file.is_file():
        raise LmforgeError(
            f"data.chat_template: file {file} not found; give a .jinja file, a Jinja template "
            "string, or 'chatml'"
        )
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LmforgeError(
            f"data.chat_template: {file} is not UTF-8 text; a chat template is a Jinja text file"
        ) from None


def _existing(path: str) -> Any:
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise LmforgeError(f"data file {file} not found")
    return file
