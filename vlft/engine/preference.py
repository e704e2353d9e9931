"""The preference step (schedule.objective "dpo", "ipo", "mpo"): one forward of the policy over a pair batch (the
chosen rows, then the rejected rows: `vlft.data.pair_dataset.pair_collate`), the reference's log-probs of the
same rows, and `PreferenceLoss` on the two.

The reference costs no second copy of the model. By default it is the same model with its LoRA adapters
switched off (peft's `disable_adapter`), run under no_grad at each step: exactly the start of training when
only adapters train from zero. When the start is something else -- `--init-from` continues an adapter, or a
connector / fully trained part moves with the adapters -- switching the adapters off is not the start, so
the reference log-probs of every pair are computed in one pass before the first step, with the start model
(schedule.precompute_reference turns this on for the plain case too). Those are stored in every checkpoint
(`reference_logps.safetensors`), as is the loss's own state (MPO's running reward mean), so a resume is exact.
The pass is also kept beside the encoded-data cache (`reference-<key>.safetensors` in its root), keyed like the
encoded rows plus the model: a fresh run on the same pairs and start reads it instead of computing it again.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vlft.data import cache as disk
from vlft.data.dataset import sources_of
from vlft.data.pair_dataset import pair_collate
from vlft.data.rows import key_parts
from vlft.engine.distributed import all_reduce_sum
from vlft.engine.preference_loss import PreferenceLoss, PreferenceSettings, sequence_logps
from vlft.errors import CheckpointError
from vlft.model.base_fingerprint import fingerprint
from vlft.model.trained_state import is_peft

REFERENCE_FILE = "reference_logps.safetensors"   # [pairs, 2] (chosen, rejected) of the training set
LOSS_STATE_FILE = "preference_loss.safetensors"


def settings_from(schedule) -> PreferenceSettings:
    """The PreferenceLoss settings a config's schedule block gives."""
    return PreferenceSettings(objective=schedule.objective, beta=schedule.beta,
                              label_smoothing=schedule.label_smoothing,
                              preference_weight=schedule.preference_weight, quality_weight=schedule.quality_weight,
                              generation_weight=schedule.generation_weight)


def trains_beyond_adapters(model) -> list[str]:
    """The trainable parameters that are not LoRA weights (a connector, a fully trained part), by name: with
    any, the model with its adapters off is not the start of training."""
    return [name for name, p in model.named_parameters() if p.requires_grad and "lora_" not in name]


@contextlib.contextmanager
def adapters_disabled(model):
    """The model with every peft adapter (LLM, vision tower) switched off: the base it was wrapped around."""
    with contextlib.ExitStack() as stack:
        for part in (model.language_model, model.vision_tower):
            if is_peft(part):
                stack.enter_context(part.disable_adapter())
        yield model


def _mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """MPO's running reward mean is one number on every rank: each micro batch adds the mean over the ranks'."""
    total, ranks = all_reduce_sum([float(value), 1.0], value.device)
    return torch.tensor(total / ranks, dtype=torch.float64)


def pair_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen logps, rejected logps, chosen answer tokens, rejected answer tokens) of a pair batch: summed
    log-probs of each side's answer tokens, from one forward over both sides."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "num_tokens")}
    logits = model(**inputs, use_cache=False).logits
    logps, counts = sequence_logps(logits, labels)
    half = labels.shape[0] // 2
    return logps[:half], logps[half:], counts[:half], counts[half:]


