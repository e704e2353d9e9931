"""A checkpoint's list of files (with sizes), written last, and the check that every one is there and sound.

The manifest is written after every rank has finished writing and before the directory is renamed into
place; resuming checks it before anything is loaded, so a truncated or missing file is reported by name
instead of surfacing as a library traceback halfway through loading.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from vlft.errors import CheckpointError

MANIFEST = "checkpoint_files.json"


def write_manifest(ckpt_dir: Path) -> None:
    ckpt_dir = Path(ckpt_dir)
    files = {str(p.relative_to(ckpt_dir)): p.stat().st_size
             for p in sorted(ckpt_dir.rglob("*")) if p.is_file() and p.name != MANIFEST}
    tmp = ckpt_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"files": files}, indent=1))
    os.replace(tmp, ckpt_dir / MANIFEST)


def damage(ckpt_dir: Path) -> str | None:
    """Why this checkpoint cannot be resumed (a missing, truncated or unreadable file), or None when sound."""
    ckpt_dir = Path(ckpt_dir)
    try:
        files = json.loads((ckpt_dir / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (written by an older vlft, or the save did not finish)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{MANIFEST} unreadable ({exc})"
    for name, size in files.items():
        path = ckpt_dir / name
        if not path.is_file():
            return f"{name} is missing"
        actual = path.stat().st_size
        if actual != size:
            return f"{name} has {actual} bytes, {size} were written"
        if name.endswith(".safetensors"):
            problem = safetensors_damage(path)
            if problem:
                return f"{name}: {problem}"
    return None


def check_intact(ckpt_dir: Path) -> None:
    problem = damage(ckpt_dir)
    if problem:
        raise CheckpointError(f"{ckpt_dir}: damaged checkpoint, {problem}; resume from another checkpoint "
                              "(--resume auto takes the newest intact one)")


def safetensors_damage(path: Path) -> str | None:
    """A safetensors file's header parses and its tensors end exactly where the file does."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len + 8 > size:
                return f"header of {header_len} bytes in a file of {size}"
            header = json.loads(f.read(header_len))
    except (OSError, struct.error, ValueError) as exc:
        return f"not a safetensors file ({exc.__class__.__name__})"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    if 8 + header_len + max(ends, default=0) != size:
        return f"{size} bytes, the header describes {8 + header_len + max(ends, default=0)}"
    return None
