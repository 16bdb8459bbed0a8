"""The example configs on the real data sets in ../shared/data (skipped when absent),
and the packaged MiniLM on the demo data (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.config import load_config
from lmforge.data.loading import load_splits

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _needs(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not present")


@_needs(SHARED / "financial_phrasebank" / "Sentences_50Agree.txt")
def test_financial_phrasebank_example_reads_all_rows():
    cfg = load_config(ROOT / "examples" / "financial_phrasebank.yaml")
    splits = load_splits(cfg.data, cfg.training.seed)
    report = splits.cleaning["train"]
    assert report.rows_read == 3877  # the README's count
    assert report.exact_duplicates > 0  # "each file contains a few exact duplicate lines"
    assert report.rows_kept == sum(len(f) for f in splits.frames.values())
    assert set(splits.frames["train"]["label"]) == {"positive", "negative", "neutral"}
    # latin-1 decoded, not mojibake from a wrong guess
    assert not splits.frames["train"]["text"].str.contains("\ufffd").any()
    assert len(splits.frames["validation"]) == pytest.approx(0.1 * report.rows_kept, abs=3)


@_needs(SHARED / "banking77" / "train.csv")
def test_banking77_example_reads_77_intents():
    cfg = load_config(ROOT / "examples" / "banking77.yaml")
    splits = load_splits(cfg.data, cfg.training.seed)
    assert splits.cleaning["train"].rows_read == 10003
    assert splits.frames["train"]["label"].nunique() == 77
    assert (
        splits.frames["validation"]["label"].nunique() == 77
    )  # stratified: every intent validated


@pytest.mark.slow
def test_demo_recipe_with_packaged_minilm(tmp_path):
    from lmforge.cli import DEMO_RECIPE
    from lmforge.training.recipe import run_training

    run_dir = run_training(load_config(DEMO_RECIPE), output_dir=tmp_path / "demo")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["total_parameters"] > 22_000_000
    assert metrics["validation"]["accuracy"] > 0.6  # a 3-class majority baseline is 0.45
