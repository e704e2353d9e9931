"""The work dir a run leaves, driven through TrainLog directly (no model, no training): config copies,
the text log, JSONL rows for train and eval, sample generations, the plot, final loss and the trackers."""
from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest

from vlft.engine.progress import (CONFIG_JSON, CONFIG_PY, LOG_FILE, LOSS_PLOT, SAMPLES_FILE, TEXT_LOG, TrainLog,
                                  format_config_py, loss_axis, plot_loss, read_log, smooth)
from vlft.engine.trackers import TRACKERS, build_trackers
from vlft.errors import ConfigError

CONFIG = {"model": {"family": "internvl", "path": "/models/base", "llm": {"lora": {"r": 8}}},
          "data": {"datasets": [{"path": "/data/train.json", "image_root": None}], "packing": False},
          "schedule": {"lr": 2e-3, "max_steps": 6}, "engine": {"work_dir": "/work/run", "report_to": []}}


def _open(work: Path, *, start_step: int = 0, total_steps: int | None = 6, logging_steps: int = 2,
          report_to=(), **kwargs) -> TrainLog:
    return TrainLog(work, start_step=start_step, total_steps=total_steps, logging_steps=logging_steps,
                    enabled=True, config=CONFIG, report_to=report_to, progress_bar=False, **kwargs)


def _steps(log: TrainLog, steps, *, loss_of=lambda s: 4.0 / s) -> None:
    for step in steps:
        log.step(step, epoch=step / 12, loss=loss_of(step), lrs={"llm": 2e-4, "connector": 2e-3}, grad_norm=0.8,
                 tokens=1000, samples=4, seconds=0.5)


def test_the_config_and_the_text_log_exist_before_the_first_step(tmp_path):
    work = tmp_path / "run"
    log = _open(work)
    assert json.loads((work / CONFIG_JSON).read_text()) == CONFIG
    assert "model = {'family': 'internvl'" in (work / CONFIG_PY).read_text()
    log.echo("data: 16 samples kept")
    lines = (work / TEXT_LOG).read_text().splitlines()
    assert lines[0].endswith("--- run: training in " + str(work) + " ---")
    assert lines[-1].endswith(" data: 16 samples kept") and lines[-1][:4].isdigit()   # timestamped
    log.close()


def test_the_config_py_loads_back_as_the_same_config(tmp_path):
    from vlft.config import load_config, spec_to_dict

    shipped = Path(__file__).parents[2] / "configs" / "tiny_demo.py"
    record = json.loads(json.dumps(spec_to_dict(load_config(shipped)), default=str))
    copy = tmp_path / CONFIG_PY
    copy.write_text(format_config_py(record))
    assert json.loads(json.dumps(spec_to_dict(load_config(copy)), default=str)) == record


def test_without_a_terminal_each_logged_step_is_a_plain_line_on_stdout_and_in_the_text_log(tmp_path, capsys):
    work = tmp_path / "run"
    log = _open(work)
    _steps(log, range(1, 6))
    out = capsys.readouterr().out
    assert "\r" not in out
    step_lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert [line.split(" |")[0] for line in step_lines] == ["step 2/6", "step 4/6"]
    assert step_lines[0].startswith("step 2/6 | epoch 0.17 | loss 3.0000 | lr llm=2.00e-04 connector=2.00e-03 | "
                                    "grad_norm 0.8 | 2000 tok/s | eta ")
    text = (work / TEXT_LOG).read_text()
    assert "step 2/6 | epoch 0.17 | loss 3.0000" in text and "step 4/6" in text
    log.close()


def test_on_a_terminal_the_bar_shows_the_steps_and_stdout_gets_no_step_lines(tmp_path, capsys):
    work = tmp_path / "run"
    log = TrainLog(work, start_step=0, total_steps=4, logging_steps=2, enabled=True, report_to=(),
                   progress_bar=True)
    _steps(log, range(1, 5))
    log.echo("saved checkpoint-4")
    log.close()
    captured = capsys.readouterr()
    assert "step 2/4" not in captured.out and "saved checkpoint-4" in captured.out
    assert "train" in captured.err                                       # tqdm draws on stderr
    assert "step 2/4 | epoch" in (work / TEXT_LOG).read_text()           # the text log has them anyway


