"""The shipped configs (repository configs/, installed as vlft/configs): list them and copy one to start from."""
from __future__ import annotations

import difflib
import importlib.util
import re
from pathlib import Path

from vlft.errors import ConfigError


def _config_dir() -> Path:
    """Where the shipped configs are in this installation.

    A wheel or `pip install .` installs the repository's configs/ as the (namespace) package vlft.configs,
    so importlib finds them next to the installed code. A source checkout, or an editable install made
    before that mapping existed, has no vlft/configs: the configs are then the checkout's configs/ folder.
    """
    spec = importlib.util.find_spec("vlft.configs")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if any(Path(location).glob("*.py")):
                return Path(location).resolve()
    return Path(__file__).resolve().parent.parent / "configs"


CONFIG_DIR = _config_dir()


def shipped_configs() -> dict[str, Path]:
    """{name: path} of every full config (the `_base_` pieces are not listed)."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.py")) if not p.stem.startswith("_")}


def copy_shipped_config(name: str, dest: str | Path) -> Path:
    """Copy a shipped config; its `_base_` references are made absolute so the copy works anywhere."""
    configs = shipped_configs()
    name = name[:-3] if name.endswith(".py") else name
    if name not in configs:
        if not configs:
            raise ConfigError(f"no shipped configs found in {CONFIG_DIR}: this installation of vlft is incomplete; "
                              "reinstall it (pip install vlft, or pip install -e . in a checkout)")
        close = difflib.get_close_matches(name, list(configs), n=1, cutoff=0.4)
        hint = f"; did you mean {close[0]!r}?" if close else f"; shipped: {', '.join(configs)}"
        raise ConfigError(f"no shipped config named {name!r}{hint}")
    dest = Path(dest)
    if dest.is_dir():
        dest = dest / f"{name}.py"
    if dest.exists():
        raise ConfigError(f"{dest} already exists; choose another destination (nothing was overwritten)")
    text = configs[name].read_text()
    text = re.sub(r"(['\"])\./_base_/", lambda m: f"{m.group(1)}{CONFIG_DIR / '_base_'}/", text)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    return dest
