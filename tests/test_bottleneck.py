"""Bottleneck adapters on tiny random BERT, Llama and GPT-2 models built in the test."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
import torch
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
    with pytest.raises(LmforgeError, match="placement"):
        BottleneckConfig(placement="serial")


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
