"""Several adapter runs on one base model, held in memory once and switched per call.

Ten LoRA variants of one 22M-parameter encoder cost ten full models when each run is
loaded on its own; here the base weights are shared and each adapter adds only its own
weights and head. Each format's handler (:func:`lmforge.methods.adapter_handler`) adds and
switches its adapters; where the head lives in the base model rather than with each adapter
(bottleneck adapters), the head saved with an adapter is copied in when it is switched to.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmforge.devices import resolve_device, resolve_precision
from lmforge.errors import LmforgeError
from lmforge.inference.predictor import Predictor
from lmforge.methods import adapter_handler
from lmforge.models.loading import ADAPTER_CONFIG, load_tokenizer
from lmforge.runs import find_model_dir, read_metadata
from lmforge.tasks.registry import get_task

if TYPE_CHECKING:
    from lmforge.methods import AdapterKind


def adapter_dir_of(run: str | Path) -> Path:
    """The adapter of a run: ``run/adapter`` (every PEFT run keeps it beside the merged model)
    or ``model/`` itself when the method does not merge (prompt, prefix, bottleneck)."""
    run = Path(run)
    for candidate in (run / "adapter", run / "model", run):
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    raise LmforgeError(
        f"{run} has no adapter ({ADAPTER_CONFIG} in {run}/adapter or {run}/model): only runs "
        "of an adapter method (lora, dora, adalora, ia3, prompt, prefix, adapter) share a base; "
        "load a full fine-tuning run on its own"
    )


class AdapterSet:
    """Adapter runs of one base model and one task; :meth:`use` returns the predictor of one.

    All runs must name the same base model, train the same task with the same number of
    labels (the heads share a shape), and be adapters of one kind (all LoRA, all IA3, ...,
    or all bottleneck): one PEFT model holds adapters of one PEFT type.
    """

    def __init__(
        self, predictor: Predictor, entries: dict[str, dict[str, Any]], handler: AdapterKind
    ):
        self.predictor = predictor
        self._entries = entries  # name -> internal adapter name, labels, tokenizer, head tensors
        self._handler = handler
        self.active: str | None = None

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    @classmethod
    def load(
        cls, runs: Mapping[str, str | Path], device: str = "auto", precision: str = "auto"
    ) -> AdapterSet:
        """Load ``runs`` ({name: run directory}) onto one copy of their base model."""
        if not runs:
            raise LmforgeError("an adapter set needs at least one run")
        infos = {name: _describe(run) for name, run in runs.items()}
        first_name, first = next(iter(infos.items()))
        for name, info in infos.items():
            for key, what in (
                ("base", "base model"),
                ("task", "task"),
                ("kind", "adapter kind"),
                ("num_labels", "number of labels"),
            ):
                if info[key] != first[key]:
                    raise LmforgeError(
                        f"{runs[name]} has {what} {info[key]!r} and {runs[first_name]} has "
                        f"{first[key]!r}: adapters share one base only with the same {what}; "
                        "load them separately"
                    )
        task = get_task(first["task"])
        task.configure(first["meta"])
        model = task.load_model(
            str(first["dir"]), first["labels"]
        )  # base + the first adapter as "default"
        handler: AdapterKind = first["handler"]
        entries: dict[str, dict[str, Any]] = {}
        for i, (name, info) in enumerate(infos.items()):
            internal = "default" if i == 0 else f"adapter{i}"
            if i:
                handler.add(model, info["dir"], internal)
            entries[name] = {
                "internal": internal,
                "labels": info["labels"],
                "meta": info["meta"],
                "tokenizer": load_tokenizer(str(info["dir"])),
                "head": handler.head_state(info["dir"]),  # empty where adapters keep their own
            }
        device = resolve_device(device)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            resolve_precision(precision, device)
        )
        meta = first["meta"]
        tokenizer = entries[first_name]["tokenizer"]
        max_length = int(
            meta.get("max_length") or min(getattr(tokenizer, "model_max_length", 512), 512)
        )
        predictor = Predictor(
            model,
            tokenizer,
            task,
            first["labels"],
            max_length,
            device,
            dtype,
            bool(meta.get("text_pairs")),
        )
        adapters = cls(predictor, entries, handler)
        adapters.use(first_name)
        return adapters

    def use(self, name: str) -> Predictor:
        """Make adapter ``name`` the active one; return its predictor (labels, task options)."""
        if name not in self._entries:
            raise LmforgeError(f"no adapter named {name!r}; loaded: {', '.join(self._entries)}")
        entry = self._entries[name]
        model = self.predictor.model
        self._handler.activate(model, entry["internal"])
        if entry["head"]:
            state = model.state_dict()
            with torch.no_grad():  # the head lives in the base model: copy this adapter's in
                for key, value in entry["head"].items():
                    state[key].copy_(value)
        self.predictor.label_names = entry["labels"]
        self.predictor.tokenizer = entry["tokenizer"]
        self.predictor.task.configure(entry["meta"])
        self.active = name
        return self.predictor


def _describe(run: str | Path) -> dict[str, Any]:
    directory = adapter_dir_of(run)
    meta = read_metadata(find_model_dir(run))
    try:
        config = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise LmforgeError(f"cannot read the adapter in {directory}: {err}") from None
    labels = list(meta.get("labels") or [])
    handler = adapter_handler(config, directory)
    return {
        "dir": directory,
        "meta": meta,
        "labels": labels or None,
        "num_labels": len(labels),
        "task": meta.get("task", "sequence_classification"),
        "base": config.get("base_model_name_or_path"),
        "handler": handler,
        # adapters share one model only within a kind (PEFT: LoRA with LoRA, IA3 with IA3)
        "kind": handler.kind,
    }
