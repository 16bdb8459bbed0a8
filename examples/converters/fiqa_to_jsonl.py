"""Convert FiQA 2018 task 1 (aspect-based financial sentiment) to lmforge's JSONL.

    python examples/converters/fiqa_to_jsonl.py ../shared/data/fiqa_sentiment data/fiqa.jsonl

FiQA ships JSON objects keyed by id, each sentence with one or more (target, score)
annotations. This writes one row per annotation: ``{"text": sentence, "target": the
company or entity, "score": sentiment in [-1, 1], "source": headline|post}``. The score
depends on the target (one headline can be good news for one company and bad for
another), so examples/fiqa_regression.yaml trains on (sentence, target) pairs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FILES = {"headline": "task1_headline_ABSA_train.json", "post": "task1_post_ABSA_train.json"}


def convert(source_dir: Path, out: Path) -> int:
    rows = []
    for source, name in FILES.items():
        data = json.loads((source_dir / name).read_text(encoding="utf-8"))
        for example in data.values():
            for info in example["info"]:
                rows.append(
                    {
                        "text": example["sentence"],
                        "target": info["target"],
                        "score": float(info["sentiment_score"]),
                        "source": source,
                    }
                )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return len(rows)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: fiqa_to_jsonl.py FIQA_DIR OUT.jsonl")
    print(f"wrote {convert(Path(sys.argv[1]), Path(sys.argv[2]))} rows to {sys.argv[2]}")
