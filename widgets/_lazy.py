"""Keep the first widget fast: plotly's FigureWidget imports nbformat -> jsonschema, whose format checkers import
``rfc3987_syntax``, which builds ~40 Lark (Earley) grammars at import: 7-8 s of CPU on a 2-core machine, 20 s while
a run trains in the background, for an IRI check nothing here uses. :func:`defer_rfc3987_syntax` puts a stand-in
module in its place whose functions import the real one on first use, so the check still works when called."""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

NAME = "rfc3987_syntax"


def _real() -> types.ModuleType:
    """The real rfc3987_syntax (imported now, replacing the stand-in)."""
    mod = sys.modules.get(NAME)
    if getattr(mod, "_workbench_deferred", False):
        del sys.modules[NAME]
    return importlib.import_module(NAME)


def defer_rfc3987_syntax() -> None:
    """Install the stand-in, unless jsonschema's format checkers were loaded already or rfc3987_syntax is absent."""
    if NAME in sys.modules or "jsonschema._format" in sys.modules or importlib.util.find_spec(NAME) is None:
        return
    stub = types.ModuleType(NAME, "stand-in for rfc3987_syntax: imports the real module on first use")
    stub._workbench_deferred = True  # type: ignore[attr-defined]

    def is_valid_syntax(*args: Any, **kwargs: Any) -> Any:
        return _real().is_valid_syntax(*args, **kwargs)

    def __getattr__(name: str) -> Any:  # noqa: N807 - module attribute hook (PEP 562)
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(_real(), name)

    stub.is_valid_syntax = is_valid_syntax  # type: ignore[attr-defined]
    stub.__getattr__ = __getattr__  # type: ignore[attr-defined]
    sys.modules[NAME] = stub
