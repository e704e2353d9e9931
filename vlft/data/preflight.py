"""`vlft check-data`: read every sample of a config's datasets, report all problems, tiles and token budgets.

Nothing of the user's is written and no model weights are loaded (the tokenizer and `VLMInfo` come from the
model directory's config.json and tokenizer files, see `vlft.engine.check_data`). The samples are encoded by the
same parallel pass into the same cache as training (`vlft.data.rows`): a check-data before `vlft train`
builds what training then opens, and the reverse. Every image is decoded in full, so a truncated file fails
here rather than hours into training. Every problem is one ``file:sample-id: ...`` line, and all of them are
collected in one run. Images with an EXIF rotation are counted (they train upright, see `tiling.to_rgb`).
"""
from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from vlft.data.collate import token_efficiency
from vlft.data.dataset import pipeline_from_spec, sources_of
# The kinds are re-exported: they are check-data's vocabulary (tests and callers import them from here).
from vlft.data.problems import (BAD_SAMPLE, EMPTY_ANSWER, IMAGE_COUNT, IMAGE_OUTSIDE_ROOT, KEPT_WITH_WARNING,
                                LEADING_ASSISTANT, MALFORMED, MISSING_IMAGE, NO_ASSISTANT, NO_SAMPLES, TOO_LONG,
                                UNREADABLE_IMAGE, USER_TURNS_MERGED)
from vlft.data.record import IMAGE_PLACEHOLDER
from vlft.data.rows import encode_rows
from vlft.data.sampler import plan_batches
from vlft.data.tiling import ImageError, ImageNotFoundError, load_image

#: Problem kinds in report order. "too long" is a warning when data.on_bad_sample="skip"; the kinds of rows
#: that training keeps (KEPT_WITH_WARNING) are always warnings; the rest are errors.
KINDS = (MALFORMED, MISSING_IMAGE, UNREADABLE_IMAGE, IMAGE_COUNT, NO_ASSISTANT, EMPTY_ANSWER, BAD_SAMPLE, TOO_LONG,
         NO_SAMPLES, LEADING_ASSISTANT, USER_TURNS_MERGED, IMAGE_OUTSIDE_ROOT)

#: Lines printed per problem kind; the result keeps them all.
MAX_LINES_PER_KIND = 50
# The reader's message for a row whose placeholders and image paths disagree (vlft.data.formats._parse_row).
_READ_MISMATCH = re.compile(r"'<image>' placeholder\(s\).* but \d+ path\(s\) in '")
_DECODE_CHUNK = 1024  # images in flight at once: bounds the futures held, not the threads


@dataclass(frozen=True)
class Percentiles:
    """Nearest-rank percentiles of per-sample token counts (all zero when there are no samples)."""

    p50: int = 0
    p90: int = 0
    p99: int = 0
    max: int = 0

    @classmethod
    def of(cls, values: Sequence[int]) -> Percentiles:
        """Nearest rank: p-th percentile = the ceil(p% * n)-th smallest value.

        >>> Percentiles.of(list(range(1, 101)))
        Percentiles(p50=50, p90=90, p99=99, max=100)
        """
        if not values:
            return cls()
        ordered = sorted(values)

        def rank(p: float) -> int:
            return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

        return cls(p50=rank(50), p90=rank(90), p99=rank(99), max=ordered[-1])


