"""``lmforge monitor build``: models named by training configs are trained, exported and
cached; replay refuses to run on a model that is not built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("sqlalchemy", reason="lmforge monitor needs sqlalchemy")

from conftest import error_line, run_cli, tiny_config  # noqa: E402

pytestmark = pytest.mark.recipe


def write_monitor(tmp_path: Path, model_dir: Path, sentiment_csv: Path, **sentiment) -> Path:
    train = tiny_config(model_dir, sentiment_csv, epochs=2)
    train["data"]["test_size"] = 0.25
    (tmp_path / "sentiment.yaml").write_text(yaml.safe_dump(train))
    lines = [
        {"id": f"n{i}", "timestamp": f"2024-05-06T{i:02d}:00:00Z", "text": f"Profit rose {i}%."}
        for i in range(6)
    ]
    (tmp_path / "news.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    config = {
        "models": {"sentiment": {"train": "sentiment.yaml", **sentiment}},
        "sources": [{"name": "news", "path": "news.jsonl"}],
        "device": "cpu",
    }
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_build_trains_once_and_replay_uses_the_built_model(
    tmp_path, tiny_model_dir, sentiment_csv, capsys
):
    config = write_monitor(tmp_path, tiny_model_dir, sentiment_csv, negative="negative")
    code, _, err = run_cli(["monitor", "replay", config], capsys)
    assert code != 0 and "not built yet" in error_line(err) and "monitor build" in err

    code, out, _ = run_cli(["monitor", "build", config], capsys)
    assert code == 0 and "built" in out and "split test" in out, out
    (built,) = (tmp_path / "monitor-models" / "sentiment").iterdir()
    record = json.loads((built / "build.json").read_text())
    assert record["metrics"]["split"] == "test" and 0.0 <= record["metrics"]["accuracy"] <= 1.0
    assert (built / "run" / "model" / "model.safetensors").is_file()

    code, out, _ = run_cli(["monitor", "build", config], capsys)
    assert code == 0 and "cached" in out and " built " not in out

    code, out, _ = run_cli(["monitor", "replay", config], capsys)
    assert code == 0 and "6 records read: 6 stored" in out

    # Other training settings are another build, beside the first.
    code, out, _ = run_cli(
        ["monitor", "build", config, "--set", "models.sentiment.overrides=[training.epochs=1]"],
        capsys,
    )
    assert code == 0 and "built" in out
    assert len(list((tmp_path / "monitor-models" / "sentiment").iterdir())) == 2


def test_build_exports_to_onnx_int8_and_replay_runs_it(
    tmp_path, tiny_model_dir, sentiment_csv, capsys
):
    pytest.importorskip("onnxruntime", reason="ONNX export needs lmforge[onnx]")
    config = write_monitor(
        tmp_path, tiny_model_dir, sentiment_csv, export={"format": "onnx", "quantize": "int8"}
    )
    code, out, err = run_cli(["monitor", "build", config], capsys)
    assert code == 0, err
    (built,) = (tmp_path / "monitor-models" / "sentiment").iterdir()
    (export,) = built.glob("export-*")
    assert json.loads((export / "export_report.json").read_text())["passed"]
    code, out, _ = run_cli(["monitor", "replay", config], capsys)
    assert code == 0 and "6 stored" in out

    from lmforge.apps.monitor.store import open_store
    from lmforge.apps.monitor.store import predictions as table

    with open_store(f"sqlite:///{tmp_path / 'monitor.db'}").connect() as connection:
        models = {row.model for row in connection.execute(table.select())}
    assert len(models) == 1 and "onnxruntime int8" in models.pop()


def test_model_specs_are_checked_at_load(tmp_path, capsys):
    path = tmp_path / "monitor.yaml"
    for models, message in [
        ({"sentiment": {"run": "a", "train": "b.yaml"}}, "run or train, not both"),
        ({"sentiment": {"negative": "neg"}}, "name a model directory"),
        (
            {"sentiment": {"run": "a"}, "topic": {"descriptions": {"x": "y"}, "train": "t.yaml"}},
            "descriptions use an embedding model",
        ),
        ({"sentiment": {"run": "a", "export": {"format": "tflite"}}}, "format"),
    ]:
        path.write_text(yaml.safe_dump({"models": models}))
        code, _, err = run_cli(["monitor", "build", path], capsys)
        assert code != 0 and message in error_line(err), err
