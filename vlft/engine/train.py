"""`vlft train`: settle (nothing heavy, nothing written) -> build (model, data, engine) -> fit (steps,
checkpoints, validation) -> done. Top to bottom.

One loop serves both engines: DeepSpeed's engine, or `PlainEngine` (vlft.engine.optim), which offers the
same calls (forward, backward, step, grad norm) on one process with torch's AdamW and LambdaLR.
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

from vlft.data.encode import IGNORE_INDEX
from vlft.data.rows import builds_cache
from vlft.engine.checkpoints import (TrainerState, check_work_dir, resolve_resume, save_checkpoint, set_aside_log,
                                     set_aside_newer)
from vlft.engine.config_changes import Change, describe
from vlft.engine.deepspeed_config import build_deepspeed_config, check_batch_sizes, engine_choice
from vlft.engine.distributed import DistEnv, all_reduce_sum, barrier, launch_environment, world_size_from_env
from vlft.engine.lock import work_dir_lock
from vlft.engine.optim import PlainEngine, apply_schedule, current_lrs, grad_norm, param_groups, warmup_cosine
from vlft.engine.plans import EpochPlans
from vlft.engine.progress import TrainLog
from vlft.engine.samples import check_sample_prompts, generate_samples
from vlft.engine.signals import StopRequest, stop_on_signals
from vlft.engine.state_files import (load_deepspeed_state, load_optimizer_state, load_rng_state, rng_file,
                                     save_optimizer_state, save_rng_state)
from vlft.engine.trackers import check_trackers
from vlft.engine.validation import training_and_validation, validation_loss
from vlft.errors import ConfigError, DataError
from vlft.model.base_fingerprint import check_checkpoint_base, fingerprint
from vlft.model.base_settings import load_config_on_base
from vlft.model.layouts import detect_layout, safetensors_files
from vlft.model.trained_state import read_checkpoint_meta
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
                      on_step: Callable[[int, float], None] | None = None,
                      init_from: str | None = None) -> TrainResult:
    """`vlft train`: load CONFIG (+ --cfg-options), settle work dir and engine, train.

    Args:
        work_dir: default engine.work_dir, else work_dirs/<config name>.
        deepspeed: "zero2", "zero3", "none" or a DeepSpeed JSON path; default engine.deepspeed.
        resume: "auto" (the work dir's newest intact checkpoint, if any) or a checkpoint directory.
        allow_changes: resume although data/schedule settings changed (--resume-allow-changes); they
            apply from the resume step and are logged. A changed model is always refused.
        on_step: called after every optimizer step with (step, loss); raising KeyboardInterrupt there
            stops training as Ctrl-C does (tests use it).
        init_from: a checkpoint whose adapters (and trained tensors) the run starts from (--init-from): an SFT
            adapter continued by a preference objective, whose reference is then that start.
    """
    spec, base_notes = load_config_on_base(config, cfg_options)
    work_dir = work_dir or spec.engine.work_dir or str(Path("work_dirs") / Path(config).stem)
    choice = engine_choice(deepspeed if deepspeed is not None else spec.engine.deepspeed)
    relative = [f"{key}={value}" for key, value in [*_paths(spec), ("work dir", work_dir)]
                if not Path(value).expanduser().is_absolute()]
    notes = [*base_notes, *([f"relative paths are read from the current directory {Path.cwd()}: "
                             f"{', '.join(relative)}"] if relative else [])]
    return train(resolved_spec(spec, work_dir=work_dir, deepspeed=choice), resume=resume,
                 allow_changes=allow_changes, on_step=on_step, notes=notes, config_name=str(config),
                 init_from=init_from)


def train(spec: ExperimentSpec, *, resume: str | None = None, allow_changes: bool = False,
          on_step: Callable[[int, float], None] | None = None, notes: Sequence[str] = (),
          config_name: str = "CONFIG", init_from: str | None = None) -> TrainResult:
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
    check_sample_prompts(spec)
    _check_inputs_exist(spec)
    check_trackers(spec.engine.report_to)
    init_from = Path(init_from).expanduser().resolve() if init_from is not None else None
    if init_from is not None:
        check_checkpoint_base(read_checkpoint_meta(init_from), init_from)

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
                say = log.echo
                say(f"vlft train -> {work_dir}  engine: {_engine_name(spec, world_size, dist.device, precision)}")
                for note in notes:
                    say(f"note: {note}")
                if changes:
                    say(f"--resume-allow-changes: applying from step {state.step}: {describe(changes)}")
                run = _build(spec, log, dist, state=state, resume_from=resume_from, changes=changes,
                             ds_config=ds_config, global_batch=global_batch, config_name=config_name,
                             init_from=init_from)
                saver = _Saver(run, ds_config=ds_config, config_record=config_record, base_print=base_print)
                return _fit(run, saver, stop, on_step=on_step)
            finally:
                log.close()


@dataclass
class _Run:
    """What the loop works with, built once by `_build`."""

    spec: ExperimentSpec
    log: TrainLog
    dist: DistEnv
    state: TrainerState
    resume_from: Path | None
    model: torch.nn.Module
    tokenizer: object
    dataset: object
    held_out: object | None
    plans: EpochPlans
    engine: object          # DeepSpeed's engine or PlainEngine
    optimizer: torch.optim.Optimizer
    scheduler: object
    total_steps: int
    preference: object | None = None   # vlft.engine.preference.PreferenceObjective (objective != "sft")
    init_from: Path | None = None

    @property
    def world_size(self) -> int:
        return self.dist.world_size


def _build(spec: ExperimentSpec, log: TrainLog, dist: DistEnv, *, state: TrainerState, resume_from: Path | None,
           changes: list[Change], ds_config: dict | None, global_batch: int, config_name: str,
           init_from: Path | None = None) -> _Run:
    """Model (+ the checkpoint's weights), data and batch plans, optimizer and schedule, the engine."""
    from transformers import set_seed

    from vlft.data.dataset import build_dataset
    from vlft.data.pair_dataset import build_pair_dataset
    from vlft.model.adapters import apply_training_policy
    from vlft.model.load import build_vlm
    from vlft.model.report import format_report, trainable_report
    from vlft.model.trained_state import load_trained_state

    schedule, say, world_size = spec.schedule, log.echo, dist.world_size
    set_seed(schedule.seed)
    model, tokenizer = build_vlm(spec.model)
    apply_training_policy(model, spec.model)
    if resume_from is not None or init_from is not None:
        load_trained_state(model, resume_from or init_from)
    if init_from is not None and resume_from is None:
        say(f"starting from {init_from}: its adapters and trained tensors continue")
    say(format_report(trainable_report(model)))

    # one process per cache folder encodes; the others wait at the barrier and open what it published
    preference = schedule.objective != "sft"
    encode = functools.partial(build_pair_dataset if preference else build_dataset,
                               builder=builds_cache(dist.rank, dist.local_rank), wait=barrier)
    dataset, held_out = training_and_validation(spec, encode(spec, tokenizer, model.info), tokenizer, model.info,
                                                encode=encode)
    if getattr(dataset, "cache_line", None):
        say(dataset.cache_line)
    split = f"; {len(dataset)} to train on, {len(held_out)} held out for validation" if held_out is not None else ""
    say(f"data: {dataset.stats.summary(config_name)}{split}")
    plans = EpochPlans(dataset, spec, rank=dist.rank, world_size=world_size)
    unit = "packed rows" if spec.data.packing else "samples"
    steps_per_epoch = len(plans.for_rank(0)) // schedule.gradient_accumulation
    if steps_per_epoch == 0:
        raise DataError(f"{len(dataset)} samples do not fill one optimizer step of {global_batch} {unit} "
                        "(schedule.micro_batch_size x gradient_accumulation x processes); lower them or add data")
    total_steps = schedule.max_steps or max(1, math.ceil(schedule.epochs * steps_per_epoch))
    warmup_steps = math.ceil(schedule.warmup_ratio * total_steps)
    say(f"batch: {schedule.micro_batch_size} per process x {schedule.gradient_accumulation} accumulation x "
        f"{world_size} process(es) = {global_batch} {unit} per step")
    say(f"steps: {total_steps} ({steps_per_epoch} per epoch, {total_steps / steps_per_epoch:.2f} epochs), "
        f"warmup {warmup_steps}")
    say(plans.token_budget(steps_per_epoch))
    if spec.data.packing and spec.model.attn_implementation != "flash_attention_2":
        row = spec.data.packed_row_length
        say(f"note: with {spec.model.attn_implementation} attention a packed row of {row} tokens attends as "
            f"one {row}x{row} block under a mask; flash_attention_2 attends per sample, and a shorter "
            "data.pack_length costs less (tools/bench/README.md)")

    # optimizer (per-part learning rates), warmup + cosine schedule, engine; then the checkpoint's states
    groups = param_groups(model, schedule)
    planned = {group["name"]: (group["lr"], group["weight_decay"]) for group in groups}  # before a scheduler edits them
    make_scheduler = functools.partial(warmup_cosine, warmup_steps=warmup_steps, total_steps=total_steps,
                                       min_lr_ratio=schedule.min_lr_ratio)
    if ds_config is not None:
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
    objective = None
    if preference:
        from vlft.engine.preference import build_objective

        objective = build_objective(spec, engine.module, dataset, held_out, init_from=init_from,
                                    resume_from=resume_from, batch_size=schedule.micro_batch_size,
                                    device=dist.device, say=say)
    log.start(total_steps)
    return _Run(spec=spec, log=log, dist=dist, state=state, resume_from=resume_from, model=model, tokenizer=tokenizer,
                dataset=dataset, held_out=held_out, plans=plans, engine=engine, optimizer=optimizer,
                scheduler=scheduler, total_steps=total_steps, preference=objective, init_from=init_from)


class _Saver:
    """Writes checkpoint-<step> of a run: every rank its engine and RNG state, the main rank the model state
    (adapters, trained tensors, tokenizer, trainer state and the marker, last)."""

    def __init__(self, run: _Run, *, ds_config: dict | None, config_record: dict, base_print: dict):
        self.run, self.ds_config = run, ds_config
        self.config_record, self.base_print = config_record, base_print

    def save(self, state: TrainerState) -> Path:
        run = self.run
        path = save_checkpoint(Path(run.spec.engine.work_dir), state.step, functools.partial(self._write, state=state),
                               is_main=run.dist.is_main, save_total_limit=run.spec.engine.save_total_limit)
        run.log.echo(f"saved {path}")
        return path

    def _write(self, tmp: Path, *, state: TrainerState) -> None:
        from vlft.model.trained_state import save_trained_state

        run, spec = self.run, self.run.spec
        if self.ds_config is not None:
            run.engine.save_checkpoint(str(tmp / DS_STATE), tag=DS_TAG, save_latest=False,
                                       exclude_frozen_parameters=True)
        elif run.dist.is_main:
            save_optimizer_state(tmp, run.optimizer, run.scheduler)
        save_rng_state(rng_file(tmp, run.dist.rank))
        if run.preference is not None and run.dist.is_main:
            run.preference.save(tmp)
        with _gathered_for_save(run.model, self.ds_config):
            if run.dist.is_main:
                run.tokenizer.save_pretrained(str(tmp))
                state.save(tmp)
                save_trained_state(run.model, tmp, meta={
                    "config": self.config_record, "step": state.step, "epoch": run.plans.progress(state),
                    "base_model": spec.model.path or {"vision": spec.model.vision.path, "llm": spec.model.llm.path},
                    "base_fingerprint": self.base_print,
                    "engine": spec.engine.deepspeed or "torch", "world_size": run.world_size,
                    **({"init_from": str(run.init_from)} if run.init_from is not None else {})})


def _fit(run: _Run, saver: _Saver, stop: StopRequest, *, on_step) -> TrainResult:
    """Micro-batches until total_steps optimizer steps; a stop signal ends it at a step boundary, saved."""
    spec, log, dist, engine, plans, state = run.spec, run.log, run.dist, run.engine, run.plans, run.state
    result = TrainResult(work_dir=Path(spec.engine.work_dir), checkpoint=run.resume_from)
    saved_step = state.step if run.resume_from is not None else -1
    accumulation = spec.schedule.gradient_accumulation

    def evaluate() -> None:
        if run.preference is not None:
            from vlft.engine.preference import preference_validation

            loss, metrics = preference_validation(engine.module, run.preference, run.held_out, rank=dist.rank,
                                                  world_size=run.world_size, device=dist.device,
                                                  reference=run.preference.held_reference)
            log.eval(state.step, loss, samples=len(run.held_out), metrics=metrics)
            return
        loss = validation_loss(engine.module, run.held_out, rank=dist.rank, world_size=run.world_size,
                               device=dist.device)
        log.eval(state.step, loss, samples=len(run.held_out))

    def due(every: int) -> bool:
        return bool(every) and state.step % every == 0

    engine.train()
    try:
        epoch, batch = state.epoch, state.batch
        window = _Window()
        while state.step < run.total_steps:
            batches = plans.for_rank(epoch)
            for inputs in plans.loader(batches, start=batch, epoch=epoch):
                window.add(inputs, plans.samples_in(batches[batch]))
                indices = batches[batch]
                batch += 1
                has_targets = bool((inputs["labels"][..., 1:] != IGNORE_INDEX).any())
                inputs = {k: v.to(dist.device) for k, v in inputs.items() if k != "num_tokens"}
                if run.preference is None:
                    loss = engine(**inputs, use_cache=False).loss
                else:
                    loss, metrics = run.preference.loss(engine, inputs, indices)
                    window.add_metrics(metrics)
                if not has_targets:            # only samples whose image failed mid-run: NaN loss, zero gradient
                    loss = torch.nan_to_num(loss, nan=0.0)
                engine.backward(loss)
                engine.step()                   # an optimizer step on accumulation boundaries only
                if has_targets:
                    window.loss, window.counted = window.loss + loss.item(), window.counted + 1
                if batch % accumulation:
                    continue
                # one collective a step: the loss and counts, and whether any rank was asked to stop
                loss_sum, counted, tokens, samples, stops = all_reduce_sum(
                    [window.loss, window.counted, window.tokens, window.samples, float(stop.requested)], dist.device)
                step_loss = loss_sum / counted if counted else float("nan")
                state = TrainerState(state.step + 1, epoch, batch, run.world_size)
                result.steps.append(state.step)
                result.losses.append(step_loss)
                log.step(state.step, epoch=plans.progress(state), loss=step_loss, lrs=current_lrs(engine),
                         grad_norm=grad_norm(engine), tokens=int(tokens), samples=int(samples),
                         seconds=time.perf_counter() - window.start, metrics=window.mean_metrics())
                window = _Window()
                if stops:
                    raise _StopAtBoundary
                if due(spec.engine.sample_every):
                    log.samples(state.step, generate_samples(engine.module, run.dataset.pipeline, spec, dist.device),
                                images=[p.image or None for p in spec.engine.sample_prompts])
                if run.held_out is not None and due(spec.engine.eval_steps):
                    evaluate()
                if due(spec.engine.save_steps):
                    result.checkpoint, saved_step = saver.save(state), state.step
                if on_step is not None:
                    on_step(state.step, step_loss)
                if stop.requested and run.world_size == 1:
                    raise _StopAtBoundary
                if state.step >= run.total_steps:
                    break
            else:
                epoch, batch = epoch + 1, 0
    except (KeyboardInterrupt, _StopAtBoundary):
        stop.saving = True
        if state.step > saved_step and state.step > 0:
            result.checkpoint = saver.save(state)
        log.echo(f"interrupted at step {state.step}: " + (
            f"{result.checkpoint} holds it; continue with --resume auto" if result.checkpoint
            else "nothing to save yet"))
        result.loss_plot = log.close()
        raise TrainingInterrupted(result, signal_name=stop.name or "SIGINT",
                                  exit_code=stop.exit_code if stop.requested else 130) from None
    if run.held_out is not None and not due(spec.engine.eval_steps):
        evaluate()
    if state.step > saved_step:
        result.checkpoint = saver.save(state)
    final_loss = log.final_loss()
    if run.dataset.stats.training_summary():
        log.echo(run.dataset.stats.training_summary())
    result.loss_plot = log.close()
    log.echo(f"done: {state.step} steps, final loss {final_loss:.4f} (mean of the last logged window); "
             f"checkpoint {result.checkpoint}" + (f"; loss curve {result.loss_plot}" if result.loss_plot else ""))
    return result


class _Window:
    """Micro-batches of the optimizer step in progress."""

    def __init__(self):
        self.loss, self.counted, self.tokens, self.samples, self.start = 0.0, 0, 0, 0, time.perf_counter()
        self.metrics: list[dict[str, float]] = []   # a preference objective's, one per micro-batch

    def add(self, inputs: dict, samples: int) -> None:
        self.tokens += int(inputs["num_tokens"])
        self.samples += samples

    def add_metrics(self, metrics: dict[str, float]) -> None:
        self.metrics.append(metrics)

    def mean_metrics(self) -> dict[str, float] | None:
        """This rank's mean of each metric over the step's micro-batches (None for SFT)."""
        if not self.metrics:
            return None
        return {key: sum(m[key] for m in self.metrics) / len(self.metrics) for key in self.metrics[0]}


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
