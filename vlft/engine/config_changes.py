"""What differs between the config a checkpoint was trained with and this run's, sorted by what it breaks.

    runtime   how the run executes, not what it learns: always allowed (logging, saving, workers, attention)
    model     what the saved weights are shaped for: never allowed on resume
    exactness data, schedule, seed, batch arithmetic: a resume would no longer equal the uninterrupted run,
              so it is refused unless the user says --resume-allow-changes
"""
from __future__ import annotations

from dataclasses import dataclass

#: Keys that change how a run executes but not what it learns.
RUNTIME_KEYS = frozenset({
    "model.gradient_checkpointing", "model.attn_implementation", "data.num_workers",
    "engine.work_dir", "engine.save_steps", "engine.save_total_limit", "engine.logging_steps",
    "engine.sample_prompts", "engine.sample_every", "engine.sample_max_new_tokens", "engine.eval_steps",
    "engine.report_to",
})
#: Keys outside `model` whose change makes the saved state unloadable.
STRUCTURAL_KEYS = frozenset({"engine.deepspeed"})


@dataclass(frozen=True)
class Change:
    key: str
    old: object
    new: object

    @property
    def kind(self) -> str:
        if self.key in RUNTIME_KEYS or any(self.key.startswith(k + "[") for k in RUNTIME_KEYS):
            return "runtime"
        if self.key.startswith("model.") or self.key in STRUCTURAL_KEYS:
            return "model"
        return "exactness"

    def __str__(self) -> str:
        return f"{self.key}: {self.old!r} there, {self.new!r} now"


def config_changes(old: dict, new: dict) -> list[Change]:
    """Every leaf that differs (lists compared whole: a dataset list is one value), in key order."""
    changes: list[Change] = []
    _walk(old, new, "", changes)
    return changes


def describe(changes: list[Change]) -> str:
    return "; ".join(str(change) for change in changes)


def _walk(old, new, where: str, out: list[Change]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            _walk(old.get(key), new.get(key), f"{where}.{key}" if where else str(key), out)
    elif old != new:
        out.append(Change(where, old, new))
