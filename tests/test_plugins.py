"""A user's own algorithm from the command line (the README's path), plugins, help and version."""

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from jaxasync import hparams, plugins
from jaxasync.cli import CONF_DIR, help_text
from jaxasync.config import RunConf

README = Path(__file__).resolve().parent.parent / "README.md"


def _jaxasync() -> list[str]:
    """The console script a user runs (it does not put the current directory on the path)."""
    script = Path(sys.executable).parent / "jaxasync"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "jaxasync"]


def _readme_example() -> tuple[str, str]:
    """The module and the command of the README's section on your own algorithm."""
    text = README.read_text()
    section = text[text.index("## Your own algorithm"):]
    section = section[:section.index("\n## ", 1)]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    command = re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip()
    return code, command


def test_readme_shows_the_whole_path_in_at_most_15_lines():
    code, command = _readme_example()
    assert len(code.strip().splitlines()) <= 10 and len(command.splitlines()) == 1
    assert "@ja.register(" in code and "ja.accept_if(" in code
    assert command.startswith("jaxasync imports=[my_algos] algorithm=my_algo,")


def test_readme_algorithm_runs_against_two_baselines_from_a_temporary_directory(tmp_path):
    code, command = _readme_example()
    (tmp_path / "my_algos.py").write_text(code)
    sweep = tmp_path / "sweep"
    # the README's command as written, on a smaller problem (seconds instead of a minute)
    args = [*shlex.split(command)[1:], "workload=least_squares", "run.num_workers=4",
            f"hydra.sweep.dir={sweep}"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([*_jaxasync(), *args], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    table = (sweep / "summary.md").read_text()
    body = [ln for ln in table.splitlines() if ln.startswith("|")][2:]   # (title, header, rule)
    rows = [line.split("|")[1].strip() for line in body]
    assert rows == ["my_algo", "asgd", "delay_adaptive"]            # one table, three rows
    rec = json.loads((sweep / "0_my_algo" / "run.json").read_text())
    # the default config came from the factory's keyword defaults
    assert rec["config"]["algorithm"]["params"] == {"learning_rate": 0.05, "ratio": 0.1}
    assert rec["config"]["imports"] == ["my_algos"]
    assert rec["members"][0]["status"] == "ok"


def test_an_import_that_fails_is_one_line_naming_the_module(tmp_path):
    out = subprocess.run([*_jaxasync(), "imports=[no_such_module_here]", "algorithm=asgd"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "jaxasync: error: imports=no_such_module_here: cannot import 'no_such_module_here' "
        "(ModuleNotFoundError: No module named 'no_such_module_here'); the current directory "
        "and the installed packages are searched"]


def test_an_entry_point_plugin_is_loaded_at_start(tmp_path):
    # an "installed" package: a module and its dist-info with a jaxasync.plugins entry point
    (tmp_path / "ep_algos.py").write_text(
        "import optax\nimport jaxasync as ja\n\n"
        "@ja.register('ep_algo')\n"
        "def ep_algo(learning_rate: float = 0.02, patience: int = 3, mode: str = 'x',\n"
        "            num_workers: int | None = None, scale=None):\n"
        "    return optax.chain(ja.aggregate('mean'), optax.sgd(learning_rate))\n")
    info = tmp_path / "ep_algos-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-algos\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[jaxasync.plugins]\nep = ep_algos\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    script = ("from jaxasync.cli import main\nimport sys\nmain(['--help'])\n"
              "from hydra.core.config_store import ConfigStore\n"
              "print('NODE', dict(ConfigStore.instance().repo['algorithm']['ep_algo.yaml'].node))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    listed = out.stdout[out.stdout.index("  algorithm"):out.stdout.index("  debug")]
    assert "ep_algo" in listed
    # keyword defaults that a config can hold; num_workers is the runner's, None is no value
    node = out.stdout.split("NODE ", 1)[1]
    assert "'name': 'ep_algo'" in node and "'learning_rate': 0.02, 'patience': 3, " \
        "'mode': 'x'}" in node


def test_default_configs_only_for_algorithms_without_a_yaml_file():
    from jaxasync.algorithms import ALGORITHMS

    stored = plugins.store_default_configs(CONF_DIR)
    yaml_names = {p.stem for p in (CONF_DIR / "algorithm").glob("*.yaml")}
    assert set(stored) == set(ALGORITHMS) - yaml_names and "asgd" not in stored


def test_help_names_the_app_lists_groups_and_describes_every_run_key():
    text = help_text()
    assert text.startswith("jaxasync ")
    assert "schema" not in text and "powered by Hydra" not in text
    groups = {line.split()[0] for line in text.splitlines() if line.startswith("  ")
              and not line.startswith("   ")}
    for group in ("algorithm", "workload", "delay", "network", "experiment", "debug"):
        assert group in groups, group
    flat = " ".join(text.split())
    for f in dataclasses.fields(RunConf):
        assert f"run.{f.name}=" in text, f.name
        doc = hparams.declaration_of(f).doc                   # the key's declaration
        assert " ".join(doc.split()) in flat, f.name


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help_on_the_command_line(flag, tmp_path):
    out = subprocess.run([*_jaxasync(), flag], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    if flag == "--version":
        assert out.stdout.strip() == f"jaxasync {version('jaxasync')}"
    else:
        assert out.stdout.startswith(f"jaxasync {version('jaxasync')}")
        assert "run.checkpoint_every=0" in out.stdout


def test_version_has_one_source():
    import jaxasync

    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert f'version = "{jaxasync.__version__}"' in pyproject
    assert "__version__ = \"" not in (Path(jaxasync.__file__).read_text())
