"""Config machinery shared by every part of the workbench.

Configs are plain dataclasses validated in ``__post_init__``. This module holds the helpers they use:
field checks whose errors name the field and what is allowed, conversion to and from plain dicts
(so papermill parameters, JSON run records and CLI ``key=value`` overrides all map onto fields),
and dotted-key overrides for nested configs.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Iterable, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config field holds a value that is not allowed; the message names the field and the fix."""


def check_choice(owner: str, field: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise ConfigError unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{owner}.{field}={value!r} is not allowed; choose one of {allowed}")


def check_range(owner: str, field: str, value: float, low: float | None = None, high: float | None = None,
                *, low_inclusive: bool = True, high_inclusive: bool = True) -> None:
    """Raise ConfigError unless ``low <= value <= high`` (bounds optional, inclusivity selectable)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"{owner}.{field}={value!r} must be a number")
    bad_low = low is not None and (value < low if low_inclusive else value <= low)
    bad_high = high is not None and (value > high if high_inclusive else value >= high)
    if bad_low or bad_high:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        lb = "[" if low_inclusive else "("
        hb = "]" if high_inclusive else ")"
        raise ConfigError(f"{owner}.{field}={value!r} is out of range; allowed {lb}{lo}, {hi}{hb}")


def check_pair(owner: str, field: str, value: Any, *, low: float | None = None, high: float | None = None) -> None:
    """Raise ConfigError unless ``value`` is an ordered pair ``(a, b)`` with ``a <= b`` inside the bounds."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigError(f"{owner}.{field}={value!r} must be a pair (min, max)")
    a, b = value
    check_range(owner, f"{field}[0]", a, low, high)
    check_range(owner, f"{field}[1]", b, low, high)
    if a > b:
        raise ConfigError(f"{owner}.{field}={value!r}: min {a} is larger than max {b}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass (possibly nested) -> plain JSON-serialisable dict; tuples become lists."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v
    return plain(cfg)


def _coerce(owner: str, name: str, tp: Any, value: Any) -> Any:
    """Turn a plain value (from JSON, papermill or a CLI string) into the field's declared type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(owner, name, arg, value)
            except (ConfigError, TypeError, ValueError) as e:  # try the next member of the union
                errors.append(str(e))
        raise ConfigError(f"{owner}.{name}={value!r} does not match {tp}: " + "; ".join(errors))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{owner}.{name} must be a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value)
    if origin in (tuple, list):
        if isinstance(value, str):
            value = json.loads(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{owner}.{name}={value!r} must be a list")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{owner}.{name}={value!r} must have {len(args)} items")
            return tuple(_coerce(owner, name, a, v) for a, v in zip(args, value))
        inner = args[0] if args else Any
        out = [_coerce(owner, name, inner, v) for v in value]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if isinstance(value, str):
            value = json.loads(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{owner}.{name}={value!r} must be a mapping")
        return dict(value)
    if origin is typing.Literal:
        check_choice(owner, name, value, args)
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{owner}.{name}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{owner}.{name}={value!r} must be an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{owner}.{name}={value!r} must be an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{owner}.{name}={value!r} must be a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{owner}.{name}={value!r} must be a number")
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{owner}.{name}={value!r} must be a string")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build dataclass ``cls`` from a plain dict, coercing types; unknown keys are an error listing the known."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field(s) {unknown}; known fields: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(cls.__name__, k, hints.get(k, Any), v) for k, v in data.items()}
    return cls(**kwargs)


def parse_value(text: str) -> Any:
    """A CLI ``key=value`` right-hand side -> Python value (JSON if it parses, else the string)."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return text


def parse_pairs(items: Iterable[str], what: str = "override", example: str = "train.lr=0.1") -> dict[str, Any]:
    """CLI ``key=value`` items -> {key: parsed value} (see :func:`parse_value`); an item without ``=`` is a
    ConfigError naming ``what`` it was and showing ``example``."""
    pairs = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{what} {item!r} must look like key=value (e.g. {example})")
        k, v = item.split("=", 1)
        pairs[k.strip()] = parse_value(v.strip())
    return pairs


def apply_overrides(cfg: T, overrides: Mapping[str, Any] | Iterable[str]) -> T:
    """Return a copy of ``cfg`` with dotted-key overrides applied (``{"train.lr": 0.1}`` or ``["train.lr=0.1"]``).

    A key that is a dict-typed field's sub-key (``method.options.temperature``) sets that entry.
    """
    if not isinstance(overrides, Mapping):
        overrides = parse_pairs(overrides)
    data = to_dict(cfg)
    for key, value in overrides.items():
        parts = key.split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                known = sorted(node) if isinstance(node, dict) else []
                raise ConfigError(f"override {key!r}: {'.'.join(parts[:i + 1])!r} is not a config section; "
                                  f"known: {known}")
            node = node[part]
        last = parts[-1]
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {'.'.join(parts[:-1])!r} is not a config section")
        is_free_dict = len(parts) > 1 and _is_free_dict(cfg, parts[:-1])
        if last not in node and not is_free_dict:
            raise ConfigError(f"override {key!r}: unknown field {last!r}; known: {sorted(node)}")
        node[last] = value
    return from_dict(type(cfg), data)


def _is_free_dict(cfg: Any, path: list[str]) -> bool:
    """True when ``path`` names a ``dict``-typed field (whose keys are free, e.g. method options)."""
    obj: Any = cfg
    for part in path:
        if dataclasses.is_dataclass(obj):
            obj = getattr(obj, part, None)
        elif isinstance(obj, dict):
            obj = obj.get(part)
        else:
            return False
    return isinstance(obj, dict)
