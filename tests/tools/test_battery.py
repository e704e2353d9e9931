"""tools/battery.py tallies battery cases by category: clean when passed, else under what they did before."""
import importlib.util
from pathlib import Path
from types import SimpleNamespace

TOOL = Path(__file__).resolve().parents[2] / "tools" / "battery.py"


def _tool():
    spec = importlib.util.spec_from_file_location("battery_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(nodeid, outcome, *marks, when="call"):
    return SimpleNamespace(nodeid=nodeid, outcome=outcome, when=when,
                           user_properties=[("battery", mark) for mark in marks])


def test_the_table_counts_clean_cases_and_failures_under_their_former_kind():
    tally = _tool().Tally()
    for report in [_report("a", "passed", ("signals", "lost"), ("races", "lost")),
                   _report("b", "failed", ("signals", "traceback")),
                   _report("c", "passed", ("configs", "silent"), when="setup"),
                   _report("c", "passed", ("configs", "silent")),
                   _report("d", "passed")]:                                   # not a battery case
        tally.pytest_runtest_logreport(report)
    lines = [line.split() for line in tally.table().splitlines()]
    assert lines[0] == ["category", "cases", "clean", "traceback", "lost", "silent"]
    assert ["signals", "2", "1", "1", "0", "0"] in lines and ["races", "1", "1", "0", "0", "0"] in lines
    assert ["configs", "1", "1", "0", "0", "0"] in lines and lines[-1] == ["all", "4", "3", "1", "0", "0"]