@dataclass
class PreflightReport:
    """What `vlft check-data` found; `format_report` prints it, tests read the numbers."""

    config: str
    max_length: int
    micro_batch_size: int
    on_bad_sample: str                   # "skip": too-long samples are a warning; "error": an error
    packing: bool                        # what the config trains with
    model: str = ""                      # one line: family, tile size, tokens per tile, template
    samples_per_dataset: dict[str, int] = field(default_factory=dict)   # rows read (before repeats)
    samples_per_epoch: dict[str, int] = field(default_factory=dict)     # with repeats: what one epoch sees
    images_checked: int = 0              # distinct image files tried (decoded + failed)
    images_decoded: int = 0              # distinct image files that decoded in full
    images_missing: int = 0              # ... that are not there (or a symlink to nothing)
    images_unreadable: int = 0           # ... that are there but do not open or decode
    images_rotated: int = 0              # ... whose EXIF orientation rotates or mirrors them (trained upright)
    encoded: int = 0                     # distinct samples tokenized (the token percentiles are over these)
    usable: int = 0                      # distinct samples training would keep
    problems: dict[str, list[str]] = field(default_factory=dict)        # kind -> "file:id: problem" lines
    tile_histogram: dict[int, int] = field(default_factory=dict)        # tiles per image -> images
    image_tokens: Percentiles = field(default_factory=Percentiles)
    text_tokens: Percentiles = field(default_factory=Percentiles)
    total_tokens: Percentiles = field(default_factory=Percentiles)
    padding_efficiency: float = 1.0      # real / computed tokens, one sample per row
    packing_efficiency: float = 1.0      # real / computed tokens, samples packed up to max_length per row
    padding_batches: int = 0             # micro batches per epoch
    packing_batches: int = 0

    def _is_warning(self, kind: str) -> bool:
        return kind in KEPT_WITH_WARNING or (kind == TOO_LONG and self.on_bad_sample == "skip")

    @property
    def error_kinds(self) -> list[str]:
        return [k for k in KINDS if self.problems.get(k) and not self._is_warning(k)]

    @property
    def warning_kinds(self) -> list[str]:
        return [k for k in KINDS if self.problems.get(k) and self._is_warning(k)]

    @property
    def exit_code(self) -> int:
        """0 when training would see no error (too-long samples under "skip" are only a warning), else 1."""
        return 1 if self.error_kinds else 0


def check_data(spec, *, tokenizer, info, config: str = "", workers: int | None = None,
               log: Callable[[str], None] | None = None, num_proc: int | None = None) -> PreflightReport:
    """Read every sample of `spec.data.datasets` and collect all problems, tile counts and token budgets.

    Args:
        spec: the ExperimentSpec (as `vlft.config.load_config` returns it).
        config: the config's path, for the report's header.
        tokenizer, info: the model's tokenizer and VLMInfo (`vlft check-data` reads them from the model
            directory's config.json and tokenizer files without loading weights: vlft.engine.check_data).
        workers: threads decoding images (PIL releases the GIL while decoding); default min(8, CPUs).
        log: called with a progress line before the long part (decoding).
        num_proc: processes of the encoding pass (default: `vlft.data.rows.default_procs`).

    Raises:
        DataError: a dataset file is missing or cannot be read at all.
        ConfigError: data.datasets is empty, or the data settings do not fit the model.
    """
    data = spec.data
    sources = sources_of(spec)
    pipeline = pipeline_from_spec(spec, tokenizer, info)

    report = PreflightReport(config=config, max_length=data.max_length,
                             micro_batch_size=spec.schedule.micro_batch_size,
                             on_bad_sample=data.on_bad_sample, packing=data.packing,
                             model=(f"{info.family}, {info.tile_size} px tiles, {info.tokens_per_tile} tokens per "
                                    f"tile, template {data.template}, tiling {data.tiling.mode} "
                                    f"(max {data.tiling.max_tiles} tiles)"))
    problems: dict[str, list[str]] = {kind: [] for kind in KINDS}

    encoded_rows = encode_rows(sources, pipeline, seed=spec.schedule.seed, num_proc=num_proc, say=log)
    for line in encoded_rows.read_problems:
        problems[IMAGE_COUNT if _READ_MISMATCH.search(line) else MALFORMED].append(line)
    for warning in encoded_rows.read_warnings:  # rows kept with a warning
        problems[warning.kind].append(warning.line)
    rows = encoded_rows.table.select(["source", "id", "dataset", "images", "placeholders", "has_assistant", "kind",
                                      "problem", "length", "image_tokens", "tile_counts", "orientations"]).to_pylist()
    order = encoded_rows.order
    report.samples_per_dataset = {**Counter(r["dataset"] for r in rows), **dict.fromkeys(encoded_rows.empty, 0)}
    report.samples_per_epoch = dict(Counter(rows[i]["dataset"] for i in order))

    # Decode every distinct image once, in threads.
    paths = list(dict.fromkeys(p for r in rows for p in r["images"]))
    rotated = {p for r in rows for p, o in zip(r["images"], r["orientations"]) if o != 1}
    workers = workers or min(8, os.cpu_count() or 1)
    if log is not None:
        log(f"check-data: {len(rows)} samples, decoding {len(paths)} images with {workers} threads ...")
    image_problems = _decode_all(paths, workers)
    report.images_checked = len(paths)
    report.images_missing = sum(kind == MISSING_IMAGE for kind, _ in image_problems.values())
    report.images_unreadable = len(image_problems) - report.images_missing
    report.images_decoded = len(paths) - len(image_problems)
    report.images_rotated = len(rotated - set(image_problems))

    # Check every distinct sample, from its encoded row.
    lengths: dict[int, int] = {}  # row -> tokens, for the rows training keeps
    image_counts, text_counts, total_counts = [], [], []
    tiles: Counter = Counter()
    for number, row in enumerate(rows):
        found = _row_problems(row, image_problems)
        if found:
            for kind, line in found:
                problems[kind].append(line)
            continue
        if row["kind"] is not None:  # what the encoding pass found (a bad sample, an image header)
            problems[row["kind"]].append(row["problem"])
            continue
        total, image_tokens = row["length"], row["image_tokens"]
        image_counts.append(image_tokens)
        text_counts.append(total - image_tokens)
        total_counts.append(total)
        tiles.update(row["tile_counts"])
        if total > data.max_length:
            action = "an error" if data.on_bad_sample == "error" else "dropped"
            problems[TOO_LONG].append(f"{row['source']}:{row['id']}: {total} tokens > data.max_length="
                                      f"{data.max_length} ({image_tokens} image tokens; {action}, "
                                      f"data.on_bad_sample={data.on_bad_sample!r})")
            continue
        lengths[number] = total

    report.encoded, report.usable = len(total_counts), len(lengths)
    if not lengths:
        problems[NO_SAMPLES].append(f"{config or 'data.datasets'}: none of the {len(rows)} samples read is "
                                    "usable, so training would stop at once")
    report.problems = {kind: lines for kind, lines in problems.items() if lines}
    report.tile_histogram = dict(sorted(tiles.items()))
    report.image_tokens = Percentiles.of(image_counts)
    report.text_tokens = Percentiles.of(text_counts)
    report.total_tokens = Percentiles.of(total_counts)
    kept_epoch = [int(i) for i in order if int(i) in lengths]
    _plan_efficiency(report, [lengths[i] for i in kept_epoch], [bool(rows[i]["images"]) for i in kept_epoch], spec)
    return report


