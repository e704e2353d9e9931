"""InternVL meta files: a JSON object {name: {root, annotation, repeat_time, max_dynamic_patch}}, one entry per
dataset, each entry's annotation a file of samples."""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from vlft.data.readers.repeat import check_repeat
from vlft.data.readers.source import DataFormatError, DatasetSource
from vlft.data.readers.text import read_text

NAME = "internvl_meta"
DESCRIBED = "an InternVL meta {name: {root, annotation}}"


@dataclass(frozen=True)
class MetaEntry:
    """One dataset of a meta file, its paths resolved."""

    name: str
    annotation: str          # the annotation file (absolute, or relative to the working directory)
    image_root: str          # absolute
    repeat: float            # repeat_time
    max_tiles: int | None    # max_dynamic_patch, else the source's max_tiles


def recognises(first_row: Mapping) -> bool:
    keys = set(first_row)
    return (not keys & {"messages", "conversations"} and bool(first_row)
            and all(isinstance(v, Mapping) for v in first_row.values())
            and any("annotation" in v for v in first_row.values()))


def turns_key(path: str, columns: Sequence[str]) -> str:
    """A meta has no turns: a file of samples given as format='internvl_meta' is a mistake."""
    raise DataFormatError(f"{path}: format='internvl_meta' but the file is a list of samples, not "
                          "{name: {root, annotation, repeat_time}}: use format='auto'")


def maybe_meta(path: str, fmt: str) -> dict | None:
    """The parsed InternVL meta object if `path` is one, else None (cheap for annotation files)."""
    if fmt not in ("auto", NAME) or not path.lower().endswith(".json") or not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise DataFormatError(f"{path}: cannot be read ({e.strerror or e})") from None
    # A byte-order mark (Windows editors write one) must not hide the "{" of a meta object.
    if not head.removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"{"):
        if fmt == NAME:
            raise DataFormatError(f"{path}: format='internvl_meta' but the file is not a JSON object "
                                  "{name: {root, annotation, repeat_time}}")
        return None
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and fmt == "auto":
            return None  # JSONL content in a .json file: an annotation file
        raise DataFormatError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if fmt == NAME or (isinstance(data, Mapping) and recognises(data)):
        return data
    raise DataFormatError(f"{path}: a JSON object that is not an InternVL meta {{name: {{root, annotation}}}}; "
                          "an annotation .json must be a list of samples")


def meta_entries(path: str, meta: Mapping, source: DatasetSource) -> Iterator[MetaEntry]:
    """Each dataset of the meta file at `path`, checked (one line naming the dataset and key otherwise)."""
    meta_dir = os.path.dirname(os.path.abspath(path))
    root_base = os.path.abspath(source.image_root) if source.image_root else meta_dir
    for name, entry in meta.items():
        where = f"{path}: dataset {name!r}"
        if not isinstance(entry, dict):
            raise DataFormatError(f"{where} is a {type(entry).__name__}, expected {{root, annotation, repeat_time}}")
        annotation = entry.get("annotation")
        if not isinstance(annotation, str) or not annotation:
            raise DataFormatError(f"{where}: missing 'annotation' (the .jsonl file with its samples)")
        repeat = entry.get("repeat_time", 1.0)
        if isinstance(repeat, bool) or not isinstance(repeat, (int, float)):
            raise DataFormatError(f"{where}: 'repeat_time' must be a number, got {repeat!r}")
        check_repeat(repeat, where)
        max_tiles = entry.get("max_dynamic_patch")
        max_tiles = source.max_tiles if max_tiles is None else max_tiles
        if max_tiles is not None and (isinstance(max_tiles, bool) or not isinstance(max_tiles, int) or max_tiles < 1):
            raise DataFormatError(f"{where}: 'max_dynamic_patch' must be a positive integer, got {max_tiles!r}")
        root = entry.get("root")
        if root is not None and not isinstance(root, str):
            raise DataFormatError(f"{where}: 'root' must be a folder path, got {root!r}")

        ann_path = annotation if os.path.isabs(annotation) else os.path.join(meta_dir, annotation)
        if not os.path.exists(ann_path):
            raise DataFormatError(f"{ann_path}: file not found (the 'annotation' of {name!r} in {path})")
        image_root = (os.path.join(root_base, os.path.expanduser(root)) if root
                      else os.path.dirname(os.path.abspath(ann_path)))
        yield MetaEntry(str(name), ann_path, os.path.abspath(image_root), repeat, max_tiles)
