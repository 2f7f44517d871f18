"""The README's Python blocks run as written (in order, one fresh process), so the own-loop
recipes cannot drift from the code."""

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_blocks_run():
    blocks = python_blocks()
    assert len(blocks) >= 3, "the own-loop recipes are gone from the README"
    script = "\n".join(blocks) + "\nprint('README-OK')\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                          cwd=README.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "README-OK" in proc.stdout
    out = proc.stdout
    # the asynchronous loop counted 300 arrivals; SASG skipped some uploads and sent others
    assert "'arrivals': Array(300" in out, out
    skipped = int(re.search(r"(\d+) uploads skipped of 800", out).group(1))
    assert 0 < skipped < 800, out
