"""`vlft check-data CONFIG`: the config loaded and held against its base (vlft.model.base_settings), the model's
facts read from its directory (config.json and tokenizer files, no weights: vlft.model.facts), and the data
pre-flight (vlft.data.preflight) run on them."""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from vlft.data.pair_preflight import check_pairs, format_pair_report
from vlft.data.preflight import PreflightReport, check_data, format_report
from vlft.model.base_settings import load_config_on_base
from vlft.model.facts import model_facts


def check_data_from_config(config: str | os.PathLike, cfg_options: Sequence[str] = (), *,
                           workers: int | None = None) -> int:
    """Load a config, check its data, print the report; returns the exit code (0 clean, 1 problems)."""
    spec, notes = load_config_on_base(config, cfg_options)
    for note in notes:
        print(f"note: {note}", flush=True)
    report = check_spec_data(spec, config=str(config), workers=workers,
                             log=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_pair_report(report) if spec.schedule.objective != "sft" else format_report(report))
    return report.exit_code


def check_spec_data(spec, **options) -> PreflightReport:
    """`check_data` with the tokenizer and VLMInfo of the model the spec names (read without its weights).

    Raises CheckpointError: the model directory is missing or not a model."""
    info, tokenizer = model_facts(spec.model)
    if spec.schedule.objective != "sft":  # preference pairs (vlft.data.pair_preflight)
        return check_pairs(spec, tokenizer=tokenizer, info=info, **options)
    return check_data(spec, tokenizer=tokenizer, info=info, **options)
