"""The built wheel works outside a checkout: configs and the paper's values travel inside it, the
commands run from it, and the console scripts are declared."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if built.returncode != 0:
        pytest.fail(f"pip wheel failed: {built.stderr[-2000:]}")
    [path] = out.glob("blendin-*.whl")
    return path


def test_the_wheel_carries_every_config_and_the_paper_values(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {str(p.relative_to(ROOT / "src")) for p in (ROOT / "src" / "blendin" / "conf").rglob("*.yaml")}
    assert configs and configs <= names
    assert {"blendin/conf/__init__.py", "analysis/paper_values.csv"} <= names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    for script in ("blendin-run", "blendin-generate", "blendin-report", "blendin-paradox"):
        assert f"{script} = " in scripts


def test_commands_run_from_the_unpacked_wheel_outside_the_checkout(wheel, model_dirs, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "elsewhere"
    work.mkdir()
    # PYTHONPATH comes before the editable install's path entry: the wheel's copy is the one imported
    env = dict(os.environ, PYTHONPATH=str(site), HF_HUB_OFFLINE="1")

    def run(*args):
        done = subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    where = run("-c", "import blendin, analysis.paper as p; print(blendin.__file__); print(len(p.load_paper_values()))")
    assert where.splitlines()[0].startswith(str(site)) and int(where.splitlines()[1]) > 0
    assert "usage: python -m analysis.report" in run("-m", "analysis.report", "--help")
    out = run(
        "-m",
        "blendin.generate",
        "pair.name=tiny_cross",
        f"pair.base.source={model_dirs['cross_base']}",
        f"pair.guidance.source={model_dirs['cross_guidance']}",
        "device=cpu",
        "max_new_tokens=4",
    )
    assert '"method": "blendin"' in out and '"n_tokens": ' in out
