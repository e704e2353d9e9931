"""Runs one peer's trainer (LLaMA-Factory or ms-swift) inside its own venv and records what bench_peers.py reads.

Both peers train through `transformers.Trainer`, so one probe fits both: it wraps `Trainer.training_step`
(one call per micro-batch: rows, computed tokens, real tokens, samples, and the trainable-parameter count on
the first call) and the callback handler's `on_step_end` / `on_log` (one record per optimizer step: wall
clock, this process's CPU time, the logged loss). Records go to a JSONL file as they happen, so a run that
fails part-way still shows how far it got. With `VLFT_BENCH_FEED_ONLY` set (bench_peers --load) the wrapped
step returns a zero loss without running the model: the peer's data pipeline alone sets the pace. Only the
standard library, torch and transformers are imported here: this file runs under the peer's python, not vlft's.

    python peer_probe.py EVENTS.jsonl llamafactory CONFIG.json
    python peer_probe.py EVENTS.jsonl swift ARG ARG ...
"""
from __future__ import annotations

import json
import os
import sys
import time


def _attended_4d(mask):
    """[B, T, T] booleans of a 4D mask (LLaMA-Factory's neat packing on sdpa: 0.0 attends, the dtype's min
    does not; a boolean mask: True attends)."""
    mask = mask[:, 0]
    return mask == 0 if mask.is_floating_point() else mask.bool()


def _samples_in(inputs) -> int:
    """Sequences in one micro-batch: rows when padded; segments when packed (LLaMA-Factory's neat packing
    numbers each segment in the 2D attention mask and hands sdpa a block-diagonal 4D one, where a segment
    starts at a token that sees itself but not the token before; ms-swift's padding-free rows restart
    position_ids at 0)."""
    ids = inputs.get("input_ids")
    mask = inputs.get("attention_mask")
    positions = inputs.get("position_ids")
    if mask is not None and mask.dim() == 4:
        attended = _attended_4d(mask)
        starts = attended.diagonal(dim1=-2, dim2=-1).clone()
        starts[:, 1:] &= ~attended.diagonal(offset=-1, dim1=-2, dim2=-1)
        return int(starts.sum())
    if mask is not None and mask.dim() == 2 and int(mask.max()) > 1:
        return int(mask.max(dim=1).values.sum())
    if positions is not None and ids is not None and ids.shape[0] == 1:
        return int((positions.reshape(-1, positions.shape[-1])[0] == 0).sum())
    return int(ids.shape[0]) if ids is not None else 0


def _real_tokens(inputs) -> int:
    """Tokens that are not padding: those the attention mask lets see themselves."""
    ids = inputs.get("input_ids")
    mask = inputs.get("attention_mask")
    if mask is not None and mask.dim() == 4:
        return int(_attended_4d(mask).diagonal(dim1=-2, dim2=-1).sum())
    if mask is not None and mask.dim() == 2:
        return int((mask != 0).sum())
    return int(ids.numel())


def gpu_peak_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def install(events_path: str) -> None:
    import transformers
    import transformers.trainer_callback as trainer_callback

    out = open(events_path, "a", buffering=1)
    feed_only = "VLFT_BENCH_FEED_ONLY" in os.environ
    pending = {"rows": 0, "computed": 0, "real": 0, "samples": 0}
    first = [True]

    def emit(record: dict) -> None:
        out.write(json.dumps(record) + "\n")

    original_step = transformers.Trainer.training_step

    def training_step(self, model, inputs, *args, **kwargs):
        if first[0]:
            first[0] = False
            emit({"event": "params", "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                  "total": sum(p.numel() for p in model.parameters()), "wall": time.time()})
        ids = inputs.get("input_ids")
        if ids is not None:
            pending["rows"] += int(ids.shape[0])
            pending["computed"] += int(ids.numel())
            pending["real"] += _real_tokens(inputs)
            pending["samples"] += _samples_in(inputs)
        if feed_only:  # bench_peers --load: the batch arrived; no compute
            import torch

            return torch.zeros(())
        return original_step(self, model, inputs, *args, **kwargs)

    transformers.Trainer.training_step = training_step

    original_end = trainer_callback.CallbackHandler.on_step_end
    original_log = trainer_callback.CallbackHandler.on_log

    def on_step_end(self, args, state, control):
        emit({"event": "step", "step": state.global_step, "wall": time.time(), "cpu": time.process_time(),
              "gpu_peak_mb": gpu_peak_mb(), **pending})
        for key in pending:
            pending[key] = 0
        return original_end(self, args, state, control)

    def on_log(self, args, state, control, logs):
        if "loss" in logs:
            emit({"event": "loss", "step": state.global_step, "loss": float(logs["loss"])})
        return original_log(self, args, state, control, logs)

    trainer_callback.CallbackHandler.on_step_end = on_step_end
    trainer_callback.CallbackHandler.on_log = on_log


def stand_in_torchaudio() -> None:
    """LLaMA-Factory 0.9.5 imports torchaudio at module level (for audio inputs only). PyPI has no torchaudio
    build for torch 2.13 (its newest, 2.11, fails to load its library against 2.13), so when the real one cannot
    be imported an empty module stands in: the bench's data has no audio, so nothing ever calls it."""
    try:
        import torchaudio  # noqa: F401
    except (ImportError, OSError):
        import types

        sys.modules["torchaudio"] = types.ModuleType("torchaudio")


def main() -> None:
    events, peer, *rest = sys.argv[1:]
    install(events)
    stand_in_torchaudio()
    if peer == "llamafactory":
        from llamafactory.train.tuner import run_exp

        with open(rest[0]) as f:
            run_exp(json.load(f))
    elif peer == "swift":
        from swift.pipelines import sft_main

        sft_main(rest)
    else:
        raise SystemExit(f"peer_probe: unknown peer {peer!r} (llamafactory or swift)")


if __name__ == "__main__":
    main()
