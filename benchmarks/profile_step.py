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

from lmforge.data.packing import pack_sequences
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
    parser.add_argument(
        "--ragged",
        action="store_true",
        help="sentences of 7/8 to all of --length tokens (94%% real tokens, as FPB's grouped "
        "batches), padded to --length",
    )
    parser.add_argument(
        "--packed",
        type=int,
        metavar="ROW",
        help="the --ragged sentences packed several to a row of at most ROW tokens, no padding "
        "between them: block-diagonal mask, restarted positions, each sentence's [CLS] pooled",
    )
    parser.add_argument(
        "--sparse-embeddings",
        action="store_true",
        help="sparse word-embedding gradients (only the rows a batch uses), updated by "
        "SparseAdam; the rest by fused AdamW",
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    if args.packed:
        check_packing()
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
    sparse: list[torch.Tensor] = []
    if args.sparse_embeddings:
        words = model.base_model.embeddings.word_embeddings
        words.sparse = True
        sparse = [words.weight]
        trainable = [p for p in trainable if p is not words.weight]
        sparse_optimizer = torch.optim.SparseAdam(sparse, lr=5e-5)
    optimizer = torch.optim.AdamW(trainable, lr=5e-5, fused=True)  # before compile
    labels = torch.randint(0, 3, (args.batch,))
    lengths = torch.full((args.batch,), args.length)
    if args.ragged or args.packed:
        lengths = torch.randint(args.length * 7 // 8, args.length + 1, (args.batch,))
    inputs = packed_inputs(lengths.tolist(), args.packed) if args.packed else padded_inputs(lengths)
    real = int(lengths.sum())
    print(
        f"{real} real tokens in {inputs['input_ids'].numel()} "
        f"({tuple(inputs['input_ids'].shape)}): {100 * real / inputs['input_ids'].numel():.1f}%"
    )

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not args.fp32):
            if args.packed:
                loss = packed_loss(model, inputs, labels)
            else:
                loss = model(**inputs, labels=labels).loss
        loss.backward()
        if sparse:  # clip_grad_norm_ takes no sparse gradient: its norm joins the dense ones'
            dense_norm = torch.nn.utils.get_total_norm([p.grad for p in trainable])
            sparse_norm = sparse[0].grad.coalesce().values().float().norm()
            scale = (1.0 / (torch.hypot(dense_norm, sparse_norm) + 1e-6)).clamp(max=1.0)
            torch._foreach_mul_([p.grad for p in trainable], scale)
            sparse[0].grad = sparse[0].grad.coalesce() * scale
            sparse_optimizer.step()
            sparse[0].grad = None
        if low:  # the bf16 gradients to the fp32 masters, and the updated masters back
            for p, master in zip(low, masters, strict=True):
                master.grad = p.grad.float()
                p.grad = None
        else:
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
    d, layers, ff = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
    # Real tokens only, each attending to its own sentence: padding and packing's wider rows
    # are cost, not useful work.
    flops = 3 * sum(
        2 * layers * (4 * d * d + 2 * d * ff) * t + 2 * layers * 2 * d * t * t
        for t in lengths.tolist()
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


def padded_inputs(lengths: torch.Tensor) -> dict[str, torch.Tensor]:
    """Random token ids, one sentence per row, padded to the longest."""
    width = int(lengths.max())
    ids = torch.randint(1000, 20000, (len(lengths), width))
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()  # (B, T)
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}


def packed_inputs(lengths: list[int], capacity: int) -> dict[str, torch.Tensor]:
    """The same sentences packed into rows of at most ``capacity`` tokens (best-fit).

    The additive mask is block-diagonal (a sentence sees only itself), positions restart at each
    sentence, and ``starts`` holds each sentence's (row, column) of its first token, in input
    order. Padding at a row's end attends only to padding, so no mask row is fully blocked.
    """
    rows = pack_sequences(lengths, capacity)
    width = max(sum(lengths[i] for i in row) for row in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros_like(ids)
    segment = torch.full_like(ids, -1)  # padding is segment -1
    starts = torch.zeros((len(lengths), 2), dtype=torch.long)
    for r, row in enumerate(rows):
        offset = 0
        for i in row:
            n = lengths[i]
            ids[r, offset : offset + n] = torch.randint(1000, 20000, (n,))
            positions[r, offset : offset + n] = torch.arange(n)
            segment[r, offset : offset + n] = i
            starts[i] = torch.tensor([r, offset])
            offset += n
    allowed = segment[:, :, None] == segment[:, None, :]  # (R, T, T)
    mask = torch.zeros(allowed.shape).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    return {
        "input_ids": ids,
        "attention_mask": mask.unsqueeze(1),  # (R, 1, T, T)
        "position_ids": positions,
        "token_type_ids": torch.zeros_like(ids),
        "starts": starts,
    }


def packed_loss(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor
) -> torch.Tensor:
    """BertForSequenceClassification's loss, with each packed sentence's [CLS] pooled."""
    base = model.base_model
    hidden = base(
        **{k: v for k, v in inputs.items() if k != "starts"}
    ).last_hidden_state  # (R, T, d)
    first = hidden[inputs["starts"][:, 0], inputs["starts"][:, 1]]  # (B, d)
    pooled = base.pooler.activation(base.pooler.dense(first))
    logits = model.classifier(model.dropout(pooled))
    return torch.nn.functional.cross_entropy(logits.float(), labels)


def check_packing() -> None:
    """Packed and padded give the same logits (fp32, eval mode): the mask really isolates."""
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path("default"), num_labels=3
    ).eval()
    lengths = [5, 9, 3, 7]
    torch.manual_seed(1)
    packed = packed_inputs(lengths, 16)
    padded = padded_inputs(torch.tensor(lengths))
    for i, n in enumerate(lengths):  # the same token ids in both
        r, c = packed["starts"][i].tolist()
        padded["input_ids"][i, :n] = packed["input_ids"][r, c : c + n]
    with torch.no_grad():
        expected = model(**padded).logits
        base = model.base_model
        hidden = base(**{k: v for k, v in packed.items() if k != "starts"}).last_hidden_state
        first = hidden[packed["starts"][:, 0], packed["starts"][:, 1]]
        got = model.classifier(base.pooler.activation(base.pooler.dense(first)))
    error = (got - expected).abs().max().item()
    print(f"packed vs padded logits: max difference {error:.2e}")
    assert error < 1e-4, "the block-diagonal mask does not isolate the sentences"


if __name__ == "__main__":
    main()
