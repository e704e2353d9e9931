"""What a checkpoint remembers of the base it was trained on, and the check that the base is still that one.

A checkpoint stores only the trained tensors and the base's path; merging, converting or chatting rebuild
the model from that path. If the directory was replaced by another model (or its files changed), the
adapters would be folded into weights they were never trained with. The fingerprint is cheap, taken from
file sizes and headers only (a weight file is never read through):

    fingerprint("base/") -> {"path": "base/", "files": {"config.json": {"size": 812, "sha256": "..."},
                                                        "model.safetensors": {"size": 123, "sha256": "..."}}}

``sha256`` hashes config.json and the index whole, and a safetensors file's length prefix + header JSON
(the tensor names, dtypes, shapes and offsets) with 16 pieces of 4 KiB spread over its data, so a model of
the same architecture with other weights differs too. A base composed from parts is ``{"vision": path, "llm": path}``
and gets one fingerprint per part.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from vlft.errors import CheckpointError
from vlft.model.layouts import SAFETENSORS_INDEX, read_safetensors_header

#: How many differences one error line names before "and N more".
SHOWN_CHANGES = 3
#: Pieces of each safetensors file's data that go into its hash (see _safetensors_print).
SAMPLES, SAMPLE_BYTES = 16, 4096


def fingerprint(base_path: str | Path | dict) -> dict:
    """Sizes and header hashes of the base's config.json, index and safetensors files (see the module doc)."""
    if isinstance(base_path, dict):
        return {part: fingerprint(path) for part, path in base_path.items() if path is not None}
    base = Path(base_path)
    return {"path": str(base_path), "files": {file.name: _file_print(file) for file in _fingerprinted(base)}}


def check_base(recorded: dict, base_path: str | Path | dict, *, where: str) -> None:
    """CheckpointError naming each file of the base that differs from the fingerprint taken at training."""
    changes = _changes(recorded, base_path)
    if not changes:
        return
    shown = "; ".join(changes[:SHOWN_CHANGES])
    more = f"; and {len(changes) - SHOWN_CHANGES} more" if len(changes) > SHOWN_CHANGES else ""
    raise CheckpointError(f"{where}: the base model changed since training: {shown}{more}; the checkpoint was "
                          "trained on another base: restore the base it was trained on at that path")


def check_checkpoint_base(meta: dict, where: str | Path) -> None:
    """check_base for a training checkpoint's meta; a checkpoint from before fingerprints is not checked."""
    recorded = meta.get("base_fingerprint")
    if recorded is None:
        return
    base = meta.get("base_model") or meta.get("config", {}).get("model", {}).get("path")
    check_base(recorded, base, where=str(where))


def _changes(recorded: dict, base_path) -> list[str]:
    if isinstance(base_path, dict):
        return [change for part, path in base_path.items() if path is not None
                for change in _changes(recorded.get(part, {}), path)]
    base = Path(base_path)
    if not base.is_dir():
        return [f"{base}: no such directory now"]
    before = recorded.get("files", {})
    now = {file.name: _file_print(file) for file in _fingerprinted(base)}
    changes = []
    for name, then in before.items():
        current = now.get(name)
        if current is None:
            changes.append(f"{base / name}: gone")
        elif current["size"] != then["size"]:
            changes.append(f"{base / name}: size {then['size']} at training, {current['size']} now")
        elif current["sha256"] != then["sha256"]:
            what = "tensors or weights differ" if name.endswith(".safetensors") else "content differs"
            changes.append(f"{base / name}: {what} from training")
    changes += [f"{base / name}: new since training" for name in now if name not in before]
    return changes


def _fingerprinted(base: Path) -> list[Path]:
    files = [base / "config.json", base / SAFETENSORS_INDEX, *sorted(base.glob("*.safetensors"))]
    return [file for file in files if file.is_file()]


def _file_print(file: Path) -> dict:
    if file.name.endswith(".safetensors"):
        raw = _safetensors_print(file)
    else:
        raw = file.read_bytes()
    return {"size": file.stat().st_size, "sha256": hashlib.sha256(raw).hexdigest()}


def _safetensors_print(file: Path) -> bytes:
    """The header, and SAMPLES small pieces spread over the data: another model of the same architecture has
    the same header, but not the same bytes at those places (a few KiB read, whatever the file's size)."""
    try:
        raw, _ = read_safetensors_header(file)
    except CheckpointError:  # a damaged file still differs from the intact one: fingerprint what is there
        with file.open("rb") as f:
            return f.read(SAMPLE_BYTES)
    size = file.stat().st_size
    start = len(raw)
    pieces = [raw]
    with file.open("rb") as f:
        for i in range(SAMPLES):
            spare = max(size - start - SAMPLE_BYTES, 0)  # evenly spread, the last piece ending at the end
            f.seek(start + spare * i // (SAMPLES - 1))
            pieces.append(f.read(SAMPLE_BYTES))
    return b"".join(pieces)
