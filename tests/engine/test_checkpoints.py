"""Checkpoints: Ctrl-C saves, resume equals the uninterrupted run, half-written saves are never resumed."""
import json
import signal
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from vlft.cli import main
from vlft.data.cache import list_caches
from vlft.engine import TrainingInterrupted, train_from_config
from vlft.engine.checkpoints import (TRAINER_STATE, TrainerState, check_work_dir, find_resume_checkpoint,
                                     prune_checkpoints, resolve_resume)
from vlft.engine.manifest import write_manifest
from vlft.errors import CheckpointError, ConfigError
from vlft.model.layouts import CHECKPOINT_MARKER


@pytest.fixture(scope="module")
def config(tmp_path_factory, colour_base, colour_experiment) -> Path:
    return colour_experiment(tmp_path_factory.mktemp("ckpt"), base=colour_base)


def _interrupt_at(stop: int):
    def on_step(step, loss):
        if step == stop:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C does: KeyboardInterrupt in the main thread
    return on_step


def _trained(ckpt: Path) -> dict:
    return {**load_file(str(ckpt / "llm_adapter" / "adapter_model.safetensors")),
            **load_file(str(ckpt / "trained.safetensors"))}


@pytest.mark.parametrize("engine", ["zero2", "none"])
def test_resume_after_ctrl_c_equals_the_uninterrupted_run(config, tmp_path, engine):
    whole = train_from_config(config, work_dir=str(tmp_path / "whole"), deepspeed=engine)
    assert whole.steps == list(range(1, 9)) and whole.checkpoint.name == "checkpoint-8"

    work = tmp_path / "parts"
    with pytest.raises(TrainingInterrupted) as stopped:   # interrupted after step 3: not a save step
        train_from_config(config, work_dir=str(work), deepspeed=engine, on_step=_interrupt_at(3))
    first = stopped.value.result
    assert first.steps == [1, 2, 3] and first.checkpoint == work / "checkpoint-3"
    assert (work / "latest").read_text().strip() == "checkpoint-3"
    assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]

    caches = {entry.path for entry in list_caches()}
    assert caches                                               # the first runs encoded through the cache
    rest = train_from_config(config, work_dir=str(work), deepspeed=engine, resume="auto")
    assert {entry.path for entry in list_caches()} == caches   # the resume opened the encoded cache, built none
    assert rest.steps == [4, 5, 6, 7, 8]
    resumed = first.losses + rest.losses
    assert max(abs(a - b) for a, b in zip(resumed, whole.losses)) <= 1e-6, (resumed, whole.losses)
    final, reference = _trained(rest.checkpoint), _trained(whole.checkpoint)
    assert final.keys() == reference.keys()
    for name in final:
        assert torch.allclose(final[name], reference[name], atol=1e-6, rtol=0), name
    # the log continues where the checkpoint was, and save_total_limit=2 pruned the rest
    rows = [json.loads(r) for r in (work / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 9))
    assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-8"]


