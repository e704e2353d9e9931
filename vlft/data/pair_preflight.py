"""`vlft check-data` for preference data (schedule.objective "dpo", "ipo", "mpo"): every pair read and encoded
as training encodes it (`vlft.data.pair_dataset`), every image decoded, all problems collected one line each
(no rejected answer, the same answer twice, an empty answer, an image count that differs from the
placeholders, ...), and the token percentiles of the chosen and the rejected sides."""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field

from vlft.data.dataset import encode_checked, pipeline_from_spec, sources_of
from vlft.data.formats import ReadReport, read_preference_pairs
from vlft.data.preflight import Percentiles, _decode_all, _plural
from vlft.data.problems import (EMPTY_ANSWER, IDENTICAL_ANSWERS, IMAGE_COUNT, IMAGE_OUTSIDE_ROOT, KEPT_WITH_WARNING,
                                LEADING_ASSISTANT, MALFORMED, MISSING_IMAGE, NO_REJECTED, NO_SAMPLES, TOO_LONG,
                                UNREADABLE_IMAGE, USER_TURNS_MERGED, BAD_SAMPLE)

#: Problem kinds in report order; as for SFT data, "too long" is a warning under data.on_bad_sample="skip".
PAIR_KINDS = (MALFORMED, NO_REJECTED, IDENTICAL_ANSWERS, EMPTY_ANSWER, IMAGE_COUNT, MISSING_IMAGE, UNREADABLE_IMAGE,
              BAD_SAMPLE, TOO_LONG, NO_SAMPLES, LEADING_ASSISTANT, USER_TURNS_MERGED, IMAGE_OUTSIDE_ROOT)
_READ_MISMATCH = re.compile(r"'<image>' placeholder\(s\).* but \d+ path\(s\) in '")


@dataclass
class PairReport:
    """What check-data found in preference data; `format_pair_report` prints it."""

    config: str
    on_bad_sample: str
    pairs_per_dataset: dict[str, int] = field(default_factory=dict)
    read: int = 0                        # pairs read (repeats applied)
    usable: int = 0                      # pairs training would keep
    images_checked: int = 0
    problems: dict[str, list[str]] = field(default_factory=dict)
    chosen_tokens: Percentiles = field(default_factory=Percentiles)
    rejected_tokens: Percentiles = field(default_factory=Percentiles)

    def _is_warning(self, kind: str) -> bool:
        return kind in KEPT_WITH_WARNING or (kind == TOO_LONG and self.on_bad_sample == "skip")

    @property
    def error_kinds(self) -> list[str]:
        return [k for k in PAIR_KINDS if self.problems.get(k) and not self._is_warning(k)]

    @property
    def exit_code(self) -> int:
        return 1 if self.error_kinds else 0


def check_pairs(spec, *, tokenizer, info, config: str = "", workers: int | None = None, log=None,
                **_options) -> PairReport:
    """Read, encode and decode every pair of `spec.data.datasets`; collect all problems (see the module doc)."""
    sources = sources_of(spec)
    pipeline = pipeline_from_spec(spec, tokenizer, info)
    report = PairReport(config=config, on_bad_sample=spec.data.on_bad_sample)
    problems: dict[str, list[str]] = {kind: [] for kind in PAIR_KINDS}
    read = ReadReport()
    pairs = read_preference_pairs(sources, seed=spec.schedule.seed, report=read)
    for line in read.problems:
        problems[read.kinds.get(line) or (IMAGE_COUNT if _READ_MISMATCH.search(line) else MALFORMED)].append(line)
    for warning in read.warnings:
        problems[warning.kind].append(warning.line)
    report.read = len(pairs)
    report.pairs_per_dataset = dict(Counter(p.dataset for p in pairs))

    paths = list(dict.fromkeys(path for pair in pairs for path in pair.images))
    workers = workers or min(8, os.cpu_count() or 1)
    if log is not None:
        log(f"check-data: {len(pairs)} preference pairs, decoding {len(paths)} images with {workers} threads ...")
    bad_images = _decode_all(paths, workers)
    report.images_checked = len(paths)

    chosen, rejected = [], []
    for pair in pairs:
        failed = [bad_images[p] for p in pair.images if p in bad_images]
        if failed:
            for kind, message in failed:
                problems[kind].append(f"{pair.where}: {message}")
            continue
        sides = [pair.as_sample(pair.chosen), pair.as_sample(pair.rejected)]
        encoded, _, _, kind, problem = encode_checked(sides[0], pipeline, answers=sides)
        if encoded is not None:
            chosen.append(len(encoded[0].input_ids))
            rejected.append(len(encoded[1].input_ids))
        if problem is not None:
            problems[kind].append(problem)
            continue
        report.usable += 1
    if not report.usable:
        problems[NO_SAMPLES].append(f"{config or 'data.datasets'}: none of the {len(pairs)} pairs read is usable, "
                                    "so training would stop at once")
    report.problems = {kind: lines for kind, lines in problems.items() if lines}
    report.chosen_tokens, report.rejected_tokens = Percentiles.of(chosen), Percentiles.of(rejected)
    return report


def format_pair_report(report: PairReport, *, max_lines: int = 50) -> str:
    """The report as text: pairs per dataset, problems (at most `max_lines` per kind), tokens of both sides."""
    out = [f"check-data {report.config} (preference pairs)".replace("  ", " "), "", "datasets:"]
    for name, n in report.pairs_per_dataset.items():
        out.append(f"  {name}  {_plural(n, 'pair')}")
    out.append(f"  total: {_plural(report.read, 'pair')} read; {_plural(report.images_checked, 'image file')} "
               f"checked; {_plural(report.usable, 'pair')} usable")
    out += ["", "problems:" if report.problems else "problems: none"]
    for kind in PAIR_KINDS:
        lines = report.problems.get(kind, [])
        if lines:
            severity = "warning" if report._is_warning(kind) else "error"
            out.append(f"  {kind} ({len(lines):,}, {severity}):")
            out += [f"    {line}" for line in lines[:max_lines]]
            if len(lines) > max_lines:
                out.append(f"    ... and {len(lines) - max_lines:,} more")
    out += ["", "tokens per side (prompt + answer, images expanded):",
            f"  {'':<9} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}"]
    for label, p in (("chosen", report.chosen_tokens), ("rejected", report.rejected_tokens)):
        out.append(f"  {label:<9} {p.p50:>8,} {p.p90:>8,} {p.p99:>8,} {p.max:>8,}")
    out.append("")
    if report.exit_code:
        kinds = ", ".join(f"{len(report.problems[k]):,} {k}" for k in report.error_kinds)
        out.append(f"FAILED: {kinds}")
    else:
        out.append("OK")
    return "\n".join(out)
