"""The engine under faults: signals, a second trainer, rollbacks, damaged or planted checkpoints, full disks,
work dirs that cannot be, and resumes with a changed config. Real subprocesses where a signal is the point."""
import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from vlft.cli import main
from vlft.engine import TrainingInterrupted, train_from_config
from vlft.engine.manifest import write_manifest

DS_OPTIM = Path("ds_state/state/zero_pp_rank_0_mp_rank_00_optim_states.pt")


def _losses(work: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (work / "train_log.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def _trained(ckpt: Path) -> dict:
    return {**load_file(str(ckpt / "llm_adapter" / "adapter_model.safetensors")),
            **load_file(str(ckpt / "trained.safetensors"))}


def _stop_at(step: int):
    def on_step(done, loss):
        if done == step:
            signal.raise_signal(signal.SIGINT)
    return on_step


def _child_env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1"}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


#: A child `vlft train` with one function of vlft patched (PATCH: python source run before the CLI).
CHILD = """
import sys, os, signal, time
{patch}
from vlft.cli import main
sys.argv = ["vlft", *sys.argv[1:]]
main()
"""


def _start_child(args: list[str], patch: str = "") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD.format(patch=patch), "train", *args], env=_child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(work: Path, step: int, child: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise AssertionError(f"child ended early: {child.communicate()}")
        log = work / "train_log.jsonl"
        if log.is_file() and any(s >= step for s in _losses(work)):
            return
        time.sleep(0.05)
    child.kill()
    raise AssertionError("child never reached step %d" % step)


@pytest.fixture(scope="module")
def long_config(tmp_path_factory, colour_base, colour_experiment) -> Path:
    """A run long enough to be signalled mid-way (plain torch: the child starts faster)."""
    return colour_experiment(tmp_path_factory.mktemp("long"), base=colour_base,
                             schedule={"max_steps": 400, "gradient_accumulation": 1},
                             engine={"save_steps": 0, "deepspeed": None})


@pytest.mark.battery("signals", was="lost")
@pytest.mark.battery("races", was="lost")
def test_sigterm_saves_the_last_step_and_a_second_trainer_is_refused_meanwhile(long_config, tmp_path):
    work = tmp_path / "work"
    child = _start_child([str(long_config), "--work-dir", str(work)])
    _wait_for_step(work, 3, child)

    second = CliRunner().invoke(main, ["train", str(long_config), "--work-dir", str(work), "--resume", "auto"])
    assert second.exit_code == 2
    assert f"is in use by another vlft train (pid {child.pid} on" in second.stderr, second.stderr

    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "continue with: vlft train" in err and "--resume auto" in err
    stopped = int((work / "latest").read_text().strip().split("-")[1])
    assert stopped >= 3 and sorted(_losses(work)) == list(range(1, stopped + 1))
    assert (work / "loss.png").is_file() and "interrupted at step" in (work / "train.log").read_text()

    # the checkpoint resumes to the losses of a run never interrupted
    more = stopped + 2
    with pytest.raises(TrainingInterrupted):
        train_from_config(long_config, work_dir=str(work), resume="auto", on_step=_stop_at(more))
    reference = tmp_path / "reference"
    with pytest.raises(TrainingInterrupted):
        train_from_config(long_config, work_dir=str(reference), on_step=_stop_at(more))
    resumed, whole = _losses(work), _losses(reference)
    assert sorted(resumed) == sorted(whole) == list(range(1, more + 1))
    assert max(abs(resumed[s] - whole[s]) for s in whole) <= 1e-5, (resumed, whole)


# Inside the optimizer step of step 3, the process sends itself Ctrl-C; during the interrupt's save, again.
SIGNAL_INSIDE_STEP = """
import torch
import vlft.model.trained_state as trained_state
real_step, real_save = torch.optim.AdamW.step, trained_state.save_trained_state
calls = []
def step(self, *a, **k):
    calls.append(1)
    out = real_step(self, *a, **k)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGINT)   # just after the update, before vlft counts the step
        time.sleep(0.2)
    return out
def save(model, out_dir, *, meta):
    os.kill(os.getpid(), signal.SIGINT)       # a second Ctrl-C while the checkpoint is written
    time.sleep(0.2)
    real_save(model, out_dir, meta=meta)
torch.optim.AdamW.step = step
trained_state.save_trained_state = save
"""


@pytest.mark.battery("signals", was="lost")
def test_ctrl_c_inside_the_optimizer_step_and_again_during_the_save_keeps_the_checkpoint_exact(long_config,
                                                                                              tmp_path):
    work = tmp_path / "work"
    child = _start_child([str(long_config), "--work-dir", str(work)], patch=SIGNAL_INSIDE_STEP)
    out, err = child.communicate(timeout=180)
    assert child.returncode == 130, err[-3000:]
    assert "SIGINT again: saving the checkpoint; waiting for it to finish" in err
    assert (work / "latest").read_text().strip() == "checkpoint-3"
    assert not list(work.glob("*.tmp"))
    reference = tmp_path / "reference"
    with pytest.raises(TrainingInterrupted) as stopped:
        train_from_config(long_config, work_dir=str(reference), on_step=_stop_at(3))
    assert stopped.value.result.checkpoint.name == "checkpoint-3"
    ours, theirs = _trained(work / "checkpoint-3"), _trained(reference / "checkpoint-3")
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-6, rtol=0) for k in theirs)


