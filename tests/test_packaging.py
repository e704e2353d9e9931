"""A wheel of vlft, installed outside the checkout, ships its configs and runs list-configs, copy-config, the demo."""
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(args, cwd, env, timeout=240):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    shown = " ".join(map(str, args))
    assert result.returncode == 0, f"{shown} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _copy_source(root: Path) -> Path:
    """The files a build reads, from the working tree (new modules not yet committed included)."""
    source = root / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for part in ("vlft", "configs"):
        shutil.copytree(REPO / part, source / part, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    return source


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")}
    env["HF_HUB_OFFLINE"] = "1"
    return env


def _fresh_venv(venv: Path, wheel: Path, env: dict) -> Path:
    """A venv without pip holding only `wheel`; then a .pth reaching this venv's packages (torch & co)."""
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv.parent, env=env)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
         cwd=venv.parent, env=env)
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "_vlft_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Build a wheel from a copy of the working tree, pip-install it into a fresh venv; (venv, wheel, env).

    Nothing is downloaded: the wheel is built with this venv's setuptools (no build isolation) and installed
    with --no-deps; the fresh venv then reaches torch & co through a .pth naming this venv's site-packages
    (a plain path entry, so this venv's editable vlft is not imported). The .pth is written only after the
    install, so pip never sees (or uninstalls) the editable vlft.
    """
    root = tmp_path_factory.mktemp("packaging")
    source, env = _copy_source(root), _clean_env()
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", root / "wheels", source], cwd=root, env=env)
    wheel = next((root / "wheels").glob("vlft-*.whl"))
    venv = root / "venv"
    _fresh_venv(venv, wheel, env)
    return venv, wheel, env


def test_the_wheel_holds_every_module_and_every_shipped_config(installed):
    _, wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "vlft").rglob("*.py") if "__pycache__" not in p.parts}
    configs = {"vlft/configs/" + p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.py")}
    assert not modules - names, f"pyproject.toml's package list misses {sorted(modules - names)}"
    assert configs and not configs - names, f"the wheel misses configs {sorted(configs - names)}"


@pytest.mark.battery("packaging", was="lost")
def test_an_installed_wheel_lists_copies_and_runs_the_demo_from_outside_the_repo(installed, tmp_path):
    venv, _, env = installed
    vlft = str(venv / "bin" / "vlft")
    where = subprocess.run([venv / "bin" / "python", "-c", "import vlft.shipped as s; print(s.CONFIG_DIR)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv), f"configs found at {where}, not in the installed package"

    listed = _run([vlft, "list-configs"], cwd=tmp_path, env=env)
    assert "internvl2_5_1b_lora" in listed and "tiny_demo" in listed and str(REPO) not in listed

    _run([vlft, "copy-config", "internvl2_5_1b_lora", "x.py"], cwd=tmp_path, env=env)
    copied = (tmp_path / "x.py").read_text()
    assert f"{where}/_base_/schedule_lora.py" in copied and "./_base_/" not in copied
    show = "from vlft.config import load_config; s = load_config('x.py').schedule; print(s.lr, s.weight_decay)"
    loaded = _run([venv / "bin" / "python", "-c", show], cwd=tmp_path, env=env)
    assert loaded.split() == ["0.0001", "0.05"]   # its own lr; the weight decay from the installed _base_

    out = _run([vlft, "demo", "--steps", "2", "--work-dir", tmp_path / "demo"], cwd=tmp_path, env=env, timeout=300)
    assert "accuracy on" in out
    assert (tmp_path / "demo" / "hf" / "config.json").is_file()


def test_an_editable_install_finds_the_checkouts_configs(tmp_path):
    source, env = _copy_source(tmp_path), _clean_env()
    # pip would run the backend inside the fresh venv (no setuptools there): build the editable wheel here.
    build = f"from setuptools import build_meta; build_meta.build_editable({str(tmp_path / 'w')!r})"
    _run([sys.executable, "-c", build], cwd=source, env=env)
    python = _fresh_venv(tmp_path / "venv", next((tmp_path / "w").glob("vlft-*.whl")), env)
    where = _run([python, "-c", "import vlft.shipped as s; print(s.CONFIG_DIR, len(s.shipped_configs()))"],
                 cwd=tmp_path, env=env).split()
    assert where == [str(source / "configs"), str(len(list((REPO / "configs").glob("*.py"))))]