def test_a_crash_during_save_leaves_a_dir_resume_never_picks(config, tmp_path, monkeypatch):
    import vlft.model.trained_state as trained_state

    real_save, calls = trained_state.save_trained_state, []

    def crash_on_second_save(model, out_dir, *, meta):
        calls.append(meta["step"])
        if len(calls) == 2:
            (Path(out_dir) / "trained.safetensors").write_bytes(b"half")
            raise RuntimeError("disk full")
        real_save(model, out_dir, meta=meta)

    monkeypatch.setattr(trained_state, "save_trained_state", crash_on_second_save)
    work = tmp_path / "work"
    with pytest.raises(RuntimeError, match="disk full"):
        train_from_config(config, work_dir=str(work), deepspeed="zero2")
    monkeypatch.setattr(trained_state, "save_trained_state", real_save)
    assert (work / "checkpoint-4.tmp").is_dir() and not (work / "checkpoint-4.tmp" / CHECKPOINT_MARKER).exists()
    assert (work / "latest").read_text().strip() == "checkpoint-2"
    assert find_resume_checkpoint(work) == work / "checkpoint-2"

    result = CliRunner().invoke(main, ["train", str(config), "--work-dir", str(work), "--resume", "auto",
                                       "--resume-allow-changes", "--cfg-options", "schedule.max_steps=5"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert f"resuming from {work / 'checkpoint-2'}" in result.output
    assert not (work / "checkpoint-4.tmp").exists()                    # cleaned by the next save
    assert (work / "latest").read_text().strip() == "checkpoint-5"


def test_a_resume_after_an_image_was_replaced_trains_that_sample_encoded_again(tmp_path, colour_base,
                                                                                colour_experiment, monkeypatch,
                                                                                caplog):
    from PIL import Image

    from vlft.data.dataset import CachedDataset

    config = colour_experiment(tmp_path / "exp", base=colour_base, data={"num_workers": 0})
    work = tmp_path / "work"
    with pytest.raises(TrainingInterrupted):
        train_from_config(config, work_dir=str(work), deepspeed="none", on_step=_interrupt_at(3))
    Image.new("RGB", (400, 100), (220, 30, 30)).save(tmp_path / "exp" / "0.png")  # same path, more tiles
    real, seen = CachedDataset.__getitem__, []

    def spy(self, index):
        item = real(self, index)
        if self.samples[index].images[0].endswith("/0.png"):
            seen.append(item)
        return item

    monkeypatch.setattr(CachedDataset, "__getitem__", spy)
    result = CliRunner().invoke(main, ["train", str(config), "--work-dir", str(work), "--resume", "auto",
                                       "--deepspeed", "none"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "1 row(s) whose images changed since it was built encoded again" in result.output
    assert seen, "the replaced sample was not trained after the resume"
    for item in seen:  # its new tiles, and its reply trained: not a row of ignored labels
        assert len(item["pixel_values"]) > 2 and (item["labels"] != -100).any()
    assert "when the data was read" not in result.output + caplog.text


def _fake_checkpoint(path: Path, step: int, *, marker=True, state=True, config=None) -> Path:
    path.mkdir(parents=True)
    if marker:
        (path / CHECKPOINT_MARKER).write_text(json.dumps({"format_version": 1, "config": config or {}}))
    if state:
        TrainerState(step, 0, step, 1).save(path)
    write_manifest(path)
    return path


def test_find_resume_checkpoint_skips_half_written_and_stale_latest(tmp_path):
    _fake_checkpoint(tmp_path / "checkpoint-2", 2)
    _fake_checkpoint(tmp_path / "checkpoint-10", 10)
    _fake_checkpoint(tmp_path / "checkpoint-12.tmp", 12)                 # complete inside, but never renamed
    _fake_checkpoint(tmp_path / "checkpoint-14", 14, marker=False)        # no marker: written before it
    _fake_checkpoint(tmp_path / "checkpoint-16", 16, state=False)
    (tmp_path / "latest").write_text("checkpoint-14\n")
    assert find_resume_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    (tmp_path / "latest").write_text("checkpoint-2\n")                   # a crash between rename and `latest`
    assert find_resume_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert find_resume_checkpoint(tmp_path / "empty") is None
    with pytest.raises(CheckpointError, match="not a complete vlft training checkpoint"):
        resolve_resume(str(tmp_path / "checkpoint-14"), tmp_path)


def test_prune_keeps_the_newest_and_removes_leftovers(tmp_path):
    for step in (2, 4, 6, 8):
        _fake_checkpoint(tmp_path / f"checkpoint-{step}", step)
    _fake_checkpoint(tmp_path / "checkpoint-9.tmp", 9, marker=False)
    removed = prune_checkpoints(tmp_path, 2, keep=tmp_path / "checkpoint-8")
    assert sorted(p.name for p in removed) == ["checkpoint-2", "checkpoint-4", "checkpoint-9.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-6", "checkpoint-8"]


def test_work_dir_of_the_same_or_another_experiment_is_refused_without_resume(tmp_path):
    ours = {"model": {"path": "/m", "dtype": "float32"}, "data": {"max_length": 512}}
    _fake_checkpoint(tmp_path / "checkpoint-4", 4, config=ours)
    with pytest.raises(ConfigError, match="already holds checkpoint-4 of this experiment; continue it with"):
        check_work_dir(tmp_path, {**ours, "schedule": {"lr": 1.0}}, resume_from=None)
    with pytest.raises(ConfigError, match=r"another experiment \(data.max_length: 512 there, 1024 now\)"):
        check_work_dir(tmp_path, {**ours, "data": {"max_length": 1024}}, resume_from=None)
    check_work_dir(tmp_path, ours, resume_from=tmp_path / "checkpoint-4")  # continuing is fine
    with pytest.raises(ConfigError, match="it trained another model"):
        check_work_dir(tmp_path, {**ours, "model": {"path": "/other"}}, resume_from=tmp_path / "checkpoint-4")
    assert (tmp_path / "checkpoint-4" / TRAINER_STATE).is_file()