def test_the_last_step_is_logged_even_off_the_logging_interval(tmp_path):
    work = tmp_path / "run"
    log = _open(work, logging_steps=4)
    _steps(log, range(1, 7))
    log.close()
    rows = read_log(work / LOG_FILE)
    assert [r["step"] for r in rows] == [4, 6]
    assert rows[1]["loss"] == pytest.approx((4 / 5 + 4 / 6) / 2)       # the mean of the window 5..6
    assert rows[1]["tokens_seen"] == 6000 and rows[1]["samples_seen"] == 24 and rows[1]["step_time"] == 0.5
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s"} <= set(rows[0])


def test_final_loss_is_the_mean_of_the_last_logged_window(tmp_path):
    log = _open(tmp_path / "run")
    _steps(log, range(1, 7))
    assert log.final_loss() == pytest.approx((4 / 5 + 4 / 6) / 2)
    log.close()


@pytest.mark.battery("resume", was="silent")
def test_resuming_a_finished_run_reports_the_final_loss_of_its_log_not_nan(tmp_path):
    work = tmp_path / "run"
    first = _open(work)
    _steps(first, range(1, 7))
    first.close()
    again = _open(work, start_step=6)
    assert again.final_loss() == pytest.approx((4 / 5 + 4 / 6) / 2)
    again.close()
    assert math.isnan(_open(tmp_path / "fresh").final_loss())


def test_a_resume_drops_the_rows_after_its_step_and_marks_the_text_log(tmp_path):
    work = tmp_path / "run"
    first = _open(work)
    _steps(first, range(1, 6))
    first.eval(2, 2.5, samples=10)
    first.eval(4, 1.5, samples=10)
    first.samples(4, [("hi", "there")])
    first.close()
    resumed = _open(work, start_step=2)
    rows = read_log(work / LOG_FILE)
    assert [(r["step"], "eval_loss" in r) for r in rows] == [(2, False), (2, True)]
    assert read_log(work / SAMPLES_FILE) == []
    kept = list(work.glob("samples.*.jsonl"))                        # the dropped samples are kept aside
    assert len(kept) == 1 and read_log(kept[0])[0]["answer"] == "there"
    _steps(resumed, range(3, 7))
    resumed.close()
    assert [r["step"] for r in read_log(work / LOG_FILE) if "loss" in r] == [2, 4, 6]
    text = (work / TEXT_LOG).read_text()
    assert "step 4/6" in text.split("--- resumed at step 2 ---")[0]     # the first run's lines are kept
    assert "step 6/6" in text.split("--- resumed at step 2 ---")[1]


def test_eval_loss_goes_to_the_jsonl_the_text_log_and_the_plot(tmp_path, capsys):
    work = tmp_path / "run"
    log = _open(work)
    _steps(log, range(1, 5))
    log.eval(4, 1.25, samples=40)
    plot = log.close()
    rows = read_log(work / LOG_FILE)
    assert rows[-1]["step"] == 4 and rows[-1]["eval_loss"] == 1.25 and rows[-1]["eval_samples"] == 40
    assert "eval step 4/6 | eval_loss 1.2500 | 40 samples" in capsys.readouterr().out
    assert "eval_loss 1.2500" in (work / TEXT_LOG).read_text()
    assert plot == work / LOSS_PLOT and plot.stat().st_size > 0