def _decode_all(paths: list[str], workers: int) -> dict[str, tuple[str, str]]:
    """{path: (kind, message)} for every image that is missing or does not decode; good images are absent."""
    bad: dict[str, tuple[str, str]] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vlft-check-data") as pool:
        for start in range(0, len(paths), _DECODE_CHUNK):
            chunk = paths[start:start + _DECODE_CHUNK]
            for path, problem in zip(chunk, pool.map(_decode_one, chunk)):
                if problem is not None:
                    bad[path] = problem
    return bad


def _decode_one(path: str) -> tuple[str, str] | None:
    try:
        load_image(path).close()  # a full decode, then the pixels are dropped
    except ImageNotFoundError as exc:
        return MISSING_IMAGE, str(exc)
    except ImageError as exc:  # also a symlink loop, a directory, no permission: each says which
        return UNREADABLE_IMAGE, str(exc)
    return None


def _row_problems(row: dict, image_problems: dict[str, tuple[str, str]]) -> list[tuple[str, str]]:
    """(kind, line) for each image and structure problem of one row (all of them, not the first)."""
    where = f"{row['source']}:{row['id']}"
    found = [(kind, f"{where}: {message}") for kind, message in
             (image_problems[p] for p in row["images"] if p in image_problems)]
    if row["placeholders"] != len(row["images"]):
        found.append((IMAGE_COUNT, f"{where}: {row['placeholders']} '{IMAGE_PLACEHOLDER}' placeholder(s) but "
                                   f"{len(row['images'])} image(s)"))
    if not row["has_assistant"]:
        found.append((NO_ASSISTANT, f"{where}: no assistant turn, so nothing to train on"))
    return found


def _plan_efficiency(report: PreflightReport, epoch_lengths: list[int], has_image: list[bool], spec) -> None:
    """Token efficiency of one epoch's batches, padded and packed, for the configured micro batch size."""
    if not epoch_lengths:
        return
    common = dict(batch_size=spec.schedule.micro_batch_size, seed=spec.schedule.seed, epoch=0,
                  group_by_length=spec.data.group_by_length, max_length=spec.data.packed_row_length)
    padded = plan_batches(epoch_lengths, has_image, packing=False, **common)
    packed = plan_batches(epoch_lengths, has_image, packing=True, **common)
    report.padding_efficiency = token_efficiency(epoch_lengths, padded, packed=False)
    report.packing_efficiency = token_efficiency(epoch_lengths, packed, packed=True)
    report.padding_batches, report.packing_batches = len(padded), len(packed)


# ------------------------------------------------------------------------------------------------- printing

