"""Bottleneck adapters (lmforge.methods.bottleneck) on tiny random BERT, Llama and GPT-2 models
built in the test, and the loading contract their runs share with PEFT's."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.methods.bottleneck import (
    AdapterLayer,
    BottleneckConfig,
    adapter_state_dict,
    add_adapter,
    count_adapter_parameters,
    delete_adapter,
    load_adapter,
    mark_only_adapters_trainable,
    save_adapter,
    set_active_adapter,
)

pytestmark = pytest.mark.unit

HIDDEN, LAYERS, VOCAB = 32, 2, 100


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=3,
    )
    return BertForSequenceClassification(config).eval()


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(config).eval()


MODELS = {"bert": tiny_bert, "llama": tiny_llama, "gpt2": tiny_gpt2}

# The intended targets per architecture: (attention output, feed-forward output) of layer i.
EXPECTED = {
    "bert": (
        "bert.encoder.layer.{i}.attention.output.dense",
        "bert.encoder.layer.{i}.output.dense",
    ),
    "llama": ("model.layers.{i}.self_attn.o_proj", "model.layers.{i}.mlp.down_proj"),
    "gpt2": ("transformer.h.{i}.attn.c_proj", "transformer.h.{i}.mlp.c_proj"),
}


def batch(kind: str) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))  # (B, T)
    if kind == "bert":
        return {"input_ids": ids, "labels": torch.tensor([0, 2])}
    return {"input_ids": ids, "labels": ids}


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"]).logits


def train_step(model, inputs, lr: float = 1e-2) -> None:
    """One Adam step on whatever currently requires grad."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    model(**inputs).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def classifier_state(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.startswith("classifier.")}


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
def test_placement_wraps_the_intended_modules(kind, placement):
    model = MODELS[kind]()
    names = add_adapter(model, BottleneckConfig(placement=placement))
    attention, ffn = EXPECTED[kind]
    per_layer = (attention, ffn) if placement == "houlsby" else (ffn,)
    assert names == [pattern.format(i=i) for i in range(LAYERS) for pattern in per_layer]
    assert all(isinstance(model.get_submodule(n), AdapterLayer) for n in names)
    assert sum(isinstance(m, AdapterLayer) for m in model.modules()) == len(names)


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
def test_adapter_is_the_identity_at_init(kind, placement):
    model = MODELS[kind]()
    inputs = batch(kind)
    base = logits(model, inputs)
    add_adapter(model, BottleneckConfig(placement=placement, non_linearity="gelu"))
    assert torch.equal(logits(model, inputs), base)


def test_only_adapter_and_head_get_gradients():
    model = tiny_bert()
    inputs = batch("bert")
    add_adapter(model, BottleneckConfig(placement="houlsby"))
    mark_only_adapters_trainable(model, "default", also=["classifier"])
    intended = set(adapter_state_dict(model, "default")) | {"classifier.weight", "classifier.bias"}
    assert {k for k, p in model.named_parameters() if p.requires_grad} == intended

    before = logits(model, inputs)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    model(**inputs).loss.backward()
    with_grad = {k for k, p in model.named_parameters() if p.grad is not None}
    assert with_grad == intended
    optimizer.step()
    assert not torch.equal(logits(model, inputs), before)


def test_parameter_count_matches_the_formula():
    model = tiny_bert()
    names = add_adapter(model, BottleneckConfig(placement="houlsby", reduction_factor=8))
    b = HIDDEN // 8
    assert (
        count_adapter_parameters(model, "default")
        == (2 * HIDDEN * b + b + HIDDEN) * len(names)
        == 4 * 292
    )
    assert {
        tuple(v.shape) for k, v in adapter_state_dict(model).items() if k.endswith("down.weight")
    } == {(b, HIDDEN)}

    model = tiny_bert()
    names = add_adapter(model, BottleneckConfig(reduction_factor=1000))  # bottleneck floors at 1
    assert count_adapter_parameters(model, "default") == (2 * HIDDEN + 1 + HIDDEN) * len(names)


