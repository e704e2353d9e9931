"""Optimizer, scheduler and RNG state on disk without pickle: safetensors for tensors, JSON for the rest.

Resuming must never run code from a checkpoint someone shared. vlft's own states (plain-torch optimizer and
scheduler, every rank's RNG) are written as safetensors + JSON. DeepSpeed writes its own state with
torch.save; it is read back with `weights_only=True` and an allowlist of the few DeepSpeed classes its
ZeRO files hold, so anything else in them (a planted payload) is refused before it can run.
"""
from __future__ import annotations

import base64
import importlib
import json
import pickle
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vlft.errors import CheckpointError

OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"

#: The classes DeepSpeed's ZeRO checkpoints pickle besides tensors and containers (deepspeed 0.16-0.19).
DEEPSPEED_SAFE_CLASSES = (
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
)


def rng_file(ckpt_dir: Path, rank: int) -> Path:
    return Path(ckpt_dir) / f"rng_state_{rank}.json"


def save_rng_state(path: Path) -> None:
    """Python's, numpy's, torch's (and CUDA's) generators, as JSON."""
    version, numpy_keys, numpy_pos, has_gauss, cached = np.random.get_state()
    python_version, python_state, python_gauss = random.getstate()
    record = {
        "python": [python_version, list(python_state), python_gauss],
        "numpy": [version, np.asarray(numpy_keys).tolist(), int(numpy_pos), int(has_gauss), float(cached)],
        "torch": _bytes(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        record["cuda"] = [_bytes(state) for state in torch.cuda.get_rng_state_all()]
    Path(path).write_text(json.dumps(record))


def load_rng_state(path: Path) -> None:
    record = _read_json(path)
    try:
        version, state, gauss = record["python"]
        random.setstate((version, tuple(state), gauss))
        name, keys, pos, has_gauss, cached = record["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(_tensor(record["torch"]))
        if "cuda" in record and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([_tensor(s) for s in record["cuda"]])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a vlft RNG state ({exc}); the checkpoint is damaged") from None


def save_optimizer_state(ckpt_dir: Path, optimizer: torch.optim.Optimizer, scheduler) -> None:
    """optimizer.state_dict() split into its tensors (safetensors) and everything else (JSON)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, slots in state["state"].items():
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{slot}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{index}.{slot}"] = value
    save_file(tensors, str(Path(ckpt_dir) / OPTIMIZER_TENSORS))
    meta = {"param_groups": state["param_groups"], "scalars": scalars, "scheduler": scheduler.state_dict()}
    (Path(ckpt_dir) / OPTIMIZER_META).write_text(json.dumps(meta))


def load_optimizer_state(ckpt_dir: Path, optimizer: torch.optim.Optimizer, scheduler) -> None:
    meta = _read_json(Path(ckpt_dir) / OPTIMIZER_META)
    tensors = load_file(str(Path(ckpt_dir) / OPTIMIZER_TENSORS))
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        index, slot = key.split(".", 1)
        state.setdefault(int(index), {})[slot] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        scheduler.load_state_dict(meta["scheduler"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{ckpt_dir / OPTIMIZER_META}: does not fit this run's optimizer ({exc})") from None


def load_deepspeed_state(engine, path: Path, tag: str) -> None:
    """engine.load_checkpoint, with every file DeepSpeed reads unpickled by torch's weights-only loader."""
    safe = [cls for cls in (_import(module, name) for module, name in DEEPSPEED_SAFE_CLASSES) if cls is not None]
    reader = engine.checkpoint_engine

    def weights_only_load(file, map_location=None):
        with torch.serialization.safe_globals(safe):
            return torch.load(file, map_location=map_location, weights_only=True)

    reader.load = weights_only_load
    try:
        loaded, _ = engine.load_checkpoint(str(path), tag=tag, load_module_strict=False)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = next((line for line in lines if "GLOBAL" in line), lines[0] if lines else "")
        raise CheckpointError(f"{path}: holds a Python object vlft does not load ({reason[:160]}); a checkpoint "
                              "is data, never code: resume only from checkpoints you trust") from None
    finally:
        del reader.load
    if loaded is None:
        raise CheckpointError(f"{path}: DeepSpeed state missing or unreadable")


def _import(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc}); the checkpoint is damaged") from None


def _bytes(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.numpy().tobytes()).decode()


def _tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)
