"""Fine-tuning methods: which parameters train, that each one learns, and what it saves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from lmforge.config import load_config
from lmforge.errors import LmforgeError
from lmforge.methods import METHOD_OPTIONS, MethodSetting, get_method

pytestmark = pytest.mark.recipe  # most tests train; the unit ones say so

# What may train under each method on a BERT classifier (the head, pooler and classifier,
# always trains).
TRAINABLE = {
    "full": r".*",
    "freeze": r"^bert\.encoder\.layer\.1\.|^bert\.pooler\.|^classifier\.",
    "lora": r"lora_[AB]|classifier|pooler",
    "dora": r"lora_[AB]|lora_magnitude|classifier|pooler",
    "adalora": r"lora_[ABE]|classifier|pooler",
    "ia3": r"ia3_l|classifier|pooler",
    "prompt": r"prompt_encoder|classifier|pooler",
    "adapter": r"\.adapters\.default\.|classifier|pooler",
}
OPTIONS = {
    "freeze": {"layers": 1},
    "adalora": {"init_r": 4, "target_r": 2, "interval": 2},
    "adapter": {"placement": "houlsby", "reduction_factor": 4},
}


def _tiny_bert() -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(
        BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            num_labels=2,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )


@pytest.mark.unit
@pytest.mark.parametrize("name", list(TRAINABLE))
def test_only_the_intended_parameters_receive_gradients(name):
    model = _tiny_bert()
    options = METHOD_OPTIONS[name](**OPTIONS.get(name, {}))
    model = get_method(name).apply(model, MethodSetting(options, "SEQ_CLS", total_steps=100))
    ids = torch.randint(5, 100, (4, 12))
    model(
        input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1, 0, 1])
    ).loss.backward()
    pattern = re.compile(TRAINABLE[name])
    trained = {
        n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
    }
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and trained <= trainable
    assert all(pattern.search(n) for n in trainable), sorted(
        n for n in trainable if not pattern.search(n)
    )
    if name == "freeze":  # embeddings and layer 0 frozen, the rest trains
        assert not any(
            n.startswith(("bert.embeddings", "bert.encoder.layer.0.")) for n in trainable
        )
        assert any(n.startswith("bert.encoder.layer.1.") for n in trained)
    if name != "full":
        assert any("classifier" in n for n in trained)  # the new head trains
        assert any("pooler" in n for n in trained)  # and the pooler the classifier reads
        total = sum(p.numel() for p in model.parameters())
        assert sum(p.numel() for n, p in model.named_parameters() if n in trainable) < total


def _train(tmp_path, model_dir, train_csv, name: str, epochs: int = 12, **training):
    from conftest import tiny_config

    from lmforge.training.recipe import run_training

    cfg = tiny_config(model_dir, train_csv, epochs=epochs, **training)
    cfg["method"] = {"name": name, **OPTIONS.get(name, {})}
    return run_training(load_config(cfg), tmp_path / name)


@pytest.fixture(scope="module")
def warm_encoder(tmp_path_factory, tiny_model_dir):
    """The tiny BERT after full fine-tuning on the sentiment sentences, saved without its head.

    Prompt tuning and IA3 steer what a pretrained model already computes; on a random network
    there is nothing to steer and their loss does not move. This encoder stands in for the
    pretrained model such methods are meant for, at test size.
    """
    from conftest import NEGATIVE, POSITIVE, write_csv
    from transformers import AutoModel, AutoTokenizer

    tmp = tmp_path_factory.mktemp("warm")
    rows = [(t, "positive") for t in POSITIVE] + [(t, "negative") for t in NEGATIVE]
    run = _train(
        tmp,
        tiny_model_dir,
        write_csv(tmp / "train.csv", rows),
        "full",
        epochs=20,
        learning_rate=3e-3,
    )
    AutoModel.from_pretrained(run / "model").save_pretrained(tmp / "encoder")
    AutoTokenizer.from_pretrained(run / "model").save_pretrained(tmp / "encoder")
    return tmp / "encoder"


@pytest.mark.parametrize("name", ["lora", "adalora", "ia3", "prompt", "adapter", "freeze"])
def test_each_method_learns_and_its_saved_model_reproduces_the_trained_one(
    tmp_path, warm_encoder, sentiment_csv, name
):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from lmforge.inference.predictor import Predictor

    # Prompt tuning wants a large learning rate (Lester et al. 2021 use 0.3).
    run = _train(
        tmp_path,
        warm_encoder,
        sentiment_csv,
        name,
        learning_rate=5e-2 if name == "prompt" else 1e-2,
    )
    history = [
        json.loads(line) for line in (run / "logs" / "history.jsonl").read_text().splitlines()
    ]
    losses = [r["loss"] for r in history if r["split"] == "train"]
    assert losses[-1] < 0.8 * losses[0]  # it learns
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == name and 0 < metrics["train"]["trainable_share"] < 1

    texts = ["a wonderful film", "dull and far too long"]
    predictor = Predictor.load(
        run, device="cpu", precision="fp32"
    )  # what eval / predict / serve load
    served = predictor.logits(texts)
    if name == "freeze":
        return
    # The adapter on its base (plain peft) gives the same outputs; mergeable methods' model/ is
    # plain HF.
    labels = metrics["labels"]
    base = AutoModelForSequenceClassification.from_pretrained(
        warm_encoder, num_labels=len(labels), id2label=dict(enumerate(labels))
    )
    if name == "adapter":  # lmforge's bottleneck adapters load through lmforge
        from lmforge.methods.bottleneck import load_adapter

        adapted = load_adapter(base, run / "adapter").eval()
    else:
        adapted = PeftModel.from_pretrained(base, run / "adapter").eval()
    batch = predictor.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = adapted(**batch).logits.numpy()
    assert abs(served - reference).max() < 1e-4
    adapter_bytes = sum(f.stat().st_size for f in (run / "adapter").glob("adapter_model.*"))
    model_bytes = sum(f.stat().st_size for f in (run / "model").glob("*.safetensors"))
    if name in ("prompt", "adapter"):  # not mergeable: model/ is the adapter, naming its base
        assert (run / "model" / "adapter_config.json").is_file() and not (
            run / "model" / "config.json"
        ).exists()
    else:
        assert (run / "model" / "config.json").is_file() and adapter_bytes < model_bytes / 2


@pytest.mark.unit
def test_adapter_methods_fail_in_one_line_where_they_cannot_apply(tmp_path, tiny_model_dir):
    model = _tiny_bert()
    with pytest.raises(LmforgeError, match="not available for this task"):
        get_method("prefix").apply(model, MethodSetting(METHOD_OPTIONS["prefix"](), None))
    with pytest.raises(
        LmforgeError, match="method prefix needs a model that takes past_key_values"
    ):
        get_method("prefix").apply(model, MethodSetting(METHOD_OPTIONS["prefix"](), "SEQ_CLS"))
    with pytest.raises(LmforgeError, match="method.target_modules"):
        get_method("lora").apply(
            _tiny_bert(),
            MethodSetting(METHOD_OPTIONS["lora"](target_modules=["nothing_here"]), "SEQ_CLS"),
        )
    with pytest.raises(LmforgeError, match="method.layers: 5, but the model has 2 layers"):
        get_method("freeze").apply(
            _tiny_bert(), MethodSetting(METHOD_OPTIONS["freeze"](layers=5), "SEQ_CLS")
        )
    with pytest.raises(LmforgeError, match="init_text"):
        get_method("prompt").apply(
            _tiny_bert(), MethodSetting(METHOD_OPTIONS["prompt"](init="text"), "SEQ_CLS")
        )
    with pytest.raises(LmforgeError, match="unknown method 'lorra'.*lora"):
        load_config({"method": "lorra"})


@pytest.mark.unit
def test_methods_declare_what_the_engine_may_do_with_them(tmp_path):
    """The training recipe and the config checks ask these flags, never a method's name."""
    import inspect

    from lmforge.methods.registry import METHODS

    def having(flag: str) -> set[str]:
        return {name for name, method in METHODS.items() if getattr(method, flag)}

    assert having("shardable") == {"full"}
    assert having("keeps_sparsity") == {"full", "freeze"}
    assert having("continues_adapter") == {"lora"}
    assert having("updates_after_step") == {"adalora"}
    assert set(METHODS) - having("mergeable") == {"prefix", "prompt", "adapter"}
    # One call shape for every method: apply(model, setting), save(model, run_dir, tokenizer, ...)
    for method in METHODS.values():
        assert list(inspect.signature(method.apply).parameters) == ["model", "setting"]
        assert list(inspect.signature(method.save).parameters) == [
            "model",
            "run_dir",
            "tokenizer",
            "state_dict",
        ]
    get_method("full").after_update(_tiny_bert(), 1)  # a no-op where nothing needs to run
    for name in ("lora", "adapter"):  # sharded full weights cannot become an adapter
        with pytest.raises(LmforgeError, match="fsdp is for method full"):
            get_method(name).save(_tiny_bert(), tmp_path, None, state_dict={})
    with pytest.raises(LmforgeError, match="unknown method 'lorra'.*lora"):
        get_method("lorra")


