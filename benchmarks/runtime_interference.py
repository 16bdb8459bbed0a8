"""Why `lmforge export` measures each model in its own process: two runtimes in one process
slow each other down.

    python benchmarks/runtime_interference.py RUN ONNX_EXPORT [ONNX_INT8_EXPORT]

Times batch-1 calls (p50 over 100 texts of the run's test split, else validation) of each model
alone in this process, then interleaved with the others, in the same process.
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np

from lmforge.inference.predictor import Predictor
from lmforge.runs import read_run_split


def p50_ms(predictor: Predictor, texts: list[str]) -> float:
    times = []
    for text in texts:
        started = time.perf_counter()
        predictor.logits([text], batch_size=1)
        times.append(time.perf_counter() - started)
    return 1000 * float(np.percentile(times, 50))


def main(run: str, *exports: str) -> None:
    warnings.simplefilter("ignore")
    try:
        texts = read_run_split(run, "test")["text"].tolist()[:100]
    except Exception:  # noqa: BLE001 - a run without a test split
        texts = read_run_split(run, "validation")["text"].tolist()[:100]
    models = {"pytorch fp32": Predictor.load(run, device="cpu", precision="fp32")}
    models.update({path: Predictor.load(path, device="cpu") for path in exports})
    for predictor in models.values():  # warm-up
        p50_ms(predictor, texts[:10])
    for name, predictor in models.items():
        print(
            f"alone        {name}: {p50_ms(predictor, texts):.2f} ms "
            f"(and again {p50_ms(predictor, texts):.2f})"
        )
    for round_ in (1, 2):
        print(
            f"interleaved {round_} "
            + "  ".join(f"{name}: {p50_ms(p, texts):.2f} ms" for name, p in models.items())
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