def test_save_load_round_trip(tmp_path):
    model = tiny_bert()
    inputs = batch("bert")
    add_adapter(model, BottleneckConfig(placement="houlsby", non_linearity="swish"))
    mark_only_adapters_trainable(model, "default", also=["classifier"])
    train_step(model, inputs)
    train_step(
        model, inputs
    )  # the second step also moves `down` (its gradient is 0 while `up` is 0)
    trained = logits(model, inputs)
    head = classifier_state(model)
    save_adapter(model, tmp_path / "adapter", extra_state=head)

    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["adapter_type"] == "bottleneck" and config["placement"] == "houlsby"
    assert "base_model_name_or_path" in config

    fresh = tiny_bert()  # same seed: same base weights, but the untrained head
    assert not torch.equal(logits(fresh, inputs), trained)
    load_adapter(fresh, tmp_path / "adapter", name="restored")
    assert torch.equal(logits(fresh, inputs), trained)
    for key, value in head.items():
        assert torch.equal(fresh.state_dict()[key], value)
    saved = {
        k.replace(".adapters.default.", ".adapters.restored."): v
        for k, v in adapter_state_dict(model).items()
    }
    assert adapter_state_dict(fresh, "restored").keys() == saved.keys()


def test_load_rejects_tensors_that_do_not_fit(tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny_bert()
    add_adapter(model, BottleneckConfig(placement="houlsby"))
    save_adapter(model, tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    tensors = load_file(str(path))
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    save_file(tensors, str(path))

    fresh = tiny_bert()
    with pytest.raises(LmforgeError, match=re.escape(str(tmp_path))):
        load_adapter(fresh, tmp_path)
    # The failed load leaves no half-loaded adapter behind.
    assert not any(isinstance(m, AdapterLayer) for m in fresh.modules())
    assert not fresh._bottleneck_configs


def test_two_adapters_on_one_base():
    model = tiny_bert()
    inputs = batch("bert")
    base = logits(model, inputs)

    add_adapter(model, BottleneckConfig(), name="a")
    mark_only_adapters_trainable(model, "a")
    train_step(model, inputs)
    out_a = logits(model, inputs)

    names_b = add_adapter(
        model, BottleneckConfig(placement="houlsby"), name="b"
    )  # wraps the attention outputs too
    assert len(names_b) == 2 * LAYERS
    assert torch.equal(logits(model, inputs), base)  # "b" is active and still the identity
    mark_only_adapters_trainable(model, "b")
    train_step(model, inputs, lr=5e-2)
    out_b = logits(model, inputs)
    assert not torch.equal(out_a, out_b)

    set_active_adapter(model, "a")
    assert torch.equal(logits(model, inputs), out_a)  # training "b" left "a" untouched
    set_active_adapter(model, "b")
    assert torch.equal(logits(model, inputs), out_b)
    set_active_adapter(model, None)
    assert torch.equal(logits(model, inputs), base)

    delete_adapter(model, "a")
    delete_adapter(model, "b")
    assert not any(isinstance(m, AdapterLayer) for m in model.modules())
    assert model.state_dict().keys() == tiny_bert().state_dict().keys()


def test_config_round_trips_through_json():
    config = BottleneckConfig(
        placement="houlsby",
        reduction_factor=4,
        non_linearity="gelu",
        target_modules=[r"output\.dense$"],
        init_std=0.02,
    )
    assert BottleneckConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValidationError, match="placement"):
        BottleneckConfig(placement="serial")
    with pytest.raises(ValidationError, match="is empty"):
        BottleneckConfig(target_modules=[])
    with pytest.raises(ValidationError, match="bad regex"):
        BottleneckConfig(target_modules=["(unclosed"])
    with pytest.raises(ValidationError, match="init_std"):
        BottleneckConfig(init_std=float("nan"))
    with pytest.raises(LmforgeError, match="unknown bottleneck adapter setting 'placment'"):
        BottleneckConfig.from_dict({"placment": "houlsby"})
    with pytest.raises(LmforgeError, match="reduction_factor"):
        BottleneckConfig.from_dict({"reduction_factor": 0})


def test_the_run_config_options_are_the_saved_config(tmp_path):
    """``method: {name: adapter, ...}`` parses into the very class adapter_config.json holds."""
    from lmforge.config import load_config

    cfg = load_config({"method": {"name": "adapter", "placement": "houlsby"}})
    assert isinstance(cfg.method.options, BottleneckConfig)
    assert cfg.method.options.placement == "houlsby"
    with pytest.raises(LmforgeError, match="method.target_modules"):
        load_config({"method": {"name": "adapter", "target_modules": []}})


def test_saved_files_keep_their_format(tmp_path):
    """Runs saved before the package split load: same JSON keys and order, same tensor names."""
    from safetensors import safe_open

    model = tiny_bert()
    add_adapter(model, BottleneckConfig())
    save_adapter(model, tmp_path, extra_state=classifier_state(model))
    text = (tmp_path / "adapter_config.json").read_text()
    assert list(json.loads(text)) == [
        "placement",
        "reduction_factor",
        "non_linearity",
        "target_modules",
        "init_std",
        "adapter_type",
        "base_model_name_or_path",
    ]
    assert text.startswith('{\n  "placement": "pfeiffer",\n  "reduction_factor": 16,')
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:
        keys = sorted(f.keys())
        assert f.metadata() == {"format": "pt", "adapter_type": "bottleneck"}
    assert keys[:2] == [
        "bottleneck.bert.encoder.layer.0.output.dense.down.bias",
        "bottleneck.bert.encoder.layer.0.output.dense.down.weight",
    ]
    assert keys[-2:] == ["extra.classifier.bias", "extra.classifier.weight"]


def test_unknown_model_type_without_targets():
    model = nn.Sequential(nn.Linear(4, 4))
    model.config = SimpleNamespace(model_type="mystery")
    with pytest.raises(LmforgeError, match=r"'mystery'.*method\.target_modules"):
        add_adapter(model, BottleneckConfig())
    # With explicit targets the same model works.
    assert add_adapter(model, BottleneckConfig(target_modules=[r"^0$"])) == ["0"]


def test_targets_matching_nothing():
    with pytest.raises(LmforgeError, match="no_such_proj"):
        add_adapter(tiny_bert(), BottleneckConfig(target_modules=[r"no_such_proj$"]))


def test_load_without_config_file(tmp_path):
    with pytest.raises(LmforgeError, match=r"adapter_config\.json"):
        load_adapter(tiny_bert(), tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(LmforgeError, match=r"adapter_config\.json"):
        load_adapter(tiny_bert(), tmp_path)


def test_unknown_adapter_name():
    model = tiny_bert()
    add_adapter(model, BottleneckConfig())
    with pytest.raises(LmforgeError, match=r"'nope'.*'default'"):
        set_active_adapter(model, "nope")
    with pytest.raises(LmforgeError, match="'nope'"):
        adapter_state_dict(model, "nope")
    with pytest.raises(LmforgeError, match="already exists"):
        add_adapter(model, BottleneckConfig())


# --- the loading contract: one handler per saved-adapter format -------------------------------


def test_an_unknown_adapter_format_is_a_clear_error(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from lmforge.methods import adapter_handler
    from lmforge.models.loading import load_pretrained

    assert adapter_handler({"adapter_type": "bottleneck"}).kind == "bottleneck"
    assert adapter_handler({"peft_type": "LORA"}).kind == "LORA"
    with pytest.raises(LmforgeError, match=r"lmforge can load \(adapter_type 'mystery'\)"):
        adapter_handler({"adapter_type": "mystery"})
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"adapter_type": "mystery", "base_model_name_or_path": "nowhere"})
    )
    with pytest.raises(LmforgeError, match=re.escape(str(tmp_path / "adapter_config.json"))):
        load_pretrained(AutoModelForSequenceClassification, str(tmp_path), "the model")


