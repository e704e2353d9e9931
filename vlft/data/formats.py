"""Read a user's dataset (LLaVA, ShareGPT/messages, InternVL meta; JSON, JSONL, parquet, save_to_disk) into Samples.

Reading resolves image paths but never opens an image. A file that cannot be read at all raises
`DataFormatError`; a row that is structurally bad is skipped and written to `ReadReport.problems` as one
``file:sample-id: what is wrong`` line when a report is given, and raised otherwise. A row that is read but
looks wrong (see `normalize_turns`, or an image path leaving image_root) is kept and listed in
`ReadReport.warnings`. Text files are UTF-8 (a byte-order mark is allowed).
"""

from __future__ import annotations

import codecs
import contextlib
import json
import math
import os
import random
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from vlft.data.problems import IMAGE_OUTSIDE_ROOT, LEADING_ASSISTANT, USER_TURNS_MERGED
from vlft.data.record import IMAGE_PLACEHOLDER, Sample, Turn
from vlft.errors import DataError

FORMATS = ("auto", "llava", "sharegpt", "internvl_meta")

# Role names seen in the wild -> ours. Looked up lower-cased ("Human", "GPT" occur in LLaVA-style data).
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
# Row keys the readers consume; every other non-null key goes to Sample.extra (answers, choices, category...).
_CONSUMED_KEYS = frozenset({"id", "image", "images", "conversations", "messages"})
_IMAGE_BLOCK_TYPES = ("image", "image_url")


@dataclass(frozen=True)
class DatasetSource:
    """One entry of a config's ``data.datasets``."""

    path: str                        # .json/.jsonl/.parquet annotations, a save_to_disk folder, or an InternVL meta
    format: str = "auto"             # "auto" | "llava" | "sharegpt" | "internvl_meta"
    image_root: str | None = None    # relative image paths resolve here (default: the folder holding `path`)
    repeat: float = 1.0              # <1 keeps a deterministic fraction; >1 repeats the int part and keeps the fraction
    max_tiles: int | None = None     # per-dataset tiling budget (an InternVL meta's max_dynamic_patch wins)
    name: str | None = None          # dataset name for Sample.dataset (default: the file stem; a meta uses its keys)


class DataFormatError(DataError, ValueError):
    """A dataset file or row that cannot be read; the one-line message names the file, sample id and key."""


