"""The README's two commands are the ones CI runs (the user contract for a fresh machine)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _first_bash_blocks(n: int) -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)[:n]


def test_readme_starts_with_install_demo_and_test_commands_that_ci_runs():
    install_demo, test = _first_bash_blocks(2)
    assert install_demo.strip().endswith("vlft demo")
    ci = (ROOT / ".ci" / "run").read_text()
    install = re.search(r'pip install -e "\.\[test\]" "torch==[\d.]+"', test).group(0)
    assert install in ci
    assert test.strip().endswith("python -m pytest -n 2") and "\npython -m pytest -n 2\n" in ci + "\n"
    assert re.search(r'"torch==([\d.]+)"', install_demo).group(1) == re.search(r'"torch==([\d.]+)"', install).group(1)


def test_the_readme_configs_table_lists_every_shipped_config():
    from vlft.shipped import shipped_configs

    listed = re.findall(r"^\| `([a-z0-9_]+)` \|", (ROOT / "README.md").read_text(), flags=re.M)
    assert sorted(set(shipped_configs()) - set(listed)) == []
