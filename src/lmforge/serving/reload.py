"""Hot reload: a model directory that gets new weights is served from them without a restart.

Retrain or re-export into the directory a model is served from, and the service notices (it
checks the files' sizes and modification times every ``reload_interval`` seconds, and waits
until they have stopped changing for one interval, so a half-written file is never loaded),
loads the new model beside the old one in a worker thread, and swaps it in between batches:
requests in flight finish on the old model, the next batch runs on the new one. A load that
fails (a corrupt file, a model of another task) keeps the old model serving and says why in the
log and in ``lmforge_model_reloads_total{result="failed"}``. ``POST /v1/models/{name}/reload``
does the same at once (a deploy script's call after it copies a model in).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from lmforge.inference.predictor import Predictor
    from lmforge.serving.app import ServedModel

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(model_dir: Path) -> Fingerprint:
    """Every file under the model directory with its size and modification time."""
    files = []
    for path in sorted(Path(model_dir).rglob("*")):
        with contextlib.suppress(OSError):  # a file replaced while we look
            if path.is_file():
                stat = path.stat()
                files.append((str(path.relative_to(model_dir)), stat.st_size, stat.st_mtime_ns))
    return tuple(files)


def own_weights(predictor: Predictor) -> Predictor:
    """Copy the weights that are still memory-mapped from their safetensors file into memory.

    Why: safetensors maps the file, and Transformers keeps fp32 CPU weights as views of the map.
    A file rewritten in place (``save_pretrained`` into the served directory, ``cp`` over it)
    changes or truncates the mapped pages under the running model: wrong answers, or a SIGBUS
    that kills the server. A copy costs a second of loading and no lasting memory.
    """
    import torch

    model = getattr(predictor, "model", None)
    if isinstance(model, torch.nn.Module):
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                if tensor.device.type == "cpu" and type(tensor.data) is torch.Tensor:
                    tensor.data = tensor.data.clone()
    return predictor


def reload_model(served: ServedModel, load: Callable[..., Predictor] | None = None) -> None:
    """Load ``served``'s directory again and swap the new model in (the old one stays on failure).

    Runs in a worker thread; the swap is one attribute assignment, which the batcher and the
    generation worker read once per batch.
    """
    from lmforge.inference.predictor import Predictor
    from lmforge.runs import find_model_dir

    model_dir = find_model_dir(served.path)
    seen = fingerprint(model_dir)
    predictor = own_weights((load or Predictor.load)(served.path, precision=served.precision))
    if predictor.task.name != served.task:
        raise LmforgeError(
            f"{served.path} now holds a {predictor.task.name.replace('_', ' ')} model, not a "
            f"{served.task.replace('_', ' ')} one; serve it under another name"
        )
    served.predictor = predictor
    if served.generator is not None:
        served.generator.predictor = predictor
    served.fingerprint = seen
    served.created = int(time.time())
    served.reloads += 1


class ModelWatcher:
    """Checks every ``interval`` seconds whether a served directory changed, and reloads it once
    the change has settled (unchanged for one more interval)."""

    def __init__(
        self, models: dict[str, ServedModel], interval: float, on_reload: Callable[[str, str], None]
    ):
        self.models = models
        self.interval = interval
        self.on_reload = on_reload  # (model name, "ok" | "failed")
        self._pending: dict[str, Fingerprint] = {}
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        for served in self.models.values():
            served.fingerprint = self._current(served)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            for name, served in self.models.items():
                await self.check(name, served)

    async def check(self, name: str, served: ServedModel) -> None:
        now = await asyncio.to_thread(self._current, served)
        if now == served.fingerprint:
            self._pending.pop(name, None)
            return
        if self._pending.get(name) != now:  # still being written: look again next time
            self._pending[name] = now
            return
        self._pending.pop(name, None)
        try:
            await asyncio.to_thread(reload_model, served)
        except Exception as err:  # noqa: BLE001 - whatever the new files do, the old model keeps serving
            served.fingerprint = now  # do not retry the same broken files every interval
            log.error(
                "model %s: new files in %s not loaded, the old model keeps serving: %s",
                name,
                served.path,
                err,
            )
            self.on_reload(name, "failed")
            return
        log.info("model %s: reloaded from %s", name, served.path)
        self.on_reload(name, "ok")

    @staticmethod
    def _current(served: ServedModel) -> Fingerprint:
        from lmforge.runs import find_model_dir

        try:
            return fingerprint(find_model_dir(served.path))
        except LmforgeError:  # the directory is gone for now (being replaced)
            return ()
