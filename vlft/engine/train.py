"""`vlft train`: config -> model + data -> DeepSpeed (or plain torch) -> steps -> checkpoints. Top to bottom.

One loop serves both engines: DeepSpeed's engine, or `PlainEngine` (below), which offers the same four
calls (forward, backward, step, grad norm) on one process with torch's AdamW and LambdaLR.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from vlft.engine.checkpoints import (TrainerState, check_work_dir, resolve_resume, save_checkpoint, set_aside_log,
                                     set_aside_newer)
from vlft.engine.config_changes import Change, describe
from vlft.engine.deepspeed_config import build_deepspeed_config, check_batch_sizes, engine_choice
from vlft.data.rows import builds_cache
from vlft.engine.distributed import all_reduce_sum, barrier, launch_environment, world_size_from_env
from vlft.engine.lock import work_dir_lock
from vlft.engine.progress import TrainLog
from vlft.engine.signals import StopRequest, stop_on_signals
from vlft.engine.state_files import (load_deepspeed_state, load_optimizer_state, load_rng_state, rng_file,
                                     save_optimizer_state, save_rng_state)
from vlft.engine.validation import training_and_validation, validation_loss
from vlft.errors import ConfigError, DataError
from vlft.data.encode import IGNORE_INDEX
from vlft.engine.trackers import check_trackers
from vlft.model.base_fingerprint import check_checkpoint_base, fingerprint
from vlft.model.trained_state import read_checkpoint_meta
from vlft.model.layouts import detect_layout, safetensors_files
from vlft.specs import ExperimentSpec

DS_STATE = "ds_state"          # DeepSpeed's optimizer/scheduler shards inside a checkpoint
DS_TAG = "state"


@dataclass
class TrainResult:
    """What a run did, for tests and the demo: no need to read the work dir back."""

    work_dir: Path
    checkpoint: Path | None              # the last checkpoint written (the final one after a full run)
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)   # mean loss of each optimizer step run here
    loss_plot: Path | None = None


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGUSR1 during training, after a checkpoint of the last finished step was saved."""

    def __init__(self, result: TrainResult, *, signal_name: str = "SIGINT", exit_code: int = 130):
        super().__init__(f"interrupted ({signal_name}) at step {result.steps[-1] if result.steps else 0}")
        self.result, self.signal_name, self.exit_code = result, signal_name, exit_code


class _StopAtBoundary(Exception):
    """A stop signal was seen by some rank: every rank leaves the loop at the same step boundary."""


