"""What a training work dir tells: the resolved config and text log from the start, validation loss, sample
generations, relative paths said, and a bad image found mid-run skipped and counted."""
import json
from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from vlft.cli import main


def _rows(work: Path) -> list[dict]:
    return [json.loads(line) for line in (work / "train_log.jsonl").read_text().splitlines()]


def test_a_validation_split_logs_eval_loss_and_the_work_dir_holds_config_log_and_samples(
        tmp_path, colour_base, colour_experiment):
    root = tmp_path / "exp"
    config = colour_experiment(root, base=colour_base, schedule={"max_steps": 4, "gradient_accumulation": 1},
                               data={"val_split": 0.25},
                               engine={"eval_steps": 2, "save_steps": 0, "sample_every": 4,
                                       "sample_prompts": [{"image": str(root / "0.png"), "prompt": "What colour?"}]})
    work = tmp_path / "work"
    result = CliRunner().invoke(main, ["train", str(config), "--work-dir", str(work)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "16 samples kept; 12 to train on, 4 held out for validation" in result.output
    evals = [row for row in _rows(work) if "eval_loss" in row]
    assert [row["step"] for row in evals] == [2, 4] and all(row["eval_samples"] == 4 for row in evals)
    assert json.loads((work / "train_config.json").read_text())["data"]["val_split"] == 0.25
    text = (work / "train.log").read_text()
    assert "eval step 2/4 | eval_loss" in text and "step 4/4 | epoch" in text
    (sample,) = [json.loads(line) for line in (work / "samples.jsonl").read_text().splitlines()]
    assert sample["step"] == 4 and sample["image"] == str(root / "0.png")


def test_a_separate_validation_set_is_read_from_val_datasets(tmp_path, colour_base, colour_experiment):
    root = tmp_path / "exp"
    config = colour_experiment(root, base=colour_base, schedule={"max_steps": 2, "gradient_accumulation": 1},
                               data={"val_datasets": [{"path": str(root / "train.json")}]},
                               engine={"save_steps": 0})
    result = CliRunner().invoke(main, ["train", str(config), "--work-dir", str(tmp_path / "work")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    (row,) = [row for row in _rows(tmp_path / "work") if "eval_loss" in row]
    assert row["step"] == 2 and row["eval_samples"] == 16


def test_relative_paths_are_said_to_be_read_from_the_current_directory(tmp_path, colour_base, colour_experiment,
                                                                      monkeypatch):
    config = colour_experiment(tmp_path, base=colour_base, schedule={"max_steps": 1, "gradient_accumulation": 1},
                               engine={"save_steps": 0})
    text = config.read_text().replace(str(tmp_path / "train.json"), "train.json")
    config.write_text(text)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["train", "config.py", "--work-dir", "work"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (f"note: relative paths are read from the current directory {tmp_path}: "
            "data.datasets[0].path=train.json, work dir=work") in result.output


def test_a_truncated_jpeg_found_mid_run_is_skipped_counted_and_training_finishes(tmp_path, colour_base,
                                                                               colour_experiment):
    config = colour_experiment(tmp_path, base=colour_base, schedule={"max_steps": 8, "gradient_accumulation": 1},
                               engine={"save_steps": 0})
    broken = tmp_path / "0.jpg"
    Image.effect_noise((96, 96), 64).convert("RGB").save(broken, quality=95)
    broken.write_bytes(broken.read_bytes()[:len(broken.read_bytes()) // 2])   # a valid header, half the data
    rows = json.loads((tmp_path / "train.json").read_text())
    for row in rows:
        if row["image"] == "0.png":
            row["image"] = "0.jpg"
    (tmp_path / "train.json").write_text(json.dumps(rows))
    result = CliRunner().invoke(main, ["train", str(config), "--work-dir", str(tmp_path / "work"),
                                       "--cfg-options", "data.group_by_length=False"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "16 samples kept" in result.output                  # the header-only scan could not tell
    assert "0.jpg" in result.output and "trained with every label ignored" in result.output
    losses = [row["loss"] for row in _rows(tmp_path / "work") if "loss" in row]
    assert len(losses) == 8 and all(loss == loss for loss in losses)     # no NaN: its batch-mate still counts
