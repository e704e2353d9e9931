"""What steps the weights: per-part parameter groups, warmup + cosine, and plain torch's engine for one process."""
from __future__ import annotations

import math

import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from vlft.errors import ConfigError


def param_groups(model: torch.nn.Module, schedule) -> list[dict]:
    """Trainable parameters by part, each part with its learning rate; no weight decay on biases and norms.

    LLM (LoRA or full): schedule.lr; connector: schedule.connector_lr (else lr); vision: schedule.vision_lr
    (else lr). Group names ("llm", "llm/no_decay", "connector", ...) appear in the logs.
    """
    parts = {"language_model": ("llm", schedule.lr),
             "multi_modal_projector": ("connector", _or(schedule.connector_lr, schedule.lr)),
             "vision_tower": ("vision", _or(schedule.vision_lr, schedule.lr))}
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        label, lr = parts[name.split(".", 1)[0]]
        no_decay = param.ndim < 2 or name.endswith(".bias") or "norm" in name.lower()
        key = f"{label}/no_decay" if no_decay else label
        group = groups.setdefault(key, {"name": key, "params": [], "lr": lr,
                                        "weight_decay": 0.0 if no_decay else schedule.weight_decay})
        group["params"].append(param)
    if not groups:
        raise ConfigError("nothing to train: model.llm.train and model.vision.train are 'frozen' and "
                          "model.connector.train is False; unfreeze one of them")
    order = ["llm", "llm/no_decay", "connector", "connector/no_decay", "vision", "vision/no_decay"]
    return [groups[k] for k in order if k in groups]


def warmup_cosine(optimizer, *, warmup_steps: int, total_steps: int, min_lr_ratio: float):
    return get_cosine_with_min_lr_schedule_with_warmup(optimizer, num_warmup_steps=warmup_steps,
                                                       num_training_steps=total_steps, min_lr_rate=min_lr_ratio)


def apply_schedule(optimizer, scheduler, planned: dict[str, tuple[float, float]]) -> None:
    """--resume-allow-changes: the restored optimizer and scheduler take this run's learning rates and
    weight decay (the checkpoint's came back with their state), and the lr is recomputed at the step
    reached, on this run's warmup and cosine."""
    for index, group in enumerate(optimizer.param_groups):
        if group.get("name") not in planned:
            continue
        lr, weight_decay = planned[group["name"]]
        group["initial_lr"], group["weight_decay"] = lr, weight_decay
        scheduler.base_lrs[index] = lr
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)


class PlainEngine:
    """DeepSpeed's engine calls for one process with torch only: loss scaled for accumulation, clipping,
    AdamW and the scheduler stepped on each accumulation boundary."""

    def __init__(self, module, optimizer, scheduler, *, accumulation: int, max_grad_norm: float):
        self.module, self.optimizer, self.lr_scheduler = module, optimizer, scheduler
        self.accumulation, self.max_grad_norm = accumulation, max_grad_norm
        self.micro_steps, self.grad_norm = 0, None
        self.params = [p for group in optimizer.param_groups for p in group["params"]]

    def __call__(self, **inputs):
        return self.module(**inputs)

    def train(self) -> None:
        self.module.train()

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accumulation).backward()

    def step(self) -> None:
        self.micro_steps += 1
        if self.micro_steps % self.accumulation:
            return
        self.grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm or math.inf))
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def get_global_grad_norm(self) -> float | None:
        return self.grad_norm


def current_lrs(engine) -> dict[str, float]:
    """Current learning rate per part (decay and no-decay groups share it)."""
    lrs = {}
    for i, group in enumerate(engine.optimizer.param_groups):
        lrs.setdefault(str(group.get("name", i)).split("/")[0], float(group["lr"]))
    return lrs


def grad_norm(engine) -> float | None:
    norm = engine.get_global_grad_norm()
    return None if norm is None else float(norm)


def _or(value, default):
    return default if value is None else value
