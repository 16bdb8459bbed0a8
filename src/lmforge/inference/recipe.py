"""The inference recipe: a saved model on new texts -> JSON lines (``lmforge predict``, ``embed``
and ``generate``).

Each function reads its input (standard input, a text file or a table, see
:func:`lmforge.data.readers.read_texts`), runs the model and writes one JSON object per input,
so the CLI only parses flags and prints.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from lmforge.data.readers import ReaderOptions, decode_file, file_kind, read_texts
from lmforge.errors import LmforgeError
from lmforge.inference.predictor import Predictor
from lmforge.runs import read_table_for, reader_options_for

if TYPE_CHECKING:
    from lmforge.generation.generate import GenerationOptions
    from lmforge.inference.adapters import AdapterSet

log = logging.getLogger(__name__)


def text_reader(model: str | Path, overrides: dict[str, Any], source: str | Path) -> ReaderOptions:
    """How to read the texts of ``source`` for ``model``: standard input or a plain ``.txt`` file
    stays a line each unless a format or delimiter is given; a table is read the way
    :func:`lmforge.runs.reader_options_for` says (the run's text column), labels ignored."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if str(source) == "-" or (
        file_kind(source) == "text" and not given.get("format") and not given.get("delimiter")
    ):
        return ReaderOptions(encoding=given.get("encoding", "utf-8"), from_flags=True)
    opts = reader_options_for(model, {"from_flags": True, **given}, source)
    return replace(opts, label_column=None)


def run_predict(
    models: Sequence[str],
    source: str,
    reader: dict[str, Any],
    output: str | None = None,
    batch_size: int = 64,
    precision: str = "auto",
    quantize: str = "none",
) -> int:
    """Predictions of ``models`` for every text of ``source``, a JSON line each, to ``output``
    (standard output when None); return the number of rows. Several adapter runs of one base
    model answer side by side (``{"text", "predictions": {run: prediction}}``)."""
    adapters = adapter_set(models, precision, quantize) if len(models) > 1 else None
    predictor = (
        Predictor.load(models[0], precision=precision, quantize=quantize)
        if adapters is None
        else adapters.predictor
    )
    if predictor.pairs:  # the first run's data settings read the table
        texts, pairs = read_pairs(models[0], source, reader)
    else:
        texts, pairs = read_texts(source, text_reader(models[0], reader, source)), None
    if adapters is None:
        rows = predictor.predict(texts, batch_size=batch_size, pairs=pairs)
    else:  # every adapter on the one base model
        per_run = {
            name: adapters.use(name).predict(texts, batch_size=batch_size, pairs=pairs)
            for name in adapters.names
        }
        rows = [
            {"predictions": {name: per_run[name][i] for name in per_run}} for i in range(len(texts))
        ]
    given = (
        ({"text": text} if pairs is None else {"text": text, "text_pair": pairs[i]})
        for i, text in enumerate(texts)
    )
    write_jsonl(({**g, **row} for g, row in zip(given, rows, strict=True)), output)
    if output:
        log.info("wrote %d predictions to %s", len(rows), output)
    return len(rows)


def run_embed(
    model: str,
    source: str,
    output: str | Path,
    reader: dict[str, Any],
    batch_size: int = 64,
    precision: str = "auto",
    quantize: str = "none",
) -> tuple[int, int]:
    """Embeddings of every text of ``source``: ``.npy`` (a matrix, input order) or ``.jsonl`` (text
    and embedding per line); return (rows, dimensions)."""
    import numpy as np

    out = Path(output)
    if out.suffix.lower() not in (".npy", ".jsonl"):
        raise LmforgeError(
            f"--output {out}: write .npy (a matrix) or .jsonl (text and embedding per line)"
        )
    predictor = Predictor.load(model, precision=precision, quantize=quantize, task="embedding")
    texts = read_texts(source, text_reader(model, reader, source))
    vectors = predictor.logits(texts, batch_size=batch_size).astype(np.float32)  # (N, H)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".npy":
        np.save(out, vectors)
    else:
        rows = predictor.task.decode(vectors, [])
        write_jsonl(({"text": t, **row} for t, row in zip(texts, rows, strict=True)), out)
    log.info("wrote %d embeddings of size %d to %s", *vectors.shape, out)
    return vectors.shape[0], vectors.shape[1]


