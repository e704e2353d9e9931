"""Run the fault and bad-input battery (the tests marked `battery`) and print its table by category.

    python tools/battery.py            # all battery cases, 2 workers (pytest-xdist)
    python tools/battery.py -k signals # any extra pytest arguments pass through

A case is a test marked `@pytest.mark.battery(CATEGORY, was=KIND)`, where KIND is what vlft did before the
fix (traceback, lost, silent). A passing case is clean; a failing one is counted under its KIND, since the
test asserts exactly the clean behaviour. The same cases run in the normal suite (CI); this script only
tallies them.
"""
from __future__ import annotations

import collections
import os
import sys
from pathlib import Path

import pytest

KINDS = ("traceback", "lost", "silent")


class Tally:
    """A pytest plugin: each battery case's categories and outcome."""

    def __init__(self):
        self.cases: dict[str, list[tuple[str, str]]] = {}   # nodeid -> [(category, was)]
        self.outcomes: dict[str, bool] = {}

    def pytest_runtest_logreport(self, report):
        marks = [tuple(value) for name, value in report.user_properties if name == "battery"]
        if not marks:
            return
        self.cases[report.nodeid] = marks   # tests/conftest.py puts them there, also under xdist
        if report.when == "call" or report.outcome == "failed":
            self.outcomes[report.nodeid] = self.outcomes.get(report.nodeid, True) and report.outcome == "passed"

    def table(self) -> str:
        rows: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for nodeid, marks in self.cases.items():
            clean = self.outcomes.get(nodeid)
            if clean is None:
                continue
            for category, was in marks:
                rows[category]["cases"] += 1
                rows[category]["clean" if clean else was] += 1
        header = ["category", "cases", "clean", *KINDS]
        lines = [header] + [[name, *(str(rows[name][k]) for k in header[1:])] for name in sorted(rows)]
        total = collections.Counter()
        for counts in rows.values():
            total.update(counts)
        lines.append(["all", *(str(total[k]) for k in header[1:])])
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in lines)


def main(argv: list[str]) -> int:
    tally = Tally()
    root = Path(__file__).resolve().parent.parent
    os.chdir(root)                      # tests import `tests.export.conftest`, as `python -m pytest` allows
    sys.path.insert(0, str(root))
    code = pytest.main(["-q", "-p", "no:cacheprovider", "-n", "2", "-m", "battery", str(root / "tests"), *argv],
                       plugins=[tally])
    print()
    print(tally.table())
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
