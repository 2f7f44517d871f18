"""Package layout that pyproject.toml cannot express: the repository's top-level ``conf/``
and ``benchmarks/leaderboard/entries.yaml`` ship inside the package (``jaxasync/conf``,
``jaxasync/board``), so an installed wheel finds them (see ``jaxasync/resources.py``)
while the repository keeps one copy. Everything else is in pyproject.toml."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
#: the config groups (conf/algorithm, ...): data-only packages under jaxasync.conf
GROUPS = sorted(f"jaxasync.conf.{p.name}" for p in (HERE / "conf").iterdir() if p.is_dir())

setup(
    packages=[*find_packages(include=["jaxasync", "jaxasync.*"]), "jaxasync.conf", *GROUPS,
              "jaxasync.board"],
    package_dir={"jaxasync.conf": "conf", "jaxasync.board": "benchmarks/leaderboard"},
    package_data={"jaxasync": ["py.typed"], "jaxasync.conf": ["*.yaml"],
                  **{g: ["*.yaml"] for g in GROUPS}, "jaxasync.board": ["entries.yaml"]},
)
