"""Load a Python-file config (mmengine: `_base_`, --cfg-options) and validate it into typed specs at once.

--cfg-options takes two kinds of names:
  * section keys (`schedule.lr=1e-4`, `model.llm.lora.r=64`): merged into the loaded dicts, as mmengine does;
  * Settings names (`data_path=other.json`, `lora_r=64`): the plain top-level assignments of the config file.
    The file is evaluated again with the new value, so whatever is derived from it (`alpha=2 * lora_r`,
    `datasets=[dict(path=data_path)]`) follows. The value must have the original's type (an int for a float
    is fine; a str setting takes the text as given).
Overriding `model.<part>.lora.r` without `...lora.alpha` scales alpha by the same factor, so the LoRA scale
alpha / r stays what the config chose.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import json
import os
import re
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mmengine.config import Config

from vlft.errors import ConfigError
from vlft.specs import ExperimentSpec, LoraSpec

SECTIONS = ("model", "data", "schedule", "engine")
_PLAIN = (str, int, float, bool, type(None), list, tuple)
#: What an `import` or a `def` in a config leaves at top level: code, never a setting.
_CODE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)
#: mmengine's predefined variables ({{ fileDirname }} ...), substituted here too when the file is re-evaluated
#: from a temporary copy, so they still name the user's file.
_PREDEFINED = ("fileDirname", "fileBasename", "fileBasenameNoExtension", "fileExtname")
FLASH_ATTN_INSTALL = "pip install flash-attn --no-build-isolation"


def parse_cfg_options(options: Sequence[str]) -> dict[str, Any]:
    """`["a.b=1", "c=[1,2]"]` -> {"a.b": 1, "c": [1, 2]}; values are parsed as Python/JSON literals when they can be."""
    return {key: _parse_value(raw) for key, raw in _split_options(options).items()}


def _split_options(options: Sequence[str]) -> dict[str, str]:
    split = {}
    for option in options:
        key, sep, raw = option.partition("=")
        if not sep or not key:
            raise ConfigError(f"--cfg-options {option!r} is not of the form key=value")
        split[key] = raw
    return split


def _parse_value(raw: str):
    for parse in (ast.literal_eval, json.loads):
        try:
            return parse(raw)
        except (ValueError, SyntaxError):
            continue
    return {"true": True, "false": False, "none": None, "null": None}.get(raw.lower(), raw)


def load_config_dict(path: str | Path, cfg_options: Sequence[str] = ()) -> dict[str, Any]:
    """Read a Python-file config (with `_base_` inheritance) and apply --cfg-options; returns plain dicts."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (list the shipped ones with `vlft list-configs`)")
    tree = _parse_source(path)
    cfg = _load(path, path)
    raw_options = _split_options(cfg_options)
    settings = _settings_of(tree, cfg)
    setting_values, section_values = {}, {}
    for key, raw in raw_options.items():
        head = key.split(".")[0]
        value = _parse_value(raw)
        if head in SECTIONS:
            section_values[key] = value
        elif head in settings and key == head:
            setting_values[key] = _checked_setting(path, key, raw, value, settings[key])
        elif head in settings:
            raise ConfigError(f"--cfg-options {key}: {head!r} is a Settings value of {path}, not a section; "
                              f"override it whole: --cfg-options {head}=VALUE")
        elif head in cfg and not isinstance(cfg[head], Mapping):
            raise ConfigError(f"--cfg-options {key}: {head!r} is set in a _base_ file of {path}, and only the "
                              "config's own Settings block can be overridden; override the section key it "
                              f"feeds, or assign {head} in {path.name}")
        elif head in cfg:
            section_values[key] = value
        else:
            raise ConfigError(f"--cfg-options {key}: unknown key{_suggest(head, [*SECTIONS, *settings])}")
    if setting_values:
        cfg = _load_with_settings(path, tree, setting_values)
    _keep_lora_scale(cfg, section_values)
    if section_values:
        cfg.merge_from_dict(section_values)
    return {key: value for key, value in _to_plain(cfg.to_dict()).items() if not isinstance(value, _CODE)}


