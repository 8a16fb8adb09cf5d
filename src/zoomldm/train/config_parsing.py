"""How the training YAML becomes a :class:`~.config.TrainConfig`: a small typed loader for nested
dataclasses (unknown keys and wrong types are errors that name the key), ``--set key.sub=value``
overrides, and where a value came from (the file or ``--set``) for the error messages.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

import yaml

from ..errors import ConfigError, quoted


# -- overrides -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Source:
    """Where the values come from: a file, except the keys given with ``--set`` (for error messages)."""

    file: str
    overridden: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.file


def _at(source: str | _Source, key: str) -> str:
    """``--set KEY`` when ``key`` (or a section above it) came from the command line, else ``file: key``."""
    if isinstance(source, _Source):
        base = key.split("[")[0]
        for o in source.overridden:
            if base == o or base.startswith(o + "."):
                return f"--set {key}"
    return f"{source}: {key}"


def _override_key(item: str) -> str:
    return ".".join(p for p in item.split("=", 1)[0].strip().split(".") if p)


def _unwrap_optional(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["optim.lr=1e-4", "data.levels=[0,1]"]`` → a copy of ``data`` with those keys set (YAML values)."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override {quoted(item)}: expected KEY=VALUE with a dotted key, e.g. optim.lr=1e-4"
            )
        key, text = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {quoted(item)}: empty key")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except (yaml.YAMLError, ValueError, RecursionError):  # e.g. a 5000-digit int, "[[[[…": the text
            value = text
        node = out
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {quoted(item)}: {p} is not a section")
            node = child
        node[parts[-1]] = value
    return out


# -- a small typed loader for nested dataclasses -------------------------------------------------------
def _build(cls: type, data: Any, prefix: str, source: str | _Source) -> Any:
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{_at(source, where)}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {prefix + str(unknown[0])!r}; valid keys"
            f"{' of ' + prefix.rstrip('.') if prefix else ''}: {', '.join(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, prefix + name, source)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str, source: str | _Source) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value if value is not None else {}, key + ".", source)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:  # an exact type match first (an int level stays an int under ``str | int``)
            if isinstance(arg, type) and type(value) is arg:
                return value
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key, source)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{_at(source, key)}: expected a list, got {quoted(value)}")
        return [_coerce(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{_at(source, key)}: expected a mapping, got {quoted(value)}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{_at(source, key)}: expected true or false, got {quoted(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{_at(source, key)}: expected an integer, got {quoted(value)}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{_at(source, key)}: expected a number, got {quoted(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{_at(source, key)}: expected a string, got {quoted(value)}")
    return value
