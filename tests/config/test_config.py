"""Tests for lmforge.config: YAML reading, --set overrides, validation and error messages."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest
import yaml

from lmforge.config import (
    DataConfig,
    RunConfig,
    TrainingConfig,
    apply_overrides,
    load_config,
    read_yaml,
    save_config,
)
from lmforge.config.errors import format_validation_error
from lmforge.errors import LmforgeError, did_you_mean
from lmforge.methods.full import FullOptions
from lmforge.methods.peft_methods import LoraOptions

pytestmark = pytest.mark.unit

# Run configs (the applications' configs, examples/monitor*.yaml, are tested with their app).
EXAMPLES = sorted(
    path
    for path in glob.glob(str(Path(__file__).resolve().parents[2] / "examples" / "*.yaml"))
    if not Path(path).name.startswith("monitor")
)

FIVE_LINES = """\
data:
  train_file: train.csv
training:
  epochs: 2
  learning_rate: 1.0e-4
"""


# ----------------------------------------------------------------------------- helpers


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(source, overrides=None) -> str:
    """The message of the LmforgeError that ``load_config`` raises; checks it is one line."""
    with pytest.raises(LmforgeError) as info:
        load_config(source, overrides)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, f"error is not a single line: {message!r}"
    return message


# ----------------------------------------------------------------------------- valid configs


def test_five_line_config_validates_and_gets_defaults(tmp_path):
    cfg = load_config(write(tmp_path, FIVE_LINES))
    assert isinstance(cfg, RunConfig)
    assert cfg.task == "sequence_classification"
    assert cfg.model.name_or_path == "default"
    assert cfg.model.trust_remote_code is False
    assert cfg.data.train_file == "train.csv"  # exists nowhere: kept as written
    assert cfg.data.validation_size == pytest.approx(0.1)
    assert cfg.data.max_length == 128
    assert cfg.data.format == "auto"
    assert cfg.training.epochs == 2
    assert cfg.training.learning_rate == pytest.approx(1e-4)
    assert cfg.training.batch_size == 32
    assert cfg.training.eval_strategy == "epoch"
    assert cfg.training.metric == "macro_f1"
    assert cfg.method.name == "full"
    assert cfg.output_dir is None


def test_empty_mapping_is_all_defaults():
    cfg = load_config({})
    assert cfg == RunConfig()
    assert cfg.data.train_file is None


def test_model_shorthand_string(tmp_path):
    cfg = load_config(write(tmp_path, "model: some/path\ndata: {train_file: t.csv}\n"))
    assert cfg.model.name_or_path == "some/path"
    assert cfg.model.revision is None


def test_model_full_mapping():
    cfg = load_config({"model": {"name_or_path": "org/name", "revision": "v1"}})
    assert (cfg.model.name_or_path, cfg.model.revision) == ("org/name", "v1")


def test_method_shorthand_string():
    cfg = load_config({"method": "lora"})
    assert cfg.method.name == "lora"
    assert isinstance(cfg.method.options, LoraOptions)
    assert cfg.method.options.r == 8  # default
    assert cfg.method.options.alpha == 16


def test_method_mapping_with_options():
    cfg = load_config({"method": {"name": "lora", "r": 4, "target_modules": ["query", "value"]}})
    assert cfg.method.name == "lora"
    assert cfg.method.options.r == 4
    assert cfg.method.options.target_modules == ["query", "value"]
    assert cfg.model_dump()["method"] == {
        "name": "lora",
        "r": 4,
        "alpha": 16,
        "dropout": 0.1,
        "target_modules": ["query", "value"],
        "save_merged": True,
    }


def test_method_mapping_without_name_is_full():
    cfg = load_config({"method": {}})
    assert cfg.method.name == "full"
    assert isinstance(cfg.method.options, FullOptions)


def test_eval_strategy_no_in_yaml_parses_as_false_but_works(tmp_path):
    assert yaml.safe_load("x: no") == {"x": False}  # the YAML 1.1 trap this guards against
    cfg = load_config(write(tmp_path, "training:\n  eval_strategy: no\n"))
    assert cfg.training.eval_strategy == "no"


def test_eval_strategy_steps_with_eval_steps():
    cfg = load_config({"training": {"eval_strategy": "steps", "eval_steps": 50}})
    assert (cfg.training.eval_strategy, cfg.training.eval_steps) == ("steps", 50)


@pytest.mark.parametrize("metric", ["macro_f1", "accuracy", "weighted_f1", "loss"])
def test_every_reported_metric_is_accepted(metric):
    assert load_config({"training": {"metric": metric}}).training.metric == metric


def test_config_file_is_not_mutated_in_memory_by_loading(tmp_path):
    path = write(tmp_path, FIVE_LINES)
    before = path.read_text()
    load_config(path, ["training.epochs=9"])
    assert path.read_text() == before


# ----------------------------------------------------------------------------- unknown keys


def test_unknown_top_level_key(tmp_path):
    msg = config_error(write(tmp_path, "trainig:\n  epochs: 2\n"))
    assert "config.yaml" in msg
    assert "unknown key 'trainig'" in msg
    assert "did you mean 'training'" in msg
    for key in ("data", "method", "model", "name", "output_dir", "task", "training"):
        assert key in msg


def test_unknown_nested_key_names_dotted_key_suggestion_and_valid_keys(tmp_path):
    msg = config_error(write(tmp_path, "training:\n  learnin_rate: 0.001\n"))
    assert "training.learnin_rate" in msg
    assert "did you mean 'learning_rate'" in msg
    assert "valid keys in 'training'" in msg
    for key in TrainingConfig.model_fields:
        assert key in msg


def test_unknown_data_key_lists_data_keys():
    msg = config_error({"data": {"train_fil": "x.csv"}})
    assert "data.train_fil" in msg
    assert "did you mean 'train_file'" in msg
    for key in DataConfig.model_fields:
        assert key in msg


def test_unknown_key_without_close_match_has_no_suggestion():
    msg = config_error({"zzzzzz": 1})
    assert "unknown key 'zzzzzz'" in msg
    assert "did you mean" not in msg


def test_several_problems_are_joined_on_one_line():
    msg = config_error({"training": {"batch_size": "abc", "epochs": 0}})
    assert "training.batch_size" in msg and "training.epochs" in msg
    assert "; " in msg


# --------------------------------------------------------------------------- wrong types and ranges


def test_wrong_type_names_field_and_value(tmp_path):
    msg = config_error(write(tmp_path, "training:\n  batch_size: abc\n"))
    assert "training.batch_size" in msg
    assert "whole number" in msg and "'auto'" in msg
    assert "'abc'" in msg


def test_negative_learning_rate_names_field(tmp_path):
    msg = config_error(write(tmp_path, "training:\n  learning_rate: -1\n"))
    assert "training.learning_rate" in msg
    assert "greater than 0" in msg


def test_validation_size_out_of_range_names_field(tmp_path):
    msg = config_error(write(tmp_path, "data:\n  validation_size: 1.5\n"))
    assert "data.validation_size" in msg
    assert "1.5" in msg


def test_validation_plus_test_size_too_large():
    msg = config_error({"data": {"validation_size": 0.5, "test_size": 0.45}})
    assert "validation_size + data.test_size" in msg


def test_train_file_and_hf_dataset_are_exclusive():
    msg = config_error({"data": {"train_file": "a.csv", "hf_dataset": "imdb"}})
    assert "not both" in msg


def test_literal_choice_is_listed():
    msg = config_error({"training": {"scheduler": "cosin"}})
    assert "training.scheduler" in msg
    assert "'cosine'" in msg


def test_section_given_as_scalar():
    msg = config_error({"training": 3})
    assert "training" in msg


def test_unknown_task_suggests():
    msg = config_error({"task": "sequence_clasification"})
    assert "unknown task 'sequence_clasification'" in msg
    assert "did you mean 'sequence_classification'" in msg


# ----------------------------------------------------------------------------- methods


def test_unknown_method_name_suggests(tmp_path):
    msg = config_error(write(tmp_path, "method: lroa\n"))
    assert "unknown method 'lroa'" in msg
    assert "did you mean 'lora'" in msg
    assert "full, ia3, lora" in msg


def test_unknown_method_option_suggests():
    msg = config_error({"method": {"name": "lora", "rr": 4}})
    assert "method.rr" in msg
    assert "did you mean 'r'" in msg
    for key in LoraOptions.model_fields:
        assert key in msg


def test_full_method_rejects_options():
    msg = config_error({"method": {"name": "full", "r": 4}})
    assert "method.r" in msg


def test_method_option_out_of_range():
    msg = config_error({"method": {"name": "lora", "r": 0}})
    assert "method.r" in msg


def test_method_of_wrong_type():
    msg = config_error({"method": 3})
    assert "method must be a name" in msg


@pytest.mark.parametrize("name", [["lora"], {"a": 1}])
def test_unhashable_method_name_is_a_user_error(name):
    config_error({"method": {"name": name}})


# ---------------------------------------------------------------------------- evaluation and metric


def test_eval_strategy_steps_without_eval_steps_fails():
    msg = config_error({"training": {"eval_strategy": "steps"}})
    assert "training.eval_steps" in msg


def test_eval_strategy_yes_is_rejected(tmp_path):
    msg = config_error(write(tmp_path, "training:\n  eval_strategy: yes\n"))
    assert "training.eval_strategy" in msg


def test_metric_not_reported_by_task_fails():
    msg = config_error({"training": {"metric": "macro_f2"}})
    assert "training.metric 'macro_f2'" in msg
    assert "did you mean 'macro_f1'" in msg
    assert "macro_f1, accuracy, weighted_f1, loss" in msg


# ----------------------------------------------------------------------------- --set overrides


def test_override_int_is_parsed():
    cfg = load_config({"training": {"epochs": 2}}, ["training.epochs=5"])
    assert cfg.training.epochs == 5
    assert isinstance(cfg.training.epochs, int)


def test_override_values_are_yaml():
    data = apply_overrides(
        {},
        [
            "a.int=5",
            "a.float=1e-3",
            "a.bool=true",
            "a.list=[x, y]",
            "a.str=hello",
            "a.none=",
            "a.no=no",
            "a.eq=x=y",
        ],
    )
    assert data == {
        "a": {
            "int": 5,
            "float": "1e-3",
            "bool": True,
            "list": ["x", "y"],
            "str": "hello",
            "none": None,
            "no": "no",
            "eq": "x=y",
        }
    }  # YAML 1.2 booleans


def test_override_learning_rate_in_scientific_notation():
    cfg = load_config({}, ["training.learning_rate=1.0e-3"])
    assert cfg.training.learning_rate == pytest.approx(1e-3)


def test_override_model_string_replaces_mapping():
    cfg = load_config({"model": {"name_or_path": "a", "revision": "main"}}, ["model=other"])
    assert cfg.model.name_or_path == "other"
    assert cfg.model.revision is None


def test_override_nested_key_after_model_shorthand():
    cfg = load_config({"model": "a/b"}, ["model.revision=v2"])
    assert (cfg.model.name_or_path, cfg.model.revision) == ("a/b", "v2")


def test_override_method_option_after_method_shorthand():
    cfg = load_config({}, ["method=lora", "method.r=16"])
    assert cfg.method.name == "lora"
    assert cfg.method.options.r == 16


def test_override_method_option_on_yaml_shorthand(tmp_path):
    cfg = load_config(write(tmp_path, "method: lora\n"), ["method.alpha=32"])
    assert (cfg.method.name, cfg.method.options.alpha) == ("lora", 32)


def test_override_creates_new_nested_section():
    data = apply_overrides({}, ["training.epochs=7", "data.train_file=x.csv"])
    assert data == {"training": {"epochs": 7}, "data": {"train_file": "x.csv"}}
    cfg = load_config({}, ["training.epochs=7", "data.validation_size=0.2"])
    assert cfg.training.epochs == 7
    assert cfg.data.validation_size == pytest.approx(0.2)


def test_override_deep_new_section():
    assert apply_overrides({"x": 1}, ["a.b.c=1"]) == {"x": 1, "a": {"b": {"c": 1}}}


def test_override_unknown_key_is_validated():
    msg = config_error({}, ["training.epoch=5"])
    assert "training.epoch" in msg
    assert "did you mean 'epochs'" in msg


@pytest.mark.parametrize("item", ["foo", "=5", " =5", ""])
def test_malformed_override(item):
    with pytest.raises(LmforgeError) as info:
        apply_overrides({}, [item])
    msg = str(info.value)
    assert "\n" not in msg
    assert "expected KEY=VALUE" in msg
    assert repr(item) in msg


def test_malformed_override_through_load_config():
    msg = config_error({}, ["foo"])
    assert "--set 'foo'" in msg


def test_override_through_a_value_fails():
    msg = config_error({"training": {"epochs": 3}}, ["training.epochs.x=1"])
    assert "'epochs' is a value, not a section" in msg


def test_override_invalid_yaml_value_is_kept_as_string():
    assert apply_overrides({}, ["name=[unclosed"]) == {"name": "[unclosed"}


def test_override_with_an_impossible_date_is_kept_as_string():
    assert apply_overrides({}, ["name=2024-02-30"]) == {"name": "2024-02-30"}


@pytest.mark.parametrize(
    "text", ["name: 2024-02-30\n", "training:\n  seed: !!int 0xZZ\n", "name: !!float abc\n"]
)
def test_yaml_constructor_errors_are_user_errors(tmp_path, text):
    config_error(write(tmp_path, text))


def test_overrides_do_not_mutate_the_callers_dict():
    source = {"training": {"epochs": 1}}
    cfg = load_config(source, ["training.epochs=5"])
    assert cfg.training.epochs == 5
    assert source == {"training": {"epochs": 1}}


# ----------------------------------------------------------------------------- reading YAML files


def test_invalid_yaml_reports_line(tmp_path):
    path = write(tmp_path, "data:\n  train_file: a.csv\n   label_column: x\n")
    msg = config_error(path)
    assert str(path) in msg
    assert "invalid YAML" in msg
    assert "line 3" in msg


def test_invalid_yaml_unclosed_bracket(tmp_path):
    msg = config_error(write(tmp_path, "training:\n  epochs: 3\n  batch_size: [1\n"))
    assert "invalid YAML" in msg
    assert "line " in msg


def test_empty_file(tmp_path):
    msg = config_error(write(tmp_path, ""))
    assert "is empty" in msg


def test_comments_only_file_is_empty(tmp_path):
    msg = config_error(write(tmp_path, "# nothing here\n\n"))
    assert "is empty" in msg


def test_yaml_list_is_rejected(tmp_path):
    msg = config_error(write(tmp_path, "- a\n- b\n"))
    assert "must be a mapping" in msg
    assert "list" in msg


def test_yaml_scalar_is_rejected(tmp_path):
    msg = config_error(write(tmp_path, "42\n"))
    assert "must be a mapping" in msg and "int" in msg


def test_missing_config_file(tmp_path):
    msg = config_error(tmp_path / "nope.yaml")
    assert "nope.yaml" in msg
    assert "not found" in msg


def test_directory_as_config(tmp_path):
    msg = config_error(tmp_path)
    assert "not found" in msg


def test_non_utf8_config(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    msg = config_error(path)
    assert "not UTF-8" in msg


def test_read_yaml_returns_mapping(tmp_path):
    assert read_yaml(write(tmp_path, FIVE_LINES)) == {
        "data": {"train_file": "train.csv"},
        "training": {"epochs": 2, "learning_rate": 1e-4},
    }


def test_yaml_python_tags_are_not_executed(tmp_path):
    msg = config_error(write(tmp_path, "name: !!python/object/apply:os.system ['true']\n"))
    assert "invalid YAML" in msg


# --------------------------------------------------------------------------- save / load round trip


@pytest.mark.parametrize(
    "extra",
    [
        {"method": "full"},
        {
            "method": {
                "name": "lora",
                "r": 4,
                "alpha": 8,
                "dropout": 0.0,
                "target_modules": ["query"],
                "save_merged": False,
            }
        },
        {
            "method": "lora",
            "training": {"eval_strategy": "no", "scheduler": "cosine", "max_steps": 10},
            "data": {
                "delimiter": "\t",
                "labels": ["neg", "pos"],
                "header": False,
                "encoding": "latin-1",
            },
        },
        {
            "training": {"eval_strategy": "steps", "eval_steps": 3, "metric": "accuracy"},
            "name": "x",
            "output_dir": "/tmp/somewhere",
            "model": {"name_or_path": "a/b", "revision": "main"},
            "method": {"name": "full"},
        },
    ],
)
def test_save_then_load_round_trips(tmp_path, extra):
    source = {"data": {"train_file": str(tmp_path / "absent.csv")}}
    for key, value in extra.items():
        source[key] = {**source.get(key, {}), **value} if isinstance(value, dict) else value
    cfg = load_config(source)
    out = tmp_path / "resolved.yaml"
    save_config(cfg, out)
    again = load_config(out)
    assert again == cfg
    assert again.model_dump() == cfg.model_dump()
    assert again.method.options == cfg.method.options
    # every default is written out
    saved = yaml.safe_load(out.read_text())
    assert set(saved) == set(RunConfig.model_fields)
    assert set(saved["training"]) == set(TrainingConfig.model_fields)


def test_save_then_load_round_trips_default_method(tmp_path):
    cfg = load_config({"data": {"train_file": str(tmp_path / "absent.csv")}})
    out = tmp_path / "resolved.yaml"
    save_config(cfg, out)
    assert load_config(out) == cfg


def test_saved_method_is_flat(tmp_path):
    out = tmp_path / "c.yaml"
    save_config(load_config({"method": {"name": "lora", "r": 4}}), out)
    assert yaml.safe_load(out.read_text())["method"]["r"] == 4
    assert yaml.safe_load(out.read_text())["method"]["name"] == "lora"


# ----------------------------------------------------------------------------- path resolution


def test_relative_data_path_resolves_against_config_dir(tmp_path, monkeypatch):
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    (cfg_dir / "train.csv").write_text("text,label\na,b\n")
    (cfg_dir / "val.csv").write_text("text,label\na,b\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(
        cfg_dir,
        "data:\n  train_file: train.csv\n  validation_file: val.csv\n  test_file: gone.csv\n",
    )
    cfg = load_config(path)
    assert Path(cfg.data.train_file) == (cfg_dir / "train.csv").resolve()
    assert Path(cfg.data.validation_file) == (cfg_dir / "val.csv").resolve()
    assert cfg.data.test_file == "gone.csv"  # exists nowhere: left as written


def test_relative_path_config_itself_relative(tmp_path, monkeypatch):
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    (cfg_dir / "train.csv").write_text("text,label\na,b\n")
    write(cfg_dir, "data:\n  train_file: train.csv\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(os.path.join("configs", "config.yaml"))
    assert Path(cfg.data.train_file) == (cfg_dir / "train.csv").resolve()


def test_working_directory_wins_when_file_exists_there(tmp_path, monkeypatch):
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    (cfg_dir / "train.csv").write_text("config copy\n")
    (tmp_path / "train.csv").write_text("cwd copy\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(write(cfg_dir, "data:\n  train_file: train.csv\n"))
    assert cfg.data.train_file == "train.csv"


def test_absolute_data_path_is_untouched(tmp_path):
    target = str(tmp_path / "abs.csv")
    cfg = load_config(write(tmp_path, f"data:\n  train_file: {target}\n"))
    assert cfg.data.train_file == target


def test_dict_source_paths_are_not_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config({"data": {"train_file": "x.csv"}}).data.train_file == "x.csv"


# ----------------------------------------------------------------------------- shipped examples


def test_examples_exist():
    assert EXAMPLES, "no examples/*.yaml found"


@pytest.mark.parametrize("path", EXAMPLES, ids=[Path(p).name for p in EXAMPLES])
def test_every_example_validates(path):
    from lmforge.tasks.registry import TASK_METRICS

    cfg = load_config(path)
    assert cfg.data.train_file
    assert cfg.training.metric in TASK_METRICS[cfg.task]


# ----------------------------------------------------------------------------- error helpers


def test_did_you_mean():
    assert did_you_mean("lroa", ["full", "lora"]) == " (did you mean 'lora'?)"
    assert did_you_mean("xyz", ["full", "lora"]) == ""
    assert did_you_mean("x", []) == ""


def test_format_validation_error_with_prefix():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        LoraOptions.model_validate({"rank": 3})
    msg = format_validation_error(info.value, LoraOptions, prefix="method")
    assert msg.startswith("unknown key 'method.rank'")
    assert "alpha, dropout, r, save_merged, target_modules" in msg


# ----------------------------------------------------------------------------- one-line errors


@pytest.mark.parametrize(
    "text",
    [
        "task: >\n  sequence_classificatio\n",
        "method: >\n  lroa\n",
        '"bad\\nkey": 1\n',
    ],
)
def test_errors_stay_single_line_with_newlines_in_values(tmp_path, text):
    config_error(write(tmp_path, text))


def test_yes_no_stay_text_but_bool_fields_still_accept_them(tmp_path):
    """YAML 1.2 booleans: 'no' is a word (an eval strategy, a label); bool fields still parse it."""
    cfg = load_config(
        write(
            tmp_path,
            "training:\n  eval_strategy: no\nresume: never\n"
            "data:\n  header: no\n  labels: [yes, no]\n",
        )
    )
    assert cfg.training.eval_strategy == "no"
    assert cfg.data.header is False
    assert cfg.data.labels == ["yes", "no"]
