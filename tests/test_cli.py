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


# --- held-out files in the formats people keep them in (#25) -----------------------------------


@pytest.fixture
def delimited_run(tmp_path, tiny_model_dir, sentiment_rows, capsys):
    """A run trained on latin-1 'text@label' lines without a header (the FPB example's format)."""
    train = tmp_path / "train.txt"
    rows = [(f"{text} caf\xe9", label) for text, label in sentiment_rows]
    train.write_bytes("".join(f"{t}@{lab}\n" for t, lab in rows).encode("latin-1"))
    cfg = tiny_config(tiny_model_dir, train, epochs=4)
    cfg["data"].update(format="delimited", delimiter="@", header=False, encoding="latin-1")
    config = tmp_path / "delimited.yaml"
    config.write_text(yaml.safe_dump(cfg))
    code, _, _ = run_cli(["train", config, "--output", tmp_path / "drun"], capsys)
    assert code == 0
    return tmp_path / "drun", rows


def test_held_out_csv_tsv_jsonl_read_without_flags_give_the_same_metrics(
    tmp_path, delimited_run, capsys
):
    run, rows = delimited_run
    held_out = rows[::2]
    files = {
        "txt": tmp_path / "test.txt",  # the run's own kind: read with its options
        "csv": write_csv(tmp_path / "test.csv", held_out),
        "csv, label first": write_csv(
            tmp_path / "swapped.csv", [(lab, t) for t, lab in held_out], ("label", "text")
        ),
        "csv, no header": tmp_path / "noheader.csv",
        "tsv": tmp_path / "test.tsv",
        "jsonl": tmp_path / "test.jsonl",
    }
    files["txt"].write_bytes("".join(f"{t}@{lab}\n" for t, lab in held_out).encode("latin-1"))
    files["csv, no header"].write_text("".join(f"{t},{lab}\n" for t, lab in held_out))
    files["tsv"].write_text("text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in held_out))
    files["jsonl"].write_text(
        "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in held_out)
    )
    metrics = {}
    for kind, path in files.items():
        out = tmp_path / f"{kind}.json"
        code, _, err = run_cli(["eval", run, "-i", path, "--json", out], capsys)
        assert code == 0, (kind, err)
        metrics[kind] = json.loads(out.read_text())
    assert {m["n"] for m in metrics.values()} == {len(held_out)}
    assert len({m["accuracy"] for m in metrics.values()}) == 1, metrics
    assert len({json.dumps(m["per_class"]) for m in metrics.values()}) == 1

    # predict reads the same tables by their text column (the labels are ignored)
    code, out, _ = run_cli(["predict", run, "-i", files["jsonl"]], capsys)
    assert code == 0
    assert [json.loads(line)["text"] for line in out.splitlines()] == [t for t, _ in held_out]


def test_header_flag_undoes_the_runs_no_header(tmp_path, delimited_run, capsys):
    run, rows = delimited_run
    path = tmp_path / "headed.txt"
    path.write_bytes(("text@label\n" + f"{rows[0][0]}@{rows[0][1]}\n").encode("latin-1"))
    code, _, err = run_cli(["eval", run, "-i", path], capsys)  # the run's no-header: 'label'
    assert code == 2 and "not trained on" in error_line(err) and "'label'" in error_line(err)
    code, out, _ = run_cli(
        ["eval", run, "-i", path, "--header", "--json", tmp_path / "m.json"], capsys
    )
    assert code == 0
    assert json.loads((tmp_path / "m.json").read_text())["n"] == 1


def test_input_is_one_name_across_commands_and_data_a_quiet_alias(
    tmp_path, trained_run, sentiment_csv, capsys
):
    for command in ("eval", "predict", "embed", "ensemble", "generate"):
        result = subprocess.run(
            [sys.executable, "-m", "lmforge", command, "--help"], capture_output=True, text=True
        )
        assert "--input" in result.stdout and "--data" not in result.stdout, command
    code, out, _ = run_cli(["predict", trained_run, "--data", sentiment_csv], capsys)
    assert code == 0 and len(out.splitlines()) == 16
    code, _, _ = run_cli(["eval", trained_run, "--input", sentiment_csv], capsys)
    assert code == 0
    with pytest.raises(SystemExit) as stop:  # neither: argparse's error names --input only
        run_cli(["eval", trained_run], capsys)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--input" in err.splitlines()[-1]
    assert "--data" not in err


def test_input_errors_name_the_flag_not_the_config_key(tmp_path, trained_run, capsys):
    path = tmp_path / "latin.txt"
    path.write_bytes("Sepp\xe4l\xe4 profit rose\n".encode("latin-1"))
    code, _, err = run_cli(["predict", trained_run, "-i", path], capsys)
    line = error_line(err)
    assert code == 2 and "--encoding latin-1" in line and "data." not in line


def test_an_empty_validation_split_fails_before_training(tmp_path, tiny_model_dir, capsys):
    train = tmp_path / "three.csv"
    train.write_text("text,label\nprofit rose,positive\nshares fell,negative\nno label here,\n")
    cfg = tiny_config(tiny_model_dir, train)
    cfg["data"]["validation_size"] = 0.1
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli(["train", config, "--output", tmp_path / "r"], capsys)
    line = error_line(err)
    assert code == 2 and "validation split carved from train is empty" in line
    assert not (tmp_path / "r" / "checkpoints").exists()
    code, _, err = run_cli(
        ["train", config, "--output", tmp_path / "r2", "--set", "data.validation_size=0"], capsys
    )
    assert code == 0 and "without a validation split" in err


def test_help_stays_light():
    """`lmforge --help` builds every parser without torch, transformers or the run-config models
    (the serve flags come from serving.config alone)."""
    probe = (
        "import sys; from lmforge.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'transformers', 'lmforge.config.schema') "
        "if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
