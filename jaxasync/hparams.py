"""Declared hyperparameters: what each factory argument may be, checked in one place.

Every registered algorithm and compressor declares its keyword arguments with :class:`Param`:
the type (a float, an integer, a flag, one of some strings), the range, whether ``None`` is
allowed, and whether the value is *static* (fixed when the program is traced: it changes
shapes or Python control flow) or may be *traced* (a vmapped member value, or under
``optax.inject_hyperparams``). The same declaration serves

* the Python factories (``ja.asgd(learning_rate=-1.0)`` raises ``ValueError`` naming the
  argument and what is allowed; see :func:`checked`),
* the CLI and :func:`jaxasync.experiment.validate` (``algorithm.params.learning_rate=-1``
  exits with status 2 and the same words), which also decide from it which parameters are
  swept inside one program (traced) and which need a Hydra multirun (static),
* the simulator, which checks every member's concrete value before tracing.

A traced value (a ``jax.core.Tracer``) cannot be checked where it arrives; the callers check
its concrete values first. An optax schedule (a callable) is accepted where the declaration
says ``schedule=True`` (learning rates).

Factories that declare nothing (a user's own algorithm) get a declaration derived from their
signature (:func:`derive`): a ``float`` default is a finite float that may be traced, an
``int`` a static integer, a ``bool`` a static flag, a ``str`` a static string.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

KINDS = ("float", "int", "bool", "str", "any")


@dataclasses.dataclass(frozen=True)
class Param:
    """What one hyperparameter may be.

    Attributes:
      kind: ``"float"`` (any real number: an int is taken too), ``"int"``, ``"bool"``,
        ``"str"``, or ``"any"`` (not checked: an object such as a compressor).
      low, high: bounds (None: unbounded); ``low_open``/``high_open`` make them strict.
      choices: the allowed strings (``kind="str"``), empty: any string.
      optional: ``None`` is allowed (the factory then picks a default or needs another
        argument).
      finite: a float must be finite (``False``: ``inf`` is allowed, as a threshold that
        accepts nothing may be; NaN never is).
      static: fixed at trace time (shapes, Python branches). Traced parameters may be
        vmapped member values; static ones take one value per program.
      schedule: an optax schedule (a callable of the step count) is allowed.
      doc: one line for help texts.
      items: the value is a list (or tuple) whose every entry is such a value (``optional``:
        the whole list may be None); a config key such as ``run.seeds``.

    A float must also keep its range as a float32 (the precision the simulator computes
    in): ``1e39`` is ``inf`` there and ``1e-50`` is ``0``, so neither is a finite number > 0.
    """

    kind: str = "float"
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    optional: bool = False
    finite: bool = True
    static: bool = False
    schedule: bool = False
    doc: str = ""
    items: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Param kind={self.kind!r}: choose one of {', '.join(KINDS)}")

    # -- what is allowed, in words ------------------------------------------------------------

    def allowed(self) -> str:
        """What the value must be, as the end of "must be ..." (for error messages)."""
        if self.kind == "bool":
            text = "true or false"
        elif self.kind == "str":
            text = ("one of " + ", ".join(self.choices)) if self.choices else "a string"
        elif self.kind == "any":
            text = "any value"
        else:
            text = ("an integer" if self.kind == "int" else
                    "a finite number" if self.finite else "a number (not NaN)")
            text += self._range()
        if self.schedule:
            text += " (or an optax schedule)"
        if self.items:
            text = f"a list of {'numbers' if self.kind in ('float', 'int') else 'values'}, " \
                   f"each {text}"
        if self.optional:
            text += " or null"
        return text

    def _range(self) -> str:
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            return (f" in {'(' if self.low_open else '['}{_num(lo)}, "
                    f"{_num(hi)}{')' if self.high_open else ']'}")
        if lo is not None:
            return f" {'>' if self.low_open else '>='} {_num(lo)}"
        if hi is not None:
            return f" {'<' if self.high_open else '<='} {_num(hi)}"
        return ""

    # -- checking -------------------------------------------------------------------------------

    def check(self, name: str, value: Any) -> Any:
        """Returns ``value`` if allowed (an int for an integer, a float for a float); raises
        ``ValueError("<name>=<value>: must be <allowed>")`` otherwise.

        Traced values pass unchecked; concrete arrays are checked entry by entry.
        """
        if value is None:
            if self.optional:
                return None
            raise ValueError(f"{name}=None: must be {self.allowed()}")
        if self.kind == "any":
            return value
        if self.items:
            return self._check_items(name, value)
        if callable(value) and not _is_array(value):
            if self.schedule:
                return value
            raise ValueError(f"{name}={_show(value)}: must be {self.allowed()}")
        if _is_tracer(value):
            return value
        if _is_array(value):
            for v in np.ravel(np.asarray(value)).tolist():
                self._check_scalar(name, v, value)
            return value
        return self._check_scalar(name, value, value)

    def _check_items(self, name: str, value: Any) -> list:
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise ValueError(f"{name}={_show(value)}: must be {self.allowed()}")
        one = dataclasses.replace(self, items=False, optional=False)
        out = []
        for i, v in enumerate(value):
            try:
                out.append(one._check_scalar(name, v, v))
            except ValueError:
                raise ValueError(f"{name}={_show(list(value))}: entry {i} ({_show(v)}) must be "
                                 f"{one.allowed()}") from None
        return out

    def _check_scalar(self, name: str, v: Any, shown: Any) -> Any:
        bad = ValueError(f"{name}={_show(shown)}: must be {self.allowed()}")
        if self.kind == "bool":
            if isinstance(v, bool | np.bool_):
                return bool(v)
            raise bad
        if self.kind == "str":
            if not isinstance(v, str) or (self.choices and v not in self.choices):
                raise bad
            return v
        if isinstance(v, bool | np.bool_) or not isinstance(v, int | float | np.integer |
                                                             np.floating):
            raise bad
        if self.kind == "int":
            if not isinstance(v, int | np.integer):
                raise bad
            v = int(v)
        elif math.isnan(float(v)) or (self.finite and not math.isfinite(float(v))):
            raise bad
        if not self._in_range(v):
            raise bad
        if self.kind == "float":
            with np.errstate(over="ignore", under="ignore"):
                v32 = float(np.float32(v))
            if (self.finite and not math.isfinite(v32)) or not self._in_range(v32):
                raise ValueError(f"{name}={_show(shown)}: must be {self.allowed()}; it is {v32:g} "
                                 f"as a float32, the precision the simulator computes in")
        return v if self.kind == "int" else float(v)

    def _in_range(self, v: float) -> bool:
        lo, hi = self.low, self.high
        if lo is not None and (v <= lo if self.low_open else v < lo):
            return False
        return not (hi is not None and (v >= hi if self.high_open else v > hi))


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _show(value: Any) -> str:
    if _is_array(value) and not _is_tracer(value):
        arr = np.asarray(value)
        return repr(arr.item()) if arr.size == 1 else f"array{np.ravel(arr).tolist()}"
    return repr(value)


def _is_tracer(x: Any) -> bool:
    import jax

    return isinstance(x, jax.core.Tracer)


def _is_array(x: Any) -> bool:
    import jax

    return isinstance(x, np.ndarray | np.generic | jax.Array)


# ----------------------------------------------------------------------------- shorthands


def positive(doc: str = "", **kw) -> Param:
    """A finite float > 0 (traced: sweepable)."""
    return Param("float", low=0.0, low_open=True, doc=doc, **kw)


def non_negative(doc: str = "", **kw) -> Param:
    """A finite float >= 0 (traced: sweepable)."""
    return Param("float", low=0.0, doc=doc, **kw)


def threshold(doc: str = "", **kw) -> Param:
    """A float >= 0 that may be ``inf`` (traced: sweepable), or None."""
    return Param("float", low=0.0, finite=False, optional=True, doc=doc, **kw)


def learning_rate(doc: str = "the step size", **kw) -> Param:
    """A step size: a finite float > 0, traced, or an optax schedule."""
    return Param("float", low=0.0, low_open=True, schedule=True, doc=doc, **kw)


def integer(low: int | None = None, doc: str = "", **kw) -> Param:
    """A static integer (``>= low``)."""
    return Param("int", low=low, static=True, doc=doc, **kw)


def flag(doc: str = "") -> Param:
    """A static bool."""
    return Param("bool", static=True, doc=doc)


def one_of(*choices: str, doc: str = "") -> Param:
    """A static string among ``choices``."""
    return Param("str", choices=tuple(choices), static=True, doc=doc)


#: ``num_workers`` (M): static, >= 1; ``None`` where the simulator fills it in
NUM_WORKERS = Param("int", low=1, static=True, optional=True,
                    doc="M, the number of workers (the simulator passes the run's)")


# ----------------------------------------------------------------------------- declarations


def derive(factory: Callable, declared: Mapping[str, Param] | None = None) -> dict[str, Param]:
    """Every keyword argument of ``factory`` with its :class:`Param`: the declared ones, and
    for the rest one derived from the default (see the module docstring).

    Raises:
      ValueError: a declaration names an argument the factory does not take.
    """
    declared = dict(declared or {})
    sig = inspect.signature(factory)
    unknown = sorted(set(declared) - set(sig.parameters))
    if unknown:
        raise ValueError(f"{getattr(factory, '__name__', factory)}: declares {unknown[0]!r}, "
                         f"which it does not take")
    out: dict[str, Param] = {}
    for name, p in sig.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[name] = declared.get(name) or _from_default(name, p.default)
    return out


def _from_default(name: str, default: Any) -> Param:
    if name == "num_workers":
        return NUM_WORKERS
    if name == "learning_rate":
        return learning_rate()
    if isinstance(default, bool):
        return flag()
    if isinstance(default, int):
        return integer()
    if isinstance(default, float):
        return Param("float")
    if isinstance(default, str):
        return Param("str", static=True)
    return Param("any", optional=True, static=True)


def check_all(owner: str, params: Mapping[str, Param], values: Mapping[str, Any]) -> dict:
    """Checks ``values`` against their declarations; returns them normalised.

    Raises:
      ValueError: ``"<owner>: <name>=<value>: must be ..."``, or an unknown name.
    """
    out = {}
    for name, value in values.items():
        if name not in params:
            raise ValueError(f"{owner}: unknown parameter {name!r}; accepted: "
                             f"{', '.join(params) or '(none)'}")
        try:
            out[name] = params[name].check(name, value)
        except ValueError as e:
            raise ValueError(f"{owner}: {e}") from None
    return out


def checked(owner: str, factory: Callable, params: Mapping[str, Param]) -> Callable:
    """``factory`` with every argument checked against ``params`` on each call (same
    signature; ``inspect.signature`` sees the original)."""
    sig = inspect.signature(factory)

    @functools.wraps(factory)
    def call(*args, **kwargs):
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as e:
            raise ValueError(f"{owner}: {e}") from None
        given = {k: v for k, v in bound.arguments.items() if k in params}
        bound.arguments.update(check_all(owner, params, given))
        return factory(*bound.args, **bound.kwargs)

    return call


def static_names(params: Mapping[str, Param]) -> frozenset[str]:
    """The names of the static parameters."""
    return frozenset(k for k, p in params.items() if p.static)


# ----------------------------------------------------------------------------- config fields


def field(param: Param, default: Any = dataclasses.MISSING, *,
          default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that carries its declaration (read by :func:`check_fields`), so a
    config schema says next to each key what it may be::

        tau: int = hp.field(hp.integer(0, doc="the constant delay"), 0)
    """
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"param": param})


def declaration_of(f: dataclasses.Field) -> Param | None:
    """The :class:`Param` a dataclass field was declared with (None: undeclared)."""
    return f.metadata.get("param")


def check_fields(obj: Any, prefix: str = "") -> None:
    """Checks every declared field of the dataclass instance ``obj``, and of the dataclasses
    nested in it, against its declaration.

    Raises:
      ValueError: ``"<prefix>.<field>=<value>: must be ..."`` for the first value refused.
    """
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_fields(value, key)
            continue
        param = declaration_of(f)
        if param is not None:
            param.check(key, value)


def undeclared(cls: type, prefix: str = "") -> list[str]:
    """The keys of the dataclass ``cls`` (nested dataclasses included) that carry no
    declaration (a conformance test keeps this empty for the config schemas)."""
    import typing

    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(hints.get(f.name)):
            out += undeclared(hints[f.name], key)
        elif declaration_of(f) is None:
            out.append(key)
    return out