def test_sample_generations_are_appended_to_samples_jsonl_and_echoed(tmp_path, capsys):
    work = tmp_path / "run"
    log = _open(work)
    log.samples(2, [("What is shown?", "a cat"), ("Count them", "3")], images=["/img/cat.jpg"])
    log.samples(4, [("What is shown?", "a black cat")], images=["/img/cat.jpg"])
    log.close()
    assert read_log(work / SAMPLES_FILE) == [
        {"step": 2, "prompt": "What is shown?", "image": "/img/cat.jpg", "answer": "a cat"},
        {"step": 2, "prompt": "Count them", "image": None, "answer": "3"},
        {"step": 4, "prompt": "What is shown?", "image": "/img/cat.jpg", "answer": "a black cat"}]
    assert "[sample @ step 4] 'What is shown?' -> 'a black cat'" in capsys.readouterr().out


def test_the_loss_axis_is_log_scale_for_positive_losses_and_clipped_otherwise():
    assert loss_axis([50.0, 3.0, 2.0, 1.9]).scale == "log"
    clipped = loss_axis([100.0] + [-1.0 + i / 100 for i in range(99)])     # one outlier among 100 points
    assert clipped.scale == "linear" and clipped.limits[1] < 5
    assert smooth([1.0, 1.0, 1.0], 0.9) == pytest.approx([1.0, 1.0, 1.0])   # debiased: no pull toward 0


