"""Property tests (hypothesis) for config loading, readers, cleaning and splits.

Every user error must be an LmforgeError with a one-line message; anything else is a bug.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lmforge.config import RunConfig, load_config
from lmforge.data.cleaning import clean_examples, normalize_text
from lmforge.data.readers import ReaderOptions, read_examples
from lmforge.data.splits import stratified_split
from lmforge.errors import LmforgeError

pytestmark = pytest.mark.unit

# The default suite tries 50 inputs per property; the fuzzing profile tries 2000:
#   HYPOTHESIS_PROFILE=fuzz .venv/bin/python -m pytest tests/test_properties.py
settings.register_profile("ci", max_examples=50)
settings.register_profile("fuzz", max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
SETTINGS = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# ----------------------------------------------------------------------------- helpers


# ----------------------------------------------------------------------------- (a) load_config

SECTION_KEYS = {
    "model": list(RunConfig.model_fields["model"].annotation.model_fields),
    "data": list(RunConfig.model_fields["data"].annotation.model_fields),
    "training": list(RunConfig.model_fields["training"].annotation.model_fields),
    "method": ["name", "r", "alpha", "dropout", "target_modules", "save_merged"],
}
ALL_KEYS = sorted(
    {
        *RunConfig.model_fields,
        *(k for keys in SECTION_KEYS.values() for k in keys),
        "learnin_rate",
        "trainig",
    }
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(
        [
            "lora",
            "full",
            "no",
            "steps",
            "epoch",
            "macro_f1",
            "cpu",
            "linear",
            "auto",
            "sequence_classification",
            "default",
            "0.5",
            "abc",
        ]
    ),
)
keys = st.one_of(st.sampled_from(ALL_KEYS), st.text(max_size=12))
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=12,
)
sections = st.one_of(values, st.dictionaries(keys, values, max_size=5))
config_dicts = st.one_of(
    st.dictionaries(keys, values, max_size=6),
    st.fixed_dictionaries(
        {},
        optional={name: sections for name in ("model", "data", "training", "method")}
        | {"task": values, "name": values, "output_dir": values},
    ),
)


def check_load(source: Any, data: Any) -> None:
    try:
        cfg = load_config(source)
    except LmforgeError as err:
        event("LmforgeError")
        message = str(err)
        assert message
        assert "\n" not in message, message
    else:
        event("valid")
        assert isinstance(cfg, RunConfig)


@SETTINGS
@given(data=config_dicts)
def test_load_config_on_arbitrary_dicts_only_raises_lmforge_error(data):
    check_load(data, data)


@SETTINGS
@given(data=config_dicts)
def test_load_config_on_arbitrary_yaml_files_only_raises_lmforge_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        check_load(path, data)


@SETTINGS
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.lists(
            st.sampled_from(
                [
                    "training:",
                    "  epochs: 3",
                    "  eval_strategy: no",
                    "data:",
                    "  - x",
                    "method: lora",
                    "  r: 4",
                    "model: a/b",
                    "{",
                    "]",
                    "'",
                    '"',
                    ":",
                    "- ",
                    "\t",
                    "task: x",
                    "&a",
                    "*a",
                    "!!python/object:os.system",
                    "? [1]",
                    "  learning_rate: 1e-3",
                    "#",
                ]
            ),
            max_size=10,
        ).map("\n".join),
    )
)
def test_load_config_on_arbitrary_yaml_text_only_raises_lmforge_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text, encoding="utf-8")
        check_load(path, text)  # a one-line LmforgeError or a valid config, nothing else


@SETTINGS
@given(bytes_=st.binary(max_size=200))
def test_load_config_on_arbitrary_bytes_only_raises_lmforge_error(bytes_):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_bytes(bytes_)
        check_load(path, bytes_)  # a one-line LmforgeError or a valid config, nothing else


valid_configs = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(
            st.sampled_from(["default", "a/b", "/models/x"]),
            st.fixed_dictionaries(
                {"name_or_path": st.text(min_size=1, max_size=10)},
                optional={
                    "revision": st.none() | st.text(max_size=5),
                    "trust_remote_code": st.booleans(),
                },
            ),
        ),
        "method": st.one_of(
            st.sampled_from(["full", "lora"]),
            st.fixed_dictionaries(
                {"name": st.just("lora")},
                optional={
                    "r": st.integers(1, 1024),
                    "alpha": st.integers(1, 64),
                    "dropout": st.floats(0, 0.99),
                    "target_modules": st.none()
                    | st.lists(st.sampled_from(["query", "key", "value"]), max_size=3),
                    "save_merged": st.booleans(),
                },
            ),
        ),
        "data": st.fixed_dictionaries(
            {},
            optional={
                "train_file": st.text(alphabet="abc./_", min_size=1, max_size=10),
                "format": st.sampled_from(["auto", "csv", "tsv", "jsonl", "parquet", "delimited"]),
                "delimiter": st.sampled_from([",", "\t", "@", "::"]),
                "header": st.booleans(),
                "encoding": st.sampled_from(["utf-8", "latin-1"]),
                "validation_size": st.floats(0, 0.44),
                "test_size": st.floats(0, 0.44),
                "max_length": st.integers(8, 8192),
                "labels": st.lists(st.text(max_size=5), max_size=4),
            },
        ),
        "training": st.fixed_dictionaries(
            {},
            optional={
                "epochs": st.integers(1, 10_000),
                "batch_size": st.integers(1, 65_536),
                "learning_rate": st.floats(1e-9, 1.0),
                "weight_decay": st.floats(0, 1),
                "scheduler": st.sampled_from(["linear", "cosine", "constant"]),
                "precision": st.sampled_from(["auto", "bf16", "fp16", "fp32"]),
                "eval_strategy": st.sampled_from(["epoch", "no", False]),
                "seed": st.integers(0, 2**31),
                "metric": st.sampled_from(["macro_f1", "accuracy", "weighted_f1", "loss"]),
                "early_stopping_patience": st.none() | st.integers(1, 10),
            },
        ),
        "name": st.none() | st.text(max_size=10),
    },
)


@SETTINGS
@given(data=valid_configs)
def test_load_config_accepts_valid_configs(data):
    cfg = load_config(data)
    if "training" in data:
        for key, value in data["training"].items():
            expected = "no" if value is False else value
            assert getattr(cfg.training, key) == expected
    if "data" in data:
        for key, value in data["data"].items():
            assert getattr(cfg.data, key) == value
    method = data.get("method", "full")
    assert cfg.method.name == (method if isinstance(method, str) else method["name"])


# ----------------------------------------------------------------------------- (b) read_examples

CELL = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
NOISE = st.text(alphabet=',\t@"{}[]:\\ \n\rtexlabn0123é\x00', max_size=15)


def _line(sep: str) -> st.SearchStrategy[str]:
    return st.one_of(NOISE, st.lists(st.one_of(CELL, NOISE), min_size=1, max_size=3).map(sep.join))


def _json_line() -> st.SearchStrategy[str]:
    value = st.one_of(
        st.none(), st.integers(), st.floats(), CELL, st.lists(st.integers(), max_size=2)
    )
    record = st.fixed_dictionaries({"text": value}, optional={"label": value, "other": value})
    loose = st.dictionaries(st.sampled_from(["text", "label", "other"]), value, max_size=3)
    return st.one_of(
        record.map(json.dumps),
        record.map(json.dumps),
        record.map(json.dumps),
        st.just(""),
        loose.map(json.dumps),
        NOISE,
        st.lists(CELL, max_size=2).map(json.dumps),
    )


def _document(
    header: st.SearchStrategy[str], line: st.SearchStrategy[str]
) -> st.SearchStrategy[bytes]:
    structured = st.tuples(
        header,
        st.lists(line, max_size=6),
        st.sampled_from(["\n", "\r\n"]),
        st.sampled_from(["", "\ufeff"]),
    ).map(lambda t: (t[3] + t[2].join([t[0], *t[1]])).encode("utf-8"))
    return st.one_of(
        st.binary(max_size=120), st.text(max_size=120).map(lambda s: s.encode("utf-8")), structured
    )


FILE_KINDS = {
    "csv": (
        "d.csv",
        ReaderOptions(),
        _document(
            st.sampled_from(
                [
                    "text,label",
                    "label,text",
                    "text",
                    "x,y",
                    "",
                    "text,label, text",
                    '"text",label',
                    '"te""xt,label',
                ]
            ),
            _line(","),
        ),
    ),
    "csv-latin1": (
        "d.csv",
        ReaderOptions(encoding="latin-1"),
        _document(st.sampled_from(["text,label", "text"]), _line(",")),
    ),
    "csv-huge-field": (
        "d.csv",
        ReaderOptions(),
        st.tuples(st.integers(1, 300_000), st.sampled_from('x"é')).map(
            lambda t: ("text,label\n" + t[1] * t[0] + ",a\n").encode("utf-8")
        ),
    ),
    "parquet": ("d.parquet", ReaderOptions(), st.binary(max_size=200)),
    "tsv": (
        "d.tsv",
        ReaderOptions(),
        _document(st.sampled_from(["text\tlabel", "text", "a\tb\tc", ""]), _line("\t")),
    ),
    "jsonl": (
        "d.jsonl",
        ReaderOptions(),
        st.one_of(
            _document(_json_line(), _json_line()),
            st.lists(_json_line(), max_size=4).map(
                lambda lines: ("[" + ", ".join(filter(None, lines)) + "]").encode("utf-8")
            ),
        ),
    ),
    "delimited": (
        "d.txt",
        ReaderOptions(delimiter="@", header=False),
        _document(_line("@"), _line("@")),
    ),
}


@pytest.mark.parametrize("kind", sorted(FILE_KINDS))
@SETTINGS
@given(data=st.data())
def test_read_examples_returns_text_frame_or_lmforge_error(kind, data):
    name, opts, strategy = FILE_KINDS[kind]
    content = data.draw(strategy, label="content")
    require_label = data.draw(st.booleans(), label="require_label")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(content)
        try:
            frame = read_examples(path, opts, require_label=require_label)
        except LmforgeError as err:
            event(f"error: {str(err).replace(str(path), '')[:25]}")
            message = str(err).replace(str(path), "")
            assert message
            assert "\n" not in message, message
            return
    event("read a frame")
    assert isinstance(frame, pd.DataFrame)
    assert "text" in frame.columns
    assert set(frame.columns) <= {"text", "label"}
    if require_label:
        assert "label" in frame.columns
    assert len(frame) > 0
    for column in frame.columns:
        for value in frame[column]:
            assert value is None or isinstance(value, str)


# ----------------------------------------------------------------------------- (c) clean_examples

texts = st.one_of(st.none(), st.text(alphabet="ab \t\n\u00a0e\u0301\u00e9", max_size=6))
labels_with_missing = st.one_of(st.none(), st.sampled_from(["x", "y", " x", "x ", "", "  "]))


def _frame(pairs: list[tuple[Any, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "text": pd.Series([p[0] for p in pairs], dtype=object),
            "label": pd.Series([p[1] for p in pairs], dtype=object),
        }
    )


@SETTINGS
@given(pairs=st.lists(st.tuples(texts, labels_with_missing), max_size=25), normalize=st.booleans())
def test_clean_examples_accounts_for_every_row(pairs, normalize):
    frame = _frame(pairs)
    out, report = clean_examples(frame, normalize_whitespace=normalize)
    assert report.rows_read == len(pairs)
    assert (
        report.rows_kept
        + report.empty_text
        + report.missing_label
        + report.exact_duplicates
        + report.conflicting_labels
    ) == report.rows_read
    assert report.rows_kept == len(out) == report.rows_read - report.dropped
    assert all(isinstance(t, str) and t.strip() for t in out["text"])
    assert not out["text"].duplicated().any()
    assert list(out.index) == list(range(len(out)))
    if normalize:
        assert all(normalize_text(t) == t for t in out["text"])


@SETTINGS
@given(
    pairs=st.lists(
        st.tuples(texts, st.sampled_from(["x", "y", " x", "x ", "", "  ", None])), max_size=25
    )
)
def test_clean_examples_kept_labels_are_present_and_stripped(pairs):
    out, report = clean_examples(_frame(pairs))
    assert all(isinstance(v, str) and v and v == v.strip() for v in out["label"])
    kept = set(zip(out["text"], out["label"], strict=True))
    source = {(normalize_text(t), (v or "").strip()) for t, v in pairs if t is not None}
    assert kept <= source


@SETTINGS
@given(pairs=st.lists(st.tuples(texts, labels_with_missing), max_size=25))
def test_clean_examples_without_dedup_only_drops_empty_and_missing(pairs):
    out, report = clean_examples(_frame(pairs), drop_duplicates=False)
    assert report.exact_duplicates == report.conflicting_labels == 0
    assert report.rows_kept + report.empty_text + report.missing_label == report.rows_read


# ----------------------------------------------------------------------------- (d) stratified_split

fractions_strategy = st.one_of(
    st.fixed_dictionaries({"validation": st.floats(0, 0.45)}),
    st.fixed_dictionaries({"validation": st.floats(0, 0.45), "test": st.floats(0, 0.45)}),
    st.fixed_dictionaries({"test": st.floats(0, 0.45)}),
)


@SETTINGS
@given(
    labels=st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), max_size=60),
    fractions=fractions_strategy,
    seed=st.integers(0, 2**32 - 1),
)
def test_stratified_split_partitions_rows_exactly(labels, fractions, seed):
    frame = pd.DataFrame({"text": [f"row {i}" for i in range(len(labels))], "label": labels})
    parts = stratified_split(frame, fractions, seed)
    assert set(parts) == {"train", *fractions}
    seen = [t for part in parts.values() for t in part["text"]]
    assert sorted(seen) == sorted(frame["text"])  # nothing lost, nothing duplicated
    original = dict(zip(frame["text"], frame["label"], strict=True))
    for part in parts.values():
        assert list(part.index) == list(range(len(part)))
        assert all(original[t] == lab for t, lab in zip(part["text"], part["label"], strict=True))
    # every label keeps a row in train; the cut per label follows the fraction
    for label, n in frame["label"].value_counts().items():
        assert (parts["train"]["label"] == label).sum() >= 1
        for name, share in fractions.items():
            got = int((parts[name]["label"] == label).sum())
            assert got <= max(round(n * share), 1)
            if n >= 2 * len(fractions) + 1 and share > 0:
                assert got >= 1
    # deterministic
    again = stratified_split(frame, fractions, seed)
    for name in parts:
        pd.testing.assert_frame_equal(parts[name], again[name])
