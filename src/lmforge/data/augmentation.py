"""Offline text augmentation for training rows, and perturbations for robustness checks.

Augmentation (training split only, labels kept) follows EDA, "Easy Data Augmentation"
(Wei & Zou 2019, https://arxiv.org/abs/1901.11196): random swap, random deletion,
random insertion and synonym replacement, each changing about ``rate`` (EDA's alpha) of
a sentence's words. EDA takes synonyms from WordNet; here they are the nearest
neighbours of a word in the model's own input embedding table
(:class:`EmbeddingNeighbours`), so no lexicon has to be installed and the synonyms are
words the model already knows. :func:`back_translate` is an optional, slower step that
paraphrases through a pair of seq2seq translation models.

:func:`perturb` is the other side: it degrades validation texts (typos, casing, dropped
words) to measure how much a trained model relies on clean input. It never touches
labels.

Words are the whitespace-separated pieces of a text and are re-joined with single
spaces; punctuation stays attached to its word ("sharply." is one word). This keeps every
operation trivially reversible to reason about, at the price that a word carrying
punctuation is looked up for synonyms by its letters only (see
:func:`synonym_replacement`).

All randomness comes from a ``random.Random`` created from the caller's seed inside each
public function (or passed in as ``rng``): the same inputs and seed always give the same
output, and nothing touches the global random state.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from lmforge.errors import LmforgeError, did_you_mean

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from lmforge.config.schema import AugmentConfig

log = logging.getLogger(__name__)

SynonymFn = Callable[[str], list[str]]

OPERATIONS = ("swap", "delete", "insert", "synonym")
PERTURBATIONS = ("typos", "casing", "word_drop")

# Words never replaced by a synonym: EDA leaves stopwords alone because swapping "the"
# for a neighbour ("a", "this") adds noise without adding lexical variety. A small list
# is enough: embedding neighbours of function words are mostly other function words.
STOPWORDS = frozenset(
    {
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "myself",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
    }
)

# Neighbouring keys on a QWERTY keyboard: a replaced letter is one a finger could have
# hit instead, which is what real typos look like.
QWERTY_NEIGHBOURS = {
    "q": "wa",
    "w": "qeas",
    "e": "wrsd",
    "r": "etdf",
    "t": "ryfg",
    "y": "tugh",
    "u": "yihj",
    "i": "uojk",
    "o": "ipkl",
    "p": "ol",
    "a": "qwsz",
    "s": "awedxz",
    "d": "serfcx",
    "f": "drtgvc",
    "g": "ftyhbv",
    "h": "gyujnb",
    "j": "huikmn",
    "k": "jiolm",
    "l": "kop",
    "z": "asx",
    "x": "zsdc",
    "c": "xdfv",
    "v": "cfgb",
    "b": "vghn",
    "n": "bhjm",
    "m": "njk",
}

_EDGE_PUNCTUATION = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)


# ---- the four EDA operations ----


def random_swap(words: Sequence[str], n: int, rng: random.Random) -> list[str]:
    """Swap two random positions, ``n`` times (EDA's RS).

    Args:
        words: The sentence as a list of words; it is not modified.
        n: How many swaps to make.
        rng: The source of randomness.

    Returns:
        A new list holding the same words (the same multiset) in a new order. A sentence
        of fewer than two words comes back unchanged.
    """
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(n):
        i, j = rng.sample(range(len(out)), 2)
        out[i], out[j] = out[j], out[i]
    return out


def random_deletion(words: Sequence[str], p: float, rng: random.Random) -> list[str]:
    """Drop each word with probability ``p`` (EDA's RD).

    Args:
        words: The sentence as a list of words; it is not modified.
        p: The probability that a word is dropped.
        rng: The source of randomness.

    Returns:
        The kept words, in order. Never empty for a non-empty sentence: when every word
        would go, one random word is kept, as in EDA, so that no row turns into an empty
        text with a label.
    """
    if not words:
        return []
    kept = [w for w in words if rng.random() >= p]
    return kept or [words[rng.randrange(len(words))]]


def random_insertion(
    words: Sequence[str], n: int, rng: random.Random, candidates: SynonymFn | None = None
) -> list[str]:
    """Insert ``n`` words at random positions (EDA's RI).

    Each inserted word is a synonym of a random word of the sentence when ``candidates``
    gives one (up to 10 words are tried, as in EDA), else a copy of a random word of the
    sentence, so that exactly ``n`` words are always added.

    Args:
        words: The sentence as a list of words; it is not modified.
        n: How many words to insert.
        rng: The source of randomness.
        candidates: A synonym function (word -> synonyms), e.g. an
            :class:`EmbeddingNeighbours`; None inserts copies only.

    Returns:
        The new sentence, ``len(words) + n`` words long (an empty sentence stays empty:
        there is nothing to take a word from).
    """
    out = list(words)
    if not out:
        return out
    for _ in range(n):
        out.insert(rng.randint(0, len(out)), _word_to_insert(out, rng, candidates))
    return out


def _word_to_insert(words: list[str], rng: random.Random, candidates: SynonymFn | None) -> str:
    if candidates is not None:
        for _ in range(10):
            core = _core(words[rng.randrange(len(words))])
            synonyms = candidates(core) if core and core.lower() not in STOPWORDS else []
            if synonyms:
                return synonyms[rng.randrange(len(synonyms))]
    return words[rng.randrange(len(words))]


def synonym_replacement(
    words: Sequence[str], n: int, rng: random.Random, synonyms: SynonymFn
) -> list[str]:
    """Replace up to ``n`` distinct words that have synonyms (EDA's SR).

    Words are tried in random order; stopwords are never replaced. A word is looked up
    without leading or trailing punctuation, which is put back around the synonym
    ("rose," -> "climbed,"). As in EDA, every occurrence of a chosen word gets the same
    synonym, so a sentence that repeats a word stays consistent.

    Args:
        words: The sentence as a list of words; it is not modified.
        n: The most distinct words to replace.
        rng: The source of randomness.
        synonyms: A synonym function (word -> synonyms), e.g. an :class:`EmbeddingNeighbours`.

    Returns:
        The new sentence, as long as the original; unchanged when no word has a synonym.
    """
    out = list(words)
    distinct = sorted({c for c in map(_core, out) if c and c.lower() not in STOPWORDS})
    rng.shuffle(distinct)
    replaced = 0
    for core in distinct:
        if replaced >= n:
            break
        options = [o for o in synonyms(core) if o != core]
        if not options:
            continue
        new = options[rng.randrange(len(options))]
        out = [_swap_core(w, new) if _core(w) == core else w for w in out]
        replaced += 1
    return out


def _core(word: str) -> str:
    """The word without leading and trailing punctuation."""
    return _EDGE_PUNCTUATION.match(word).group(2)


def _swap_core(word: str, new: str) -> str:
    """``new`` with the leading and trailing punctuation of ``word``."""
    lead, _, trail = _EDGE_PUNCTUATION.match(word).groups()
    return lead + new + trail


# ---- synonyms from the model's embedding table ----


class EmbeddingNeighbours:
    """Synonyms as nearest neighbours (cosine) in a model's input embedding table.

    Only whole alphabetic words of at least 3 letters are candidates: sub-word pieces
    (WordPiece ``##ing``, or byte-level BPE pieces without the ``Ġ`` word-start mark)
    and special tokens are never returned, since inserting them would produce text no
    tokenizer would have made. Neighbours are computed on first use and cached per word.

    Call the object (or :meth:`neighbours`) with a word to get its synonyms; it is the
    synonym function the EDA operations take.

    Args:
        words: The candidate words, one per row of ``vectors``; duplicates keep the first.
        vectors: Their embeddings, shape (len(words), hidden).
    """

    def __init__(self, words: list[str], vectors: np.ndarray):
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(words):
            raise ValueError(
                f"EmbeddingNeighbours needs one vector row per word: got {len(words)} words "
                f"and vectors of shape {vectors.shape}"
            )
        first: dict[str, int] = {}
        for i, word in enumerate(words):
            first.setdefault(word, i)
        self.words = list(first)
        rows = np.fromiter(first.values(), dtype=np.int64, count=len(first))
        # Normalized once, so each lookup is one matrix-vector product; a zero row (an
        # untrained embedding) stays zero and is simply never close to anything.
        kept = vectors[rows]
        norms = np.linalg.norm(kept, axis=1, keepdims=True)
        self._unit = kept / np.where(norms == 0, 1.0, norms)
        self._index = {w: i for i, w in enumerate(self.words)}
        self._cache: dict[str, tuple[int, list[str]]] = {}

    @classmethod
    def from_model(
        cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
    ) -> EmbeddingNeighbours:
        """Build from a Hugging Face model's input embeddings and its tokenizer.

        Args:
            model: Any model with ``get_input_embeddings()`` (weight of shape (V, H)).
            tokenizer: Its tokenizer (WordPiece, byte-level BPE or SentencePiece vocab).
        """
        weight = model.get_input_embeddings().weight.detach().float().cpu().numpy()
        words, ids = candidate_words(tokenizer.get_vocab(), set(tokenizer.all_special_tokens))
        keep = [k for k, token_id in enumerate(ids) if token_id < weight.shape[0]]
        return cls([words[k] for k in keep], weight[[ids[k] for k in keep]])

    def __call__(self, word: str) -> list[str]:
        return self.neighbours(word)

    def __len__(self) -> int:
        return len(self.words)

    def neighbours(self, word: str, k: int = 5) -> list[str]:
        """Up to ``k`` nearest candidate words, most similar first.

        The word itself and trivial variants (the same word in another case, or with or
        without a plural "s") are left out: replacing "profit" by "Profits" changes
        nothing a model would learn from. A word missing from the candidates is looked up
        lower-cased (an uncased vocabulary has "profit", not "Profit"); a word outside the
        candidate vocabulary (one split into pieces, a number, a word with punctuation)
        has none.
        """
        if word not in self._index:
            word = word.lower()
        if word not in self._index or k <= 0:
            return []
        searched, found = self._cache.get(word, (0, []))
        # A list shorter than the k it was searched for holds every candidate; otherwise a
        # larger k than any before needs a new search.
        if k > searched and len(found) == searched:
            searched = max(k, 5)
            found = self._search(word, searched)
            self._cache[word] = (searched, found)
        return found[:k]

    def _search(self, word: str, k: int) -> list[str]:
        similarity = self._unit @ self._unit[self._index[word]]
        take = min(len(similarity), k + 8)
        while True:
            # Only the top few are sorted; the margin covers the excluded variants, and
            # grows in the rare case that many of them crowd the top.
            top = np.argpartition(-similarity, take - 1)[:take]
            top = top[np.argsort(-similarity[top], kind="stable")]
            found = [self.words[i] for i in top if not _trivial_variant(word, self.words[i])]
            if len(found) >= k or take == len(similarity):
                return found[:k]
            take = min(len(similarity), take * 2)


def _trivial_variant(word: str, other: str) -> bool:
    a, b = word.lower(), other.lower()
    return a == b or a + "s" == b or b + "s" == a


def candidate_words(vocab: dict[str, int], special: set[str]) -> tuple[list[str], list[int]]:
    """The whole alphabetic words of a tokenizer vocabulary and their token ids.

    A vocabulary that marks word starts (byte-level BPE ``Ġword``, SentencePiece
    ``▁word``) contributes only its marked entries, with the mark stripped: unmarked
    entries there are word continuations. Otherwise (WordPiece) ``##`` pieces are
    continuations. Special tokens and words shorter than 3 letters are skipped. Ids are
    returned in increasing order, so the result does not depend on dict order.

    Args:
        vocab: Token -> id, as from ``tokenizer.get_vocab()``.
        special: The special tokens to skip.
    """
    marks = [m for m in ("Ġ", "▁") if sum(t.startswith(m) for t in vocab) > 0.05 * len(vocab)]
    words, ids = [], []
    for token, token_id in sorted(vocab.items(), key=lambda item: item[1]):
        if token in special:
            continue
        if marks:
            if not token.startswith(marks[0]):
                continue
            token = token[len(marks[0]) :]
        elif token.startswith("##"):
            continue
        if len(token) >= 3 and token.isalpha():
            words.append(token)
            ids.append(token_id)
    return words, ids


# ---- augmenting rows ----


def augment_rows(
    texts: list[str],
    labels: list,
    config: AugmentConfig,
    seed: int = 0,
    neighbours: SynonymFn | None = None,
) -> tuple[list[str], list, dict[str, int]]:
    """Add ``config.copies`` EDA-augmented copies of every training row.

    Each copy applies one operation, drawn by the seeded generator from
    ``config.operations``, and keeps its row's label. A copy identical to its original
    (after whitespace normalization: a swap of two equal words, a sentence with no
    synonyms) adds nothing, so it is dropped and counted rather than kept as a silent
    duplicate.

    Args:
        texts: The training texts; apply this to the training split only, never to the
            data a model is evaluated on.
        labels: Their labels, any type, one per text.
        config: Which operations, how strong (EDA's alpha: the share of a sentence's words an
            operation touches, at least one; deletion drops each word with that
            probability), how many copies: the ``augment:`` section of a run config.
        seed: Seed of the one random generator behind all copies.
        neighbours: A synonym function, e.g. ``EmbeddingNeighbours.from_model(model,
            tokenizer)``; needed for "synonym", used by "insert" when given.

    Returns:
        The texts (originals first, then the kept copies, row by row), their labels in the
        same order, and a summary ``{"original": n, "added": m, "unchanged": k}``. The
        result depends only on the arguments: the same seed gives the same rows.
    """
    if len(texts) != len(labels):
        raise LmforgeError(
            f"augmentation got {len(texts)} texts but {len(labels)} labels: pass one label per text"
        )
    if not config.operations:
        raise LmforgeError(
            f"augment.operations is empty: list one or more of {', '.join(OPERATIONS)}"
        )
    if "synonym" in config.operations and neighbours is None:
        raise LmforgeError(
            "augmentation operation 'synonym' needs the model's embeddings: pass "
            "neighbours=EmbeddingNeighbours.from_model(model, tokenizer) or drop 'synonym'"
        )
    rng = random.Random(seed)
    out_texts, out_labels = list(texts), list(labels)
    unchanged = 0
    for text, label in zip(texts, labels, strict=True):
        words = text.split()
        for _ in range(config.copies):
            op = config.operations[rng.randrange(len(config.operations))]
            new = " ".join(_apply(op, words, config.rate, rng, neighbours))
            if new == " ".join(words):
                unchanged += 1
                continue
            out_texts.append(new)
            out_labels.append(label)
    summary = {"original": len(texts), "added": len(out_texts) - len(texts), "unchanged": unchanged}
    log.info(
        "augmentation (%s, rate %s, %d copies): %s",
        "/".join(config.operations),
        config.rate,
        config.copies,
        summary,
    )
    return out_texts, out_labels, summary


def _apply(
    op: str, words: list[str], rate: float, rng: random.Random, neighbours: SynonymFn | None
) -> list[str]:
    n = max(1, round(rate * len(words)))
    if op == "swap":
        return random_swap(words, n, rng)
    if op == "delete":
        return random_deletion(words, rate, rng)
    if op == "insert":
        return random_insertion(words, n, rng, neighbours)
    return synonym_replacement(words, n, rng, neighbours)


# ---- back-translation ----


def back_translate(
    texts: list[str],
    forward_model: str,
    backward_model: str,
    batch_size: int = 16,
    max_new_tokens: int = 256,
) -> list[str]:
    """Paraphrase texts by translating them to a pivot language and back.

    Greedy decoding keeps the result deterministic. Runs on the GPU when one is visible.

    Args:
        texts: The texts to paraphrase.
        forward_model: A seq2seq translation model name or directory into the pivot
            language, e.g. "Helsinki-NLP/opus-mt-en-de".
        backward_model: One back from the pivot language, e.g. "Helsinki-NLP/opus-mt-de-en".
        batch_size: Texts translated at once.
        max_new_tokens: The longest translation generated, in tokens.

    Returns:
        One paraphrase per text, in order.
    """
    if batch_size < 1:
        raise LmforgeError(f"back_translate batch_size is {batch_size}: use 1 or more")
    if max_new_tokens < 1:
        raise LmforgeError(f"back_translate max_new_tokens is {max_new_tokens}: use 1 or more")
    if not texts:
        return []
    from lmforge.devices import resolve_device

    device = resolve_device("auto")
    pivot = _translate(
        list(texts), _load_translator(forward_model, device), batch_size, max_new_tokens
    )
    return _translate(pivot, _load_translator(backward_model, device), batch_size, max_new_tokens)


def _load_translator(name: str, device: str) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """A (tokenizer, model) pair in eval mode, or a one-line error naming the model."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForSeq2SeqLM.from_pretrained(name)
    except (OSError, ValueError, ImportError) as e:
        raise LmforgeError(
            f"back_translate cannot load translation model '{name}' ({type(e).__name__}): "
            f"a seq2seq translation model must be available locally or through the "
            f"Hugging Face hub"
        ) from e
    if tokenizer.pad_token is None:
        # Batches need padding; the tokenizer here is a private copy, so this is local.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model.to(device).eval()


def _translate(
    texts: list[str],
    translator: tuple[PreTrainedTokenizerBase, PreTrainedModel],
    batch_size: int,
    max_new_tokens: int,
) -> list[str]:
    import torch

    tokenizer, model = translator
    out: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
            ).to(model.device)
            generated = model.generate(
                **batch, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens
            )
            out.extend(
                t.strip() for t in tokenizer.batch_decode(generated, skip_special_tokens=True)
            )
    return out


# ---- perturbations for robustness checks ----


def perturb(texts: list[str], kind: str, rate: float, seed: int = 0) -> list[str]:
    """Degrade texts to measure robustness; labels are never touched.

    Kinds:
        "typos": each word of 3+ letters gets, with probability ``rate``, one typo:
            two adjacent letters swapped, a letter dropped, a letter doubled, or a letter
            replaced by a QWERTY-keyboard neighbour. Whitespace is kept as is.
        "casing": each text, with probability ``rate``, is lower-cased, upper-cased, or
            has each word's case flipped at random (the style drawn per text, and always
            one that changes the text when the text has letters).
        "word_drop": each word is dropped with probability ``rate``, never all of them;
            words are re-joined with single spaces.

    Args:
        texts: The texts, e.g. a validation split.
        kind: One of ``PERTURBATIONS``.
        rate: The share of words (typos, word_drop) or texts (casing) changed, in [0, 1].
        seed: Seed of the random generator.

    Returns:
        One perturbed text per input text, in order.
    """
    if kind not in PERTURBATIONS:
        raise LmforgeError(
            f"perturbation kind '{kind}' is unknown{did_you_mean(kind, PERTURBATIONS)}: "
            f"use one of {', '.join(PERTURBATIONS)}"
        )
    if not 0 <= rate <= 1:
        raise LmforgeError(f"perturbation rate is {rate}: use a share in [0, 1], e.g. 0.1")
    rng = random.Random(seed)
    if kind == "typos":
        return [re.sub(r"\S+", lambda m: _maybe_typo(m.group(0), rate, rng), t) for t in texts]
    if kind == "casing":
        return [_recase(t, rng) if rng.random() < rate else t for t in texts]
    return [" ".join(random_deletion(t.split(), rate, rng)) for t in texts]


def _maybe_typo(word: str, rate: float, rng: random.Random) -> str:
    letters = [i for i, ch in enumerate(word) if ch.isalpha()]
    if len(letters) < 3 or rng.random() >= rate:
        return word
    return typo(word, rng)


def typo(word: str, rng: random.Random) -> str:
    """One random typo on the letters of ``word``; punctuation and digits are left alone.

    Always changes a word that has letters: a swap of two equal letters, or a
    keyboard replacement of a letter with no QWERTY neighbour, becomes a dropped letter.
    """
    letters = [i for i, ch in enumerate(word) if ch.isalpha()]
    if not letters:
        return word
    chars = list(word)
    kind = ("swap", "drop", "double", "keyboard")[rng.randrange(4)]
    if kind == "swap":
        pairs = [
            i
            for i in letters
            if i + 1 < len(chars) and chars[i + 1].isalpha() and chars[i] != chars[i + 1]
        ]
        if pairs:
            i = pairs[rng.randrange(len(pairs))]
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
            return "".join(chars)
    i = letters[rng.randrange(len(letters))]
    if kind == "double":
        chars.insert(i, chars[i])
    elif kind == "keyboard" and chars[i].lower() in QWERTY_NEIGHBOURS:
        near = QWERTY_NEIGHBOURS[chars[i].lower()]
        new = near[rng.randrange(len(near))]
        chars[i] = new.upper() if chars[i].isupper() else new
    else:
        del chars[i]
    return "".join(chars)


def _recase(text: str, rng: random.Random) -> str:
    styles = ["lower", "upper", "flip"]
    rng.shuffle(styles)
    for style in styles:
        if style == "lower":
            new = text.lower()
        elif style == "upper":
            new = text.upper()
        else:
            new = _flip_words(text, rng)
        if new != text:
            return new
    return text


def _flip_words(text: str, rng: random.Random) -> str:
    """Swap the case of each word with probability 1/2 (of one word if none was drawn)."""
    spans = [m.span() for m in re.finditer(r"\S+", text) if m.group(0).swapcase() != m.group(0)]
    if not spans:
        return text
    flipped = [s for s in spans if rng.random() < 0.5] or [spans[rng.randrange(len(spans))]]
    chars = list(text)
    for start, end in flipped:
        chars[start:end] = text[start:end].swapcase()
    return "".join(chars)