@dataclass(frozen=True)
class ReadWarning:
    """A row that was read and kept, but looks wrong or was changed (see `normalize_turns`)."""

    kind: str   # one of vlft.data.problems.KEPT_WITH_WARNING
    where: str  # "file:sample-id", as Sample.where
    what: str

    @property
    def line(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class ReadReport:
    """Problems found while reading, collected instead of raised; each bad row is skipped."""

    problems: list[str] = field(default_factory=list)  # one line each: "file:sample-id: what is wrong"
    warnings: list[ReadWarning] = field(default_factory=list)  # rows kept


def read_all(sources: Sequence[DatasetSource], *, seed: int = 0, report: ReadReport | None = None) -> list[Sample]:
    """Read every source in order and concatenate their samples (each repeated as its source says)."""
    samples: list[Sample] = []
    for source in sources:
        samples.extend(read_samples(source, seed=seed, report=report))
    return samples


def read_samples(source: DatasetSource, *, seed: int = 0, report: ReadReport | None = None) -> list[Sample]:
    """Read one dataset (or every dataset of an InternVL meta file) into Samples, repeats applied.

    Args:
        source: where the data is and how to read it.
        seed: makes fractional repeats deterministic; the same seed keeps the same rows.
        report: collects bad rows (which are skipped); without one the first bad row raises.

    Raises:
        DataFormatError: the file is missing, does not parse, has an unknown format, or (without a
            report) a row is bad.
    """
    path = os.fspath(source.path)
    if source.format not in FORMATS:
        raise DataFormatError(f"{path}: unknown format {source.format!r}: use one of {', '.join(FORMATS)}")
    _check_repeat(source.repeat, path)
    if not os.path.exists(path):
        raise DataFormatError(f"{path}: file not found (data.datasets[].path)")

    meta = _maybe_meta(path, source.format)
    if meta is not None:
        return _read_meta(path, meta, source, seed=seed, report=report)

    image_root = _image_root(source.image_root, path)
    name = source.name or _stem(path)
    samples = _read_annotation(path, source.format, image_root=image_root, dataset=name,
                               max_tiles=source.max_tiles, report=report)
    return _repeat(samples, source.repeat, seed=seed, key=name)


def detect_format(first_row: Mapping) -> str:
    """Name the format of a row (or an InternVL meta object): "llava", "sharegpt" or "internvl_meta".

    Keys decide: ``messages`` is ShareGPT/OpenAI style; ``conversations`` with ``images`` (and no
    ``image``) is LLaMA-Factory's ShareGPT; ``conversations`` otherwise is LLaVA; an object whose values
    are objects with an ``annotation`` is an InternVL meta.

    >>> detect_format({"id": "1", "image": "a.jpg", "conversations": []})
    'llava'
    >>> detect_format({"messages": [], "images": []})
    'sharegpt'
    """
    keys = set(first_row)
    if "messages" in keys:
        return "sharegpt"
    if "conversations" in keys:
        return "sharegpt" if "images" in keys and "image" not in keys else "llava"
    if first_row and all(isinstance(v, Mapping) for v in first_row.values()) and any(
            "annotation" in v for v in first_row.values()):
        return "internvl_meta"
    shown = ", ".join(sorted(map(str, keys))[:8]) or "none"
    raise DataFormatError(f"cannot tell the dataset format from keys [{shown}]: expected 'conversations' (LLaVA), "
                          "'messages' + 'images' (ShareGPT) or an InternVL meta {name: {root, annotation}}; "
                          "or set data.datasets[].format")


# ---------------------------------------------------------------------------------------------- files -> rows

def _read_annotation(path: str, fmt: str, *, image_root: str, dataset: str, max_tiles: int | None,
                     report: ReadReport | None) -> list[Sample]:
    rows, columns = _read_rows(path)
    if not rows:
        return []
    if fmt == "auto":
        try:
            fmt = detect_format(dict.fromkeys(columns))
        except DataFormatError as e:
            raise DataFormatError(f"{path}: {e}") from None
    if fmt == "internvl_meta":
        raise DataFormatError(f"{path}: format='internvl_meta' but the file is a list of samples, not "
                              "{name: {root, annotation, repeat_time}}: use format='auto'")
    turns_key = "messages" if fmt == "sharegpt" and "messages" in columns else "conversations"
    samples = []
    for index, row in enumerate(rows):
        sample_id = str(index)
        try:
            if not isinstance(row, dict):
                raise _RowError(f"row is {type(row).__name__}, expected an object with '{turns_key}'")
            if row.get("id") is not None:
                sample_id = str(row["id"])
            turns, images = _parse_row(row, turns_key)
        except _RowError as e:
            line = f"{path}:{sample_id}: {e}"
            if report is None:
                raise DataFormatError(line) from None
            report.problems.append(line)
            continue
        turns, notes = normalize_turns(turns)
        resolved = tuple(_resolve(p, image_root) for p in images)
        if report is not None:
            where = f"{path}:{sample_id}"
            report.warnings += [ReadWarning(kind, where, note) for kind, note in notes]
            for given, full in zip(images, resolved):
                if not _is_inside(full, image_root) and not _is_absolute(given):
                    # Legitimate in a shared tree (a sibling folder of images), a mistake more often.
                    report.warnings.append(ReadWarning(IMAGE_OUTSIDE_ROOT, where, (
                        f"image path {given!r} leaves the image root {image_root} (it resolves to {full}); kept")))
        extra = {k: v for k, v in row.items() if v is not None and k not in _CONSUMED_KEYS}
        samples.append(Sample(id=sample_id, source=path, dataset=dataset, turns=turns, images=resolved,
                              max_tiles=max_tiles, extra=extra))
    return samples


def _read_rows(path: str) -> tuple[list, list[str]]:
    """All rows of an annotation file or save_to_disk directory as Python objects, plus the column names.

    Through `datasets`, which unifies the schema across rows: a key missing from a row comes back as
    None (so a missing key and a null read the same), and nested dicts (turns, content blocks) gain the
    other rows' keys as None. Rows that datasets cannot read as a table go through the json module.
    """
    if os.path.isdir(path):
        return _via_datasets(path, "disk")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".parquet":
        return _via_datasets(path, "parquet")
    if suffix not in (".json", ".jsonl"):
        raise DataFormatError(f"{path}: unsupported file type {suffix or '(none)'!r}: give a .json, .jsonl or "
                              ".parquet file, an InternVL meta .json, or a directory written by save_to_disk")
    try:
        return _via_datasets(path, "json")
    except DataFormatError:
        # datasets cannot make one table of some valid files: a row that is not an object, a blank line in
        # a JSONL whose rows mix types, an empty file (StopIteration), and before datasets 4.x (no Json
        # feature) a key that is a string in one row and a list in another ("image": "a.jpg" vs [...]).
        # The json module reads them all, and its errors carry a line number.
        rows = _via_json(path, suffix)
        columns: dict[str, None] = {}
        for row in rows:
            if isinstance(row, dict):
                columns.update(dict.fromkeys(row))
        return rows, list(columns)


def _via_datasets(path: str, kind: str) -> tuple[list, list[str]]:
    import datasets  # heavy; only when data is read

    with tempfile.TemporaryDirectory(prefix="vlft-datasets-") as cache_dir, _quiet_datasets(datasets):
        # A throwaway cache_dir: load_dataset writes arrow files there (never into ~/.cache), and
        # keep_in_memory holds the table after the directory is gone.
        try:
            if kind == "disk":
                ds = datasets.load_from_disk(path, keep_in_memory=True)
                if isinstance(ds, datasets.DatasetDict):
                    ds = _one_split(ds, path)
            else:
                ds = datasets.load_dataset(kind, data_files=path, split="train", cache_dir=cache_dir,
                                           keep_in_memory=True)
            # to_list decodes Json columns but not Image columns: those stay {"bytes", "path"} dicts.
            return ds.to_list(), list(ds.column_names)
        except DataFormatError:
            raise
        except Exception as e:  # datasets raises many types (DatasetGenerationError, ArrowInvalid, StopIteration...)
            what = "a dataset saved with save_to_disk" if kind == "disk" else f"a {kind} file"
            cause = e.__cause__ or e
            raise DataFormatError(f"{path}: cannot be read as {what} "
                                  f"({type(cause).__name__}: {_one_line(cause)})") from None


def _one_split(ds, path: str):
    if "train" in ds:
        return ds["train"]
    if len(ds) == 1:
        return next(iter(ds.values()))
    raise DataFormatError(f"{path}: a DatasetDict with splits {sorted(ds)} and no 'train': "
                          "save the split to train on, or name it 'train'")


@contextlib.contextmanager
def _quiet_datasets(datasets):
    """No progress bars or 'Failed to load JSON' log lines while we read (we report our own errors)."""
    bars_were_off = datasets.utils.are_progress_bars_disabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.utils.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not bars_were_off:
            datasets.utils.enable_progress_bars()


def read_text(path: str) -> str:
    """A UTF-8 text file's contents (a leading byte-order mark dropped), or a DataFormatError naming the
    file, the first byte that is not UTF-8 and its line."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataFormatError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            found = "it is UTF-16 (it starts with a UTF-16 byte-order mark)"
        else:
            line = data.count(b"\n", 0, e.start) + 1
            found = f"byte 0x{data[e.start]:02x} at offset {e.start} (line {line}) is not UTF-8"
        raise DataFormatError(f"{path}: not UTF-8 text: {found}; save it as UTF-8 "
                              "(e.g. iconv -f ITS-ENCODING -t UTF-8 FILE > NEW-FILE)") from None


def _via_json(path: str, suffix: str) -> list:
    text = read_text(path)
    if suffix == ".json":
        try:
            data = json.loads(text) if text.strip() else []
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":
                raise DataFormatError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
            data = None  # one object after another: JSON lines in a .json file
        if data is not None:
            if not isinstance(data, list):
                raise DataFormatError(f"{path}: the top level is a {type(data).__name__}, expected a list of samples")
            return data
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{path}: line {number} is not valid JSON ({e.msg}, column {e.colno})") from None
    return rows


def _maybe_meta(path: str, fmt: str) -> dict | None:
    """The parsed InternVL meta object if `path` is one, else None (cheap for annotation files)."""
    if fmt not in ("auto", "internvl_meta") or not path.lower().endswith(".json") or not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise DataFormatError(f"{path}: cannot be read ({e.strerror or e})") from None
    # A byte-order mark (Windows editors write one) must not hide the "{" of a meta object.
    if not head.removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"{"):
        if fmt == "internvl_meta":
            raise DataFormatError(f"{path}: format='internvl_meta' but the file is not a JSON object "
                                  "{name: {root, annotation, repeat_time}}")
        return None
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and fmt == "auto":
            return None  # JSONL content in a .json file: an annotation file
        raise DataFormatError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if fmt == "internvl_meta" or _detect_or_none(data) == "internvl_meta":
        return data
    raise DataFormatError(f"{path}: a JSON object that is not an InternVL meta {{name: {{root, annotation}}}}; "
                          "an annotation .json must be a list of samples")


def _detect_or_none(row: Mapping) -> str | None:
    try:
        return detect_format(row)
    except DataFormatError:
        return None


# ----------------------------------------------------------------------------------------- InternVL meta

def _read_meta(path: str, meta: Mapping, source: DatasetSource, *, seed: int,
               report: ReadReport | None) -> list[Sample]:
    meta_dir = os.path.dirname(os.path.abspath(path))
    root_base = os.path.abspath(source.image_root) if source.image_root else meta_dir
    samples: list[Sample] = []
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
        _check_repeat(repeat, where)
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
        part = _read_annotation(ann_path, "auto", image_root=os.path.abspath(image_root), dataset=str(name),
                                max_tiles=max_tiles, report=report)
        samples.extend(_repeat(part, repeat * source.repeat, seed=seed, key=str(name)))
    return samples


# ------------------------------------------------------------------------------------------- rows -> turns

class _RowError(Exception):
    """A bad row; read_samples prefixes the file and sample id."""


def _parse_row(row: Mapping, turns_key: str) -> tuple[tuple[Turn, ...], list[str]]:
    """(turns, image paths in placeholder order) of one row, or _RowError naming what is wrong."""
    raw_turns = row.get(turns_key)
    if raw_turns is None:
        other = "messages" if turns_key == "conversations" else "conversations"
        if row.get(other) is not None:  # the other format's key: accept it (a mixed file)
            turns_key, raw_turns = other, row[other]
        else:
            raise _RowError(f"missing '{turns_key}'")
    if not isinstance(raw_turns, list):
        raise _RowError(f"'{turns_key}' is a {type(raw_turns).__name__}, expected a list of turns")
    if not raw_turns:
        raise _RowError(f"empty '{turns_key}'")
    role_key, text_key = ("role", "content") if turns_key == "messages" else ("from", "value")

    given = _given_images(row)
    turns: list[Turn] = []
    slots: list[str | None] = []  # one per placeholder: a path from a content block, or None = next given image
    for i, turn in enumerate(raw_turns):
        if not isinstance(turn, dict):
            raise _RowError(f"{turns_key}[{i}] is a {type(turn).__name__}, expected {{'{role_key}', '{text_key}'}}")
        raw_role = turn.get(role_key)
        if raw_role is None:
            # LLaMA-Factory lets either tag pair name the fields; a datasets-unified row has both keys, one null.
            alt_role, alt_text = ("from", "value") if role_key == "role" else ("role", "content")
            if turn.get(alt_role) is not None:
                raw_role, text_key_i = turn[alt_role], alt_text
            else:
                raise _RowError(f"{turns_key}[{i}] has no '{role_key}'")
        else:
            text_key_i = text_key
        role = _ROLES.get(raw_role.lower()) if isinstance(raw_role, str) else None
        if role is None:
            raise _RowError(f"{turns_key}[{i}] has unknown role {raw_role!r}: use human/user, gpt/assistant or system")
        text = _turn_text(turn.get(text_key_i), f"{turns_key}[{i}]", text_key_i, slots)
        if role != "user" and IMAGE_PLACEHOLDER in text:
            raise _RowError(f"{turns_key}[{i}] ({role}) contains '{IMAGE_PLACEHOLDER}': images go in user turns")
        turns.append(Turn(role, text))

    if not slots and given:
        # LLaVA / InternVL put the images before the first user message when the text has no placeholder.
        first_user = next((i for i, t in enumerate(turns) if t.role == "user"), None)
        if first_user is None:
            raise _RowError(f"{len(given)} image(s) but no user turn to put them in")
        turns[first_user] = Turn("user", f"{IMAGE_PLACEHOLDER}\n" * len(given) + turns[first_user].text)
        return tuple(turns), given

    wanted = slots.count(None)
    if wanted != len(given):
        placed = len(slots) - wanted
        detail = f" (plus {placed} image block(s) with their own path)" if placed else ""
        key = "images" if row.get("images") is not None else "image"
        raise _RowError(f"{wanted} '{IMAGE_PLACEHOLDER}' placeholder(s){detail} but {len(given)} path(s) in '{key}'")
    pending = iter(given)
    return tuple(turns), [p if p is not None else next(pending) for p in slots]


def normalize_turns(turns: tuple[Turn, ...]) -> tuple[tuple[Turn, ...], list[tuple[str, str]]]:
    """Turns as the LLaVA, InternVL and XTuner readers train them, and (kind, note) for each change made.

    - Assistant turns before the first user turn are dropped (a greeting nobody asked for): LLaVA's and
      InternVL's `preprocess` and XTuner's `llava_map_fn` all skip them and train the rest.
    - Two user turns in a row become one, joined by a newline (XTuner concatenates them too): the template
      then alternates as at inference, and no text or image is lost. LLaMA-Factory drops such a row instead;
      keeping it is the choice that loses nothing, and check-data lists each one.

    >>> turns, notes = normalize_turns((Turn("assistant", "Hi!"), Turn("user", "a"), Turn("user", "b"),
    ...                                 Turn("assistant", "c")))
    >>> [t.text for t in turns], [kind for kind, _ in notes]
    (['a\\nb', 'c'], ['leading assistant turn dropped', 'user turns merged'])
    """
    notes: list[tuple[str, str]] = []
    out = list(turns)
    first = 1 if out and out[0].role == "system" else 0
    leading = 0
    while first + leading < len(out) and out[first + leading].role == "assistant":
        leading += 1
    if leading:  # with no user turn at all nothing is left, and the sample is dropped for having no answer
        del out[first:first + leading]
        notes.append((LEADING_ASSISTANT, f"starts with {leading} assistant turn(s) before any user turn: "
                                         "dropped those turns"))
    merged: list[Turn] = []
    runs = 0
    for turn in out:
        if merged and turn.role == "user" and merged[-1].role == "user":
            merged[-1] = Turn("user", f"{merged[-1].text}\n{turn.text}")
            runs += 1
        else:
            merged.append(turn)
    if runs:
        notes.append((USER_TURNS_MERGED, f"{runs} user turn(s) follow another user turn: merged "
                                         "each into the one before (joined by a newline)"))
    return tuple(merged), notes


def _turn_text(content, where: str, key: str, slots: list) -> str:
    """A turn's text; OpenAI-style content blocks become text with one placeholder per image block."""
    if isinstance(content, str):
        slots.extend([None] * content.count(IMAGE_PLACEHOLDER))
        return content
    if content is None:
        raise _RowError(f"{where} has no '{key}'")
    if not isinstance(content, list):
        raise _RowError(f"{where} '{key}' is a {type(content).__name__}, expected text or a list of content blocks")
    parts = []
    for j, block in enumerate(content):
        if isinstance(block, str):
            block = {"type": "text", "text": block}
        if not isinstance(block, dict):
            raise _RowError(f"{where} '{key}'[{j}] is a {type(block).__name__}, expected a content block")
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise _RowError(f"{where} '{key}'[{j}] is a text block without a string 'text'")
            slots.extend([None] * text.count(IMAGE_PLACEHOLDER))
            parts.append(text)
        elif kind in _IMAGE_BLOCK_TYPES:
            slots.append(_block_image_path(block, f"{where} '{key}'[{j}]"))
            parts.append(IMAGE_PLACEHOLDER)
        else:
            raise _RowError(f"{where} '{key}'[{j}] has unsupported block type {kind!r}: use 'text' or 'image'")
    return "\n".join(parts)


def _block_image_path(block: Mapping, where: str) -> str | None:
    """The path an image block carries ({"image": p}, {"path": p}, {"image_url": {"url": p}}), or None."""
    for key in ("image", "path", "url", "image_url"):
        value = block.get(key)
        if isinstance(value, dict):
            value = value.get("url")
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise _RowError(f"{where} '{key}' is {type(value).__name__}, expected an image path")
        if value.startswith("data:"):
            raise _RowError(f"{where} is an inline data: URL; vlft reads image files: save it and give its path")
        return value
    return None


def _given_images(row: Mapping) -> list[str]:
    """The row's 'image' / 'images' paths (a string, a list, or HF Image dicts with a path)."""
    key = "image" if row.get("image") is not None else "images"
    value = row.get(key)
    if row.get("videos") or row.get("video"):
        raise _RowError("has videos, which vlft does not read")
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    paths = []
    for n, item in enumerate(items):
        if isinstance(item, dict) and ("bytes" in item or "path" in item):  # a datasets Image feature
            if item.get("bytes") is not None:
                raise _RowError(f"'{key}'[{n}] is image bytes embedded in the dataset; vlft reads image files: "
                                "write the images out and store their paths")
            item = item.get("path")
        if not isinstance(item, str) or not item:
            raise _RowError(f"'{key}'[{n}] is {item!r}, expected an image path")
        paths.append(item)
    return paths


# ------------------------------------------------------------------------------------------------ helpers

def _repeat(samples: list[Sample], repeat: float, *, seed: int, key: str) -> list[Sample]:
    """`int(repeat)` full copies, then a seeded, order-keeping subset of floor(frac * n) samples."""
    n = len(samples)
    full = int(repeat)
    # floor with a tolerance: 2.3 * 10 must keep 23 rows even though 2.3 - 2 = 0.2999...
    total = math.floor(repeat * n + 1e-6)
    extra = max(0, total - full * n)
    out = samples * full
    if extra:
        rng = random.Random(f"vlft-repeat:{seed}:{key}")  # str seeds are stable across processes
        out.extend(samples[i] for i in sorted(rng.sample(range(n), extra)))
    return out


def _check_repeat(repeat, where: str) -> None:
    if not (isinstance(repeat, (int, float)) and math.isfinite(repeat) and repeat >= 0):
        raise DataFormatError(f"{where}: repeat must be a finite number >= 0, got {repeat!r}")


def _image_root(image_root: str | None, path: str) -> str:
    if image_root:
        return os.path.abspath(os.path.expanduser(image_root))
    # The folder holding the annotation file, or holding the save_to_disk directory.
    return os.path.dirname(os.path.abspath(path))


def _is_absolute(image: str) -> bool:
    return image.startswith("~") or os.path.isabs(image)


def _is_inside(path: str, root: str) -> bool:
    """Lexically (symlinks are the user's business): is `path` under the folder `root`?"""
    return os.path.commonpath([path, root]) == os.path.normpath(root)


def _resolve(image: str, root: str) -> str:
    if image.startswith("~"):
        image = os.path.expanduser(image)
    if os.path.isabs(image):
        return image
    return os.path.normpath(os.path.join(root, image))


def _stem(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    return os.path.splitext(base)[0] if os.path.isfile(path) else base


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:200] or type(error).__name__
