"""The CLI shell: fast help, every subcommand documented, list/copy configs, one-line errors."""
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from vlft.cli import main

COMMANDS = ["train", "check-data", "merge", "convert", "chat", "eval", "web", "demo", "cache", "list-configs",
            "copy-config"]


def test_help_is_fast_and_imports_nothing_heavy():
    code = ("import sys, time; t = time.perf_counter(); from vlft.cli import main; "
            "heavy = [m for m in ('torch', 'transformers', 'deepspeed', 'peft', 'datasets') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vlft.cli", "--help"], capture_output=True, check=True)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    if command not in ("list-configs",):
        assert "Example" in result.output


def test_list_and_copy_configs(tmp_path):
    runner = CliRunner()
    listed = runner.invoke(main, ["list-configs"])
    assert listed.exit_code == 0 and "internvl2_2b_lora" in listed.output and "_base_" not in listed.output
    copied = runner.invoke(main, ["copy-config", "llava_v1_5_7b_lora", str(tmp_path / "mine.py")])
    assert copied.exit_code == 0 and (tmp_path / "mine.py").is_file()
    again = runner.invoke(main, ["copy-config", "llava_v1_5_7b_lora", str(tmp_path / "mine.py")])
    assert again.exit_code != 0 and "already exists" in again.output


def test_bad_config_is_one_line(tmp_path):
    cfg = tmp_path / "cfg.py"
    cfg.write_text("model = dict(family='internvl', path='/m')\nschedule = dict(lrr=1)\n")
    result = CliRunner().invoke(main, ["check-data", str(cfg)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: {cfg}: unknown key 'schedule.lrr'; did you mean 'lr'?"]


def test_cfg_options_take_several_words_after_one_flag(tmp_path, monkeypatch):
    seen = {}
    import vlft.engine.check_data as preflight

    monkeypatch.setattr(preflight, "check_data_from_config", lambda config, cfg_options: seen.setdefault("o", cfg_options) and 0)
    cfg = tmp_path / "c.py"
    cfg.write_text("model = dict(family='internvl', path='/m')\n")
    result = CliRunner().invoke(main, ["check-data", str(cfg), "--cfg-options", "schedule.lr=1", "data.packing=true",
                                       "--cfg-options", "data.max_length=8"])
    assert result.exit_code == 0, result.output
    assert seen["o"] == ("schedule.lr=1", "data.max_length=8", "data.packing=true")
    bad = CliRunner().invoke(main, ["check-data", str(cfg), "--cfg-options", "a=1", "stray"])
    assert bad.exit_code == 2 and "stray" in bad.output


@pytest.mark.battery("configs", was="traceback")
@pytest.mark.parametrize("args, expected", [
    (["train"], "error: Missing argument 'CONFIG'. (see `vlft train --help`)"),
    (["chat", "m", "--max-new-tokens", "many"], "error: Invalid value for '--max-new-tokens': 'many' is not a valid integer"),
    (["nosuch"], "error: No such command 'nosuch'. (see `vlft --help`)"),
])
def test_a_usage_error_is_one_error_line_with_exit_2(args, expected):
    result = CliRunner().invoke(main, args, prog_name="vlft")
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(expected), lines


@pytest.mark.battery("signals", was="silent")
def test_ctrl_c_outside_training_exits_130_with_one_line(monkeypatch):
    import vlft.infer.chat as chat

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(chat, "run_chat", interrupted)
    result = CliRunner().invoke(main, ["chat", "m", "--prompt", "hi"])
    assert result.exit_code == 130 and result.stderr.strip().splitlines()[-1] == "error: aborted"
