"""The family and data.tiling a whole-VLM directory needs, read from its config.json and preprocessor_config.json
(no weights), and a config held against them before anything heavy runs.

    base_tiling(path, layout)            -> ({"mode": "anyres"}, "the LLaVA-NeXT default")
    load_config_on_base("my.py")         -> (spec, ["the base in model.path is LLaVA-NeXT: its data.tiling=..."])

A LLaVA-1.5 config pointed at a NeXT base would otherwise load the NeXT model and only fail when the first
batch's tile count disagrees with the model's; here it is one line naming the setting and the value the base
wants. What a config leaves unset (model.family, data.tiling.mode) is taken from the base, and said.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from vlft.config import load_config
from vlft.errors import CheckpointError, ConfigError
from vlft.families import FAMILIES, Family, family_of_layout
from vlft.model.layouts import WHOLE_HF_LAYOUTS, Layout, detect_layout, read_config
from vlft.specs import ExperimentSpec

PREPROCESSOR_FILE = "preprocessor_config.json"


def base_tiling(path: str | Path, layout: Layout, config: dict | None = None) -> tuple[dict, str]:
    """(data.tiling, where it came from) of a whole-VLM directory.

    Original InternVL-chat: config.json's dynamic_image_size, min/max_dynamic_patch, use_thumbnail. "-hf":
    preprocessor_config.json, read by the family; without one, the family's default (an AnyRes family's
    default leaves grid_pinpoints to the model's own image_grid_pinpoints).

    Raises:
        CheckpointError: config.json or preprocessor_config.json is unreadable.
    """
    path = Path(path)
    if layout is Layout.INTERNVL_CHAT:
        config = read_config(path) if config is None else config
        tiling = {"mode": "dynamic" if config.get("dynamic_image_size", True) else "resize",
                  "min_tiles": int(config.get("min_dynamic_patch", 1)),
                  "max_tiles": int(config.get("max_dynamic_patch", 12)),
                  "use_thumbnail": bool(config.get("use_thumbnail", True))}
        return tiling, str(path / "config.json")
    family: Family = family_of_layout(layout)
    processor = path / PREPROCESSOR_FILE
    if not processor.is_file():
        return dict(family.default_tiling), f"the {family.display_name} default"
    try:
        pre = json.loads(processor.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{processor}: not valid JSON ({exc})") from None
    return family.tiling_from_preprocessor(pre), str(processor)


def settle_on_base(raw: dict) -> tuple[dict, list[str]]:
    """A config dict (as `vlft.config.load_config_dict` gives it) held against the whole VLM in model.path.

    Returns the dict with the base's family and tiling filled in where the config leaves model.family or
    data.tiling.mode unset, and the notes saying so. A config without model.path (parts), or whose model.path
    is no readable whole VLM, is returned as it is: the step that opens the directory names the problem.

    Raises:
        ConfigError: model.family or data.tiling.mode contradicts the base; one line naming each setting with
            the value the base wants.
    """
    model = raw.get("model")
    data = raw.get("data", {})
    if not isinstance(model, dict) or not isinstance(model.get("path"), str) or not isinstance(data, dict):
        return raw, []
    tiling = data.get("tiling", {})
    if not isinstance(tiling, dict):
        return raw, []
    path = Path(model["path"]).expanduser()
    try:
        layout = detect_layout(path)
        if layout not in (*WHOLE_HF_LAYOUTS, Layout.INTERNVL_CHAT):
            return raw, []
        own_tiling, source = base_tiling(path, layout)
    except CheckpointError:
        return raw, []
    family = family_of_layout(layout)
    given_family, given_mode = model.get("family"), tiling.get("mode")
    wrong = []
    if given_family in FAMILIES and given_family != family.name:
        wrong.append(f"model.family={family.name!r} (the config has {given_family!r})")
    if isinstance(given_mode, str) and given_mode not in family.tiling_modes:
        wrong.append(f"data.tiling.mode={own_tiling['mode']!r} (the config has {given_mode!r})")
    if wrong:
        raise ConfigError(f"model.path={model['path']}: the base is {family.display_name}, which needs "
                          f"{' and '.join(wrong)}")
    taken = {}
    if "family" not in model:
        taken["model.family"] = family.name
    if "mode" not in tiling:
        taken["data.tiling"] = {**own_tiling, **tiling}
    if not taken:
        return raw, []
    settled = {**raw, "model": {**model, "family": taken.get("model.family", given_family)}}
    if "data.tiling" in taken:
        settled["data"] = {**data, "tiling": taken["data.tiling"]}
    said = " and ".join(f"{key}={value!r}" for key, value in taken.items())
    verb = "are" if len(taken) > 1 else "is"
    where = f" (tiling from {source})" if "data.tiling" in taken else ""
    return settled, [f"the base in model.path is {family.display_name}: its {said} {verb} taken, which the config "
                     f"leaves unset{where}"]


def load_config_on_base(path: str | Path, cfg_options: Sequence[str] = ()) -> tuple[ExperimentSpec, list[str]]:
    """`vlft.config.load_config` with `settle_on_base` applied before validation: (spec, notes for the user)."""
    notes: list[str] = []

    def settle(raw: dict) -> dict:
        settled, said = settle_on_base(raw)
        notes.extend(said)
        return settled

    return load_config(path, cfg_options, settle=settle), notes
