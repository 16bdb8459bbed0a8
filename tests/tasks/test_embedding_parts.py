"""Parts of the embedding task: pooling, the in-batch loss, collation, retrieval metrics, export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.evaluation.retrieval import build_corpus, retrieval_metrics
from lmforge.models.bi_encoder import (
    BiEncoder,
    PairCollator,
    mean_pool,
    write_sentence_transformers_files,
)

pytestmark = pytest.mark.unit

WORDS = [f"w{i}" for i in range(95)]


def _encoder(seed: int = 0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    return BertModel(config).eval()  # eval: no dropout, so two forward passes agree


def _batch(n: int, seed: int, lengths=(3, 9)) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids (5..99, no special tokens) right-padded with 0."""
    rng = np.random.default_rng(seed)
    rows = [rng.integers(5, 100, size=rng.integers(*lengths)) for _ in range(n)]
    batch = PairCollator(pad_token_id=0)([{"input_ids": row} for row in rows])
    return batch["input_ids"], batch["attention_mask"]


def _row_loss(scores: torch.Tensor, target: int, keep: list[int]) -> float:
    """Cross-entropy of one row over the kept candidate columns, by hand."""
    kept = [float(scores[j]) for j in keep]
    return math.log(sum(math.exp(s) for s in kept)) - float(scores[target])


# ---- pooling ----


def test_mean_pool_ignores_padding():
    hidden = torch.tensor(
        [[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [-7.0, 7.0], [-9.0, 0.0]]]
    )  # (2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    expected = torch.tensor([[2.0, 3.0], [-11.0 / 3, 13.0 / 3]])
    assert torch.allclose(mean_pool(hidden, mask), expected)
    no_tokens = torch.zeros(2, 3)
    assert torch.equal(mean_pool(hidden, no_tokens), torch.zeros(2, 2))  # zeros, not NaN


# ---- the in-batch loss ----


def test_loss_is_cross_entropy_over_in_batch_positives():
    model = BiEncoder(_encoder(), scale=20.0)
    q_ids, q_mask = _batch(4, seed=1)
    p_ids, p_mask = _batch(4, seed=2)
    out = model(q_ids, q_mask, positive_input_ids=p_ids, positive_attention_mask=p_mask)
    with torch.no_grad():
        q, p = model.embed(q_ids, q_mask), model.embed(p_ids, p_mask)
    assert torch.allclose(q.norm(dim=-1), torch.ones(4), atol=1e-5)
    scores = 20.0 * q @ p.T
    expected = sum(_row_loss(scores[i], i, list(range(4))) for i in range(4)) / 4
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.logits.shape == (4, 64)
    assert torch.allclose(out.logits[:, :32], q, atol=1e-6)
    assert torch.allclose(out.logits[:, 32:], p, atol=1e-6)


def test_queries_only_give_embeddings_and_no_loss():
    model = BiEncoder(_encoder())
    ids, mask = _batch(3, seed=3)
    out = model(ids, mask)
    assert out.loss is None
    assert torch.allclose(out.logits, model.embed(ids, mask))


def test_rows_sharing_a_positive_are_not_negatives_for_each_other():
    model = BiEncoder(_encoder())
    q_ids, q_mask = _batch(4, seed=4)
    p_ids, p_mask = _batch(4, seed=5)
    p_ids[1], p_mask[1] = p_ids[0], p_mask[0]  # rows 0 and 1 have the same positive text
    groups = torch.tensor([7, 7, 3, 5])
    out = model(
        q_ids,
        q_mask,
        positive_input_ids=p_ids,
        positive_attention_mask=p_mask,
        positive_groups=groups,
    )
    with torch.no_grad():
        scores = 20.0 * model.embed(q_ids, q_mask) @ model.embed(p_ids, p_mask).T
    expected = (
        _row_loss(scores[0], 0, [0, 2, 3])
        + _row_loss(scores[1], 1, [1, 2, 3])
        + _row_loss(scores[2], 2, [0, 1, 2, 3])
        + _row_loss(scores[3], 3, [0, 1, 2, 3])
    ) / 4
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    unmasked = model(q_ids, q_mask, positive_input_ids=p_ids, positive_attention_mask=p_mask)
    assert unmasked.loss.item() > out.loss.item()


