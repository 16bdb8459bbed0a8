"""Where a MiniLM training step spends its time (torch.profiler, CPU), and its model FLOP/s.

    python benchmarks/profile_step.py --batch 32 --length 32

One bf16-autocast training step of the packaged MiniLM-L6 (forward, backward, clip, fused
AdamW) on random token ids, profiled over 3 steps after 3 warm-up steps; prints the top
operators by self time and the share of the step spent in matmuls.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import AutoModelForSequenceClassification
from transformers import logging as hf_logging

from lmforge.models.loading import resolve_model_path
from lmforge.training.dropout import use_fast_dropout

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--fp32", action="store_true")
    parser.add_argument(
        "--stock-dropout", action="store_true", help="keep nn.Dropout (default: lmforge's)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the model (dynamic shapes)"
    )
    parser.add_argument(
        "--freeze-embeddings",
        action="store_true",
        help="the embeddings stay frozen (lmforge's method: freeze): no gradient, no AdamW state",
    )
    parser.add_argument(
        "--bf16-weights",
        action="store_true",
        help="keep the linear layers' weights in bf16 between steps, updated from fp32 master "
        "copies (instead of autocast casting them every forward)",
    )
    parser.add_argument(
        "--attention-dropout",
        type=float,
        help="attention-probability dropout (default: the model's, 0.1 for MiniLM)",
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    extra = {}
    if args.attention_dropout is not None:
        extra["attention_probs_dropout_prob"] = args.attention_dropout
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path("default"), num_labels=3, **extra
    ).train()
    if not args.stock_dropout:
        use_fast_dropout(model)
    if args.freeze_embeddings:
        for p in model.base_model.embeddings.parameters():
            p.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    low: list[torch.Tensor] = []  # bf16 weights the model computes with
    masters: list[torch.Tensor] = []  # their fp32 copies, which the optimizer updates
    if args.bf16_weights:
        linear = {
            id(p) for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters()
        }
        updated = []
        for p in trainable:
            if id(p) in linear:
                master = p.detach().clone()
                p.data = p.data.to(torch.bfloat16)
                low.append(p)
                masters.append(master)
                updated.append(master)
            else:
                updated.append(p)
        trainable = updated
    optimizer = torch.optim.AdamW(trainable, lr=5e-5, fused=True)  # before compile
    ids = torch.randint(1000, 20000, (args.batch, args.length))
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 3, (args.batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not args.fp32):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        if low:  # the bf16 gradients to the fp32 masters, and the updated masters back
            for p, master in zip(low, masters, strict=True):
                master.grad = p.grad.float()
                p.grad = None
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        if low:
            with torch.no_grad():
                torch._foreach_copy_(low, masters)
        optimizer.zero_grad(set_to_none=True)

    forward_model = model
    if args.compile:
        model = torch.compile(model, dynamic=True)
    start = time.perf_counter()
    for _ in range(3):
        step()
    print(f"first 3 steps (with any compile): {time.perf_counter() - start:.1f} s")
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    cfg = forward_model.config
    d, layers, ff, t = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, args.length
    flops = (
        3 * args.batch * (2 * layers * (4 * d * d + 2 * d * ff) * t + 2 * layers * 2 * d * t * t)
    )
    print(
        f"step {seconds * 1e3:.0f} ms (median of {args.steps}), {args.batch / seconds:.1f} "
        "examples/s, "
        f"model {flops / seconds / 1e9:.0f} GFLOP/s"
    )
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    print(f"matmuls: {100 * matmul / total:.0f}% of self CPU time")
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
