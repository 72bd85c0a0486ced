"""Type-checked overrides of nested frozen dataclass configs (``--set path.to.field=value``), and the config's
JSON form, so a run's resolved config can be saved as config.json and compared on ``--resume``.

    cfg = apply_overrides(PRESETS["tiny"], ["rollout.group_size=8", "env.task_dir=none"])
    (out / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))
    saved = config_from_dict(ExperimentConfig, json.loads((out / "config.json").read_text()))
    if changed := diff_configs(saved, cfg):
        raise SystemExit("--resume with a different config:\n  " + "\n  ".join(changed))

Values are parsed by the field's annotation (int, float, bool, str, ``X | None``, ``Literal[...]``,
``tuple[X, ...]``); a JSON literal is accepted for any of them. Every replace goes through
``dataclasses.replace``, so each level's ``__post_init__`` validation runs, and its complaint is reported
with the path that was set. Every mistake is one ``OverrideError`` line: a typo must never silently do
nothing, and a bad value must fail before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T")

_NONE_WORDS = ("none", "null")
_TRUE_WORDS = ("true", "1", "yes")
_FALSE_WORDS = ("false", "0", "no")


class OverrideError(ValueError):
    """A refused override or config file: the message is one line that says what and where."""


class _Mismatch(Exception):
    """A value that does not fit a type; the caller adds the path and the expected type to the message."""


# ---------------------------------------------------------------------------------------------------------
# Annotations


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # Modules use `from __future__ import annotations`: the annotations are strings until resolved.
    return typing.get_type_hints(cls)


def _fields(obj_or_cls: Any) -> dict[str, dataclasses.Field[Any]]:
    # Only init fields: the others are derived in __post_init__ and cannot be passed to replace().
    return {f.name: f for f in dataclasses.fields(obj_or_cls) if f.init}


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass a field holds (``X`` or ``X | None``), or None for a leaf field."""
    if _is_dataclass_type(tp):
        return tp
    if _is_union(tp):
        found = [a for a in typing.get_args(tp) if _is_dataclass_type(a)]
        return found[0] if found else None
    return None