def test_hard_negatives_are_extra_columns_never_masked():
    model = BiEncoder(_encoder())
    q_ids, q_mask = _batch(3, seed=6)
    p_ids, p_mask = _batch(3, seed=7)
    n_ids, n_mask = _batch(3, seed=8)
    groups = torch.tensor([0, 0, 1])
    out = model(
        q_ids,
        q_mask,
        positive_input_ids=p_ids,
        positive_attention_mask=p_mask,
        negative_input_ids=n_ids,
        negative_attention_mask=n_mask,
        positive_groups=groups,
    )
    with torch.no_grad():
        candidates = torch.cat([model.embed(p_ids, p_mask), model.embed(n_ids, n_mask)])
        scores = 20.0 * model.embed(q_ids, q_mask) @ candidates.T  # (3, 6)
    expected = (
        _row_loss(scores[0], 0, [0, 2, 3, 4, 5])
        + _row_loss(scores[1], 1, [1, 2, 3, 4, 5])
        + _row_loss(scores[2], 2, [0, 1, 2, 3, 4, 5])
    ) / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    without = model(
        q_ids,
        q_mask,
        positive_input_ids=p_ids,
        positive_attention_mask=p_mask,
        positive_groups=groups,
    )
    assert out.loss.item() > without.loss.item()  # more candidates: a larger log-sum-exp
    assert out.logits.shape == (3, 64)


def test_a_few_steps_reduce_the_loss():
    model = BiEncoder(_encoder(seed=1))
    q_ids, q_mask = _batch(8, seed=9)
    p_ids, p_mask = _batch(8, seed=10)
    batch = {
        "input_ids": q_ids,
        "attention_mask": q_mask,
        "positive_input_ids": p_ids,
        "positive_attention_mask": p_mask,
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(10):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_gradient_checkpointing_and_config_forward_to_the_encoder():
    model = BiEncoder(_encoder())
    assert model.config.hidden_size == 32
    assert model.supports_gradient_checkpointing
    model.gradient_checkpointing_enable()
    assert model.encoder.is_gradient_checkpointing


# ---- collation ----


def test_pair_collator_pads_each_side_to_its_own_longest_row():
    batch = [
        {"input_ids": np.array([5, 6, 7]), "positive_ids": np.array([8]), "positive_group": 2},
        {"input_ids": np.array([9]), "positive_ids": np.array([10, 11]), "positive_group": 4},
    ]
    out = PairCollator(pad_token_id=0)(batch)
    assert out["input_ids"].tolist() == [[5, 6, 7], [9, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["positive_input_ids"].tolist() == [[8, 0], [10, 11]]
    assert out["positive_attention_mask"].tolist() == [[1, 0], [1, 1]]
    assert out["positive_groups"].tolist() == [2, 4]
    assert all(t.dtype == torch.long for t in out.values())
    assert "negative_input_ids" not in out
    assert PairCollator(0, pad_to_multiple_of=8)(batch)["input_ids"].shape == (2, 8)


def test_pair_collator_rejects_negatives_on_some_rows_only():
    batch = [
        {"input_ids": np.array([5]), "positive_ids": np.array([6]), "negative_ids": np.array([7])},
        {"input_ids": np.array([8]), "positive_ids": np.array([9])},
    ]
    with pytest.raises(ValueError, match="negative_ids"):
        PairCollator(pad_token_id=0)(batch)


# ---- retrieval metrics ----


def _ranking_case():
    """3 queries over 5 one-hot documents; query scores are chosen to give known ranks."""
    corpus = np.eye(5, dtype=np.float32)
    queries = np.array(
        [
            [0.9, 0.1, 0.0, 0.0, 0.0],  # doc 0 first: rank 1
            [0.5, 0.4, 0.3, 0.2, 0.1],  # doc 3 relevant: rank 4
            [0.1, 0.5, 0.2, 0.3, 0.4],
        ],  # docs {4, 2} relevant: ranks 2 and 4
        dtype=np.float32,
    )
    return queries, corpus, [{0}, {3}, {4, 2}]


def test_retrieval_metrics_on_a_known_ranking():
    queries, corpus, relevant = _ranking_case()
    m = retrieval_metrics(queries, corpus, relevant, ks=(1, 5))
    assert m["recall@1"] == pytest.approx((1 + 0 + 0) / 3)
    assert m["recall@5"] == pytest.approx(1.0)
    assert m["mrr"] == pytest.approx((1 + 1 / 4 + 1 / 2) / 3)
    ndcg_q2 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 / math.log2(2) + 1 / math.log2(3))
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(5) + ndcg_q2) / 3)
    assert (m["n_queries"], m["n_corpus"]) == (3, 5)


