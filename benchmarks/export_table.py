"""One table of several export reports:
`python benchmarks/export_table.py OUT/*/export_report.json`.

Each report measured its export against the same fp32 original in its own process; the
ratios are taken within each report (side by side, interleaved), so they compare across
reports even when the machine's speed drifted between them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(paths: list[str]) -> None:
    print(
        "| export | backend | size | p50 latency (batch 1) | throughput (batch 32) | accuracy "
        "| loss vs fp32 | latency speed-up | throughput speed-up | smaller | verdict |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    reference = None
    for path in paths:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        ref, bf16, exported = report["rows"][0], report["rows"][1:-1], report["rows"][-1]
        if reference is None:
            reference = ref
            for row in [ref, *bf16]:
                print(
                    f"| original | {row['backend']} | {row['size_bytes'] / 1e6:.1f} MB | "
                    f"{row['latency_p50_ms']:.2f} ms | {row['throughput']:.0f} ex/s | "
                    f"{row['metrics'][report['metric']]:.4f} | | "
                    f"{ref['latency_p50_ms'] / row['latency_p50_ms']:.2f}x | "
                    f"{row['throughput'] / ref['throughput']:.2f}x | | |"
                )
        print(
            f"| {Path(path).parent.name} | {exported['backend']} | "
            f"{exported['size_bytes'] / 1e6:.1f} MB | "
            f"{exported['latency_p50_ms']:.2f} ms | {exported['throughput']:.0f} ex/s | "
            f"{exported['metrics'][report['metric']]:.4f} | {report['degradation_points']:+.2f} | "
            f"{ref['latency_p50_ms'] / exported['latency_p50_ms']:.2f}x | "
            f"{exported['throughput'] / ref['throughput']:.2f}x | "
            f"{ref['size_bytes'] / exported['size_bytes']:.2f}x | "
            f"{'passed' if report['passed'] else 'FAILED (accepted)'} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
