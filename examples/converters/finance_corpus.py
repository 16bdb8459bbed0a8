"""Build a small financial-news corpus for pretraining: Reuters-21578 stories + FOMC statements.

    python examples/converters/finance_corpus.py [--shared ../shared/data] [--out examples/data]

Writes ``finance_train.txt`` and ``finance_validation.txt`` with one document per line
(whitespace collapsed): every Reuters story with text (title + body, read with the lenient
reader of reuters_to_jsonl.py) and every FOMC statement and implementation note (hard-wrapped
at 80 columns in the source: joined into one line). Every 20th document goes to validation,
so both parts mix the two sources. Used by examples/pretrain_finance_clm.yaml (a causal LM
from scratch) and examples/pretrain_finance_mlm.yaml (domain-adaptive MLM of MiniLM).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reuters_to_jsonl import stories  # noqa: E402  (the same lenient SGML reader)

REPO = Path(__file__).resolve().parents[2]


def documents(shared: Path) -> list[str]:
    docs = []
    for path in sorted((shared / "reuters21578").glob("reut2-*.sgm")):
        docs += [
            story["text"] for story in stories(path.read_text(encoding="latin-1")) if story["text"]
        ]
    for folder in ("statements", "implementation_notes"):
        for path in sorted((shared / "fomc_statements" / folder).iterdir()):
            text = " ".join(path.read_text(encoding="utf-8", errors="replace").split())
            if text:
                docs.append(text)
    return docs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "examples" / "data")
    args = parser.parse_args()
    if (
        not (args.shared / "reuters21578").is_dir()
        or not (args.shared / "fomc_statements").is_dir()
    ):
        sys.exit(
            f"finance_corpus: {args.shared} needs reuters21578/ and fomc_statements/ (see its "
            "README)"
        )
    docs = documents(args.shared)
    args.out.mkdir(parents=True, exist_ok=True)
    parts = {"train": [d for i, d in enumerate(docs) if i % 20], "validation": docs[::20]}
    for name, rows in parts.items():
        out = args.out / f"finance_{name}.txt"
        out.write_text("\n".join(rows) + "\n", encoding="utf-8")
        print(f"wrote {len(rows)} documents ({sum(len(r.split()) for r in rows):,} words) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