def train_from_config(config: str | Path, *, work_dir: str | None = None, deepspeed: str | None = None,
                      cfg_options: Sequence[str] = (), resume: str | None = None, allow_changes: bool = False,
                      on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """`vlft train`: load CONFIG (+ --cfg-options), settle work dir and engine, train.

    Args:
        work_dir: default engine.work_dir, else work_dirs/<config name>.
        deepspeed: "zero2", "zero3", "none" or a DeepSpeed JSON path; default engine.deepspeed.
        resume: "auto" (the work dir's newest intact checkpoint, if any) or a checkpoint directory.
        allow_changes: resume although data/schedule settings changed (--resume-allow-changes); they
            apply from the resume step and are logged. A changed model is always refused.
        on_step: called after every optimizer step with (step, loss); raising KeyboardInterrupt there
            stops training as Ctrl-C does (tests use it).
    """
    from vlft.config import load_config

    spec = load_config(config, cfg_options)
    work_dir = work_dir or spec.engine.work_dir or str(Path("work_dirs") / Path(config).stem)
    choice = engine_choice(deepspeed if deepspeed is not None else spec.engine.deepspeed)
    relative = [f"{key}={value}" for key, value in [*_paths(spec), ("work dir", work_dir)]
                if not Path(value).expanduser().is_absolute()]
    notes = [f"relative paths are read from the current directory {Path.cwd()}: {', '.join(relative)}"] \
        if relative else []
    return train(resolved_spec(spec, work_dir=work_dir, deepspeed=choice), resume=resume,
                 allow_changes=allow_changes, on_step=on_step, notes=notes, config_name=str(config))


def train(spec: ExperimentSpec, *, resume: str | None = None, allow_changes: bool = False,
          on_step: Callable[[int, float], None] | None = None, notes: Sequence[str] = (),
          config_name: str = "CONFIG") -> TrainResult:
    """Train as `spec` says (paths absolute, engine.work_dir set: see `resolved_spec`)."""
    from vlft.config import spec_to_dict

    # ---- settle everything that can be wrong before anything heavy runs or anything is written
    schedule, work_dir = spec.schedule, Path(spec.engine.work_dir)
    use_deepspeed = spec.engine.deepspeed is not None
    world_size = world_size_from_env()
    global_batch = check_batch_sizes(schedule, world_size)
    precision = {"bfloat16": "bf16", "float16": "fp16"}.get(spec.model.dtype, "fp32")  # fp32 without GPU
    ds_config = (build_deepspeed_config(spec.engine.deepspeed, schedule, world_size=world_size, precision=precision)
                 if use_deepspeed else None)
    config_record = json.loads(json.dumps(spec_to_dict(spec), default=str))
    is_main = int(os.environ.get("RANK", "0")) == 0
    _check_sample_prompts(spec)
    _check_inputs_exist(spec)
    check_trackers(spec.engine.report_to)

    with work_dir_lock(work_dir, enabled=is_main):
        point = resolve_resume(resume, work_dir)
        resume_from = point.checkpoint
        changes = check_work_dir(work_dir, config_record, resume_from=resume_from, allow_changes=allow_changes)
        state = TrainerState.load(resume_from) if resume_from else TrainerState(0, 0, 0, world_size)
        if resume_from is not None:
            check_checkpoint_base(read_checkpoint_meta(resume_from), resume_from)
        if state.world_size != world_size:
            raise ConfigError(f"--resume {resume_from}: written by {state.world_size} processes, this run has "
                              f"{world_size}; resume with the same number of processes")
        base_print = fingerprint(spec.model.path or {"vision": spec.model.vision.path, "llm": spec.model.llm.path})
        with stop_on_signals() as stop, launch_environment(use_deepspeed) as dist:
            notes = [*notes, *point.notes]
            if resume == "auto" and resume_from is None:
                notes.append(f"--resume auto: no checkpoint in {work_dir} yet, starting from the base model")
            if dist.is_main and resume_from is not None:
                aside = set_aside_newer(work_dir, resume_from)
                if aside is not None:
                    notes.append(f"resuming {resume_from.name} abandons the later checkpoints: they and their "
                                 f"log are kept in {aside}")
            elif dist.is_main:
                aside = set_aside_log(work_dir)
                if aside is not None:
                    notes.append(f"the log of an earlier start without a checkpoint is kept as {aside}")
            log = TrainLog(work_dir, start_step=state.step, logging_steps=spec.engine.logging_steps,
                           enabled=dist.is_main, config=config_record, report_to=spec.engine.report_to)
            try:
                return _run(spec, log, stop, dist, state=state, resume_from=resume_from, changes=changes,
                            notes=notes, on_step=on_step, ds_config=ds_config, global_batch=global_batch,
                            world_size=world_size, precision=precision, config_record=config_record,
                            base_print=base_print, config_name=config_name)
            finally:
                log.close()


def _run(spec: ExperimentSpec, log: TrainLog, stop: StopRequest, dist, *, state: TrainerState, resume_from,
         changes: list[Change], notes, on_step, ds_config, global_batch: int, world_size: int, precision: str,
         config_record: dict, base_print: dict, config_name: str) -> TrainResult:
    """The run inside its lock, signal handlers and process group: build, train, save."""
    from transformers import set_seed

    from vlft.data.dataset import build_dataset
    from vlft.model.adapters import apply_training_policy
    from vlft.model.load import build_vlm
    from vlft.model.report import format_report, trainable_report
    from vlft.model.trained_state import load_trained_state, save_trained_state

    schedule, work_dir, use_deepspeed = spec.schedule, Path(spec.engine.work_dir), ds_config is not None
    say = log.echo
    say(f"vlft train -> {work_dir}  engine: {_engine_name(spec, world_size, dist.device, precision)}")
    for note in notes:
        say(f"note: {note}")
    if changes:
        say(f"--resume-allow-changes: applying from step {state.step}: {describe(changes)}")

    # ---- model, data, batches
    set_seed(schedule.seed)
    model, tokenizer = build_vlm(spec.model)
    apply_training_policy(model, spec.model)
    if resume_from is not None:
        load_trained_state(model, resume_from)
    say(format_report(trainable_report(model)))
    # one process per cache folder encodes; the others wait at the barrier and open what it published
    encode = functools.partial(build_dataset, builder=builds_cache(dist.rank, dist.local_rank), wait=barrier)
    dataset, held_out = training_and_validation(spec, encode(spec, tokenizer, model.info), tokenizer, model.info,
                                                encode=encode)
    if getattr(dataset, "cache_line", None):
        say(dataset.cache_line)
    split = f"; {len(dataset)} to train on, {len(held_out)} held out for validation" if held_out is not None else ""
    say(f"data: {dataset.stats.summary(config_name)}{split}")
    plans = EpochPlans(dataset, spec, rank=dist.rank, world_size=world_size)
    steps_per_epoch = len(plans.for_rank(0)) // schedule.gradient_accumulation
    if steps_per_epoch == 0:
        raise DataError(f"{len(dataset)} samples do not fill one optimizer step of {global_batch} "
                        f"{'packed rows' if spec.data.packing else 'samples'} (schedule.micro_batch_size x "
                        "gradient_accumulation x processes); lower them or add data")
    total_steps = schedule.max_steps or max(1, math.ceil(schedule.epochs * steps_per_epoch))
    warmup_steps = math.ceil(schedule.warmup_ratio * total_steps)
    say(f"batch: {schedule.micro_batch_size} per process x {schedule.gradient_accumulation} accumulation x "
        f"{world_size} process(es) = {global_batch} {'packed rows' if spec.data.packing else 'samples'} per step")
    say(f"steps: {total_steps} ({steps_per_epoch} per epoch, {total_steps / steps_per_epoch:.2f} epochs), "
        f"warmup {warmup_steps}")
    say(plans.token_budget(steps_per_epoch))
    if spec.data.packing and spec.model.attn_implementation != "flash_attention_2":
        row = spec.data.packed_row_length
        say(f"note: with {spec.model.attn_implementation} attention a packed row of {row} tokens attends as "
            f"one {row}x{row} block under a mask; flash_attention_2 attends per sample, and a shorter "
            "data.pack_length costs less (tools/bench/README.md)")

    # ---- optimizer (per-part learning rates), warmup + cosine schedule, engine
    groups = param_groups(model, schedule)
    planned = {group["name"]: (group["lr"], group["weight_decay"]) for group in groups}  # before a scheduler edits them
    make_scheduler = functools.partial(_warmup_cosine, warmup_steps=warmup_steps, total_steps=total_steps,
                                       min_lr_ratio=schedule.min_lr_ratio)
    if use_deepspeed:
        import deepspeed

        _quiet_deepspeed()
        own_optimizer = "optimizer" not in ds_config
        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model, config=ds_config,
            optimizer=torch.optim.AdamW(groups, lr=schedule.lr) if own_optimizer else None,
            model_parameters=None if own_optimizer else groups,
            lr_scheduler=make_scheduler if "scheduler" not in ds_config else None)
        if resume_from is not None:
            load_deepspeed_state(engine, resume_from / DS_STATE, DS_TAG)
    else:
        model.to(dist.device)
        optimizer = torch.optim.AdamW(groups, lr=schedule.lr)
        scheduler = make_scheduler(optimizer)
        engine = PlainEngine(model, optimizer, scheduler, accumulation=schedule.gradient_accumulation,
                             max_grad_norm=schedule.max_grad_norm)
        if resume_from is not None:
            load_optimizer_state(resume_from, optimizer, scheduler)
    if resume_from is not None:
        if changes:
            apply_schedule(engine.optimizer, engine.lr_scheduler, planned)
        load_rng_state(rng_file(resume_from, dist.rank))
        say(f"resuming from {resume_from} (step {state.step}, epoch {state.epoch}, batch {state.batch})")
    log.start(total_steps)

    def write_checkpoint(tmp: Path) -> None:
        """Everything needed to continue (all ranks), then the model state with its marker (main, last)."""
        if use_deepspeed:
            engine.save_checkpoint(str(tmp / DS_STATE), tag=DS_TAG, save_latest=False,
                                   exclude_frozen_parameters=True)
        elif dist.is_main:
            save_optimizer_state(tmp, optimizer, scheduler)
        save_rng_state(rng_file(tmp, dist.rank))
        with _gathered_for_save(model, ds_config):
            if dist.is_main:
                tokenizer.save_pretrained(str(tmp))
                state.save(tmp)
                save_trained_state(model, tmp, meta={
                    "config": config_record, "step": state.step, "epoch": plans.progress(state),
                    "base_model": spec.model.path or {"vision": spec.model.vision.path,
                                                      "llm": spec.model.llm.path},
                    "base_fingerprint": base_print,
                    "engine": spec.engine.deepspeed or "torch", "world_size": world_size})

    def save() -> Path:
        path = save_checkpoint(work_dir, state.step, write_checkpoint, is_main=dist.is_main,
                               save_total_limit=spec.engine.save_total_limit)
        say(f"saved {path}")
        return path

    def evaluate() -> None:
        loss = validation_loss(engine.module, held_out, rank=dist.rank, world_size=world_size, device=dist.device)
        log.eval(state.step, loss, samples=len(held_out))

    # ---- the loop: micro-batches until total_steps optimizer steps; signals stop it at a step boundary
    result = TrainResult(work_dir=work_dir, checkpoint=resume_from)
    saved_step = state.step if resume_from is not None else -1
    accumulation = schedule.gradient_accumulation
    engine.train()
    try:
        epoch, batch = state.epoch, state.batch
        window = _Window()
        while state.step < total_steps:
            batches = plans.for_rank(epoch)
            for inputs in plans.loader(batches, start=batch, epoch=epoch):
                window.add(inputs, plans.samples_in(batches[batch]))
                batch += 1
                has_targets = bool((inputs["labels"][..., 1:] != IGNORE_INDEX).any())
                inputs = {k: v.to(dist.device) for k, v in inputs.items() if k != "num_tokens"}
                loss = engine(**inputs, use_cache=False).loss
                if not has_targets:            # only samples whose image failed mid-run: NaN loss, zero gradient
                    loss = torch.nan_to_num(loss, nan=0.0)
                engine.backward(loss)
                engine.step()                   # an optimizer step on accumulation boundaries only
                if has_targets:
                    window.loss, window.counted = window.loss + loss.item(), window.counted + 1
                if batch % accumulation:
                    continue
                loss_sum, counted, tokens, samples, stops = all_reduce_sum(
                    [window.loss, window.counted, window.tokens, window.samples, float(stop.requested)], dist.device)
                step_loss = loss_sum / counted if counted else float("nan")
                state = TrainerState(state.step + 1, epoch, batch, world_size)
                result.steps.append(state.step)
                result.losses.append(step_loss)
                log.step(state.step, epoch=plans.progress(state), loss=step_loss, lrs=_lrs(engine),
                         grad_norm=_grad_norm(engine), tokens=int(tokens), samples=int(samples),
                         seconds=time.perf_counter() - window.start)
                window = _Window()
                if stops:
                    raise _StopAtBoundary
                if spec.engine.sample_every and state.step % spec.engine.sample_every == 0:
                    log.samples(state.step, generate_samples(engine.module, dataset.pipeline, spec, dist.device),
                                images=[p.image or None for p in spec.engine.sample_prompts])
                if held_out is not None and spec.engine.eval_steps and state.step % spec.engine.eval_steps == 0:
                    evaluate()
                if spec.engine.save_steps and state.step % spec.engine.save_steps == 0:
                    result.checkpoint, saved_step = save(), state.step
                if on_step is not None:
                    on_step(state.step, step_loss)
                if stop.requested and world_size == 1:
                    raise _StopAtBoundary
                if state.step >= total_steps:
                    break
            else:
                epoch, batch = epoch + 1, 0
    except (KeyboardInterrupt, _StopAtBoundary):
        stop.saving = True
        if state.step > saved_step and state.step > 0:
            result.checkpoint = save()
        say(f"interrupted at step {state.step}: " + (
            f"{result.checkpoint} holds it; continue with --resume auto" if result.checkpoint
            else "nothing to save yet"))
        result.loss_plot = log.close()
        raise TrainingInterrupted(result, signal_name=stop.name or "SIGINT",
                                  exit_code=stop.exit_code if stop.requested else 130) from None
    if held_out is not None and not (spec.engine.eval_steps and state.step % spec.engine.eval_steps == 0):
        evaluate()
    if state.step > saved_step:
        result.checkpoint = save()
    final_loss = log.final_loss()
    if dataset.stats.training_summary():
        say(dataset.stats.training_summary())
    result.loss_plot = log.close()
    say(f"done: {state.step} steps, final loss {final_loss:.4f} (mean of the last logged window); "
        f"checkpoint {result.checkpoint}" + (f"; loss curve {result.loss_plot}" if result.loss_plot else ""))
    return result


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


