"""int8 PyTorch models that plain ``transformers`` loads: torchao weights in safetensors.

The model is loaded through ``transformers.TorchAoConfig`` with torchao's dynamic int8
scheme (int8 weights, activations quantized per batch), and saved: config.json carries the
``quantization_config`` and the safetensors file torchao's tensor metadata, so
``AutoModelFor...from_pretrained(DIR)`` (with torchao installed) gives the int8 model back.
lmforge's ``Predictor`` compiles it on load (eager int8 runs at half the speed of bf16;
see :func:`lmforge.inference.predictor.quantize_int8`).

The task head stays in float (as in ``--quantize int8``); so do the embedding tables:
torchao's int8 kernels are matmuls, and a lookup table gains size, not speed (the ONNX
int8 export quantizes them too and is the smaller artifact).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.errors import LmforgeError
from lmforge.runs import write_metadata

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

    from lmforge.tasks.base import Task

# The new task heads (sequence/token classification: classifier; Llama-style: score).
FLOAT_MODULES = ["classifier", "score"]


def save_int8(
    model_dir: Path,
    out_dir: Path,
    task: Task,
    tokenizer: PreTrainedTokenizerBase,
    metadata: dict[str, Any],
) -> Path:
    """Write ``out_dir``: the plain model in ``model_dir`` with int8 (torchao) linear weights."""
    if getattr(_config(model_dir), "pruned_heads", None):
        raise LmforgeError(
            "--quantize int8 with --format hf cannot hold a head-pruned model (transformers "
            "rebuilds no pruned heads under quantization); use --format onnx --quantize int8"
        )
    logging.getLogger("torchao").setLevel(logging.ERROR)
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig
        from transformers import TorchAoConfig
    except ImportError:
        raise LmforgeError(
            "--quantize int8 with --format hf needs torchao: pip install 'lmforge[int8]'"
        ) from None
    config = TorchAoConfig(
        Int8DynamicActivationInt8WeightConfig(), modules_to_not_convert=FLOAT_MODULES
    )
    model = task.load_model(str(model_dir), quantization_config=config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    write_metadata(out_dir, {**metadata, "format": "hf", "quantize": "int8"})
    return out_dir


def _config(model_dir: Path) -> PretrainedConfig:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(model_dir))