def _bottleneck_run(run_dir, base_dir, seed: int):
    """A finished `method: adapter` run without training: random adapter and head weights."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmforge.methods import MethodSetting, get_method

    method = get_method("adapter")
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=2)
    model = method.apply(model, MethodSetting(BottleneckConfig(), "SEQ_CLS"))
    torch.manual_seed(seed)
    with torch.no_grad():  # what training would have moved: the adapter and the head
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(std=0.5)
    run_dir.mkdir(parents=True)
    out = method.save(model, run_dir, AutoTokenizer.from_pretrained(base_dir))
    meta = {"task": "sequence_classification", "labels": ["negative", "positive"]}
    (out / "lmforge.json").write_text(json.dumps(meta))
    return run_dir


def test_an_adapter_set_of_two_bottleneck_runs_switches_their_heads(tmp_path, tiny_model_dir):
    """Bottleneck heads live in the base model: switching must copy each run's head back in."""
    import numpy as np

    from lmforge.inference.adapters import AdapterSet
    from lmforge.inference.predictor import Predictor

    runs = {
        name: _bottleneck_run(tmp_path / name, tiny_model_dir, s)
        for name, s in (("a", 1), ("b", 2))
    }
    texts = ["a wonderful film", "dull and far too long"]
    alone = {
        name: Predictor.load(run, device="cpu", precision="fp32").logits(texts)
        for name, run in runs.items()
    }
    assert not np.allclose(alone["a"], alone["b"], atol=1e-3)
    adapters = AdapterSet.load(runs, device="cpu", precision="fp32")
    for name in ("a", "b", "a"):
        np.testing.assert_allclose(adapters.use(name).logits(texts), alone[name], atol=1e-5)