def format_report(report: PreflightReport, *, max_lines: int = MAX_LINES_PER_KIND) -> str:
    """The report as text: datasets, problems (at most `max_lines` per kind), tiles, tokens, batching, verdict."""
    out = [f"check-data {report.config}".rstrip(), f"model: {report.model}", "", "datasets:"]
    width = max((len(name) for name in report.samples_per_dataset), default=0)
    for name, rows in report.samples_per_dataset.items():
        per_epoch = report.samples_per_epoch.get(name, 0)
        repeat = f"  ({per_epoch:,} per epoch with repeats)" if per_epoch != rows else ""
        out.append(f"  {name:<{width}}  {rows:>7,} {'sample' if rows == 1 else 'samples'}{repeat}")
    malformed = len(report.problems.get(MALFORMED, [])) + sum(
        1 for line in report.problems.get(IMAGE_COUNT, []) if _READ_MISMATCH.search(line))
    skipped = f", {_plural(malformed, 'malformed row')} skipped" if malformed else ""
    failed = report.images_missing + report.images_unreadable
    why = f" ({report.images_missing:,} missing, {report.images_unreadable:,} unreadable)" if failed else ""
    out.append(f"  total: {_plural(sum(report.samples_per_dataset.values()), 'sample')} read{skipped}; "
               f"{_plural(report.images_checked, 'image file')}: {report.images_decoded:,} decoded, "
               f"{failed:,} failed{why}; {_plural(report.usable, 'sample')} usable")
    if report.images_rotated:
        out.append(f"  {_plural(report.images_rotated, 'image')} carry an EXIF rotation: trained upright, as "
                   "viewers, transformers' load_image and vLLM show them")

    out += ["", "problems:" if report.problems else "problems: none"]
    for kind in KINDS:
        lines = report.problems.get(kind, [])
        if not lines:
            continue
        severity = "warning" if kind in report.warning_kinds else "error"
        out.append(f"  {kind} ({len(lines):,}, {severity}):")
        out += [f"    {line}" for line in lines[:max_lines]]
        if len(lines) > max_lines:
            out.append(f"    ... and {len(lines) - max_lines:,} more")

    out += ["", "tiles per image:"]
    if report.tile_histogram:
        most = max(report.tile_histogram.values())
        for tiles, n in report.tile_histogram.items():
            bar = "#" * max(1, round(30 * n / most))
            out.append(f"  {tiles:>3}  {bar:<30} {n:,}")
    else:
        out.append("  (no images)")

    out += ["", f"tokens per sample, {_plural(report.encoded, 'encoded sample')} "
                f"(data.max_length={report.max_length:,}):",
            f"  {'':<6} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}"]
    for label, p in (("image", report.image_tokens), ("text", report.text_tokens), ("total", report.total_tokens)):
        out.append(f"  {label:<6} {p.p50:>8,} {p.p90:>8,} {p.p99:>8,} {p.max:>8,}")
    too_long = len(report.problems.get(TOO_LONG, []))
    if too_long:
        fate = "an error (data.on_bad_sample='error')" if report.on_bad_sample == "error" else "dropped"
        out.append(f"  {_plural(too_long, 'sample')} longer than data.max_length: {fate}")

    out += ["", f"batching (schedule.micro_batch_size={report.micro_batch_size}):"]
    for name, eff, batches, chosen in (("padding", report.padding_efficiency, report.padding_batches,
                                        not report.packing),
                                       ("packing", report.packing_efficiency, report.packing_batches, report.packing)):
        mark = "  <- configured (data.packing)" if chosen else ""
        out.append(f"  {name}  {eff:6.1%} of computed tokens are real, "
                   f"{_plural(batches, 'micro batch', 'micro batches')} per epoch{mark}")

    out.append("")
    errors = sum(len(report.problems[k]) for k in report.error_kinds)
    warnings = sum(len(report.problems[k]) for k in report.warning_kinds)
    if report.exit_code:
        kinds = ", ".join(f"{len(report.problems[k]):,} {k}" for k in report.error_kinds)
        out.append(f"FAILED: {_plural(errors, 'error')} ({kinds})" + (f", {_plural(warnings, 'warning')}"
                                                                        if warnings else ""))
    else:
        kinds = "; ".join(f"{len(report.problems[k]):,} {k}" + (", dropped" if k == TOO_LONG else ", kept")
                          for k in report.warning_kinds)
        out.append("OK" + (f" with {_plural(warnings, 'warning')} ({kinds})" if warnings else ""))
    return "\n".join(out)


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else plural or word + 's'}"
