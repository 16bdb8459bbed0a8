"""The human report of a run: Markdown with a loss curve and a confusion matrix (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.plots import pyplot


def plot_confusion_matrix(
    matrix: list[list[int]], labels: list[str], path: Path, title: str
) -> None:
    plt = pyplot()
    size = max(4.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(
        range(len(labels)),
        labels,
        rotation=90 if len(labels) > 6 else 0,
        fontsize=8 if len(labels) > 20 else 10,
    )
    ax.set_yticks(range(len(labels)), labels, fontsize=8 if len(labels) > 20 else 10)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(labels) <= 20:
        peak = max(max(row) for row in matrix) or 1
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(
                    j,
                    i,
                    str(value),
                    ha="center",
                    va="center",
                    color="white" if value > peak / 2 else "black",
                    fontsize=9,
                )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_loss_curve(history: list[dict[str, Any]], path: Path) -> bool:
    """Train loss per logging window and validation loss per evaluation; False when empty."""
    train = [
        (h["step"], h["loss"])
        for h in history
        if h["split"] == "train" and h.get("loss") is not None
    ]
    val = [
        (h["step"], h["loss"])
        for h in history
        if h["split"] == "validation" and h.get("loss") is not None
    ]
    if not train and not val:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if val:
        ax.plot(*zip(*val, strict=True), marker="o", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def classification_table(metrics: dict[str, Any]) -> str:
    """A Markdown per-class table, like sklearn's classification_report."""
    lines = ["| label | precision | recall | f1 | support |", "|---|---:|---:|---:|---:|"]
    for name, row in metrics["per_class"].items():
        lines.append(
            f"| {name} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | "
            f"{row['support']} |"
        )
    return "\n".join(lines)


def write_report(
    run_dir: Path, metrics: dict[str, Any], history: list[dict[str, Any]], metric: str
) -> Path:
    """Write ``report.md`` (and its PNGs) into the run directory."""
    train = metrics["train"]
    parts = [
        f"# Run report: {run_dir.name}",
        "",
        f"Task **{metrics['task']}**, method **{metrics['method']}**, "
        f"{train['trainable_parameters']:,} of {train['total_parameters']:,} parameters trained "
        f"({100 * train['trainable_share']:.2f}%), precision {train['precision']} on "
        f"{train['device']}.",
        "",
        "| | value |",
        "|---|---:|",
        f"| optimizer steps | {train['steps']} |",
        f"| epochs | {train['epochs']} |",
        f"| train time (s) | {train['train_seconds']} |",
        f"| examples/s | {train['examples_per_second']} |",
        f"| best step ({metric}) | {train['best_step']} |",
        "",
    ]
    for split in ("validation", "test"):
        if split not in metrics:
            continue
        m = metrics[split]
        parts += [f"## {split.capitalize()} ({m['n']} examples)", ""]
        if "per_class" not in m:  # a score, not classes: the metrics as a table
            parts += ["| metric | value |", "|---|---:|"]
            parts += [
                f"| {key} | {value:.4f} |" for key, value in m.items() if isinstance(value, float)
            ]
            parts.append("")
            continue
        parts += [
            f"accuracy **{m['accuracy']:.4f}**, macro-F1 **{m['macro_f1']:.4f}**, "
            f"weighted-F1 {m['weighted_f1']:.4f}",
            "",
            classification_table(m),
            "",
        ]
        image = f"confusion_matrix_{split}.png"
        plot_confusion_matrix(
            m["confusion_matrix"], m["labels"], run_dir / image, f"{split} confusion matrix"
        )
        parts += [f"![{split} confusion matrix]({image})", ""]
    if plot_loss_curve(history, run_dir / "loss_curve.png"):
        parts += ["## Loss", "", "![loss curve](loss_curve.png)", ""]
    data = metrics.get("data", {})
    if data:
        parts += ["## Data", "", "| split | rows |", "|---|---:|"]
        parts += [f"| {name} | {n} |" for name, n in data["rows"].items()]
        for name, counts in data["cleaning"].items():
            dropped = {
                k: v
                for k, v in counts.items()
                if k not in ("rows_read", "rows_kept", "repaired_tags") and v
            }
            parts.append(
                f"\n{name} file: {counts['rows_read']} rows read, {counts['rows_kept']} kept"
                + (f"; dropped: {dropped}" if dropped else "")
                + (
                    f"; {counts['repaired_tags']} tags repaired"
                    if counts.get("repaired_tags")
                    else ""
                )
            )
        parts.append("")
    path = run_dir / "report.md"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


# --- the console report (lmforge train / eval / ensemble print these) -----------------------


def headline(m: dict[str, Any]) -> str:
    """The main metrics of a split, whatever the task."""
    from lmforge.tasks.registry import HEADLINE_METRICS

    return "  ".join(f"{label} {m[key]:.4f}" for key, label in HEADLINE_METRICS if key in m)


def format_classification_report(m: dict[str, Any]) -> str:
    width = max(12, *(len(name) for name in m["per_class"]))
    lines = [f"{'':>{width}}  precision  recall  f1-score  support", ""]
    for name, row in m["per_class"].items():
        lines.append(
            f"{name:>{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:8.4f}  "
            f"{row['support']:7d}"
        )
    lines += [
        "",
        f"{'accuracy':>{width}}  {'':9}  {'':6}  {m['accuracy']:8.4f}  {m['n']:7d}",
        f"{'macro f1':>{width}}  {m['macro_precision']:9.4f}  {m['macro_recall']:6.4f}  "
        f"{m['macro_f1']:8.4f}  {m['n']:7d}",
        f"{'weighted f1':>{width}}  {'':9}  {'':6}  {m['weighted_f1']:8.4f}  {m['n']:7d}",
    ]
    return "\n".join(lines)


def format_entity_report(m: dict[str, Any]) -> str:
    """Entity-level scores per type, like seqeval's classification_report."""
    width = max(12, *(len(name) for name in m["per_type"]))
    lines = [f"{'':>{width}}  precision  recall  f1-score  support", ""]
    rows = [
        *m["per_type"].items(),
        ("", None),
        ("all entities", {**m, "support": m["entities_true"]}),
    ]
    for name, row in rows:
        lines.append(
            ""
            if row is None
            else f"{name:>{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  "
            f"{row['f1']:8.4f}  {row['support']:7d}"
        )
    lines.append(
        f"\n{m['n']} sentences, {m['words']} words, word accuracy {m['accuracy']:.4f}"
        + (
            f", {m['words_cut_off']} words past max_length (predicted O)"
            if m["words_cut_off"]
            else ""
        )
    )
    return "\n".join(lines)
