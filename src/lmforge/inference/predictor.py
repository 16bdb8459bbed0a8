"""Load a trained model (run or model directory) and predict on raw texts, fast.

Inputs are sorted by length into batches (little padding), run under
``torch.inference_mode`` with bf16 autocast where the hardware has it, and returned in
input order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lmforge.data.batching import PaddingCollator, length_sorted_batches, ragged
from lmforge.data.tokenization import tokenize, tokenize_words
from lmforge.devices import resolve_device, resolve_precision
from lmforge.errors import LmforgeError
from lmforge.inference.forward import collect_logits
from lmforge.models.loading import load_tokenizer
from lmforge.runs import METADATA_FILE, find_model_dir, read_metadata
from lmforge.tasks.registry import TASK_NAMES, get_task, task_of_architecture
from lmforge.tasks.token_classification import word_logits

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from lmforge.tasks.base import Task


class Predictor:
    """A model, its tokenizer and its task, ready to turn texts into predictions."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        task: Task,
        label_names: list[str],
        max_length: int,
        device: str,
        autocast_dtype: torch.dtype | None,
        pairs: bool = False,
    ):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.task = task
        self.label_names = label_names
        self.max_length = max_length
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.pairs = pairs  # trained on text pairs: predict needs both texts
        self.backend = "pytorch"  # what runs it, for reports and /v1/models (set by load)
        # Lengths padded to a multiple: a CPU's oneDNN compiles kernels per shape and keeps them,
        # so every new length costs memory. FPB batches through MiniLM (bf16, 400 random
        # batches): RSS 741 -> 946 MB and still growing unpadded, 558 -> 570 MB with multiples
        # of 16, at the same speed. GPUs: tensor-core tiles.
        # (Only multiples that max_length is one of: padding never goes past the model's positions.)
        multiple = next(
            (m for m in ((8,) if device == "cuda" else (16, 8)) if max_length % m == 0), None
        )
        self.collate = PaddingCollator(tokenizer.pad_token_id or 0, pad_to_multiple_of=multiple)

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "auto",
        precision: str = "auto",
        quantize: str = "none",
        task: str | None = None,
    ) -> Predictor:
        """Load from a run directory (uses its ``model/``) or a Hugging Face model directory.

        Args:
            quantize: 'int8' for dynamic int8 quantization of the linear layers (CPU).
            task: Load as this task instead of the saved one (default: the saved task, else
                sequence_classification); e.g. 'embedding' for the encoder of any model.
        """
        model_dir = find_model_dir(path)
        meta = read_metadata(model_dir)
        task_name = task or meta.get("task") or task_of_architecture(model_dir)
        if task_name not in TASK_NAMES:
            raise LmforgeError(f"{model_dir}: unknown task '{task_name}' in {METADATA_FILE}")
        task_plugin = get_task(task_name)
        task_plugin.configure(meta)  # e.g. a multi-label model's delimiter and tuned thresholds
        if quantize not in ("none", "int8"):
            raise LmforgeError(f"unknown quantization '{quantize}'; use none or int8")
        warn_if_unverified(model_dir, meta)
        device = resolve_device(device)
        if (
            meta.get("format") == "onnx"
        ):  # an ONNX export: ONNX Runtime runs it, already at its precision
            from lmforge.inference.onnx_runtime import load_onnx_model

            if quantize != "none":
                raise LmforgeError(
                    f"{model_dir} is an ONNX export (quantize: {meta.get('quantize', 'none')}); "
                    "--quantize applies to PyTorch models: export with --quantize int8 instead"
                )
            model, dtype = load_onnx_model(model_dir, device), None
            backend = f"onnxruntime {'int8' if meta.get('quantize') == 'int8' else 'fp32'}"
        else:
            model = task_plugin.load_model(str(model_dir))
            mode = resolve_precision(precision, device)
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
            saved_int8 = (
                getattr(model.config, "quantization_config", None) is not None
            )  # torchao weights
            if saved_int8 and quantize != "none":
                raise LmforgeError(f"{model_dir} is already quantized; load it without --quantize")
            if saved_int8:
                model, dtype = compile_quantized(model, device), None
            elif quantize == "int8":
                model, dtype = (
                    quantize_int8(model, device),
                    None,
                )  # int8 matmuls; activations stay fp32
            backend = (
                "pytorch int8 (torchao, compiled)"
                if saved_int8 or quantize == "int8"
                else f"pytorch {mode}"
            )
        label_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        tokenizer = load_tokenizer(str(model_dir))
        max_length = int(
            meta.get("max_length") or min(getattr(tokenizer, "model_max_length", 512), 512)
        )
        predictor = cls(
            model,
            tokenizer,
            task_plugin,
            label_names,
            max_length,
            device,
            dtype,
            bool(meta.get("text_pairs")),
        )
        predictor.backend = backend
        return predictor

    def logits(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        use_cache: bool = False,
        pairs: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Logits (N, C) in input order.

        Args:
            use_cache: Reuse (and fill) the token cache; worth it for evaluation files that
                are scored repeatedly, not for one-off prediction inputs.
            pairs: The second text of each pair, for models trained on text pairs.
        """
        if not texts:
            return np.zeros((0, len(self.label_names)), dtype=np.float32)
        encoded = tokenize(texts, self.tokenizer, self.max_length, use_cache=use_cache, pairs=pairs)
        ids, starts = encoded.ids, encoded.pair_starts
        order = length_sorted_batches([len(row) for row in ids], batch_size)
        batches = (
            self.collate(
                [
                    {"input_ids": ids[i]}
                    if starts is None
                    else {"input_ids": ids[i], "pair_start": int(starts[i])}
                    for i in batch
                ]
            )
            for batch in order
        )
        sorted_logits, _ = collect_logits(self.model, batches, self.device, self.autocast_dtype)
        out = np.empty_like(sorted_logits)
        out[np.concatenate(order)] = sorted_logits
        return out

    def word_logits(
        self, sentences: Sequence[Sequence[str]], batch_size: int = 64, use_cache: bool = False
    ) -> np.ndarray:
        """Token classification: per sentence of words, the logits (words, C) of each word's first
        sub-token (NaN for a word past ``max_length``), in input order."""
        encoded = tokenize_words(sentences, self.tokenizer, self.max_length, use_cache=use_cache)
        order = length_sorted_batches([len(row) for row in encoded.ids], batch_size)
        batches = (self.collate([{"input_ids": encoded.ids[i]} for i in batch]) for batch in order)
        sorted_logits, _ = collect_logits(self.model, batches, self.device, self.autocast_dtype)
        rows = ragged([None] * len(sentences))
        if order:
            rows[np.concatenate(order)] = sorted_logits
        return word_logits(rows, encoded.word_ids, [len(words) for words in sentences])

    def predict(
        self, texts: Sequence[str], batch_size: int = 64, pairs: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """One dict per text: ``label``, ``score`` and ``probabilities`` (classification), ``score``
        (regression), ``labels`` (multi-label), or ``entities`` with character offsets (NER)."""
        if self.task.language_modeling:  # before any forward pass over (T, vocab) logits
            raise LmforgeError(
                f"a {self.task.name} model generates text: use `lmforge generate`, not predict"
            )
        return self.task.predict(self, texts, batch_size, pairs)


def quantize_int8(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """Dynamic int8 quantization of the encoder's linear layers with torchao, then
    ``torch.compile``.

    Measured on MiniLM-L6 (2-core CPU, batch 64): torchao's int8 in eager mode runs at about
    half the speed of bf16 (200 vs 390 examples/s); compiled, inductor fuses the
    quantize/matmul/rescale steps and it reaches about 510. Compiling costs about a minute
    once per process (per new input shape family), so int8 pays off for large batch jobs
    and servers, not for a handful of texts. The classification head stays in float.
    """
    if device != "cpu":
        raise LmforgeError("--quantize int8 is for CPU inference; on a GPU use --precision bf16")
    logging.getLogger("torchao").setLevel(logging.ERROR)  # it reports missing GPU kernels at import
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        raise LmforgeError("--quantize int8 needs torchao: pip install torchao") from None

    def encoder_linear(module: torch.nn.Module, name: str) -> bool:
        return isinstance(module, torch.nn.Linear) and not name.startswith(("classifier", "score"))

    quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=encoder_linear)
    return torch.compile(model, dynamic=True)


def compile_quantized(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """A model loaded with int8 (torchao) weights, compiled as :func:`quantize_int8` compiles
    (eager int8 runs at about half the speed of bf16)."""
    if device != "cpu":
        raise LmforgeError(
            "this model holds int8 weights for CPU inference (lmforge export --quantize int8); "
            "on a GPU load the original model with --precision bf16"
        )
    return torch.compile(model, dynamic=True)


def warn_if_unverified(model_dir: Path, meta: dict[str, Any]) -> None:
    """Say loudly when an export failed its verification and was kept with --accept-degradation."""
    verification = meta.get("verification") or {}
    if verification.get("passed") is False:
        logging.getLogger("lmforge").warning(
            "%s failed its export verification (%s); it was kept with --accept-degradation",
            model_dir,
            verification.get("summary", "see export_report.md"),
        )
