"""EDA augmentation, embedding-neighbour synonyms, back-translation and perturbations."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from lmforge.config.schema import AugmentConfig
from lmforge.data.augmentation import (
    PERTURBATIONS,
    EmbeddingNeighbours,
    augment_rows,
    back_translate,
    perturb,
    random_deletion,
    random_insertion,
    random_swap,
    synonym_replacement,
    typo,
)
from lmforge.errors import LmforgeError

pytestmark = pytest.mark.unit

LONG = [
    "the",
    "quarterly",
    "profit",
    "of",
    "the",
    "company",
    "rose",
    "sharply",
    "after",
    "strong",
    "demand",
    "for",
    "its",
    "new",
    "products",
    "lifted",
    "sales",
    "in",
    "every",
    "region",
    "while",
    "costs",
    "stayed",
    "flat",
    "and",
    "margins",
    "improved",
]

SYNONYMS = {
    "profit": ["earnings", "income"],
    "rose": ["climbed", "jumped"],
    "sharply": ["steeply"],
    "sales": ["revenue"],
    "strong": ["robust"],
    "demand": ["appetite"],
    "costs": ["expenses"],
}


def synonyms(word: str) -> list[str]:
    return SYNONYMS.get(word, [])


def rng(seed: int = 0) -> random.Random:
    return random.Random(seed)


# ---- the four EDA operations ----


@pytest.mark.parametrize(
    "op",
    [
        lambda w, r: random_swap(w, 3, r),
        lambda w, r: random_deletion(w, 0.3, r),
        lambda w, r: random_insertion(w, 3, r, synonyms),
        lambda w, r: synonym_replacement(w, 3, r, synonyms),
    ],
    ids=["swap", "delete", "insert", "synonym"],
)
def test_each_operation_is_seeded_and_leaves_its_input_alone(op):
    words = list(LONG)
    first = op(words, rng(1))
    assert words == LONG
    assert first == op(words, rng(1))
    assert first != words
    assert any(op(words, rng(seed)) != first for seed in (2, 3, 4))


def test_swap_keeps_the_words():
    out = random_swap(LONG, 4, rng())
    assert Counter(out) == Counter(LONG) and out != LONG
    assert random_swap(["alone"], 3, rng()) == ["alone"]
    assert random_swap([], 3, rng()) == []


def test_deletion_never_empties_a_sentence():
    for seed in range(20):
        out = random_deletion(["a", "b", "c"], 1.0, rng(seed))
        assert len(out) == 1 and out[0] in {"a", "b", "c"}
    assert random_deletion(LONG, 0.0, rng()) == LONG
    assert random_deletion([], 0.5, rng()) == []
    kept = random_deletion(LONG, 0.5, rng())
    assert 0 < len(kept) < len(LONG) and all(w in LONG for w in kept)


def test_insertion_adds_exactly_n_words_from_the_sentence_or_its_synonyms():
    for n in (1, 2, 5):
        out = random_insertion(LONG, n, rng(n), synonyms)
        assert len(out) == len(LONG) + n
        added = Counter(out) - Counter(LONG)
        allowed = set(LONG) | {s for options in SYNONYMS.values() for s in options}
        assert sum(added.values()) == n and set(added) <= allowed
    # Without a synonym function, copies of the sentence's own words.
    out = random_insertion(["red", "car"], 4, rng(), None)
    assert len(out) == 6 and set(out) == {"red", "car"}
    assert random_insertion([], 2, rng(), synonyms) == []


def test_synonym_replacement_replaces_distinct_non_stopwords():
    out = synonym_replacement(LONG, 2, rng(), synonyms)
    changed = {a for a, b in zip(LONG, out, strict=True) if a != b}
    assert len(out) == len(LONG) and len(changed) == 2 and changed <= set(SYNONYMS)
    # Every occurrence of a chosen word gets the same synonym; punctuation stays attached.
    out = synonym_replacement(["profit,", "and", "profit"], 1, rng(), synonyms)
    assert out[1] == "and" and out[0][:-1] == out[2] and out[0].endswith(",") and out[2] != "profit"
    # Stopwords are never looked up.
    asked = []
    synonym_replacement(["the", "of", "and", "profit"], 5, rng(), lambda w: asked.append(w) or [])
    assert asked == ["profit"]
    assert synonym_replacement(["nothing", "known"], 3, rng(), synonyms) == ["nothing", "known"]


def test_labels_are_kept_by_every_operation():
    texts, labels = [" ".join(LONG), "sales missed forecasts badly"], ["positive", "negative"]
    for op in ("swap", "delete", "insert", "synonym"):
        out, out_labels, summary = augment_rows(
            texts, labels, AugmentConfig(operations=[op], rate=0.2, copies=3), neighbours=synonyms
        )
        assert out[:2] == texts and out_labels[:2] == labels, op
        assert summary == {"original": 2, "added": len(out) - 2, "unchanged": 8 - len(out)}, op
        assert len(out) > 2, op  # some copies are kept: the loop below checks something
        for text, label in zip(out[2:], out_labels[2:], strict=True):
            origin = 0 if len(text.split()) > 8 else 1
            assert label == labels[origin]


# ---- synonyms from embeddings ----


def _hand_made() -> EmbeddingNeighbours:
    words = ["profit", "earnings", "income", "banana", "Profit", "profits", "revenue"]
    vectors = np.array(
        [
            [1.0, 0.0, 0.0],
            [0.9, 0.1, 0.0],
            [0.7, 0.7, 0.0],
            [0.0, 0.0, 1.0],
            [1.0, 0.0, 0.01],
            [1.0, 0.01, 0.0],
            [0.8, 0.4, 0.0],
        ]
    )
    return EmbeddingNeighbours(words, vectors)


def test_neighbours_come_in_cosine_order_without_the_word_or_its_trivial_variants():
    table = _hand_made()
    assert table.neighbours("profit", k=3) == ["earnings", "revenue", "income"]
    assert table.neighbours("profit", k=10) == ["earnings", "revenue", "income", "banana"]
    assert table.neighbours("profit", k=1) == ["earnings"]
    assert table("profit") == ["earnings", "revenue", "income", "banana"]
    assert "profit" not in table.neighbours("profits", k=10)
    assert table.neighbours("grape") == [] and table.neighbours("profit", k=0) == []


def test_a_larger_k_after_a_cached_smaller_one_searches_again():
    words = [f"word{chr(97 + i)}" for i in range(20)]
    vectors = np.random.default_rng(0).normal(size=(20, 8))
    table = EmbeddingNeighbours(words, vectors)
    fresh = EmbeddingNeighbours(words, vectors)
    assert table.neighbours("worda", k=2) == fresh.neighbours("worda", k=12)[:2]
    assert table.neighbours("worda", k=12) == fresh.neighbours("worda", k=12)
    assert len(table.neighbours("worda", k=50)) == 19


def test_from_model_returns_only_whole_words_of_a_wordpiece_vocabulary(tmp_path):
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    whole = ["profit", "earnings", "income", "revenue", "sales", "shares", "demand"]
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *whole,
        "##ing",
        "##ed",
        "##s",
        "up",
        "a",
        "2024",
        "co-op",
    ]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # transformers 5 reads the file from `vocab=`; `vocab_file=` is silently ignored there.
    tokenizer = BertTokenizerFast(vocab=str(tmp_path / "vocab.txt"))
    assert len(tokenizer.get_vocab()) == len(vocab)
    torch.manual_seed(0)
    model = BertModel(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    )
    with torch.no_grad():  # make "##ing" the closest row to "profit": it must still be skipped
        model.get_input_embeddings().weight[vocab.index("##ing")] = (
            model.get_input_embeddings().weight[5]
        )
    table = EmbeddingNeighbours.from_model(model, tokenizer)
    assert sorted(table.words) == sorted(whole)
    for word in whole:
        found = table.neighbours(word, k=20)
        assert len(found) == len(whole) - 1 and set(found) <= set(whole) - {word}
    assert table.neighbours("ing") == [] and table.neighbours("[CLS]") == []
    assert table.neighbours("Profit") == table.neighbours("profit")  # an uncased vocabulary


class _Embeddings:
    def __init__(self, weight):
        self.weight = weight


class _FakeModel:
    def __init__(self, weight):
        self._embeddings = _Embeddings(weight)

    def get_input_embeddings(self):
        return self._embeddings


class _FakeByteLevelTokenizer:
    all_special_tokens = ["<|endoftext|>"]

    def get_vocab(self):
        return {
            "<|endoftext|>": 0,
            "Ġprofit": 1,
            "Ġearnings": 2,
            "ing": 3,
            "profit": 4,
            "Ġup": 5,
            "Ġincome": 6,
            "Ġ2024": 7,
            "Ġhuge": 99,
        }  # id 99 is past the embedding table


def test_from_model_strips_the_byte_level_word_mark_and_skips_continuations():
    import torch

    table = EmbeddingNeighbours.from_model(_FakeModel(torch.randn(8, 4)), _FakeByteLevelTokenizer())
    assert table.words == ["profit", "earnings", "income"]


# ---- augment_rows ----

TEXTS = [
    "profit rose sharply after strong demand",
    "sales missed forecasts",
    "costs stayed flat",
    "margins improved again this quarter",
]
LABELS = ["pos", "neg", 0, "pos"]


def test_augment_rows_keeps_originals_first_and_repeats_labels_in_order():
    config = AugmentConfig(operations=["swap", "delete", "insert", "synonym"], rate=0.3, copies=2)
    texts, labels, summary = augment_rows(TEXTS, LABELS, config, seed=0, neighbours=synonyms)
    assert texts[:4] == TEXTS and labels[:4] == LABELS
    assert summary["original"] == 4 and summary["added"] + summary["unchanged"] == 8
    assert len(texts) == len(labels) == 4 + summary["added"]
    assert all(t not in TEXTS for t in texts[4:])
    # Copies come row by row: labels follow the row order of the originals.
    origins = [
        next(i for i, t in enumerate(TEXTS) if set(t.split()) & set(aug.split()))
        for aug in texts[4:]
    ]
    assert origins == sorted(origins)
    assert labels[4:] == [LABELS[i] for i in origins]


def test_unchanged_copies_are_dropped_and_counted():
    # A swap of two equal words, and a sentence without synonyms, give copies equal to their
    # originals (whitespace aside); a swap of distinct words always changes the sentence.
    originals = ["yes yes", "nothing  known here"]
    texts, labels, summary = augment_rows(
        originals,
        [1, 0],
        AugmentConfig(operations=["swap", "synonym"], copies=4),
        neighbours=synonyms,
    )
    assert texts[:2] == originals
    assert 0 < summary["added"] < 4
    assert summary == {"original": 2, "added": len(texts) - 2, "unchanged": 8 - (len(texts) - 2)}
    assert all(sorted(t.split()) == ["here", "known", "nothing"] for t in texts[2:])
    assert labels == [1, 0] + [0] * summary["added"]
    _, _, summary = augment_rows(
        originals, [1, 0], AugmentConfig(operations=["synonym"], copies=2), neighbours=synonyms
    )
    assert summary == {"original": 2, "added": 0, "unchanged": 4}


def test_augment_rows_is_a_function_of_its_inputs_and_seed():
    def run(seed):
        return augment_rows(
            TEXTS * 3,
            LABELS * 3,
            AugmentConfig(operations=["swap", "delete", "insert"], copies=2),
            seed,
        )

    assert run(0) == run(0)
    assert run(0)[0] != run(1)[0]


def test_augment_rows_errors():
    with pytest.raises(LmforgeError, match="'synonym' needs the model's embeddings"):
        augment_rows(TEXTS, LABELS, AugmentConfig(operations=["synonym"]))
    with pytest.raises(LmforgeError, match="4 texts but 3 labels"):
        augment_rows(TEXTS, LABELS[:3], AugmentConfig(operations=["swap"]))
    with pytest.raises(LmforgeError, match="augment.operations is empty"):
        augment_rows(TEXTS, LABELS, AugmentConfig())
    # The settings are checked where they are read (a run config's augment: section).
    for bad, message in (
        ({"operations": ["swapp"]}, "swap"),
        ({"operations": ["swap", "swap"]}, "lists swap twice"),
        ({"operations": ["swap"], "rate": 0}, "greater than 0"),
        ({"operations": ["swap"], "copies": 0}, "greater than or equal to 1"),
    ):
        with pytest.raises(ValidationError, match=message):
            AugmentConfig(**bad)


# ---- perturbations ----

WORDS = [f"word{chr(97 + i % 26)}{'x' * (i % 3)}" for i in range(200)]


def test_typos_change_about_the_requested_share_of_eligible_words():
    text = " ".join([*WORDS, "ab", "to", "a."])
    out = perturb([text], "typos", 0.5, seed=0)[0].split()
    assert len(out) == 203
    assert out[-3:] == ["ab", "to", "a."]  # fewer than 3 letters: untouched
    changed = sum(a != b for a, b in zip(WORDS, out[:200], strict=True))
    assert 60 <= changed <= 140
    assert perturb([text], "typos", 0.0, seed=0) == [text]
    assert all(
        a != b
        for a, b in zip(WORDS, perturb([" ".join(WORDS)], "typos", 1.0)[0].split(), strict=True)
    )


def test_one_typo_is_a_small_edit_that_keeps_punctuation():
    for seed in range(50):
        out = typo("Profit,", random.Random(seed))
        assert out != "Profit," and out.endswith(",") and abs(len(out) - 7) <= 1
    assert typo("1234", random.Random(0)) == "1234"
    assert typo("aaa", random.Random(0)) != "aaa"


def test_casing_changes_about_the_requested_share_of_texts():
    texts = [f"The Profit rose in Week {i}" for i in range(200)]
    out = perturb(texts, "casing", 0.5, seed=0)
    changed = [b for a, b in zip(texts, out, strict=True) if a != b]
    assert 60 <= len(changed) <= 140
    assert all(b.lower() == a.lower() for a, b in zip(texts, out, strict=True))
    styles = {"lower" if b == b.lower() else "upper" if b == b.upper() else "flip" for b in changed}
    assert styles == {"lower", "upper", "flip"}
    assert perturb(["abc def"], "casing", 1.0) != ["abc def"]  # always a style that changes it
    assert perturb(["123 !"], "casing", 1.0) == ["123 !"]


def test_word_drop_drops_about_the_requested_share_and_never_all_words():
    out = perturb([" ".join(WORDS)], "word_drop", 0.3, seed=0)[0].split()
    assert 100 <= len(out) <= 180 and all(w in WORDS for w in out)
    assert [len(t.split()) for t in perturb(["a b c", "d"], "word_drop", 1.0)] == [1, 1]


def test_perturb_is_seeded_and_checks_its_arguments():
    texts = [" ".join(LONG)] * 5
    for kind in PERTURBATIONS:
        assert perturb(texts, kind, 0.3, seed=1) == perturb(texts, kind, 0.3, seed=1)
        assert perturb(texts, kind, 0.3, seed=1) != perturb(texts, kind, 0.3, seed=2)
    with pytest.raises(
        LmforgeError,
        match="'typo' is unknown \\(did you mean 'typos'\\?\\): use one of "
        "typos, casing, word_drop",
    ):
        perturb(texts, "typo", 0.1)
    with pytest.raises(LmforgeError, match="rate"):
        perturb(texts, "typos", 1.5)


# ---- back-translation ----


def _tiny_translator(path, corpus: list[str]) -> str:
    """A randomly initialized one-layer MarianMT with a WordLevel tokenizer trained here."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(
        corpus, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"])
    )
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=64,
    )
    torch.manual_seed(0)
    config = MarianConfig(
        vocab_size=backend.get_vocab_size(),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        forced_eos_token_id=1,
    )
    MarianMTModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_back_translate_gives_one_deterministic_string_per_text(tmp_path):
    texts = ["profit rose sharply", "sales missed forecasts", "costs stayed flat"]
    forward = _tiny_translator(tmp_path / "en-xx", texts)
    backward = _tiny_translator(tmp_path / "xx-en", texts)
    out = back_translate(texts, forward, backward, batch_size=2, max_new_tokens=6)
    assert len(out) == 3 and all(isinstance(t, str) for t in out)
    assert out == back_translate(texts, forward, backward, batch_size=2, max_new_tokens=6)
    assert back_translate([], forward, backward) == []


def test_back_translate_names_a_model_it_cannot_load(tmp_path):
    with pytest.raises(
        LmforgeError,
        match="cannot load translation model '.*no-such-model'.*locally or "
        "through the Hugging Face hub",
    ):
        back_translate(["hello"], str(tmp_path / "no-such-model"), str(tmp_path / "no-such-model"))
    with pytest.raises(LmforgeError, match="batch_size"):
        back_translate(["hello"], "a", "b", batch_size=0)