def _paths(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """(config key, path) of every path the config gives, as written."""
    model = spec.model
    found = [("model.path", model.path), ("model.vision.path", model.vision.path), ("model.llm.path", model.llm.path)]
    for i, d in enumerate(spec.data.datasets):
        found += [(f"data.datasets[{i}].path", d.path), (f"data.datasets[{i}].image_root", d.image_root)]
    return [(key, value) for key, value in found if value]


def resolved_spec(spec: ExperimentSpec, *, work_dir: str, deepspeed: str | None) -> ExperimentSpec:
    """The spec as this run uses and records it: absolute paths (a checkpoint must rebuild its base from
    anywhere), the chosen engine and work dir, and float32 where there is no GPU."""
    def absolute(path):
        return None if path is None else str(Path(path).expanduser().resolve())

    model = spec.model
    model = dataclasses.replace(
        model, path=absolute(model.path),
        vision=dataclasses.replace(model.vision, path=absolute(model.vision.path)),
        llm=dataclasses.replace(model.llm, path=absolute(model.llm.path)),
        dtype=model.dtype if torch.cuda.is_available() else "float32")

    def located(sets):
        return [dataclasses.replace(d, path=absolute(d.path), image_root=absolute(d.image_root)) for d in sets]

    prompts = [dataclasses.replace(p, image=absolute(p.image) if p.image else p.image)
               for p in spec.engine.sample_prompts]
    return dataclasses.replace(
        spec, model=model, data=dataclasses.replace(spec.data, datasets=located(spec.data.datasets),
                                                    val_datasets=located(spec.data.val_datasets)),
        engine=dataclasses.replace(spec.engine, deepspeed=deepspeed, work_dir=absolute(work_dir),
                                   sample_prompts=prompts))


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


class EpochPlans:
    """This rank's micro-batches of each epoch, and DataLoaders over them.

    `plan_batches` cuts the epoch into batch-groups of micro x world-size samples (or packed rows); rank r
    takes every world-size-th member of each group, so ranks see disjoint, length-matched micro-batches
    and the plan needs no communication. Groups too small to give every rank a share, and micro-batches
    that would leave a partial accumulation at the epoch's end, are dropped (the next epoch reshuffles).
    """

    def __init__(self, dataset, spec: ExperimentSpec, *, rank: int, world_size: int):
        self.dataset, self.spec, self.rank, self.world_size = dataset, spec, rank, world_size
        self.lengths, self.has_image = dataset.lengths, dataset.has_image
        self._cache: dict[int, list] = {}

    def groups(self, epoch: int, packing: bool | None = None) -> list:
        from vlft.data.sampler import plan_batches

        packing = self.spec.data.packing if packing is None else packing
        groups = plan_batches(self.lengths, self.has_image,
                              batch_size=self.spec.schedule.micro_batch_size * self.world_size,
                              seed=self.spec.schedule.seed, epoch=epoch, group_by_length=self.spec.data.group_by_length,
                              packing=packing, max_length=self.spec.data.packed_row_length)
        return [g for g in groups if len(g) >= self.world_size]

    def for_rank(self, epoch: int) -> list:
        if epoch not in self._cache:
            mine = [group[self.rank::self.world_size] for group in self.groups(epoch)]
            self._cache = {epoch: mine[:len(mine) - len(mine) % self.spec.schedule.gradient_accumulation]}
        return self._cache[epoch]

    def samples_in(self, micro_batch: list) -> int:
        return sum(len(row) for row in micro_batch) if self.spec.data.packing else len(micro_batch)

    def progress(self, state: TrainerState) -> float:
        """Epochs done, as a fraction (the current epoch's share from the position inside it)."""
        return state.epoch + state.batch / max(1, len(self.for_rank(state.epoch)))

    def loader(self, batches: list, *, start: int, epoch: int):
        from torch.utils.data import DataLoader

        from vlft.data.collate import pack_collate, pad_collate

        pad_id = self.dataset.pipeline.tokenizer.pad_token_id
        pad_id = pad_id if pad_id is not None else 0
        packing = self.spec.data.packing
        # A private generator: creating the loader must not draw from the global RNG (dropout), or a
        # resumed run would diverge from an uninterrupted one.
        generator = torch.Generator().manual_seed(self.spec.schedule.seed * 1000 + epoch)
        return DataLoader(_Rows(self.dataset) if packing else self.dataset, batch_sampler=batches[start:],
                          collate_fn=functools.partial(pack_collate if packing else pad_collate, pad_token_id=pad_id),
                          num_workers=self.spec.data.num_workers, generator=generator)

    def token_budget(self, steps_per_epoch: int) -> str:
        """Real tokens per optimizer step, and how much of the computed rectangle is real: padded vs packed."""
        from vlft.data.collate import token_efficiency

        used = self.groups(0)[:steps_per_epoch * self.spec.schedule.gradient_accumulation]
        rows = [row for g in used for row in g]
        tokens = sum(self.lengths[i] for row in rows for i in (row if self.spec.data.packing else [row]))
        mine = token_efficiency(self.lengths, used, self.spec.data.packing)
        line = f"tokens: ~{tokens / steps_per_epoch:,.0f} per step; "
        if len(self.lengths) > 20_000:  # the other plan would take a while to compute
            return line + f"{'packing' if self.spec.data.packing else 'padding'} efficiency {mine:.1%}"
        other = token_efficiency(self.lengths, self.groups(0, packing=not self.spec.data.packing),
                                 not self.spec.data.packing)
        pad, pack = (other, mine) if self.spec.data.packing else (mine, other)
        return line + (f"efficiency with padding {pad:.1%}, with packing {pack:.1%} "
                       f"(data.packing={self.spec.data.packing})")


class _Rows:
    """Packing: the DataLoader fetches a row (a tuple of sample indices) as one item."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, row) -> list[dict]:
        return [self.dataset[i] for i in row]

    def __len__(self) -> int:
        return len(self.dataset)


class _Window:
    """Micro-batches of the optimizer step in progress."""

    def __init__(self):
        self.loss, self.counted, self.tokens, self.samples, self.start = 0.0, 0, 0, 0, time.perf_counter()

    def add(self, inputs: dict, samples: int) -> None:
        self.tokens += int(inputs["num_tokens"])
        self.samples += samples


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


def generate_samples(model, pipeline, spec: ExperimentSpec, device) -> list[tuple[str, str]]:
    """Greedy answers to engine.sample_prompts, so a user watches the model learn (XTuner's chat hook)."""
    from vlft.data.prompt import generation_prompt, stop_kwargs
    from vlft.data.record import IMAGE_PLACEHOLDER, Turn
    from vlft.data.tiling import load_image, tiles_for_image

    tokenizer = pipeline.tokenizer
    stops = stop_kwargs(tokenizer, pipeline.template)  # the rule chat, eval and the export share
    answers = []
    was_training = model.training
    model.eval()
    for sample in spec.engine.sample_prompts:
        text, pixels, tiles = sample.prompt, None, []
        if sample.image:
            pixels = tiles_for_image(load_image(sample.image), pipeline.tiling).to(device)
            tiles = [pixels.shape[0]]
            if IMAGE_PLACEHOLDER not in text:
                text = f"{IMAGE_PLACEHOLDER}\n{text}"
        ids = generation_prompt(pipeline, [Turn("user", text)], tiles)
        new = model.generate(torch.tensor([ids], device=device), pixel_values=pixels, do_sample=False,
                             max_new_tokens=spec.engine.sample_max_new_tokens, **stops,
                             pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        answers.append((sample.prompt, tokenizer.decode(new[0], skip_special_tokens=True).strip()))
    model.train(was_training)
    return answers


def _warmup_cosine(optimizer, *, warmup_steps: int, total_steps: int, min_lr_ratio: float):
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    return get_cosine_with_min_lr_schedule_with_warmup(optimizer, num_warmup_steps=warmup_steps,
                                                       num_training_steps=total_steps, min_lr_rate=min_lr_ratio)


def _check_sample_prompts(spec: ExperimentSpec) -> None:
    for i, sample in enumerate(spec.engine.sample_prompts):
        if sample.image and not Path(sample.image).is_file():
            raise ConfigError(f"engine.sample_prompts[{i}].image={sample.image}: no such file")


def _check_inputs_exist(spec: ExperimentSpec) -> None:
    """The base's directories and weight files and the annotation files, by their headers only: a wrong
    path is one line before the work dir is touched."""
    for path in filter(None, (spec.model.path, spec.model.vision.path, spec.model.llm.path)):
        detect_layout(path)
        safetensors_files(path)
    for i, dataset in enumerate([*spec.data.datasets, *spec.data.val_datasets]):
        if not Path(dataset.path).exists():
            raise DataError(f"{dataset.path}: dataset file not found (data.datasets[{i}].path)"
                            if i < len(spec.data.datasets) else
                            f"{dataset.path}: dataset file not found (data.val_datasets[{i - len(spec.data.datasets)}].path)")


def _gathered_for_save(model, ds_config):
    """ZeRO-3 splits every parameter across ranks: gather the trained ones while the main rank saves."""
    import contextlib

    if not ds_config or ds_config.get("zero_optimization", {}).get("stage") != 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([p for p in model.parameters() if p.requires_grad],
                                             modifier_rank=None)


def _lrs(engine) -> dict[str, float]:
    """Current learning rate per part (decay and no-decay groups share it)."""
    lrs = {}
    for i, group in enumerate(engine.optimizer.param_groups):
        lrs.setdefault(str(group.get("name", i)).split("/")[0], float(group["lr"]))
    return lrs


def _grad_norm(engine) -> float | None:
    norm = engine.get_global_grad_norm()
    return None if norm is None else float(norm)


def _engine_name(spec: ExperimentSpec, world_size: int, device, precision: str) -> str:
    choice = spec.engine.deepspeed
    name = ("plain torch (AdamW)" if choice is None else f"DeepSpeed {choice.upper()}" if choice.startswith("zero")
            else f"DeepSpeed {choice}")
    return f"{name}, {world_size} process(es) on {device.type}, {precision}"


def _quiet_deepspeed() -> None:
    """DeepSpeed logs every setting at INFO and calls c10d functions torch marks deprecated, each step."""
    import logging
    import warnings

    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)


def _or(value, default):
    return default if value is None else value
