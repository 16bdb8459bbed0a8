"""One candidate of the planner, measured in its own process (``python -m lmforge.planning.probe``).

Reads ``{"config": ..., "batch_size": N, "steps": K}`` on stdin and prints one JSON line:
the peak memory of this process, the time of each measured micro-batch (forward and
backward) with its padded token count, the optimizer-step time, evaluation speed, and what
a checkpoint and a model save cost. Logs go to stderr.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.config import RunConfig
from lmforge.data.batching import length_sorted_batches, padded_tokens
from lmforge.errors import LmforgeError
from lmforge.inference.forward import collect_logits
from lmforge.inference.predictor import Predictor
from lmforge.planning.memory import peak_memory_bytes
from lmforge.plots import pyplot
from lmforge.training.checkpoint import save_checkpoint_atomically
from lmforge.training.optim import build_optimizer, build_scheduler
from lmforge.training.state import TrainState
from lmforge.training.tracking import RunLogger

TIMED_PASSES = 3
RUN_IN_STEPS = 30


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def pick_batches(batches: list[list[int]], tokens: list[int], steps: int) -> tuple[list[int], int]:
    """Batches to time, spread over the range of lengths, and the longest batch (the memory
    peak)."""
    order = sorted(range(len(batches)), key=lambda i: tokens[i])
    spread = [order[round(q * (len(order) - 1))] for q in np.linspace(0.05, 0.95, steps)]
    return spread, order[-1]


@torch.inference_mode()
def loss_forward(model: torch.nn.Module, batches: Any, device: str) -> None:
    """Forward passes that compute the loss only (how language models are evaluated)."""
    was_training = model.training
    model.eval()
    for batch in batches:
        model(**{k: v.to(device) for k, v in batch.items()}).loss.item()
    model.train(was_training)


def measure(cfg: RunConfig, steps: int) -> dict[str, Any]:
    from lmforge.runs import save_model
    from lmforge.training.setup import make_train_loader, prepare_run

    setup = prepare_run(cfg)
    device, accelerator = setup.device, setup.accelerator
    train = setup.datasets["train"]
    sampler, loader = make_train_loader(cfg, train, setup.tokenizer, device)
    collate = loader.collate_fn
    batches = sampler.batches(0)
    lengths = train.lengths
    tokens = [padded_tokens(b, lengths) for b in batches]
    optimizer = build_optimizer(setup.model, cfg.training.learning_rate, cfg.training.weight_decay)
    scheduler = build_scheduler(optimizer, "constant", 0, 1)
    model, optimizer = accelerator.prepare(setup.model, optimizer)
    model.train()

    def step(index: int) -> tuple[float, float]:
        """One optimizer step on batch ``index``: (forward+backward seconds, clip+update
        seconds)."""
        batch = {k: v.to(device) for k, v in collate([train[i] for i in batches[index]]).items()}
        _sync(device)
        start = time.perf_counter()
        loss = model(**batch).loss
        accelerator.backward(loss)
        _sync(device)
        middle = time.perf_counter()
        if cfg.training.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.training.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        return middle - start, time.perf_counter() - middle

    picked, longest = pick_batches(batches, tokens, steps)
    # First pass: allocations, and kernel selection for each new shape (oneDNN/cuBLAS cache
    # them); a run sees each shape many times, so only the later passes are timed (median of
    # TIMED_PASSES: shared machines are noisy). The longest batch comes last, as deep into a
    # run: AdamW's state exists by then and the allocator has served many shapes.
    first = [sum(step(index)) for index in picked]
    timed = [[step(index) for index in picked] for _ in range(TIMED_PASSES)]
    micro, optimizer_seconds, new_shape_seconds = [], [], []
    for n, index in enumerate(picked):
        forward_backward = statistics.median(t[n][0] for t in timed)
        update = statistics.median(t[n][1] for t in timed)
        micro.append((tokens[index], forward_backward))
        optimizer_seconds.append(update)
        new_shape_seconds.append(max(first[n] - forward_backward - update, 0.0))
    for index in range(
        min(RUN_IN_STEPS, len(batches))
    ):  # the run's own order: as many shapes as it meets early
        step(index)
    step(longest)
    shapes = {
        (len(b), padded_tokens(b, lengths)) for b in batches
    }  # one entry per distinct batch shape

    eval_seconds_per_token, validation_tokens = 0.0, 0
    validation = setup.datasets.get("validation")
    # Language models are evaluated by their loss alone: gathering (B, T, vocab) logits as the
    # classification path does would time (and hold in memory) work the run never does.
    forward = loss_forward if setup.task.language_modeling else collect_logits
    if validation is not None and len(validation):
        val_lengths = validation.lengths
        order = length_sorted_batches(val_lengths, cfg.training.eval_batch_size)
        validation_tokens = sum(padded_tokens(b, val_lengths) for b in order)
        sample = [order[len(order) // 2], order[0]][: len(order)]
        sample_tokens = sum(padded_tokens(b, val_lengths) for b in sample)
        forward(model, (collate([validation[i] for i in b]) for b in sample[:1]), device)  # warm-up
        start = time.perf_counter()
        forward(model, (collate([validation[i] for i in b]) for b in sample), device)
        eval_seconds_per_token = (time.perf_counter() - start) / sample_tokens

    with tempfile.TemporaryDirectory() as tmp:
        # What the run also holds in memory: its TensorBoard writer and the report's plotting.
        RunLogger(Path(tmp) / "logs").close()
        pyplot()
        start = time.perf_counter()
        save_checkpoint_atomically(
            Path(tmp) / "checkpoints",
            TrainState(),
            accelerator.unwrap_model(model),
            optimizer,
            scheduler,
            accelerator.scaler,
        )
        checkpoint_seconds = time.perf_counter() - start
        start = time.perf_counter()
        save_model(
            accelerator.unwrap_model(model),
            setup.method,
            Path(tmp),
            setup.tokenizer,
            cfg,
            setup.label_names,
        )
        save_seconds = time.perf_counter() - start
        # The run ends by evaluating the saved model (a second copy, while the first one's
        # memory mostly stays with the process): do the same.
        saved = Predictor.load(tmp, device=device, precision=cfg.training.precision)
        if forward is loss_forward:
            loss_forward(
                saved.model,
                [collate([train[i] for i in batches[longest][: cfg.training.eval_batch_size]])],
                device,
            )
        else:
            saved.logits(
                setup.splits.frames["train"]["text"].tolist()[: cfg.training.eval_batch_size]
            )

    return {
        "batch_size": cfg.training.batch_size,
        "peak_memory_bytes": peak_memory_bytes(device),
        "micro_steps": micro,
        "optimizer_seconds": statistics.median(optimizer_seconds),
        "new_shape_seconds": statistics.median(new_shape_seconds),
        "distinct_shapes": len(shapes),
        "batch_tokens": tokens,
        "examples_per_epoch": len(train),
        "eval_seconds_per_token": eval_seconds_per_token,
        "validation_tokens": validation_tokens,
        "checkpoint_seconds": checkpoint_seconds,
        "save_seconds": save_seconds,
        "threads": torch.get_num_threads(),
    }


def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    request = json.loads(sys.stdin.read())
    cfg = RunConfig.model_validate(request["config"])
    try:
        result = measure(cfg, int(request["steps"]))
    except torch.OutOfMemoryError:
        result = {"error": "out of memory"}
    except LmforgeError as err:
        result = {"error": str(err)}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