@pytest.mark.battery("signals", was="silent")
def test_ctrl_c_saves_even_when_the_shell_started_us_with_sigint_ignored(long_config, tmp_path):
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)   # a background job in a script
    try:
        with pytest.raises(TrainingInterrupted) as stopped:
            train_from_config(long_config, work_dir=str(tmp_path / "w"), on_step=_stop_at(2))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert stopped.value.result.checkpoint.name == "checkpoint-2" and stopped.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN or previous is not signal.SIG_IGN


@pytest.fixture(scope="module")
def zero2_config(tmp_path_factory, colour_base, colour_experiment) -> Path:
    return colour_experiment(tmp_path_factory.mktemp("z2"), base=colour_base,
                             schedule={"max_steps": 12, "gradient_accumulation": 1},
                             engine={"save_steps": 4, "save_total_limit": 3})


@pytest.mark.battery("resume", was="lost")
def test_resuming_an_older_checkpoint_sets_the_abandoned_branch_aside(zero2_config, tmp_path):
    work = tmp_path / "work"
    train_from_config(zero2_config, work_dir=str(work))
    assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-4", "checkpoint-8"]
    old_eight = _trained(work / "checkpoint-8")
    with pytest.raises(TrainingInterrupted):
        train_from_config(zero2_config, work_dir=str(work), resume=str(work / "checkpoint-4"),
                          cfg_options=["engine.save_total_limit=2"], on_step=_stop_at(9))
    assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-8", "checkpoint-9"]
    assert (work / "latest").read_text().strip() == "checkpoint-9"
    (aside,) = work.glob("rolled_back-4-*")
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoint-12", "checkpoint-8", "train_log.jsonl"]
    assert all(torch.equal(old_eight[k], v) for k, v in _trained(aside / "checkpoint-8").items())
    result = train_from_config(zero2_config, work_dir=str(work), resume="auto",
                               cfg_options=["engine.save_total_limit=2"])
    assert result.steps == [10, 11, 12] and sorted(_losses(work)) == list(range(1, 13))


@pytest.mark.battery("resume", was="silent")
def test_a_changed_lr_is_refused_naming_it_and_applied_from_the_resume_step_with_the_flag(zero2_config, tmp_path):
    work = tmp_path / "work"
    with pytest.raises(TrainingInterrupted):
        train_from_config(zero2_config, work_dir=str(work), on_step=_stop_at(4))
    args = ["train", str(zero2_config), "--work-dir", str(work), "--resume", "auto",
            "--cfg-options", "schedule.lr=1e-3", "data.max_length=600"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "data.max_length: 512 there, 600 now; schedule.lr: 0.002 there, 0.001 now" in refused.stderr
    assert "--resume-allow-changes" in refused.stderr
    accepted = CliRunner().invoke(main, [*args, "--resume-allow-changes"])
    assert accepted.exit_code == 0, accepted.output + repr(accepted.exception)
    assert "--resume-allow-changes: applying from step 4: data.max_length" in accepted.output
    rows = [json.loads(r) for r in (work / "train_log.jsonl").read_text().splitlines() if '"loss"' in r]
    # warmup 3 of 12 steps; a row's lr is the one set for the next step: 1e-3 on the cosine at step 5
    expected = 1e-3 * 0.5 * (1 + math.cos(math.pi * (5 - 3) / (12 - 3)))
    assert rows[4]["step"] == 5 and rows[4]["lr"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.battery("checkpoints", was="traceback")
def test_a_damaged_newest_checkpoint_is_named_and_auto_resumes_the_newest_intact_one(zero2_config, tmp_path):
    work = tmp_path / "work"
    with pytest.raises(TrainingInterrupted):
        train_from_config(zero2_config, work_dir=str(work), on_step=_stop_at(5))
    adapter = work / "checkpoint-5" / "llm_adapter" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:100])
    named = CliRunner().invoke(main, ["train", str(zero2_config), "--work-dir", str(work), "--resume",
                                      str(work / "checkpoint-5")])
    assert named.exit_code == 2 and len(named.stderr.strip().splitlines()) == 1
    assert "checkpoint-5: damaged checkpoint, llm_adapter/adapter_model.safetensors has 100 bytes" in named.stderr
    (work / "checkpoint-4" / "rng_state_0.json").unlink()
    missing = CliRunner().invoke(main, ["train", str(zero2_config), "--work-dir", str(work), "--resume",
                                        str(work / "checkpoint-4")])
    assert missing.exit_code == 2 and "rng_state_0.json is missing" in missing.stderr
    neither = CliRunner().invoke(main, ["train", str(zero2_config), "--work-dir", str(work), "--resume", "auto"])
    assert neither.exit_code == 2 and "no intact checkpoint" in neither.stderr
    assert "checkpoint-5 is damaged" in neither.stderr and "checkpoint-4 is damaged" in neither.stderr


