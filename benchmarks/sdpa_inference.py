"""Inference forward time of MiniLM-L6 with PyTorch's default SDPA kernel vs the math kernel.

    python benchmarks/sdpa_inference.py

bf16 autocast, ``inference_mode``, batch 64 of random token ids at 32, 64 and 128 tokens;
median of 10 forwards (after 2 warm-up ones), two rounds alternating the kernels. Training
with attention dropout takes the math path anyway; this checks that inference should not.
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AutoModelForSequenceClassification
from transformers import logging as hf_logging

from lmforge.models.loading import resolve_model_path


def main() -> None:
    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path("default"), num_labels=3
    ).eval()
    for length in (32, 64, 128):
        ids = torch.randint(1000, 20000, (64, length))
        mask = torch.ones_like(ids)
        results: dict[str, list[float]] = {"default": [], "math": []}
        for _ in range(2):
            for name in results:
                times = []
                for _ in range(12):
                    kernel = sdpa_kernel(SDPBackend.MATH) if name == "math" else nullcontext()
                    start = time.perf_counter()
                    with kernel, torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
                        model(input_ids=ids, attention_mask=mask)
                    times.append(time.perf_counter() - start)
                results[name].append(statistics.median(times[2:]) * 1e3)
        shown = ", ".join(
            f"{k} {' / '.join(f'{v:.0f}' for v in vs)} ms" for k, vs in results.items()
        )
        print(f"64 x {length} tokens: {shown}")


if __name__ == "__main__":
    main()