def test_retrieval_metrics_break_ties_by_corpus_index():
    corpus = np.eye(3, dtype=np.float32)
    queries = np.zeros((2, 3), dtype=np.float32)  # every document scores 0
    m = retrieval_metrics(queries, corpus, [{0}, {2}], ks=(1,))
    assert m["recall@1"] == 0.5
    assert m["mrr"] == pytest.approx((1 + 1 / 3) / 2)


def test_retrieval_metrics_do_not_depend_on_the_chunk_size():
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(37, 8)).astype(np.float32)
    corpus = rng.normal(size=(50, 8)).astype(np.float32)
    relevant = [
        set(rng.choice(50, size=rng.integers(1, 4), replace=False).tolist()) for _ in range(37)
    ]
    chunked = retrieval_metrics(queries, corpus, relevant, chunk=5)
    assert chunked == retrieval_metrics(queries, corpus, relevant)


def test_retrieval_metrics_reject_queries_without_relevant_documents():
    queries, corpus, _ = _ranking_case()
    with pytest.raises(ValueError, match="2 of 3 queries"):
        retrieval_metrics(queries, corpus, [{0}, set(), set()])


def test_build_corpus_dedups_positives_in_first_seen_order():
    queries = ["q1", "q2", "q1", "q3"]
    positives = ["card declined", "balance", "lost card", "card declined"]
    corpus, relevant = build_corpus(queries, positives, extra_corpus=["balance", "pin change"])
    assert corpus == ["card declined", "balance", "lost card", "pin change"]
    assert relevant == [{0, 2}, {1}, {0, 2}, {0}]
    relevant[0].add(3)
    assert relevant[2] == {0, 2}  # each row owns its set


# ---- export for sentence-transformers ----


def _tokenizer(tmp_path):
    from transformers import BertTokenizerFast

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    # vocab= (a mapping): transformers 5 ignores vocab_file= here and would map every word to [UNK].
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)})
    assert len(tokenizer) == len(tokens) and tokenizer.convert_tokens_to_ids("w3") == tokens.index(
        "w3"
    )
    return tokenizer


@pytest.mark.parametrize("normalize", [True, False])
def test_sentence_transformers_loads_the_export_and_embeds_the_same(tmp_path, normalize):
    st = pytest.importorskip("sentence_transformers")
    model = BiEncoder(_encoder(seed=2), normalize=normalize)
    tokenizer = _tokenizer(tmp_path)
    out = tmp_path / "model"
    model.encoder.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_sentence_transformers_files(out, hidden_size=32, max_length=8, normalize=normalize)

    texts = ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9 w10 w11 w12 w13 w14"]  # the last: cut to 8 tokens
    loaded = st.SentenceTransformer(str(out), device="cpu")
    assert loaded.max_seq_length == 8
    modules = ["Transformer", "Pooling", "Normalize"] if normalize else ["Transformer", "Pooling"]
    assert [type(m).__name__ for m in loaded] == modules
    expected_similarity = "cosine" if normalize else "dot"
    assert loaded.similarity_fn_name == expected_similarity
    encoded = loaded.encode(texts, convert_to_numpy=True)
    inputs = tokenizer(texts, padding=True, truncation=True, max_length=8, return_tensors="pt")
    with torch.no_grad():
        ours = model.embed(**inputs).numpy()
    assert np.allclose(encoded, ours, atol=1e-5)


def test_sentence_transformers_files_need_a_saved_model(tmp_path):
    with pytest.raises(LmforgeError, match="save_pretrained"):
        write_sentence_transformers_files(tmp_path, hidden_size=32, max_length=8, normalize=True)
