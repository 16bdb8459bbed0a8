#!/usr/bin/env bash
# The evidence for `lmforge bench serve` (docs/serving.md, "Load test"): lmforge serve against a naive
# FastAPI + transformers.pipeline server on a Financial PhraseBank classifier, 32 clients, 60 s measured
# after a 5 s warm-up, repeated so the reported numbers are medians over separate runs.
# Usage: benchmarks/serve_load.sh [RUN_DIR] [REPEATS]
#   RUN_DIR: a trained FPB run (default runs/fpb-serve; trained with 1 epoch if missing).
# Writes benchmarks/results/serve_load-<i>.json and benchmarks/results/serve_load.md.
set -euo pipefail
RUN=${1:-runs/fpb-serve}
N=${2:-3}
PY=${PYTHON:-.venv/bin/python}
FPB=${FPB:-../shared/data/financial_phrasebank/Sentences_50Agree.txt}
OUT=benchmarks/results
mkdir -p "$OUT"
if [ ! -d "$RUN/model" ]; then
  echo "== $(date -u +%T) train $RUN (1 epoch)" >&2
  "$PY" -m lmforge train examples/financial_phrasebank.yaml --set training.epochs=1 --output "$RUN"
fi
for i in $(seq 1 "$N"); do
  echo "== $(date -u +%T) bench serve ($i/$N)" >&2
  "$PY" -m lmforge bench serve "$RUN" --texts "$FPB" --delimiter @ --encoding latin-1 --no-header \
    --clients 32 --duration 60 --warmup 5 --json "$OUT/serve_load-$i.json"
done
"$PY" - "$OUT" "$N" <<'PY'
import json, statistics, sys
from pathlib import Path
out, n = Path(sys.argv[1]), int(sys.argv[2])
runs = [json.loads((out / f"serve_load-{i}.json").read_text()) for i in range(1, n + 1)]
keys = ["throughput_rps", "p50_ms", "p95_ms", "p99_ms", "error_count", "rss_peak_mb", "rss_slope_mb_per_min"]
lines = ["| run | server | req/s | p50 ms | p95 ms | p99 ms | errors | peak RSS MB | MB/min |",
         "|---|---|---|---|---|---|---|---|---|"]
for i, run in enumerate(runs + [None], start=1):
    for name in ("lmforge", "naive"):
        rows = [next(s for s in r["servers"] if s["server"] == name) for r in runs]
        row = rows[i - 1] if run else {k: statistics.median(x[k] for x in rows) for k in keys}
        lines.append(f"| {i if run else 'median'} | {name} | {row['throughput_rps']:.1f} | {row['p50_ms']:.1f} | "
                     f"{row['p95_ms']:.1f} | {row['p99_ms']:.1f} | {row['error_count']:g} | "
                     f"{row['rss_peak_mb']:.0f} | {row['rss_slope_mb_per_min']:+.2f} |")
thr = [r["throughput_ratio"] for r in runs]
p99 = [r["p99_ratio"] for r in runs]
lines.append(f"\nlmforge / naive throughput: {', '.join(f'{x:.2f}' for x in thr)} (median {statistics.median(thr):.2f}x); "
             f"p99: {', '.join(f'{x:.2f}' for x in p99)} (median {statistics.median(p99):.2f}x)")
(out / "serve_load.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
