"""NER data: CoNLL/JSONL token files recognized by content, round trips, tag-scheme repairs."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.data.token_files import (
    TokenExample,
    check_scheme,
    read_token_file,
    write_conll,
    write_jsonl,
)
from lmforge.errors import LmforgeError

pytestmark = pytest.mark.unit

WNUT = Path(__file__).resolve().parents[3] / "shared" / "data" / "wnut17"
EXAMPLES = [
    TokenExample(
        ["Anna", "flew", "to", "New", "York"], ["B-person", "O", "O", "B-location", "I-location"]
    ),
    TokenExample(["héllo", "@world"], ["O", "O"]),
]


@pytest.mark.parametrize("writer", [write_conll, write_jsonl])
def test_token_files_round_trip_whatever_their_name(tmp_path, writer):
    path = tmp_path / "emerging.test.annotated"  # no telling extension: the content decides
    writer(EXAMPLES, path)
    assert read_token_file(path) == EXAMPLES


def test_conll_variants(tmp_path):
    path = tmp_path / "conll2003.txt"
    path.write_text(
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\n"
        "Peter NNP B-NP B-PER\r\nBlackburn NNP I-NP I-PER\r\n",
        encoding="utf-8",
    )
    assert read_token_file(path) == [
        TokenExample(["EU", "rejects"], ["B-ORG", "O"]),
        TokenExample(["Peter", "Blackburn"], ["B-PER", "I-PER"]),
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        ("Anna\tB-person\nflew\n", "line 2 has no tag"),
        ('{"tokens": ["a", "b"], "tags": ["O"]}\n', "line 1 has 2 tokens but 1 tags"),
        (
            '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": "a b"}\n',
            'line 2 needs "tokens" and "tags" lists',
        ),
        ("-DOCSTART- O\n\n", "has no sentences"),
        ("", "is empty"),
    ],
)
def test_bad_token_files_fail_in_one_line(tmp_path, content, message):
    path = tmp_path / "bad.conll"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(LmforgeError, match=message):
        read_token_file(path)


def test_invalid_bio_transitions_are_repaired_and_counted_or_rejected():
    broken = [
        TokenExample(["a", "b", "c", "d"], ["I-person", "I-person", "I-location", "O"]),
        TokenExample(["e"], ["O"]),
    ]
    fixed, repaired = check_scheme(broken, "bio")
    assert fixed[0].tags == ["B-person", "I-person", "B-location", "O"] and repaired == 2
    with pytest.raises(LmforgeError, match="sentence 1 has 'I-person' without a preceding entity"):
        check_scheme(broken, "bio", repair=False)
    with pytest.raises(LmforgeError, match="a BIOES tag; set the tag scheme to bioes"):
        check_scheme([TokenExample(["a"], ["S-person"])], "bio")


def test_bioes_transitions():
    good = [TokenExample(["a", "b", "c", "d"], ["B-x", "I-x", "E-x", "S-y"])]
    assert check_scheme(good, "bioes") == (good, 0)
    fixed, repaired = check_scheme([TokenExample(["a", "b"], ["O", "E-x"])], "bioes")
    assert fixed[0].tags == ["O", "S-x"] and repaired == 1


@pytest.mark.skipif(not WNUT.is_dir(), reason="../shared/data/wnut17 is absent")
def test_wnut17_files_read_with_their_published_counts():
    train = read_token_file(WNUT / "wnut17train.conll")
    dev = read_token_file(WNUT / "emerging.dev.conll")
    assert (len(train), sum(len(e.tokens) for e in train)) == (3394, 62730)
    assert (len(dev), sum(len(e.tokens) for e in dev)) == (1009, 15733)
    tags = {t for e in train for t in e.tags}
    assert len(tags) == 13 and "B-creative-work" in tags
    assert check_scheme(train, "bio")[1] == 0  # the official files are valid BIO
