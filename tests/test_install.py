"""A built wheel, installed into a fresh environment, runs from any directory (slow: it builds
the wheel and runs the default comparison; ``.ci/run`` runs it).

The fresh environment has no pip and no editable finder: the wheel is installed into it by
this interpreter's pip (``pip --python``), and the dependencies (jax, flax...) come from this
environment's site-packages through a ``.pth`` line. Python does not process the ``.pth``
files of a directory added that way, so the editable install of the checkout stays invisible.
"""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _run(cmd, cwd, timeout=600, env=None):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         env=env)
    assert out.returncode == 0, f"{cmd}: {out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


def _source_copy(dest: Path) -> Path:
    """The repository's files without build leftovers (a stale ``build/`` would leak into the
    wheel): the tracked ones in a git checkout, else all but the usual outputs."""
    ignore = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "runs",
                                    "__pycache__", "results")
    if (ROOT / ".git").exists():
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                               check=True).stdout.split(b"\0")
        for name in filter(None, files):
            src = ROOT / name.decode()
            if src.is_file():
                (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name.decode())
    else:
        shutil.copytree(ROOT, dest, ignore=ignore, dirs_exist_ok=True)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    src = _source_copy(tmp_path_factory.mktemp("src"))
    _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(dist)],
         cwd=dist)
    (whl,) = dist.glob("jaxasync-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory):
    """A fresh virtual environment holding the wheel; returns its bin directory."""
    env_dir = tmp_path_factory.mktemp("env") / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], cwd=env_dir.parent)
    python = env_dir / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-index", "-q", str(wheel)], cwd=env_dir.parent)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                      "['purelib'])"], cwd=env_dir.parent).stdout.strip())
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_jaxasync_test_deps.pth").write_text("\n".join(sorted(here)) + "\n")
    return env_dir / "bin"


def test_the_wheel_holds_every_config_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    confs = sorted(p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml"))
    assert len(confs) > 40
    missing = [c for c in confs if f"jaxasync/conf/{c}" not in names]
    assert not missing
    assert "jaxasync/board/entries.yaml" in names


def test_installed_wheel_runs_from_a_temporary_directory(venv, tmp_path):
    """jaxasync debug=fast, --version, jaxasync-leaderboard --list and --render-only."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv}{os.pathsep}{env.get('PATH', '')}"
    where = _run([str(venv / "python"), "-c", "import sys, jaxasync, jaxasync.cli as c; "
                  "print(jaxasync.__file__); print(c.CONF_DIR); "
                  "print([type(f).__name__ for f in sys.meta_path])"], cwd=tmp_path, env=env)
    module, conf, finders = where.stdout.splitlines()
    assert Path(module).is_relative_to(venv.parent) and Path(conf).is_relative_to(venv.parent)
    assert "_EditableFinder" not in finders
    out = _run([str(venv / "jaxasync"), "debug=fast"], cwd=tmp_path, env=env, timeout=900)
    for name in ("asgd", "delay_adaptive", "staleness_aware", "sync_sgd"):
        assert f"| {name} " in out.stdout
    (summary,) = tmp_path.glob("runs/*/*/summary.md")
    text = summary.read_text()          # the workload in the title, a row per algorithm
    assert text.startswith("mnist1d_mlp ")
    for name in ("asgd", "delay_adaptive", "staleness_aware", "sync_sgd"):
        assert text.count(f"| {name} ") == 1, (name, text)
    version = _run([str(venv / "jaxasync"), "--version"], cwd=tmp_path, env=env)
    assert version.stdout.startswith("jaxasync ")
    # the leaderboard: its entries ship in the wheel; results and renders go to ./leaderboard
    listed = _run([str(venv / "jaxasync-leaderboard"), "--list"], cwd=tmp_path, env=env)
    ids = re.findall(r"^- id: (\w+)", (ROOT / "benchmarks/leaderboard/entries.yaml").read_text(),
                     re.M)
    assert ids and all(f"{i}: " in listed.stdout for i in ids)
    _run([str(venv / "jaxasync-leaderboard"), "--render-only", "--no-plots", "-q"], cwd=tmp_path,
         env=env)
    assert "not run" in (tmp_path / "leaderboard" / "LEADERBOARD.md").read_text()
