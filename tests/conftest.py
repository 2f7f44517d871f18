"""Test session setup: JAX's persistent compilation cache goes to a temporary directory (also
for the CLI's subprocesses, through the environment), never to the user's cache."""

import os
import shutil
import tempfile

_CACHE = tempfile.mkdtemp(prefix="jaxasync-test-xla-")
os.environ["JAXASYNC_COMPILE_CACHE_DIR"] = _CACHE


def pytest_unconfigure(config):
    shutil.rmtree(_CACHE, ignore_errors=True)
