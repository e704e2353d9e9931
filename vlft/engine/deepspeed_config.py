"""`--deepspeed zero2|zero3|FILE.json` -> the DeepSpeed config dict, with vlft's batch sizes, clipping and dtype.

A user JSON may leave values "auto" (or out): vlft fills them from the schedule. A value it sets that
contradicts the schedule is an error naming both, never silently one or the other.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from vlft.errors import ConfigError
from vlft.specs import ScheduleSpec

PRESETS = {
    "zero2": {"zero_optimization": {"stage": 2, "contiguous_gradients": True, "overlap_comm": True,
                                    "reduce_scatter": True, "reduce_bucket_size": 500_000_000,
                                    "allgather_bucket_size": 500_000_000}},
    "zero3": {"zero_optimization": {"stage": 3, "contiguous_gradients": True, "overlap_comm": True,
                                    "reduce_bucket_size": 500_000_000, "stage3_prefetch_bucket_size": 500_000_000,
                                    "stage3_param_persistence_threshold": 100_000,
                                    "stage3_gather_16bit_weights_on_model_save": False}},
}
CHOICES = ("zero2", "zero3", "none")


def engine_choice(value: str | None) -> str | None:
    """Normalise --deepspeed / engine.deepspeed: None (plain torch), "zero2", "zero3" or a JSON path."""
    if value is None or str(value).lower() in ("none", "false", ""):
        return None
    if str(value).lower() in PRESETS:
        return str(value).lower()
    if not str(value).endswith(".json") and not Path(value).exists():
        raise ConfigError(f"--deepspeed {value!r}: use zero2, zero3, none or a DeepSpeed JSON file")
    return str(Path(value).resolve())


def check_batch_sizes(schedule: ScheduleSpec, world_size: int) -> int:
    """The global batch (samples or packed rows per optimizer step); schedule.global_batch_size must agree."""
    effective = schedule.micro_batch_size * schedule.gradient_accumulation * world_size
    if schedule.global_batch_size is not None and schedule.global_batch_size != effective:
        raise ConfigError(
            f"schedule.global_batch_size={schedule.global_batch_size} but schedule.micro_batch_size="
            f"{schedule.micro_batch_size} x schedule.gradient_accumulation={schedule.gradient_accumulation} x "
            f"world size {world_size} = {effective}; change one of them (or unset global_batch_size)")
    return effective


def read_deepspeed_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--deepspeed {path}: no such file (use zero2, zero3, none or a DeepSpeed JSON file)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a DeepSpeed config must be a JSON object, got {type(config).__name__}")
    return config


def build_deepspeed_config(choice: str, schedule: ScheduleSpec, *, world_size: int, precision: str) -> dict:
    """The config dict handed to deepspeed.initialize.

    Args:
        choice: "zero2", "zero3" or the path of a DeepSpeed JSON file.
        schedule: micro batch, accumulation and clipping come from here.
        world_size: data-parallel processes (train_batch_size = micro x accumulation x world size).
        precision: "bf16" or "fp16" mixed precision (GPUs, from model.dtype), or "fp32" (CPUs).
    """
    where = choice if choice not in PRESETS else f"--deepspeed {choice}"
    config = copy.deepcopy(PRESETS[choice]) if choice in PRESETS else read_deepspeed_json(choice)
    if precision == "fp32":  # CPU: overlapping communication needs device streams
        config.get("zero_optimization", {}).update(overlap_comm=False)
    wanted = {
        "train_micro_batch_size_per_gpu": schedule.micro_batch_size,
        "gradient_accumulation_steps": schedule.gradient_accumulation,
        "train_batch_size": schedule.micro_batch_size * schedule.gradient_accumulation * world_size,
        "gradient_clipping": float(schedule.max_grad_norm or 0.0),
    }
    schedule_key = {"train_micro_batch_size_per_gpu": "schedule.micro_batch_size",
                    "gradient_accumulation_steps": "schedule.gradient_accumulation",
                    "train_batch_size": "schedule.micro_batch_size x gradient_accumulation x world size",
                    "gradient_clipping": "schedule.max_grad_norm"}
    for key, value in wanted.items():
        given = config.get(key, "auto")
        if given != "auto" and given != value:
            raise ConfigError(f"{where}: {key}={given} contradicts {schedule_key[key]} ({value}); "
                              f"set it to \"auto\" or remove it")
        config[key] = value
    for name in ("bf16", "fp16"):
        section = config.setdefault(name, {})
        if section.get("enabled", "auto") == "auto":
            section["enabled"] = precision == name
        elif section["enabled"] != (precision == name):
            raise ConfigError(f"{where}: {name}.enabled={section['enabled']} contradicts training in {precision} "
                              "(model.dtype, and float32 where there is no GPU); set it to \"auto\"")
    config.setdefault("steps_per_print", 10 ** 12)  # vlft logs itself
    config.setdefault("wall_clock_breakdown", False)
    _fill_auto(config, schedule)
    return config


def _fill_auto(config: dict, schedule: ScheduleSpec) -> None:
    """Values a JSON's optimizer/scheduler sections leave "auto" (the HF Trainer convention)."""
    optimizer = config.get("optimizer", {}).get("params", {})
    for key, value in (("lr", schedule.lr), ("weight_decay", schedule.weight_decay)):
        if optimizer.get(key) == "auto":
            optimizer[key] = value
    leftover = _find_auto(config)
    if leftover:
        raise ConfigError(f"DeepSpeed config: {leftover} is \"auto\", which vlft does not fill; give a value")


def _find_auto(node, path: str = "") -> str | None:
    if isinstance(node, dict):
        for key, value in node.items():
            found = _find_auto(value, f"{path}.{key}" if path else key)
            if found:
                return found
    return path if node == "auto" else None
