"""The configs shipped in the repository's configs/ folder: list them and copy one to start from."""
from __future__ import annotations

import re
from pathlib import Path

from vlft.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def shipped_configs() -> dict[str, Path]:
    """{name: path} of every full config (the `_base_` pieces are not listed)."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.py"))}


def copy_shipped_config(name: str, dest: str | Path) -> Path:
    """Copy a shipped config; its `_base_` references are made absolute so the copy works anywhere."""
    import difflib

    configs = shipped_configs()
    name = name[:-3] if name.endswith(".py") else name
    if name not in configs:
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