def load_config(path: str | Path, cfg_options: Sequence[str] = (), *,
                settle: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> ExperimentSpec:
    """The one entry point: a config file (+ overrides) -> a validated ExperimentSpec this machine can run.

    ``settle`` sees the loaded dict before validation and returns it completed (what the base model directory
    says: vlft.model.base_settings); a ConfigError it raises is prefixed with the file like any other."""
    raw = load_config_dict(path, cfg_options)
    try:
        spec = spec_from_dict(settle(raw) if settle is not None else raw)
        check_runnable_here(spec)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return spec


def check_runnable_here(spec: ExperimentSpec) -> None:
    """What the specs cannot know: optional packages the config asks for. (Not part of spec_from_dict, so a
    checkpoint trained with flash attention still merges on a machine without it.)"""
    if spec.model.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError("model.attn_implementation='flash_attention_2' needs flash-attn, which is not installed: "
                          f"`{FLASH_ATTN_INSTALL}` (CUDA GPUs), or use model.attn_implementation='sdpa'")


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


# ---------------------------------------------------------------- reading the file


def _parse_source(path: Path) -> ast.Module:
    try:
        tree = ast.parse(_substituted_source(path), filename=str(path))
    except (SyntaxError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read as a Python config: {str(exc).splitlines()[0]}") from None
    for node in tree.body:
        if isinstance(node, ast.With) and "read_base" in ast.unparse(node.items[0].context_expr):
            raise ConfigError(f"{path}: `with read_base():` (mmengine's lazy-import configs) is not supported; "
                              "inherit with `_base_ = ['./base.py']` instead")
    return tree


def _substituted_source(path: Path) -> str:
    """The file's text with mmengine's predefined variables filled in for this file (as mmengine does)."""
    absolute = os.path.abspath(path)
    values = {"fileDirname": os.path.dirname(absolute), "fileBasename": os.path.basename(absolute),
              "fileBasenameNoExtension": os.path.splitext(os.path.basename(absolute))[0],
              "fileExtname": os.path.splitext(absolute)[1]}
    text = path.read_text(encoding="utf-8")
    for key in _PREDEFINED:
        text = re.sub(r"\{\{\s*" + key + r"\s*\}\}", lambda _: values[key].replace("\\", "/"), text)
    return text


def _load(source: Path, shown: Path) -> Config:
    """mmengine's loader, always in plain (non-lazy) mode: mmengine would otherwise switch to its lazy-import
    format as soon as a config imports a non-builtin module (`import os`), and then refuse `_base_`."""
    try:
        return Config.fromfile(str(source), lazy_import=False)
    except Exception as exc:  # mmengine wraps syntax and import errors in many types
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise ConfigError(f"{shown}: cannot be read as a Python config: {lines[0]}") from None


# ---------------------------------------------------------------- Settings overrides


def _settings_of(tree: ast.Module, cfg: Config) -> dict[str, Any]:
    """{name: value} of the file's own top-level plain assignments (its Settings block)."""
    settings = {}
    for node in tree.body:
        for name in _assigned_names(node):
            if name in cfg and name not in SECTIONS and not name.startswith("_"):
                value = cfg[name]
                if isinstance(value, _PLAIN):
                    settings[name] = value
    return settings


def _assigned_names(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.Assign):
        return [target.id for target in node.targets if isinstance(target, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
        return [node.target.id]
    return []


def _checked_setting(path: Path, name: str, raw: str, value, original):
    """`value` if it fits the type of the setting's value in the file (int -> float; text for a str)."""
    if original is None:
        return value
    if isinstance(original, str):
        return value if isinstance(value, str) else raw
    if isinstance(original, bool):
        fits = isinstance(value, bool)
    elif isinstance(original, int):
        fits = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(original, float):
        fits = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if fits else value
    elif isinstance(original, (list, tuple)):
        fits = isinstance(value, (list, tuple))
    else:
        fits = type(value) is type(original)
    if not fits:
        raise ConfigError(f"--cfg-options {name}={raw}: {name} is {type(original).__name__} in {path} "
                          f"({original!r}), got {type(value).__name__}")
    return value


def _load_with_settings(path: Path, tree: ast.Module, values: Mapping[str, Any]) -> Config:
    """Evaluate the config again with its Settings assignments replaced; from a temporary copy (nothing is
    written next to the user's file) whose relative `_base_` paths are made absolute."""
    tree = _WithSettings(values, path.parent.absolute()).visit(tree)
    with tempfile.TemporaryDirectory(prefix="vlft-config-") as folder:
        copy = Path(folder) / path.name
        copy.write_text(ast.unparse(ast.fix_missing_locations(tree)), encoding="utf-8")
        return _load(copy, path)


class _WithSettings(ast.NodeTransformer):
    """Top-level `name = ...` for the overridden names get the new value; `_base_` paths become absolute."""

    def __init__(self, values: Mapping[str, Any], folder: Path):
        self.values, self.folder = values, folder

    def visit_Module(self, node: ast.Module) -> ast.Module:
        for statement in node.body:
            names = _assigned_names(statement)
            if "_base_" in names:
                statement.value = _absolute_bases(statement.value, self.folder)
            for name in names:
                if name in self.values:
                    statement.value = ast.parse(repr(self.values[name]), mode="eval").body
        return node


def _absolute_bases(node: ast.expr, folder: Path) -> ast.expr:
    def absolute(item):
        if isinstance(item, ast.Constant) and isinstance(item.value, str) and "::" not in item.value \
                and not os.path.isabs(item.value):
            return ast.Constant(os.path.join(folder, item.value))
        return item

    if isinstance(node, (ast.List, ast.Tuple)):
        node.elts = [absolute(item) for item in node.elts]
        return node
    return absolute(node)


def _keep_lora_scale(cfg: Config, overrides: dict[str, Any]) -> None:
    """`model.<part>.lora.r=N` alone: scale alpha with r (adds the alpha override), so alpha / r is kept."""
    for part in ("llm", "vision"):
        r_key, alpha_key = f"model.{part}.lora.r", f"model.{part}.lora.alpha"
        new_r = overrides.get(r_key)
        if alpha_key in overrides or not isinstance(new_r, int) or isinstance(new_r, bool) or new_r < 1:
            continue
        lora = ((cfg.get("model") or {}).get(part) or {}).get("lora") or {}
        default = LoraSpec()
        r, alpha = lora.get("r", default.r), lora.get("alpha", default.alpha)
        if isinstance(r, int) and isinstance(alpha, (int, float)) and r > 0:
            overrides[alpha_key] = max(1, round(alpha * new_r / r))


# ---------------------------------------------------------------- typed validation


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
    except ConfigError as exc:
        # A spec used in several places (LoRA of the LLM or the vision encoder, train or validation sets)
        # names its keys generically; say which one.
        prefix, message = getattr(cls, "ERROR_PREFIX", ""), str(exc)
        if prefix and where and message.startswith(prefix):
            raise ConfigError(f"{where}.{message[len(prefix):]}") from None
        raise


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
    candidates = list(dict.fromkeys(candidates))  # a section may also be a top-level name: list it once
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.4)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(candidates)}"


def _to_plain(value):
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    return value
