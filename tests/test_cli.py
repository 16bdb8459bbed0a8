"""The CLI end to end on a tiny model, and a one-line error for every bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from conftest import error_line, run_cli, tiny_config, write_csv

pytestmark = pytest.mark.recipe

SUBCOMMANDS = ["demo", "train", "eval", "predict", "export", "verify", "serve", "config"]


@pytest.fixture
def config_file(tmp_path, tiny_model_dir, sentiment_csv):
    cfg = tiny_config(tiny_model_dir, sentiment_csv, epochs=8)
    cfg["data"]["validation_size"] = 0.25
    cfg["training"]["eval_strategy"] = "epoch"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def trained_run(tmp_path, config_file, capsys):
    code, out, _ = run_cli(
        ["train", config_file, "--output", tmp_path / "run", "--set", "training.epochs=6"], capsys
    )
    assert code == 0
    assert "macro-F1" in out and "report:" in out
    return tmp_path / "run"


def test_help_everywhere():
    for args in ([], *([c] for c in SUBCOMMANDS)):
        result = subprocess.run(
            [sys.executable, "-m", "lmforge", *args, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "usage: lmforge" in result.stdout


def test_train_eval_predict_end_to_end(tmp_path, trained_run, sentiment_csv, capsys, monkeypatch):
    assert yaml.safe_load((trained_run / "config.yaml").read_text())["training"]["epochs"] == 6

    code, out, _ = run_cli(
        [
            "eval",
            trained_run,
            "--data",
            sentiment_csv,
            "--json",
            tmp_path / "m.json",
            "--precision",
            "fp32",
        ],
        capsys,
    )
    assert code == 0
    assert "precision" in out and "macro f1" in out
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n"] == 16
    assert set(metrics) >= {"accuracy", "macro_f1", "weighted_f1", "per_class", "n"}
    assert set(metrics["per_class"]["positive"]) == {"precision", "recall", "f1", "support"}

    code, out, _ = run_cli(
        ["predict", trained_run, "--input", "-", "--precision", "fp32"],
        capsys,
        stdin="profit rose sharply\n\nshares slumped on weak demand\n",
        monkeypatch=monkeypatch,
    )
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in rows] == ["profit rose sharply", "shares slumped on weak demand"]
    for row in rows:
        assert row["label"] in ("positive", "negative")
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert row["score"] == max(row["probabilities"].values())

    out_file = tmp_path / "pred.jsonl"
    code, _, _ = run_cli(
        ["predict", trained_run / "model", "--input", sentiment_csv, "--output", out_file], capsys
    )
    assert code == 0
    assert len(out_file.read_text().splitlines()) == 16


def test_config_command_lists_and_validates(config_file, capsys):
    code, out, _ = run_cli(["config"], capsys)
    assert code == 0 and "learning_rate" in out and "lora" in out
    code, out, _ = run_cli(["config", config_file, "--set", "method=lora"], capsys)
    assert code == 0 and yaml.safe_load(out)["method"]["name"] == "lora"


# --- bad input: one line, naming the file or field and the fix, exit code 2 -----------------


def _bad_train(tmp_path, capsys, tiny_model_dir, train_file, **data):
    cfg = tiny_config(tiny_model_dir, train_file, epochs=1)
    cfg["data"].update(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli(["train", path, "--output", tmp_path / "out"], capsys)
    assert code == 2
    return error_line(err)


def test_missing_config_file(tmp_path, capsys):
    code, _, err = run_cli(["train", tmp_path / "nope.yaml"], capsys)
    assert code == 2 and "nope.yaml not found" in error_line(err)


def test_missing_data_file(tmp_path, capsys, tiny_model_dir):
    line = _bad_train(tmp_path, capsys, tiny_model_dir, tmp_path / "missing.csv")
    assert "missing.csv not found" in line


def test_missing_column(tmp_path, capsys, tiny_model_dir, sentiment_rows):
    train = write_csv(tmp_path / "t.csv", sentiment_rows, header=("sentence", "label"))
    line = _bad_train(tmp_path, capsys, tiny_model_dir, train)
    assert "no text column 'text'" in line and "sentence" in line and "data.text_column" in line


def test_wrong_encoding(tmp_path, capsys, tiny_model_dir):
    train = tmp_path / "latin.txt"
    train.write_bytes(
        "Sepp\xe4l\xe4 profit rose@positive\nloss widened@negative\n".encode("latin-1")
    )
    line = _bad_train(
        tmp_path, capsys, tiny_model_dir, train, format="delimited", delimiter="@", header=False
    )
    assert "latin.txt" in line and "line 1" in line and "latin-1" in line


def test_empty_data(tmp_path, capsys, tiny_model_dir):
    train = tmp_path / "empty.csv"
    train.write_text("")
    assert "empty.csv is empty" in _bad_train(tmp_path, capsys, tiny_model_dir, train)


def test_single_class(tmp_path, capsys, tiny_model_dir):
    train = write_csv(tmp_path / "one.csv", [(f"text {i}", "positive") for i in range(8)])
    assert "single class" in _bad_train(tmp_path, capsys, tiny_model_dir, train)


def test_non_numeric_value(tmp_path, capsys, config_file):
    code, _, err = run_cli(["train", config_file, "--set", "training.learning_rate=fast"], capsys)
    line = error_line(err)
    assert code == 2 and "training.learning_rate" in line and "'fast'" in line


def test_unknown_key_suggests(tmp_path, capsys, config_file):
    code, _, err = run_cli(["train", config_file, "--set", "training.epoch=3"], capsys)
    line = error_line(err)
    assert code == 2 and "did you mean 'epochs'" in line


def test_unknown_model_path(tmp_path, capsys, config_file):
    code, _, err = run_cli(
        ["train", config_file, "--set", f"model={tmp_path}/no-such-model"], capsys
    )
    line = error_line(err)
    assert code == 2 and "no-such-model does not exist" in line


def test_unseen_labels_at_evaluation(tmp_path, trained_run, sentiment_rows, capsys):
    data = write_csv(tmp_path / "eval.csv", sentiment_rows + [("flat quarter", "neutral")])
    code, _, err = run_cli(["eval", trained_run, "--data", data], capsys)
    line = error_line(err)
    assert (
        code == 2
        and "'neutral'" in line
        and "not trained on" in line
        and "negative, positive" in line
    )


def test_eval_of_missing_run(tmp_path, capsys, sentiment_csv):
    code, _, err = run_cli(["eval", tmp_path / "no-run", "--data", sentiment_csv], capsys)
    assert code == 2 and "does not exist" in error_line(err)


def test_output_directory_not_empty(tmp_path, capsys, config_file):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    code, _, err = run_cli(["train", config_file, "--output", tmp_path / "busy"], capsys)
    assert code == 2 and "not empty" in error_line(err)