def _describe(tp: Any) -> str:
    """A type as a user would write it, for error messages."""
    if tp is type(None):
        return "None"
    if _is_union(tp):
        return " | ".join(_describe(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(json.dumps(v) for v in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"tuple[{_describe(args[0])}, ...]"
        return "tuple[" + ", ".join(_describe(a) for a in args) + "]"
    if tp is Any:
        return "any JSON value"
    return getattr(tp, "__name__", repr(tp))


# ---------------------------------------------------------------------------------------------------------
# Values: JSON values checked against a type (config files), and CLI text parsed by a type (--set)


def _check(value: Any, tp: Any, path: str) -> Any:
    """``value`` (as JSON decodes it) converted to ``tp``'s Python form, or _Mismatch. ``path`` names the
    value in the errors of nested configs (which say more than a mismatch can)."""
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if _is_union(tp):
        for arg in typing.get_args(tp):
            try:
                return _check(value, arg, path)
            except _Mismatch:
                continue
        raise _Mismatch
    if typing.get_origin(tp) is Literal:
        # Type and value must both match: the literal 1 must not admit True, nor "1" admit 1.
        for allowed in typing.get_args(tp):
            if type(value) is type(allowed) and value == allowed:
                return allowed
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, list | tuple):
            raise _Mismatch
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise _Mismatch
        return tuple(_check(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if _is_dataclass_type(tp):
        if not isinstance(value, Mapping):
            raise _Mismatch
        return _from_json(tp, value, path)
    raise OverrideError(f"{path}: type {_describe(tp)} is not supported in configs")


def _parse(text: str, tp: Any, path: str) -> Any:
    """CLI text parsed as ``tp``, or _Mismatch. Each type's own spelling first, then a JSON literal."""
    word = text.strip()
    if tp is Any:
        try:
            return json.loads(word)
        except json.JSONDecodeError:
            return text  # a bare word is a string, as on any command line
    if tp is type(None):
        if word.lower() in _NONE_WORDS:
            return None
        raise _Mismatch
    if _is_union(tp):
        args = typing.get_args(tp)
        if type(None) in args and word.lower() in _NONE_WORDS:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _parse(text, arg, path)
            except _Mismatch:
                continue
        raise _Mismatch
    if typing.get_origin(tp) is Literal:
        for allowed in typing.get_args(tp):
            if isinstance(allowed, str) and text == allowed:
                return allowed
    elif tp is bool:
        if word.lower() in _TRUE_WORDS:
            return True
        if word.lower() in _FALSE_WORDS:
            return False
    elif tp is int:
        try:
            return int(word)
        except ValueError:
            pass
    elif tp is float:
        try:
            return float(word)  # "1e-5", "3", "inf"
        except ValueError:
            pass
    elif tp is str:
        # A bare string is taken as written; a JSON string ('"none"', '" x"') is the way to say a string that
        # would otherwise read as something else (None in a `str | None` field, or trimmed spaces).
        if word.startswith('"') and word.endswith('"') and len(word) >= 2:
            try:
                return json.loads(word)
            except json.JSONDecodeError:
                pass
        return text
    elif typing.get_origin(tp) is tuple and not word.startswith("["):
        args = typing.get_args(tp)
        items = [] if word == "" else [item.strip() for item in word.split(",")]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse(item, args[0], path) for item in items)
        if len(items) != len(args):
            raise _Mismatch
        return tuple(_parse(item, a, path) for item, a in zip(items, args, strict=True))
    # Anything else (and any of the above) as a JSON literal: '[1, 2]', '"a,b"', '1e-3', 'true'.
    try:
        decoded = json.loads(word)
    except json.JSONDecodeError:
        raise _Mismatch from None
    return _check(decoded, tp, path)


# ---------------------------------------------------------------------------------------------------------
# Overrides


def _unknown(name: str, where: str, known: Sequence[str]) -> OverrideError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return OverrideError(f"unknown field {name!r} in {where}{hint} (known: {', '.join(known)})")


def _sub_fields(cls: type, prefix: str) -> str:
    return ", ".join(f"{prefix}.{name}" for name in _fields(cls))


def _replace(obj: Any, changes: dict[str, Any], where: str, assignment: str) -> Any:
    try:
        return dataclasses.replace(obj, **changes)
    except (ValueError, TypeError) as exc:
        # The dataclass's own __post_init__ validation: report it with what was set, in one line.
        reason = " ".join(str(exc).split())
        raise OverrideError(f"{assignment!r}: {where} rejected it: {reason}") from exc


def _assign(obj: Any, names: list[str], text: str, done: list[str], assignment: str) -> Any:
    name, rest = names[0], names[1:]
    where = ".".join(done) or type(obj).__name__
    fields = _fields(obj)
    if name not in fields:
        raise OverrideError(f"{assignment!r}: {_unknown(name, where, list(fields))}")
    path = ".".join([*done, name])
    tp = _hints(type(obj))[name]
    if rest:
        child = getattr(obj, name)
        if child is None:
            raise OverrideError(
                f"{assignment!r}: {path} is None ({_describe(tp)}), so it has no field {rest[0]!r} to set; "
                f"start from a config where {path} is set"
            )
        if not dataclasses.is_dataclass(child):
            raise OverrideError(
                f"{assignment!r}: {path} is {_describe(tp)}, not a config with fields (no {rest[0]!r})"
            )
        value = _assign(child, rest, text, [*done, name], assignment)
    else:
        nested = _dataclass_in(tp)
        if nested is not None and not (_is_union(tp) and text.strip().lower() in _NONE_WORDS):
            # A whole sub-config from one CLI word would be ambiguous and untyped: set its leaves instead.
            none = " (or none)" if _is_union(tp) and type(None) in typing.get_args(tp) else ""
            raise OverrideError(
                f"{assignment!r}: {path} is a {nested.__name__} config, not a value{none}; "
                f"set its fields instead: {_sub_fields(nested, path)}"
            )
        try:
            value = _parse(text, tp, path)
        except _Mismatch:
            raise OverrideError(f"{assignment!r}: {path} expects {_describe(tp)}, got {text!r}") from None
    return _replace(obj, {name: value}, where, assignment)


def apply_overrides(cfg: T, assignments: Sequence[str]) -> T:
    """``cfg`` with each ``path.to.field=value`` applied in order (a later one wins); OverrideError on any
    unknown field, ill-typed value, or value that a config's ``__post_init__`` refuses."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"apply_overrides needs a dataclass instance, got {type(cfg).__name__}")
    if isinstance(assignments, str):
        # A lone string would be applied character by character: refuse rather than guess.
        raise TypeError("apply_overrides takes a sequence of 'path=value' strings, not one string")
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep:
            raise OverrideError(f"{assignment!r}: expected path.to.field=value (no '=')")
        names = key.strip().split(".")
        if any(not n for n in names):
            raise OverrideError(f"{assignment!r}: empty field name in path {key.strip()!r}")
        cfg = _assign(cfg, names, text, [], assignment)
    return cfg


# ---------------------------------------------------------------------------------------------------------
# JSON form


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"{type(value).__name__} value {value!r} has no JSON form")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """``cfg`` as JSON-ready data: nested configs as dicts, tuples as lists, every init field written."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"config_to_dict needs a dataclass instance, got {type(cfg).__name__}")
    return {name: _to_json(getattr(cfg, name)) for name in _fields(cfg)}


_ROOT = "<root>"  # the top level's name in messages about keys; its fields' paths have no prefix


def _from_json(cls: type[T], data: Any, where: str) -> T:
    label = cls.__name__ if where == _ROOT else where
    if not isinstance(data, Mapping):
        raise OverrideError(f"{label}: expected an object for {cls.__name__}, got {json.dumps(_safe(data))}")
    fields = _fields(cls)
    hints = _hints(cls)
    for key in data:
        if key not in fields:
            raise _unknown(str(key), label, list(fields))
    # Every field must be there: a file from another version of the config must not silently take defaults.
    missing = [name for name in fields if name not in data]
    if missing:
        raise OverrideError(f"{label}: missing fields {', '.join(missing)} of {cls.__name__}{_defaults_hint(cls, missing)}")
    values: dict[str, Any] = {}
    for name, raw in data.items():
        path = name if where == _ROOT else f"{where}.{name}"
        try:
            values[name] = _check(raw, hints[name], path)
        except _Mismatch:
            raise OverrideError(f"{path} expects {_describe(hints[name])}, got {json.dumps(_safe(raw))}") from None
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        reason = " ".join(str(exc).split())
        raise OverrideError(f"{label} rejected it: {reason}") from exc


def _defaults_hint(cls: type, missing: list[str]) -> str:
    """What to add to a file written before these fields existed to take today's defaults, spelled as JSON
    (the file is never completed silently: the user decides)."""
    entries = []
    for f in dataclasses.fields(cls):
        if f.name not in missing:
            continue
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            return ""  # a field without a default: nothing to suggest
        try:
            entries.append(f"{json.dumps(f.name)}: {json.dumps(_to_json(value))}")
        except TypeError:
            return ""
    return f" (written by an older version? to take today's defaults, add {', '.join(entries)})"


def _safe(value: Any) -> Any:
    # For messages only: json.dumps must not fail on whatever a caller passed in.
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def config_from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """The config that ``config_to_dict`` wrote: unknown or missing keys and ill-typed values are refused
    (OverrideError), and each level's ``__post_init__`` runs."""
    if not _is_dataclass_type(cls):
        raise TypeError(f"config_from_dict needs a dataclass type, got {cls!r}")
    return _from_json(cls, data, _ROOT)


def diff_configs(a: Any, b: Any) -> list[str]:
    """``"path: old -> new"`` for each leaf that differs between two configs of the same type (values as
    JSON), in field order; empty when they are equal."""
    if type(a) is not type(b) or not dataclasses.is_dataclass(a):
        raise TypeError(f"diff_configs needs two configs of one dataclass type, got {type(a)} and {type(b)}")
    out: list[str] = []
    _diff(a, b, "", out)
    return out


def _diff(a: Any, b: Any, prefix: str, out: list[str]) -> None:
    for name in _fields(a):
        path = f"{prefix}{name}"
        x, y = getattr(a, name), getattr(b, name)
        if dataclasses.is_dataclass(x) and type(x) is type(y):
            _diff(x, y, f"{path}.", out)
        elif _to_json(x) != _to_json(y):
            out.append(f"{path}: {json.dumps(_to_json(x))} -> {json.dumps(_to_json(y))}")