def test_the_plot_is_titled_with_the_run_name_and_draws_eval_loss(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    drawn = {}
    savefig = Figure.savefig

    def keep(figure, out, *args, **kwargs):
        axis = figure.axes[0]
        drawn.update(title=axis.get_title(), scale=axis.get_yscale(),
                     labels=[line.get_label() for line in axis.get_lines()])
        return savefig(figure, out, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    rows = [{"step": s, "loss": 4.0 / s, "lr": 1e-3} for s in range(1, 30)] + [{"step": 10, "eval_loss": 0.6}]
    out = plot_loss(rows, tmp_path / "loss.png", title="food-lora")
    assert out.stat().st_size > 0
    assert drawn["title"].startswith("food-lora\n") and drawn["scale"] == "log"
    assert {"train loss", "train loss (smoothed)", "eval loss"} <= set(drawn["labels"])


def test_tensorboard_gets_the_step_scalars_and_eval_loss(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    work = tmp_path / "run"
    log = _open(work, report_to=["tensorboard"])
    _steps(log, range(1, 3))
    log.eval(2, 1.0)
    log.close()
    events = EventAccumulator(str(work / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "train/lr/llm", "train/lr/connector", "train/epoch", "train/tokens_seen",
            "train/samples_seen", "train/step_time", "eval/loss"} <= set(events.Tags()["scalars"])


class _FakeRun:
    def __init__(self, calls):
        self.calls, self.id = calls, "run123"

    def log(self, data, step):
        self.calls.append(("log", dict(data), step))

    def finish(self):
        self.calls.append(("finish",))


def _fake_wandb(calls):
    module = types.ModuleType("wandb")
    module.init = lambda **kwargs: calls.append(("init", kwargs)) or _FakeRun(calls)
    module.Table = lambda columns, data: ("table", columns, data)
    return module


def test_wandb_runs_offline_in_the_work_dir_without_a_login_and_gets_every_scalar(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "wandb", _fake_wandb(calls))
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT", "WANDB_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    work = tmp_path / "food-lora"
    log = _open(work, report_to=["wandb"])
    _steps(log, range(1, 3))
    log.eval(2, 1.0)
    log.samples(2, [("q", "a")])
    log.close()
    init = calls[0][1]
    assert init["mode"] == "offline" and init["dir"] == str(work) and init["name"] == "food-lora"
    assert init["project"] == "vlft" and init["config"] == CONFIG
    logged = [c for c in calls if c[0] == "log"]
    assert logged[0][2] == 2 and logged[0][1]["train/loss"] == pytest.approx(3.0)
    assert logged[0][1]["train/lr/connector"] == 2e-3
    assert ("log", {"eval/loss": 1.0}, 2) in calls
    assert logged[-1][1]["samples"] == ("table", ["prompt", "image", "answer"], [["q", "", "a"]])
    assert calls[-1] == ("finish",)
    assert "wandb: offline run in" in (work / TEXT_LOG).read_text()


def test_wandb_keeps_the_users_mode_and_a_resume_continues_the_same_run(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "wandb", _fake_wandb(calls))
    monkeypatch.setenv("WANDB_MODE", "online")
    work = tmp_path / "run"
    build_trackers(["wandb"], run_name="run", work_dir=work, config=None)[0].close()
    assert "mode" not in calls[0][1] and "id" not in calls[0][1]
    build_trackers(["wandb"], run_name="run", work_dir=work, config=None, start_step=4)[0].close()
    resumed = [c for c in calls if c[0] == "init"][1][1]
    assert resumed["id"] == "run123" and resumed["resume"] == "allow"


def test_swanlab_and_mlflow_are_fed_through_their_libraries_offline(tmp_path, monkeypatch):
    calls = []
    swanlab = types.ModuleType("swanlab")
    swanlab.init = lambda **kwargs: calls.append(("swanlab.init", kwargs))
    swanlab.log = lambda data, step: calls.append(("swanlab.log", data, step))
    swanlab.finish = lambda: calls.append(("swanlab.finish",))
    mlflow = types.ModuleType("mlflow")
    mlflow.set_tracking_uri = lambda uri: calls.append(("mlflow.uri", uri))
    mlflow.set_experiment = lambda name: calls.append(("mlflow.experiment", name))
    mlflow.start_run = lambda run_name: calls.append(("mlflow.start", run_name))
    mlflow.log_dict = lambda data, name: calls.append(("mlflow.dict", name))
    mlflow.log_metrics = lambda data, step: calls.append(("mlflow.metrics", data, step))
    mlflow.log_text = lambda text, name: calls.append(("mlflow.text", name))
    mlflow.end_run = lambda: calls.append(("mlflow.end",))
    monkeypatch.setitem(sys.modules, "swanlab", swanlab)
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    for name in ("SWANLAB_MODE", "SWANLAB_API_KEY", "SWANLAB_LOGDIR", "SWANLAB_LOG_DIR", "MLFLOW_TRACKING_URI",
                 "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SWANLAB_ROOT", str(tmp_path / "no_login"))
    work = tmp_path / "run"
    log = _open(work, report_to=["swanlab", "mlflow"])
    log.eval(3, 0.5)
    log.close()
    swan_init = calls[0][1]
    assert swan_init["mode"] == "offline" and swan_init["logdir"] == str(work / "swanlog")
    assert ("swanlab.log", {"eval/loss": 0.5}, 3) in calls and ("swanlab.finish",) in calls
    assert ("mlflow.uri", (work.resolve() / "mlruns").as_uri()) in calls
    assert ("mlflow.metrics", {"eval/loss": 0.5}, 3) in calls and calls[-1] == ("mlflow.end",)


@pytest.mark.battery("configs", was="traceback")
@pytest.mark.parametrize("name", ["wandb", "swanlab", "mlflow"])
def test_a_tracker_whose_library_is_missing_is_one_line_with_the_install_command(tmp_path, monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)          # `import name` raises ImportError
    with pytest.raises(ConfigError) as error:
        _open(tmp_path / "run", report_to=["tensorboard", name])
    assert str(error.value) == f"engine.report_to: {name} is not installed; pip install 'vlft[{name}]'"
    assert not (tmp_path / "run").exists()                           # nothing was written or half-started


def test_an_unknown_tracker_is_refused_naming_the_choices(tmp_path):
    with pytest.raises(ConfigError, match="engine.report_to: unknown tracker 'neptune'; choose from "
                                          + ", ".join(TRACKERS)):
        build_trackers(["neptune"], run_name="r", work_dir=tmp_path, config=None)


def test_other_ranks_write_nothing(tmp_path, capsys):
    work = tmp_path / "run"
    log = TrainLog(work, start_step=0, total_steps=6, logging_steps=1, enabled=False, config=CONFIG)
    _steps(log, range(1, 3))
    log.echo("hello")
    log.eval(2, 1.0)
    assert log.close() is None and not work.exists() and capsys.readouterr().out == ""
