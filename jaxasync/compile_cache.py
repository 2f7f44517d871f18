"""JAX's persistent compilation cache, on by default, so that a rerun loads its programs.

Small jobs are compile-bound (the default job compiles for seconds and runs for less), and
a rerun of the same config, or of another algorithm with the same shapes, compiles the same
XLA programs again. JAX can keep compiled executables on disk, keyed by the program, the
device and the JAX/XLA versions (``jax_compilation_cache_dir``); we switch it on for every
program (no minimum compile time or size) in a user cache directory:

1. ``run.compile_cache_dir`` if set,
2. else ``$JAXASYNC_COMPILE_CACHE_DIR``,
3. else ``$XDG_CACHE_HOME/jaxasync/xla`` (``~/.cache/jaxasync/xla``).

``run.compile_cache=false`` turns it off. The directory can be deleted at any time.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "JAXASYNC_COMPILE_CACHE_DIR"


def default_dir() -> Path:
    """Where the cache lives unless ``run.compile_cache_dir`` says otherwise."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "jaxasync" / "xla"


def configure(enabled: bool = True, directory: str | os.PathLike | None = None) -> Path | None:
    """Turns JAX's persistent compilation cache on (in ``directory`` or :func:`default_dir`)
    or off; returns the directory in use, or None when off.

    JAX opens the cache at the first compilation of a process; a later call with another
    directory resets it (``compilation_cache.reset_cache``) so that the new one is used.
    """
    import jax

    if not enabled:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    path = Path(directory).expanduser() if directory else default_dir()
    path.mkdir(parents=True, exist_ok=True)
    if jax.config.jax_compilation_cache_dir != str(path):
        if jax.config.jax_compilation_cache_dir is not None:
            from jax.experimental.compilation_cache import compilation_cache

            compilation_cache.reset_cache()
        jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def configure_run(run) -> Path | None:
    """:func:`configure` from a config's ``run`` section."""
    return configure(bool(run.compile_cache), run.compile_cache_dir)