@pytest.mark.unit
@pytest.mark.parametrize("name", ["prefix", "prompt", "lora", "ia3"])
def test_decoder_methods_train_only_their_parameters(name):
    """Prefix tuning needs past_key_values: decoders (Llama) take them."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    model = get_method(name).apply(model, MethodSetting(METHOD_OPTIONS[name](), "CAUSAL_LM"))
    ids = torch.randint(0, 64, (2, 10))
    model(input_ids=ids, labels=ids).loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    pattern = {
        "prefix": "prompt_encoder",
        "prompt": "prompt_encoder",
        "lora": "lora_",
        "ia3": "ia3_l",
    }[name]
    assert trainable and all(pattern in n for n in trainable)
    assert all(
        p.grad is not None
        for n, p in model.named_parameters()
        if n in trainable and "lora_A" not in n
    )


# --- regularization and robustness in the engine ------------------------------------------------


def test_regularization_options_train_end_to_end(tmp_path, warm_encoder, sentiment_csv):
    """Label smoothing, dropout override, layer-wise LR decay, FGM and augmentation in one run."""
    cfg_extra = {
        "regularization": {
            "label_smoothing": 0.1,
            "dropout": 0.2,
            "layerwise_lr_decay": 0.8,
            "adversarial": "fgm",
            "adversarial_epsilon": 0.5,
        },
        "augment": {"operations": ["swap", "delete", "synonym"], "copies": 2, "rate": 0.2},
    }
    from conftest import tiny_config

    from lmforge.training.recipe import run_training

    cfg = tiny_config(warm_encoder, sentiment_csv, epochs=6, learning_rate=3e-3)
    cfg.update(cfg_extra)
    run = run_training(load_config(cfg), tmp_path / "run")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"]["augmented"]["eda"]["original"] == 16
    assert metrics["train"]["examples_seen"] > 16 * 6 * 2  # the augmented copies were trained on
    history = [
        r["loss"]
        for r in map(json.loads, (run / "logs" / "history.jsonl").read_text().splitlines())
        if r["split"] == "train"
    ]
    assert history[-1] < history[0]


@pytest.mark.unit
def test_layerwise_lr_decay_scales_each_depth():
    from lmforge.training.optim import build_optimizer

    model = _tiny_bert()
    optimizer = build_optimizer(model, 1e-3, 0.01, layer_decay=0.5)
    rates = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            rates[id(p)] = group["lr"]
    named = dict(model.named_parameters())
    assert rates[id(named["classifier.weight"])] == pytest.approx(1e-3)
    assert rates[id(named["bert.encoder.layer.1.attention.self.query.weight"])] == pytest.approx(
        5e-4
    )
    assert rates[id(named["bert.encoder.layer.0.attention.self.query.weight"])] == pytest.approx(
        2.5e-4
    )
    assert rates[id(named["bert.embeddings.word_embeddings.weight"])] == pytest.approx(1.25e-4)


@pytest.mark.unit
def test_label_smoothing_is_refused_where_there_are_no_classes():
    from lmforge.tasks.registry import get_task
    from lmforge.training.losses import training_loss

    with pytest.raises(LmforgeError, match="label_smoothing applies to classification"):
        training_loss(get_task("regression"), 0.1)


# --- ensemble, robustness check, comparison -----------------------------------------------------


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, warm_encoder):
    from conftest import NEGATIVE, POSITIVE, write_csv

    tmp = tmp_path_factory.mktemp("ensemble")
    rows = [(t, "positive") for t in POSITIVE] + [(t, "negative") for t in NEGATIVE]
    data = write_csv(tmp / "train.csv", rows)
    runs = [
        _train(
            tmp / f"seed{seed}", warm_encoder, data, "lora", epochs=4, learning_rate=1e-2, seed=seed
        )
        for seed in (1, 2)
    ]
    return runs, data


def test_an_ensemble_of_two_identical_runs_equals_either_run(two_runs, capsys):
    from lmforge.cli import main
    from lmforge.evaluation.ensemble import run_ensemble
    from lmforge.evaluation.recipe import run_evaluation

    (run, other), data = two_runs
    alone = run_evaluation(run, data, precision="fp32")
    same = run_ensemble([run, run], data, precision="fp32")
    assert same["accuracy"] == alone["accuracy"] and same["macro_f1"] == alone["macro_f1"]
    assert same["per_class"] == alone["per_class"]
    assert main(["ensemble", str(run), str(other), "--data", str(data), "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert out.count("member") == 2 and "ensemble  accuracy" in out


def test_ensemble_and_perturb_refuse_what_they_cannot_do(two_runs, tmp_path):
    from lmforge.evaluation.ensemble import run_ensemble
    from lmforge.evaluation.recipe import run_evaluation

    (run, _), data = two_runs
    with pytest.raises(LmforgeError, match="at least two runs"):
        run_ensemble([run], data)
    with pytest.raises(LmforgeError, match="unknown perturbation|typos"):
        run_evaluation(run, data, perturbations=["spelling"])


def test_eval_scores_perturbed_texts(two_runs, capsys):
    from lmforge.cli import main

    (run, _), data = two_runs
    assert (
        main(
            [
                "eval",
                str(run),
                "--data",
                str(data),
                "--perturb",
                "typos,casing,word_drop",
                "--perturb-rate",
                "0.5",
                "--precision",
                "fp32",
                "--json",
                str(run / "robust.json"),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.count("perturbed (") == 3
    metrics = json.loads((run / "robust.json").read_text())
    for kind in ("typos", "casing", "word_drop"):
        scores = metrics["robustness"][kind]
        assert scores["texts_changed"] > 0
        assert scores["accuracy_drop"] == pytest.approx(metrics["accuracy"] - scores["accuracy"])


def test_eval_and_ensemble_rescore_a_runs_own_validation_split(
    tmp_path, tiny_model_dir, sentiment_csv, capsys
):
    """``--split validation`` derives the carved split again: its scores equal the run's own."""
    from conftest import tiny_config

    from lmforge.cli import main
    from lmforge.evaluation.recipe import run_evaluation
    from lmforge.training.recipe import run_training

    cfg = tiny_config(tiny_model_dir, sentiment_csv, epochs=2)
    cfg["data"]["validation_size"] = 0.3
    run = run_training(load_config(cfg), tmp_path / "run")
    trained = json.loads((run / "metrics.json").read_text())["validation"]
    again = run_evaluation(run, None, precision="fp32", split="validation")
    assert again["n"] == trained["n"] and again["macro_f1"] == pytest.approx(trained["macro_f1"])
    assert again["data"] == f"the validation split of {run}"
    assert (
        main(["ensemble", str(run), str(run), "--split", "validation", "--precision", "fp32"]) == 0
    )
    assert f"n={trained['n']}" in capsys.readouterr().out

    with pytest.raises(LmforgeError, match="no test split"):
        run_evaluation(run, None, split="test")
    with pytest.raises(LmforgeError, match="either --input FILE or --split"):
        run_evaluation(run, sentiment_csv, split="validation")
    with pytest.raises(LmforgeError, match="no run directory"):
        run_evaluation(tiny_model_dir, None, split="validation")
    with pytest.raises(SystemExit):  # argparse: --data and --split exclude each other
        main(["eval", str(run), "--data", str(sentiment_csv), "--split", "validation"])
    lines = sentiment_csv.read_text().splitlines()
    sentiment_csv.write_text("\n".join(lines[:-4]) + "\n")  # the data changed since training
    with pytest.raises(LmforgeError, match="data files changed"):
        run_evaluation(run, None, split="validation")