@dataclass
class Generations:
    """What :func:`run_generate` produced, and its scores when the prompts had references."""

    prompts: list[str]
    texts: list[str]
    references: list[str] | None
    exact_match: float | None = None
    rouge_l: float | None = None


def run_generate(
    model: str,
    options: GenerationOptions,
    prompt: str | None = None,
    source: str | None = None,
    output: str | None = None,
    batch_size: int = 8,
    precision: str = "auto",
    chat: bool = False,
) -> Generations:
    """Continuations of one ``prompt`` (streamed to standard output when no ``output``) or of
    every prompt in ``source`` (see :func:`read_prompts`), as JSON lines to ``output`` or
    standard output; exact match and ROUGE-L against references where the file has them."""
    from lmforge.generation.generate import exact_match, generate, rouge_l

    if (prompt is None) == (source is None):
        raise LmforgeError("give a prompt or --input FILE, not both")
    prompts, references = ([prompt], None) if prompt is not None else read_prompts(source)
    predictor = Predictor.load(model, precision=precision, task="causal_lm")
    stream = sys.stdout if len(prompts) == 1 and not output else None
    texts = generate(
        predictor.model,
        predictor.tokenizer,
        prompts,
        options,
        batch_size=batch_size,
        stream=stream,
        chat=chat,
    )
    if stream is not None:
        print()
    else:
        rows = (
            {
                "prompt": p,
                "generated": t,
                **({"reference": references[i]} if references and output else {}),
            }
            for i, (p, t) in enumerate(zip(prompts, texts, strict=True))
        )
        write_jsonl(rows, output)
        if output:
            log.info("wrote %d generations to %s", len(texts), output)
    result = Generations(prompts, texts, references)
    if references:
        result.exact_match = exact_match(texts, references)
        result.rouge_l = rouge_l(texts, references)
    return result


def read_prompts(path: str | Path) -> tuple[list[str], list[str] | None]:
    """Prompts from a text file (one per line) or JSONL (``prompt``, optional ``reference``)."""
    file = Path(path)
    if not file.is_file():
        raise LmforgeError(f"prompt file {file} not found")
    lines = [line for line in decode_file(file, "utf-8").split("\n") if line.strip()]
    if not lines:
        raise LmforgeError(f"{file} has no prompts")
    if not lines[0].lstrip().startswith("{"):
        return [line.strip() for line in lines], None
    prompts, references = [], []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise LmforgeError(f"{file}: line {number} is not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise LmforgeError(f'{file}: line {number} needs a "prompt" string')
        prompts.append(record["prompt"])
        references.append(record.get("reference"))
    given = [r for r in references if r is not None]
    if given and len(given) != len(references):
        raise LmforgeError(
            f"{file}: {len(references) - len(given)} of {len(references)} lines have no "
            '"reference"; give one on every line or on none'
        )
    return prompts, [str(r) for r in references] if given else None


def read_pairs(model: str, source: str, reader: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Text pairs from a table (CSV, TSV, JSONL, Parquet) with the run's text and pair columns."""
    if source == "-":
        raise LmforgeError(
            "this model scores text pairs: give --input a table (CSV, TSV, JSONL) with both columns"
        )
    frame, _ = read_table_for(model, source, reader, labeled=False)
    if "text_pair" not in frame:
        raise LmforgeError(
            "this model scores text pairs: name the second column with --text-pair-column"
        )
    return frame["text"].tolist(), frame["text_pair"].tolist()


def adapter_set(runs: Sequence[str], precision: str, quantize: str) -> AdapterSet:
    """Several adapter runs on one base model, named as given (an AdapterSet)."""
    from lmforge.inference.adapters import AdapterSet

    if quantize != "none":
        raise LmforgeError(
            "--quantize applies to one model; predict with several adapter runs without it"
        )
    if len(set(runs)) < len(runs):
        raise LmforgeError(f"a run is given twice ({', '.join(runs)}); give each once")
    return AdapterSet.load({run: run for run in runs}, precision=precision)


def write_jsonl(rows: Iterable[dict[str, Any]], output: str | Path | None) -> None:
    """One JSON object a line, to ``output`` or standard output."""
    out: IO[str] = open(output, "w", encoding="utf-8") if output else sys.stdout  # noqa: SIM115
    try:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    finally:
        if output:
            out.close()