@pytest.mark.battery("checkpoints", was="traceback")
def test_auto_resume_skips_a_damaged_newest_checkpoint_saying_so(zero2_config, tmp_path):
    work = tmp_path / "work"
    with pytest.raises(TrainingInterrupted):
        train_from_config(zero2_config, work_dir=str(work), on_step=_stop_at(5))
    (work / "checkpoint-5" / "trained.safetensors").write_bytes(b"\x00" * 8)
    result = CliRunner().invoke(main, ["train", str(zero2_config), "--work-dir", str(work), "--resume", "auto",
                                       "--cfg-options", "engine.save_steps=0"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "checkpoint-5 is damaged (trained.safetensors has 8 bytes" in result.output
    assert "resuming from checkpoint-4, the newest intact checkpoint" in result.output


PAYLOAD = """
import os
class Payload:
    def __reduce__(self):
        return (os.system, ("touch {marker}",))
"""


@pytest.mark.battery("checkpoints", was="lost")
def test_a_pickle_payload_planted_in_a_checkpoint_never_runs(zero2_config, tmp_path):
    work = tmp_path / "work"
    with pytest.raises(TrainingInterrupted):
        train_from_config(zero2_config, work_dir=str(work), on_step=_stop_at(2))
    ckpt, marker = work / "checkpoint-2", tmp_path / "pwned"
    namespace: dict = {}
    exec(PAYLOAD.format(marker=marker), namespace)
    state = torch.load(ckpt / DS_OPTIM, weights_only=False)   # the test's own file: trusted here
    state["payload"] = namespace["Payload"]()
    torch.save(state, ckpt / DS_OPTIM)
    torch.save({"payload": namespace["Payload"]()}, ckpt / "rng_state_0.pt")   # what older vlft read
    torch.save({"payload": namespace["Payload"]()}, ckpt / "optimizer.pt")
    write_manifest(ckpt)                                      # a planter can rewrite the manifest too
    result = CliRunner().invoke(main, ["train", str(zero2_config), "--work-dir", str(work), "--resume", "auto"])
    assert result.exit_code == 2, result.output
    assert "holds a Python object vlft does not load" in result.stderr and "posix.system" in result.stderr
    assert not marker.exists()


@pytest.mark.battery("disk-full", was="traceback")
def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(zero2_config, tmp_path,
                                                                                 monkeypatch):
    import vlft.model.trained_state as trained_state

    real_save, calls = trained_state.save_trained_state, []

    def full_on_second_save(model, out_dir, *, meta):
        calls.append(meta["step"])
        if len(calls) == 2:
            (Path(out_dir) / "trained.safetensors").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(out_dir) / "trained.safetensors"))
        real_save(model, out_dir, meta=meta)

    monkeypatch.setattr(trained_state, "save_trained_state", full_on_second_save)
    work = tmp_path / "work"
    result = CliRunner().invoke(main, ["train", str(zero2_config), "--work-dir", str(work)])
    assert result.exit_code == 2, result.output + repr(result.exception)
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: saving") and "checkpoint-8 failed: the disk is full" in line
    assert "checkpoint-4 is intact" in line
    assert not list(work.glob("*.tmp")) and (work / "latest").read_text().strip() == "checkpoint-4"