@pytest.mark.parametrize("kind", ["lora", "adapter"])
def test_adapter_runs_share_one_base_and_switch(kind, two_runs, tmp_path, capsys):
    """Each adapter of the set predicts what its run predicts alone, in any order of switching."""
    import numpy as np

    from lmforge.cli import main
    from lmforge.inference.adapters import AdapterSet
    from lmforge.inference.predictor import Predictor

    (lora_a, lora_b), data = two_runs
    base = json.loads((lora_a / "adapter" / "adapter_config.json").read_text())[
        "base_model_name_or_path"
    ]
    if kind == "lora":
        runs = {"a": lora_a, "b": lora_b}
    else:
        runs = {
            name: _train(
                tmp_path / name,
                Path(base),
                data,
                "adapter",
                epochs=3,
                learning_rate=1e-2,
                seed=seed,
            )
            for name, seed in (("a", 1), ("b", 2))
        }
    texts = ["a wonderful, moving film", "dull and far too long", "it was fine"]
    alone = {
        name: Predictor.load(run, precision="fp32").logits(texts) for name, run in runs.items()
    }
    assert not np.allclose(alone["a"], alone["b"], atol=1e-4)  # two different models
    adapters = AdapterSet.load(runs, precision="fp32")
    for name in ("a", "b", "a"):
        np.testing.assert_allclose(adapters.use(name).logits(texts), alone[name], atol=1e-4)

    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    assert (
        main(
            [
                "predict",
                str(runs["a"]),
                str(runs["b"]),
                "--input",
                str(tmp_path / "in.txt"),
                "--precision",
                "fp32",
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["text"] for row in lines] == texts
    assert set(lines[0]["predictions"]) == {str(runs["a"]), str(runs["b"])}
    assert (
        lines[0]["predictions"][str(runs["a"])]["label"]
        == adapters.use("a").predict(texts[:1])[0]["label"]
    )


def test_adapter_sets_refuse_runs_that_cannot_share_a_base(two_runs, tmp_path):
    from lmforge.inference.adapters import AdapterSet

    (lora_a, _), data = two_runs
    base = json.loads((lora_a / "adapter" / "adapter_config.json").read_text())[
        "base_model_name_or_path"
    ]
    full = _train(tmp_path / "full", Path(base), data, "full", epochs=1)
    with pytest.raises(LmforgeError, match="has no adapter"):
        AdapterSet.load({"a": lora_a, "full": full})
    bottleneck = _train(tmp_path / "adapter", Path(base), data, "adapter", epochs=1)
    with pytest.raises(LmforgeError, match="adapter kind"):
        AdapterSet.load({"a": lora_a, "b": bottleneck})
    with pytest.raises(LmforgeError, match="no adapter named 'c'"):
        AdapterSet.load({"a": lora_a}).use("c")


def test_compare_tabulates_methods_on_one_config(tmp_path, warm_encoder, sentiment_csv, capsys):
    from conftest import tiny_config

    from lmforge.cli import main

    cfg = tiny_config(warm_encoder, sentiment_csv, epochs=2)
    cfg["data"]["validation_size"] = 0.25
    cfg["training"]["eval_strategy"] = "epoch"
    (tmp_path / "run.yaml").write_text(json.dumps(cfg))
    out = tmp_path / "cmp"
    assert (
        main(
            [
                "compare",
                str(tmp_path / "run.yaml"),
                "--methods",
                "full,lora",
                "--output",
                str(out),
                "--lr",
                "lora=1e-2",
            ]
        )
        == 0
    )
    table = json.loads((out / "compare.json").read_text())
    full, lora = table["rows"]
    assert (full["method"], lora["method"]) == ("full", "lora")
    assert full["trainable_share"] == 1.0 and lora["trainable_share"] < 0.1
    assert lora["size_on_disk_bytes"] < full["size_on_disk_bytes"] / 5
    assert isinstance(lora["validation"], float) and lora["peak_memory_bytes"] > 0
    assert load_config(out / "lora" / "config.yaml").training.learning_rate == 1e-2
    assert "| lora |" in capsys.readouterr().out
    assert (
        main(["compare", str(tmp_path / "run.yaml"), "--methods", "lorra", "--output", str(out)])
        == 2
    )
    assert "unknown method(s) lorra" in capsys.readouterr().err


@pytest.mark.unit
def test_qlora_says_what_it_needs_on_a_machine_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: qlora's requirements are met here")
    with pytest.raises(
        LmforgeError, match="method qlora .* needs a CUDA GPU; on this machine use method: lora"
    ):
        get_method("qlora").apply(_tiny_bert(), MethodSetting(METHOD_OPTIONS["qlora"](), "SEQ_CLS"))