class PreferenceObjective:
    """The loss of one pair micro-batch, its metrics, and the state a checkpoint keeps (see the module doc)."""

    def __init__(self, spec, *, reference: torch.Tensor | None = None):
        self.settings = settings_from(spec.schedule)
        self.loss_fn = PreferenceLoss(self.settings, mean_across_ranks=_mean_across_ranks)
        self.reference = reference   # [pairs, 2] of the training set, or None: adapters off at each step
        self.held_reference: torch.Tensor | None = None   # the same for the held-out pairs

    def loss(self, engine, batch: dict, indices: Sequence[int]) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss to backpropagate, metrics) of the pairs `indices` of the training set, collated as `batch`."""
        chosen, rejected, chosen_tokens, rejected_tokens = pair_logps(engine, batch)
        if self.reference is None:
            with torch.no_grad(), adapters_disabled(engine.module):
                ref_chosen, ref_rejected, _, _ = pair_logps(engine.module, batch)
        else:
            ref = self.reference[torch.as_tensor(list(indices))].to(chosen.device)
            ref_chosen, ref_rejected = ref[:, 0], ref[:, 1]
        return self._loss(chosen, rejected, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens)

    def _loss(self, chosen, rejected, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens):
        result = self.loss_fn(chosen, rejected, ref_chosen.to(chosen.dtype), ref_rejected.to(chosen.dtype),
                              chosen_tokens, rejected_tokens)
        metrics = {**result.metrics(), "logps/chosen": float(chosen.detach().mean()),
                   "logps/rejected": float(rejected.detach().mean())}
        return result.loss, metrics

    # ---- checkpoints

    def save(self, out_dir: Path) -> None:
        state = {k: torch.as_tensor(v).detach().cpu().contiguous() for k, v in self.loss_fn.state_dict().items()}
        save_file(state, str(Path(out_dir) / LOSS_STATE_FILE))
        if self.reference is not None:
            tensors = {"reference": self.reference.contiguous()}
            if self.held_reference is not None:
                tensors["held_out"] = self.held_reference.contiguous()
            save_file(tensors, str(Path(out_dir) / REFERENCE_FILE))

    def load(self, checkpoint: Path) -> None:
        """The loss state (and precomputed reference) of `checkpoint`, written by `save`."""
        path = Path(checkpoint) / LOSS_STATE_FILE
        if not path.is_file():
            raise CheckpointError(f"{checkpoint}: no {LOSS_STATE_FILE}: not written by a preference run "
                                  f"(schedule.objective={self.settings.objective!r}); resume it with its own config")
        self.loss_fn.load_state_dict(load_file(str(path)))


def load_reference(checkpoint: Path) -> torch.Tensor:
    """The training pairs' precomputed reference log-probs saved in `checkpoint`."""
    path = Path(checkpoint) / REFERENCE_FILE
    if not path.is_file():
        raise CheckpointError(f"{checkpoint}: no {REFERENCE_FILE}: the reference log-probs this run trains "
                              "against were not saved with it; start again (or resume with the config it was "
                              "trained with)")
    return load_file(str(path))["reference"]


@torch.no_grad()
def precompute_reference(model, dataset, *, batch_size: int, device) -> torch.Tensor:
    """[pairs, 2] (chosen, rejected) summed answer log-probs of every pair of `dataset` under `model` as it is
    now (eval mode, adapters on): the reference of a run whose start is not "the adapters off"."""
    pad_id = dataset.pipeline.tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else pad_id
    was_training = model.training
    model.eval()
    out = torch.zeros(len(dataset), 2, dtype=torch.float32)
    for start in range(0, len(dataset), batch_size):
        indices = range(start, min(start + batch_size, len(dataset)))
        batch = pair_collate([dataset[i] for i in indices], pad_token_id=pad_id)
        chosen, rejected, _, _ = pair_logps(model, {k: v.to(device) for k, v in batch.items() if k != "num_tokens"})
        out[start:start + len(indices), 0] = chosen.float().cpu()
        out[start:start + len(indices), 1] = rejected.float().cpu()
    model.train(was_training)
    return out


@torch.no_grad()
def preference_validation(model, objective: PreferenceObjective, held_out, *, rank: int, world_size: int,
                          device, reference: torch.Tensor | None = None) -> tuple[float, dict[str, float]]:
    """Mean preference loss and metrics over the held-out pairs, one pair per forward; the loss's state
    (MPO's running mean) is left as training had it. Every rank runs the same number of forwards."""
    pad_id = held_out.pipeline.tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else pad_id
    slots = list(range(len(held_out))) + [-1] * (-len(held_out) % world_size)
    state = objective.loss_fn.state_dict()
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    counted = 0.0
    for slot in slots[rank::world_size]:
        batch = pair_collate([held_out[max(slot, 0)]], pad_token_id=pad_id)
        batch = {k: v.to(device) for k, v in batch.items() if k != "num_tokens"}
        chosen, rejected, chosen_tokens, rejected_tokens = pair_logps(model, batch)
        if reference is None:
            with adapters_disabled(model):
                ref_chosen, ref_rejected, _, _ = pair_logps(model, batch)
        else:
            ref_chosen, ref_rejected = reference[max(slot, 0):max(slot, 0) + 1].to(device).unbind(-1)
        loss, metrics = objective._loss(chosen, rejected, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens)
        weight = float(slot >= 0)   # a padding round (a repeat of pair 0) counts for nothing
        counted += weight
        for key, value in {"loss": float(loss), **metrics}.items():
            sums[key] = sums.get(key, 0.0) + weight * value
    objective.loss_fn.load_state_dict(state)
    model.train(was_training)
    keys = sorted(sums)
    totals = all_reduce_sum([sums[k] for k in keys] + [counted], device)
    n = totals[-1] or float("nan")
    means = {k: v / n for k, v in zip(keys, totals[:-1])}
    return means.pop("loss", float("nan")), means


