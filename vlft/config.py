"""Load a Python-file config (mmengine: `_base_`, --cfg-options) and validate it into typed specs at once."""
from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence

from vlft.errors import ConfigError
from vlft.specs import ExperimentSpec

SECTIONS = ("model", "data", "schedule", "engine")
_PLAIN = (str, int, float, bool, type(None), list, tuple)


def parse_cfg_options(options: Sequence[str]) -> dict[str, Any]:
    """`["a.b=1", "c=[1,2]"]` -> {"a.b": 1, "c": [1, 2]}; values are parsed as Python/JSON literals when they can be."""
    import ast

    parsed = {}
    for option in options:
        key, sep, raw = option.partition("=")
        if not sep or not key:
            raise ConfigError(f"--cfg-options {option!r} is not of the form key=value")
        for parse in (ast.literal_eval, json.loads):
            try:
                parsed[key] = parse(raw)
                break
            except (ValueError, SyntaxError):
                continue
        else:
            parsed[key] = {"true": True, "false": False, "none": None, "null": None}.get(raw.lower(), raw)
    return parsed


def load_config_dict(path: str | Path, cfg_options: Sequence[str] = ()) -> dict[str, Any]:
    """Read a Python-file config (with `_base_` inheritance) and apply --cfg-options; returns plain dicts."""
    from mmengine.config import Config

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (list the shipped ones with `vlft list-configs`)")
    try:
        cfg = Config.fromfile(str(path))
    except Exception as exc:  # mmengine wraps syntax and import errors in many types
        raise ConfigError(f"{path}: cannot be read as a Python config: {str(exc).splitlines()[0]}") from None
    overrides = parse_cfg_options(cfg_options)
    for key in overrides:
        head = key.split(".")[0]
        if head not in SECTIONS and head not in cfg:
            raise ConfigError(f"--cfg-options {key}: unknown key{_suggest(head, [*SECTIONS, *cfg.keys()])}")
    if overrides:
        cfg.merge_from_dict(overrides)
    return _to_plain(cfg.to_dict())


def load_config(path: str | Path, cfg_options: Sequence[str] = ()) -> ExperimentSpec:
    """The one entry point: a config file (+ overrides) -> a validated ExperimentSpec."""
    raw = load_config_dict(path, cfg_options)
    try:
        return spec_from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def spec_from_dict(raw: Mapping[str, Any]) -> ExperimentSpec:
    """Validate a config dict: sections become dataclasses; top-level plain values are the settings block."""
    sections = {}
    for key, value in raw.items():
        if key in SECTIONS:
            sections[key] = value
        elif isinstance(value, dict):
            raise ConfigError(f"unknown section {key!r}{_suggest(key, SECTIONS)}")
        elif not isinstance(value, _PLAIN) and not key.startswith("_"):
            raise ConfigError(f"setting {key!r} has type {type(value).__name__}; settings must be plain values")
    if "model" not in sections:
        raise ConfigError("the config has no 'model' section")
    return _build(ExperimentSpec, sections, "")


def spec_to_dict(spec) -> dict[str, Any]:
    """A spec as JSON-ready dicts (what a checkpoint records as its resolved config)."""
    return dataclasses.asdict(spec)


def _build(cls, data: Any, where: str):
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'} must be a dict, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown key {_join(where, key)!r}{_suggest(key, names)}")
        kwargs[key] = _coerce(hints[key], value, _join(where, key))
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def _coerce(hint, value, where: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if dataclasses.is_dataclass(hint):
        if dataclasses.is_dataclass(value):
            return value
        return _build(hint, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)] if args else list(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _suggest(key: str, candidates) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.4)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(candidates)}"


def _to_plain(value):
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    return value
