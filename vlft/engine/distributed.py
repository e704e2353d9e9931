"""Where this process stands: one process, torchrun or the deepspeed launcher; and the little collectives.

torchrun and `deepspeed --hostfile` set RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT; a plain
`vlft train` is a world of one and sets them itself (a free port), so DeepSpeed starts the same way everywhere.
"""
from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass

import torch

from vlft.errors import ConfigError

LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_size_from_env() -> int:
    """The launcher's world size (1 without a launcher), readable before any process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def launch_environment(use_deepspeed: bool):
    """Yield the DistEnv of this process. A run without a launcher sets the launch variables for its
    duration; its world-of-one process group stays open for the next run in the same process (DeepSpeed
    caches groups, so a destroyed and re-created one breaks it). Under a launcher the group is closed."""
    saved = {name: os.environ.get(name) for name in LAUNCH_VARS}
    launched = "WORLD_SIZE" in os.environ
    if not launched:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    world_size = world_size_from_env()
    if not use_deepspeed and world_size > 1:
        raise ConfigError(f"--deepspeed none trains in one process, but the launcher started {world_size}; "
                          "use --deepspeed zero2 (or zero3) with torchrun / the deepspeed launcher")
    opened = False
    try:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if use_deepspeed and not torch.distributed.is_initialized():
            _init_deepspeed_comm()
            opened = True
        yield DistEnv(rank=int(os.environ.get("RANK", "0")), local_rank=local_rank, world_size=world_size,
                      device=device)
    finally:
        if opened and launched and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        if not launched:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _init_deepspeed_comm() -> None:
    """DeepSpeed's process group: NCCL on GPUs, gloo on CPUs (its CPU accelerator's fallback).

    On CPU, DeepSpeed's communication backend JIT-compiles a shared-memory all-reduce op the first time
    (~40-75 s, cached in ~/.cache/torch_extensions); no environment variable turns it off, but the op is
    skipped when DeepSpeed's own table of compatible ops says no. Training never uses it (it serves
    inference all-reduce), so mark it incompatible before the backend starts.
    """
    import deepspeed
    import deepspeed.ops

    if not torch.cuda.is_available():
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend=None if torch.cuda.is_available() else "gloo", verbose=False)


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def barrier() -> None:
    if is_distributed() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all ranks (identity without a process group)."""
    if not is_distributed() or torch.distributed.get_world_size() == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()