def build_objective(spec, model, dataset, held_out, *, init_from: Path | None, resume_from: Path | None,
                    batch_size: int, device, say) -> PreferenceObjective:
    """The objective of a preference run, its reference settled (see the module doc): precomputed now from
    the start model, read back from the checkpoint being resumed, or the adapters switched off per step."""
    beyond = trains_beyond_adapters(model)
    # a resumed run keeps the reference it started with (one given --init-from at the start, too)
    saved = resume_from is not None and (Path(resume_from) / REFERENCE_FILE).is_file()
    precompute = spec.schedule.precompute_reference or init_from is not None or bool(beyond) or saved
    objective = PreferenceObjective(spec)
    if not precompute:
        say(f"reference: the model with its adapters off, under no_grad at each step "
            f"({spec.schedule.objective}, beta {spec.schedule.beta})")
    elif resume_from is not None:
        objective.reference = load_reference(resume_from)
        objective.held_reference = _held_reference(resume_from)
    else:
        why = (f"--init-from {init_from}" if init_from is not None else
               f"{beyond[0]} trains with the adapters" if beyond else "schedule.precompute_reference=True")
        cached = reference_cache_path(spec, dataset, init_from)
        if cached.is_file():
            tensors = load_file(str(cached))
            objective.reference, objective.held_reference = tensors["reference"], tensors.get("held_out")
            say(f"reference: log-probs of the {len(dataset)} pairs under the start model ({why}) read from {cached}")
        else:
            say(f"reference: log-probs of the {len(dataset)} pairs precomputed with the start model ({why})")
            objective.reference = precompute_reference(model, dataset, batch_size=batch_size, device=device)
            if held_out is not None:
                objective.held_reference = precompute_reference(model, held_out, batch_size=batch_size,
                                                                device=device)
            _write_reference(cached, objective)
    if resume_from is not None:
        objective.load(resume_from)
    return objective


def _held_reference(checkpoint: Path) -> torch.Tensor | None:
    return load_file(str(Path(checkpoint) / REFERENCE_FILE)).get("held_out")


def reference_cache_path(spec, dataset, init_from: Path | None) -> Path:
    """Where the precomputed reference of these pairs under this start model is kept: in the encoded-data
    cache's root, keyed by what keys the encoded rows (files, pipeline, tokenizer, vlft.data's code), the
    model settings and base files, the --init-from checkpoint's files, and the held-out split."""
    val_sets = dataclasses.replace(spec, data=dataclasses.replace(spec.data, datasets=spec.data.val_datasets))
    parts = {
        "rows": key_parts(sources_of(spec), dataset.pipeline, seed=spec.schedule.seed),
        "held_out_rows": key_parts(sources_of(val_sets), dataset.pipeline, seed=spec.schedule.seed)
        if spec.data.val_datasets else None,
        "val_split": spec.data.val_split, "pairs": len(dataset),
        "model": dataclasses.asdict(spec.model),
        "base": fingerprint(spec.model.path or {"vision": spec.model.vision.path, "llm": spec.model.llm.path}),
        "start": _files_identity(init_from) if init_from is not None else None,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    return disk.cache_root() / f"reference-{disk.digest(parts)}.safetensors"


def _files_identity(folder: Path) -> dict:
    return {str(p.relative_to(folder)): [p.stat().st_size, p.stat().st_mtime_ns]
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _write_reference(path: Path, objective: PreferenceObjective) -> None:
    """Write atomically (a run reading it never sees half a file); a cache that cannot be written is skipped."""
    tensors = {"reference": objective.reference.contiguous()}
    if objective.held_reference is not None:
        tensors["held_out"] = objective.held_reference.contiguous()
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
