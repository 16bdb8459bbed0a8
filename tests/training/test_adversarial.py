"""Adversarial training on the word embeddings (FGM, PGD) on a tiny random BERT classifier."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from lmforge.errors import LmforgeError
from lmforge.training.adversarial import (
    EmbeddingAdversary,
    find_word_embeddings,
    make_adversary,
)

pytestmark = pytest.mark.unit

EPSILON = 0.5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these models are tiny, and on a busy machine two threads wait for
    each other (a backward took 0.5 s instead of 5 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config).train()


def tiny_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, 100, (3, 7), generator=generator)  # (B, T)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 5:] = 0  # one padded row
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": torch.tensor([0, 1, 1]),
    }


def backward(loss: torch.Tensor) -> None:
    loss.backward()


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def loss_with(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], r: torch.Tensor | None
) -> torch.Tensor:
    """The loss with ``r`` (B, T, H) added to the word-embedding output by a hand-made hook."""
    module = model.get_input_embeddings()
    handle = module.register_forward_hook(lambda m, a, out: out + r) if r is not None else None
    try:
        return model(**batch).loss
    finally:
        if handle is not None:
            handle.remove()


def clean_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loop's normal forward and backward; returns the clean loss."""
    loss = model(**batch).loss
    loss.backward()
    return loss.detach()


def embedding_output_grad(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], r: torch.Tensor | None = None
) -> torch.Tensor:
    """dL/d(word-embedding output) computed independently of the adversary."""
    module = model.get_input_embeddings()
    seen: list[torch.Tensor] = []

    def hook(m, a, out):
        out = out if r is None else out + r
        seen.append(out)
        return out

    handle = module.register_forward_hook(hook)
    try:
        loss = model(**batch).loss
    finally:
        handle.remove()
    return torch.autograd.grad(loss, seen[0])[0]


def per_example_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1)


def test_attack_leaves_every_parameter_and_the_clean_output_unchanged():
    model, batch = tiny_bert(), tiny_batch()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    adversary = make_adversary(model, "pgd", epsilon=EPSILON, alpha=0.2, steps=3)
    clean_logits = model(**batch).logits.detach()
    model(**batch).loss.backward()
    adversary.train_step(lambda: model(**batch).loss, backward)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    assert torch.equal(model(**batch).logits.detach(), clean_logits)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, clean_logits)


def test_fgm_perturbation_has_norm_epsilon_along_the_gradient():
    model, batch = tiny_bert(), tiny_batch()
    g = embedding_output_grad(model, batch)  # (B, T, H)
    adversary = make_adversary(model, "fgm", epsilon=EPSILON)
    clean = clean_step(model, batch)
    adv_loss = adversary.train_step(lambda: model(**batch).loss, backward)
    (r,) = adversary.perturbations
    assert r.shape == (3, 7, 32)
    torch.testing.assert_close(per_example_norm(r), torch.full((3,), EPSILON))
    expected = EPSILON * g / per_example_norm(g).view(-1, 1, 1)
    torch.testing.assert_close(r, expected)
    assert adv_loss > clean.item()


def test_fgm_gives_no_perturbation_where_the_gradient_is_zero():
    model, batch = tiny_bert(), tiny_batch()
    adversary = make_adversary(model, "fgm", epsilon=EPSILON)

    # Example 0's loss weighs nothing, so its embedding gradient is exactly zero.
    def loss() -> torch.Tensor:
        per_example = torch.nn.functional.cross_entropy(
            model(**batch).logits, batch["labels"], reduction="none"
        )
        return per_example @ torch.tensor([0.0, 1.0, 1.0])

    loss().backward()
    adversary.train_step(loss, backward)
    (r,) = adversary.perturbations
    assert torch.count_nonzero(r[0]) == 0
    torch.testing.assert_close(per_example_norm(r[1:]), torch.full((2,), EPSILON))


def test_pgd_stays_in_the_ball_and_one_big_step_is_fgm():
    model, batch = tiny_bert(), tiny_batch()
    pgd = make_adversary(model, "pgd", epsilon=EPSILON, alpha=0.3, steps=4)
    clean_step(model, batch)
    pgd.train_step(lambda: model(**batch).loss, backward)
    (r,) = pgd.perturbations
    assert (per_example_norm(r) <= EPSILON + 1e-6).all()
    pgd.remove()

    losses = {}
    for kind, alpha in (("fgm", EPSILON), ("pgd", 2 * EPSILON)):
        adversary = make_adversary(model, kind, epsilon=EPSILON, alpha=alpha, steps=1)
        clean_step(model, batch)
        losses[kind] = adversary.train_step(lambda: model(**batch).loss, backward)
        adversary.remove()
    assert losses["pgd"] == losses["fgm"]


def test_pgd_matches_a_hand_written_attack():
    model, batch = tiny_bert(), tiny_batch()
    alpha, steps = 0.3, 3
    r = torch.zeros(3, 7, 32)
    for _ in range(steps):  # Madry et al.'s iteration, written out
        g = embedding_output_grad(model, batch, r)
        r = r + alpha * g / per_example_norm(g).view(-1, 1, 1)
        r = r * torch.clamp(EPSILON / per_example_norm(r), max=1.0).view(-1, 1, 1)
    adversary = make_adversary(model, "pgd", epsilon=EPSILON, alpha=alpha, steps=steps)
    clean_step(model, batch)
    adversary.train_step(lambda: model(**batch).loss, backward)
    torch.testing.assert_close(adversary.perturbations[0], r)


