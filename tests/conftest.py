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
    _check_slow_ids(config, items, slow)


def _check_slow_ids(config, items, slow: set[str]) -> None:
    """A listed id that names no test of a collected module is stale (a renamed test would
    otherwise drop silently into the default run, or break `pytest <listed ids>`): fail the
    session with the ids. Skipped when the command names single tests (``file::test``), since
    then a module is only partly collected."""
    if any("::" in str(arg) for arg in config.args):
        return
    collected = {item.nodeid for item in items}
    modules = {nodeid.split("::")[0] for nodeid in collected}
    stale = sorted(i for i in slow if i.split("::")[0] in modules and i not in collected)
    if stale:
        raise pytest.UsageError(
            f"tests/slow_tests.txt lists {len(stale)} test id(s) that no longer exist: "
            + ", ".join(stale))
