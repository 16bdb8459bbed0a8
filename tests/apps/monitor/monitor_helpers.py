"""Shared by the monitor's tests: a keyword classifier whose verdicts are known exactly, and
a stream with one negative hour."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from lmforge.apps.monitor.classify import ALL, Labels
from lmforge.apps.monitor.config import MonitorConfig, load_monitor_config

UTC = timezone.utc
T0 = datetime(2024, 5, 6, tzinfo=UTC)


class KeywordClassifier:
    """Negative when the text says 'loss', positive when it says 'gain', else neutral."""

    identity = "keywords"

    def __call__(self, texts: Sequence[str], batch_size: int) -> list[Labels]:
        out = []
        for text in texts:
            negative = 0.9 if "loss" in text else 0.05
            positive = 0.9 if "gain" in text else 0.05
            label = "negative" if negative > 0.5 else "positive" if positive > 0.5 else "neutral"
            out.append(Labels(label, negative, positive, ALL, None))
        return out


def stream_lines(hours: int = 7, per_hour: int = 4, surge_hour: int = 3) -> list[str]:
    """``per_hour`` documents in each hour; every one in ``surge_hour`` reports a loss."""
    lines = []
    for hour in range(hours):
        for k in range(per_hour):
            moment = T0 + timedelta(hours=hour, minutes=10 * k)
            word = "loss" if hour == surge_hour else ("gain" if k % 2 else "flat")
            text = f"Company {hour}-{k} reports a {word} this quarter."
            record = {"id": f"d{hour}-{k}", "timestamp": moment.isoformat(), "text": text}
            lines.append(json.dumps(record))
    return lines


def monitor_config(tmp_path: Path, stream: Path, **extra) -> MonitorConfig:
    return load_monitor_config(
        {
            "store": str(tmp_path / "monitor.db"),
            "models": {"sentiment": {"run": "keywords"}},
            "sources": [{"name": "news", "path": str(stream)}],
            "windows": ["1h", "1d"],
            "lateness": "0s",
            "batch_size": 4,
            "rules": [
                {
                    "name": "negative-surge",
                    "window": "1h",
                    "method": "threshold",
                    "threshold": 0.5,
                    "min_volume": 2,
                    "top_documents": 2,
                }
            ],
            **extra,
        }
    )


def save_tiny_sentiment_model(out: Path) -> Path:
    """A random 2-layer BERT classifier (hidden 32) with labels negative/neutral/positive and
    MiniLM's tokenizer: real inference, verdicts that are random but fixed."""
    from conftest import save_tiny_classifier

    return save_tiny_classifier(out, ["negative", "neutral", "positive"])
