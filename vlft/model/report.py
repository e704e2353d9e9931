"""The trainable-parameter report printed before training: per part, how it trains and how much."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

PARTS = ("vision_tower", "multi_modal_projector", "language_model")


@dataclass(frozen=True)
class PartReport:
    part: str
    mode: str          # "frozen" | "lora" | "full" | "partial"
    total: int         # parameters of the part, LoRA factors included; 4-bit weights counted unpacked
    trainable: int


def parameter_count(param) -> int:
    """Element count as the model sees it: bitsandbytes packs two 4-bit values per stored byte."""
    quant_state = getattr(param, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        count = 1
        for dim in quant_state.shape:
            count *= dim
        return count
    return param.numel()


def trainable_report(model: nn.Module) -> list[PartReport]:
    rows = []
    for part in PARTS:
        module = getattr(model, part)
        total = trainable = lora = 0
        for name, param in module.named_parameters():
            count = parameter_count(param)
            total += count
            if param.requires_grad:
                trainable += count
                lora += count if "lora_" in name else 0
        if trainable == 0:
            mode = "frozen"
        elif lora == trainable:
            mode = "lora"
        elif trainable == total:
            mode = "full"
        else:
            mode = "partial"
        rows.append(PartReport(part, mode, total, trainable))
    return rows


def format_report(rows: list[PartReport]) -> str:
    total = sum(r.total for r in rows)
    trainable = sum(r.trainable for r in rows)
    lines = [f"{'part':<24}{'mode':<9}{'parameters':>15}{'trainable':>15}{'%':>8}"]
    for r in rows:
        lines.append(f"{r.part:<24}{r.mode:<9}{r.total:>15,}{r.trainable:>15,}{_pct(r.trainable, r.total):>8}")
    lines.append(f"{'all':<24}{'':<9}{total:>15,}{trainable:>15,}{_pct(trainable, total):>8}")
    return "\n".join(lines)


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f}" if whole else "0.00"
