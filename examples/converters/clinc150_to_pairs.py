"""Convert CLINC150 (intent classification) to (query, positive) pairs for an embedding task.

    python examples/converters/clinc150_to_pairs.py [--data-dir DIR] [--include-oos]

CLINC150 ships ``data_train_val.json`` with ``[text, intent]`` rows under ``train``,
``val``, ``oos_train`` and ``oos_val``. This writes examples/data/clinc150_train.jsonl and
examples/data/clinc150_val.jsonl with one ``{"query": text, "positive": description,
"intent": intent}`` per row, where the description is the intent name in words
(``card_declined`` -> ``card declined``). A sentence encoder trained on these pairs
retrieves the intent description for a query: 150 distinct positives, so a batch often
holds the same one twice (the embedding task masks those duplicates). Out-of-scope rows
(intent ``oos``) have no meaningful description and are left out unless ``--include-oos``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SPLITS = {"train": ("train", "oos_train"), "val": ("val", "oos_val")}


def describe(intent: str) -> str:
    return intent.replace("_", " ")


def convert(data_dir: Path, out_dir: Path, include_oos: bool) -> dict[Path, int]:
    data = json.loads((data_dir / "data_train_val.json").read_text(encoding="utf-8"))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, (in_scope, out_of_scope) in SPLITS.items():
        rows = data[in_scope] + (data[out_of_scope] if include_oos else [])
        out = out_dir / f"clinc150_{split}.jsonl"
        lines = (
            json.dumps({"query": text, "positive": describe(intent), "intent": intent}) + "\n"
            for text, intent in rows
        )
        out.write_text("".join(lines), encoding="utf-8")
        written[out] = len(rows)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=REPO / "../shared/data/clinc150",
        help="folder with data_train_val.json (default: ../shared/data/clinc150 "
        "from the repository root)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=REPO / "examples/data",
        help="where the two JSONL files go (default: examples/data)",
    )
    parser.add_argument(
        "--include-oos", action="store_true", help="keep the out-of-scope rows, with positive 'oos'"
    )
    args = parser.parse_args()
    if not (args.data_dir / "data_train_val.json").is_file():
        sys.exit(
            f"clinc150_to_pairs.py: {args.data_dir.resolve()} has no data_train_val.json; "
            "give the CLINC150 folder with --data-dir"
        )
    for path, count in convert(args.data_dir, args.out_dir, args.include_oos).items():
        print(f"wrote {count} rows to {path}")


if __name__ == "__main__":
    main()
