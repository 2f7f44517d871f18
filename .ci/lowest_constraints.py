"""Prints pip constraints that pin the core dependencies at pyproject.toml's lower bounds.

``.ci/run`` installs jaxasync with them into a second virtual environment and runs the test
suite there, so every lower bound in pyproject.toml is one that was tested. The pinned
packages are those whose APIs jaxasync calls directly (:data:`PINNED`); the others resolve as
usual. pip has no "lowest" resolver, hence this file.

    python .ci/lowest_constraints.py > lowest.txt && pip install -c lowest.txt -e ".[test]"
    python .ci/lowest_constraints.py --check     # exit 1 unless the installed versions match
"""

import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

#: the dependencies tested at their lower bound
PINNED = ("jax", "jaxlib", "optax", "flax", "hydra-core", "orbax-checkpoint")


def lower_bounds() -> dict[str, str]:
    deps = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml")
                         .read_text())["project"]["dependencies"]
    bounds = {}
    for dep in deps:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)\s*", dep)
        if m and m.group(1).lower() in PINNED:
            bounds[m.group(1).lower()] = m.group(2)
    missing = set(PINNED) - set(bounds)
    if missing:
        sys.exit(f"pyproject.toml: no '>=' lower bound for {', '.join(sorted(missing))}")
    return bounds


def main() -> int:
    bounds = lower_bounds()
    if sys.argv[1:] == ["--check"]:
        bad = []
        for name, low in bounds.items():
            try:
                got = version(name)
            except PackageNotFoundError:
                got = None
            if got != low:
                bad.append(f"{name} {got} (want {low})")
        print("lowest versions: " + ("; ".join(bad) if bad else ", ".join(
            f"{n}=={v}" for n, v in bounds.items())))
        return 1 if bad else 0
    print("\n".join(f"{name}=={low}" for name, low in bounds.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
