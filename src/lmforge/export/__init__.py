"""Exports of trained models (ONNX, int8), each checked against the original.

``lmforge.export`` is both this package and the Python API's ``export()`` function. Importing
any ``lmforge.export.*`` module makes Python set the package as the ``export`` attribute of
``lmforge``, over the function; so the package itself is made callable, and calling it is
calling the API function (``lmforge.export(run, out, format="onnx")`` works however often it
is called, and whatever was imported before).
"""

import sys
import types
from typing import Any


class _CallableExport(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from lmforge import export_run

        return export_run(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableExport
