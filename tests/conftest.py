"""Test session setup: JAX's persistent compilation cache goes to a temporary directory (also
for the CLI's subprocesses, through the environment), never to the user's cache."""

import os
import shutil
import tempfile

import pytest

_CACHE = tempfile.mkdtemp(prefix="jaxasync-test-xla-")
os.environ["JAXASYNC_COMPILE_CACHE_DIR"] = _CACHE


def pytest_unconfigure(config):
    shutil.rmtree(_CACHE, ignore_errors=True)


#: tests/slow_tests.txt: node ids of tests measured too long for the default run (one per line,
#: ``<seconds>  <node id>``, from ``pytest --durations`` on the 2-core CPU), marked ``slow``
#: here so that the default run stays under 10 minutes; ``pytest -m slow`` runs them
_SLOW_FILE = os.path.join(os.path.dirname(__file__), "slow_tests.txt")


def _measured_slow() -> set[str]:
    if not os.path.exists(_SLOW_FILE):
        return set()
    with open(_SLOW_FILE) as f:
        lines = [ln.split("#")[0].split() for ln in f]
    return {parts[-1] for parts in lines if parts}


@pytest.hookimpl(tryfirst=True)   # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    slow = _measured_slow()
    for item in items:
        if item.nodeid in slow:
            item.add_marker(pytest.mark.slow)