@pytest.mark.battery("work-dirs", was="traceback")
@pytest.mark.parametrize("case", ["under_a_file", "is_a_file", "config_names_a_file", "read_only"])
def test_a_work_dir_that_cannot_be_is_one_line_before_the_model_loads(zero2_config, tmp_path, case, monkeypatch):
    import vlft.model.load as load

    monkeypatch.setattr(load, "build_vlm", lambda *a, **k: pytest.fail("the model was loaded"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    work, expected = {"under_a_file": (blocker / "work", f"{blocker} is a file"),
                      "is_a_file": (blocker, f"'{blocker}' is a file"),
                      "config_names_a_file": (blocker, f"{blocker} is a file"),
                      "read_only": (Path("/proc/vlft-work"), "cannot create the work dir")}[case]
    where = (["--cfg-options", f"engine.work_dir={work}"] if case == "config_names_a_file"
             else ["--work-dir", str(work)])
    result = CliRunner().invoke(main, ["train", str(zero2_config), *where])
    assert result.exit_code == 2, result.output + repr(result.exception)
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and expected in line


@pytest.mark.battery("resume", was="lost")
def test_auto_resume_with_only_an_unfinished_checkpoint_starts_fresh_and_keeps_the_old_log(zero2_config, tmp_path):
    work = tmp_path / "work"
    with pytest.raises(TrainingInterrupted):
        train_from_config(zero2_config, work_dir=str(work), on_step=_stop_at(2))
    (work / "checkpoint-2" / "vlft_checkpoint.json").unlink()     # as if killed before the marker
    old_log = (work / "train_log.jsonl").read_text()
    result = CliRunner().invoke(main, ["train", str(zero2_config), "--work-dir", str(work), "--resume", "auto",
                                       "--cfg-options", "schedule.max_steps=1", "--resume-allow-changes"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "checkpoint-2 never finished saving" in result.output
    (kept,) = work.glob("train_log.*.jsonl")
    assert kept.read_text() == old_log


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs we may remount read-only (a real EROFS, which root's permissions cannot bypass)."""
    where = tmp_path / "mnt"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(where)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root in a mount namespace)")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.battery("work-dirs", was="traceback")
def test_resuming_in_a_read_only_work_dir_is_one_line_before_the_model_loads(zero2_config, tmpfs, monkeypatch):
    work = tmpfs / "work"
    with pytest.raises(TrainingInterrupted):
        train_from_config(zero2_config, work_dir=str(work), on_step=_stop_at(2))
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    import vlft.model.load as load

    monkeypatch.setattr(load, "build_vlm", lambda *a, **k: pytest.fail("the model was loaded"))
    result = CliRunner().invoke(main, ["train", str(zero2_config), "--work-dir", str(work), "--resume", "auto"])
    assert result.exit_code == 2, result.output + repr(result.exception)
    (line,) = result.stderr.strip().splitlines()
    assert line == f"error: {work}: the work dir is on a read-only filesystem; choose another --work-dir"


def test_a_resume_from_deepspeed_state_of_another_pickle_protocol_prints_no_library_warning(zero2_config, tmp_path,
                                                                                            recwarn):
    """DeepSpeed state pickled with protocol 3 (as another torch or DeepSpeed than ours may write it): torch's
    weights-only loader reads it and warns about the protocol, which tells the user nothing they can act on."""
    work = tmp_path / "work"
    with pytest.raises(TrainingInterrupted):
        train_from_config(zero2_config, work_dir=str(work), on_step=_stop_at(10))
    ckpt = work / "checkpoint-10"
    state_files = sorted((ckpt / "ds_state").rglob("*.pt"))
    assert state_files
    for file in state_files:
        torch.save(torch.load(file, weights_only=False), file, pickle_protocol=3)
    write_manifest(ckpt)                                      # the rewritten files are the checkpoint's own
    recwarn.clear()
    result = CliRunner().invoke(main, ["train", str(zero2_config), "--work-dir", str(work), "--resume", "auto"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert f"resuming from {ckpt} (step 10" in result.output and "done: 12 steps" in result.output
    noted = [str(w.message) for w in recwarn if "pickle protocol" in str(w.message)]
    assert noted == [] and "pickle protocol" not in result.output