@pytest.mark.parametrize("kind", ["fgm", "pgd"])
def test_grads_are_clean_plus_adversarial_only(kind):
    model, batch = tiny_bert(), tiny_batch()
    reference = copy.deepcopy(model)
    adversary = make_adversary(model, kind, epsilon=EPSILON, alpha=0.2, steps=3)
    clean_step(model, batch)
    adversary.train_step(lambda: model(**batch).loss, backward)
    (r,) = adversary.perturbations

    clean_step(reference, batch)  # the same clean backward, then one backward of the loss at r
    loss_with(reference, batch, r).backward()
    expected = grads(reference)
    for name, grad in grads(model).items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_lora_model_with_frozen_embeddings():
    from peft import LoraConfig, get_peft_model

    base = tiny_bert()
    model = get_peft_model(
        base, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"])
    )
    table = find_word_embeddings(model)
    assert table is base.bert.embeddings.word_embeddings.weight
    assert not table.requires_grad
    batch = tiny_batch()
    adversary = make_adversary(model, "pgd", epsilon=EPSILON, alpha=0.2, steps=2)
    clean_step(model, batch)
    clean = {n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n}
    adversary.train_step(lambda: model(**batch).loss, backward)
    norms = per_example_norm(adversary.perturbations[0])  # (B,)
    assert ((norms > 0) & (norms <= EPSILON + 1e-6)).all()
    assert table.grad is None
    params = dict(model.named_parameters())
    assert all(params[name].grad is not None for name in clean)
    # LoRA's B starts at zero, so only B's gradient feels the attack in this first step.
    changed = [name for name, grad in clean.items() if not torch.equal(params[name].grad, grad)]
    assert changed and all("lora_B" in name for name in changed)


@pytest.mark.parametrize(("kind", "steps", "extra"), [("fgm", 5, 1), ("pgd", 3, 3)])
def test_each_step_costs_one_forward_and_backward(kind, steps, extra):
    model, batch = tiny_bert(), tiny_batch()
    adversary = make_adversary(model, kind, epsilon=EPSILON, alpha=0.2, steps=steps)
    counts = {"forward": 0, "backward": 0, "backward_calls": 0}
    model.register_forward_hook(lambda *a: counts.__setitem__("forward", counts["forward"] + 1))
    model.bert.encoder.layer[0].output.dense.register_full_backward_hook(
        lambda *a: counts.__setitem__("backward", counts["backward"] + 1)
    )

    def counting_backward(loss: torch.Tensor) -> None:
        counts["backward_calls"] += 1
        loss.backward()

    clean_step(model, batch)
    assert counts == {"forward": 1, "backward": 1, "backward_calls": 0}
    adversary.train_step(lambda: model(**batch).loss, counting_backward)
    assert counts == {"forward": 1 + extra, "backward": 1 + extra, "backward_calls": 1}


def test_train_step_needs_a_clean_backward():
    model, batch = tiny_bert(), tiny_batch()
    adversary = make_adversary(model, "fgm", epsilon=EPSILON)
    with pytest.raises(RuntimeError, match="clean loss"):
        adversary.train_step(lambda: model(**batch).loss, backward)
    clean_step(model, batch)
    adversary.train_step(lambda: model(**batch).loss, backward)
    with pytest.raises(RuntimeError, match="clean loss"):  # one clean gradient, one attack
        adversary.train_step(lambda: model(**batch).loss, backward)


def test_make_adversary_kinds_and_errors():
    model = tiny_bert()
    assert make_adversary(model, "none") is None
    fgm = make_adversary(model, "fgm", epsilon=2.0, alpha=0.1, steps=7)
    assert isinstance(fgm, EmbeddingAdversary) and (fgm.kind, fgm.alpha, fgm.steps) == (
        "fgm",
        2.0,
        1,
    )
    fgm.remove()
    with pytest.raises(
        LmforgeError,
        match=r"regularization\.adversarial: unknown kind 'fmg' \(did you mean 'fgm'\?\)"
        r".*fgm, pgd or none",
    ):
        make_adversary(model, "fmg")
    for kwargs, key in (
        ({"epsilon": 0.0}, "adversarial_epsilon"),
        ({"epsilon": -1.0}, "adversarial_epsilon"),
        ({"alpha": 0}, "adversarial_alpha"),
        ({"steps": 0}, "adversarial_steps"),
        ({"steps": 1.5}, "adversarial_steps"),
    ):
        with pytest.raises(LmforgeError, match=rf"regularization\.{key}"):
            make_adversary(model, "pgd", **kwargs)


def test_bi_encoder_gets_one_perturbation_per_embedding_call():
    from transformers import BertModel

    from lmforge.models.bi_encoder import BiEncoder

    torch.manual_seed(0)
    encoder = BertModel(
        BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )
    model = BiEncoder(encoder).train()  # no get_input_embeddings of its own: found in the encoder
    assert find_word_embeddings(model) is encoder.embeddings.word_embeddings.weight
    generator = torch.Generator().manual_seed(2)
    batch = {
        "input_ids": torch.randint(1, 100, (3, 7), generator=generator),
        "attention_mask": torch.ones(3, 7, dtype=torch.long),
        "positive_input_ids": torch.randint(1, 100, (3, 5), generator=generator),
        "positive_attention_mask": torch.ones(3, 5, dtype=torch.long),
    }
    adversary = make_adversary(model, "fgm", epsilon=EPSILON)
    clean = clean_step(model, batch)
    adv_loss = adversary.train_step(lambda: model(**batch).loss, backward)
    queries, positives = adversary.perturbations
    assert (queries.shape, positives.shape) == ((3, 7, 32), (3, 5, 32))
    for r in (queries, positives):
        torch.testing.assert_close(per_example_norm(r), torch.full((3,), EPSILON))
    assert adv_loss > clean.item()
