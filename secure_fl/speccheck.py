"""Small helpers to read TOML tables with clear errors.

Every error names where the value lives (``file [table].key``), what was expected and what
was found, e.g. ``protocols/x.toml [secure_sum].poly_degree: expected one of [8192, 16384],
found 4096``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from .errors import InvalidParameter, SpecError

__all__ = ["REQUIRED", "build", "check_keys", "get", "get_table", "one_of", "in_range"]

T = TypeVar("T")


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a table",
}


def check_keys(table: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Refuse keys not in ``allowed`` (typos must not be silently ignored)."""
    allowed = list(allowed)
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(allowed)}")


def get(
    table: Mapping[str, Any],
    key: str,
    typ: type[T] | tuple[type, ...],
    where: str,
    default: Any = REQUIRED,
    check: Callable[[Any], str | None] | None = None,
) -> T:
    """Read ``table[key]`` as ``typ``; ``check`` returns an error text or ``None``.

    Floats must be finite: TOML allows ``nan`` and ``inf``, and both pass every range comparison
    (``nan < 0`` is false), so they are refused here, for every key, before any check runs.
    A key named ``seed`` or ``*_seed`` is a random seed: an integer >= 0 (NumPy's ``SeedSequence``
    refuses negatives with a bare ``ValueError``), checked here for every table that has one.
    """
    if key not in table:
        if default is REQUIRED:
            raise SpecError(f"{where}: missing required key {key!r}")
        return default  # type: ignore[no-any-return]
    value = table[key]
    types = typ if isinstance(typ, tuple) else (typ,)
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok and float in types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
        ok = True
    if not ok:
        expected = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
        raise SpecError(f"{where}.{key}: expected {expected}, found {value!r} ({type(value).__name__})")
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(f"{where}.{key}: expected a finite number, found {value!r}")
    if (key == "seed" or key.endswith("_seed")) and isinstance(value, int) and value < 0:
        raise SpecError(f"{where}.{key}: a random seed must be an integer >= 0, found {value!r}")
    if check is not None:
        problem = check(value)
        if problem:
            raise SpecError(f"{where}.{key}: {problem}, found {value!r}")
    return value  # type: ignore[no-any-return]


def build(where: str, make: Callable[[], T], keys: Mapping[str, str] | None = None) -> T:
    """Run a constructor that validates its own arguments (the one validation path of a component);
    re-raise its :class:`~secure_fl.errors.InvalidParameter` as a :class:`SpecError` naming ``where``.

    ``keys`` renames a constructor argument to the spec key it comes from (``""``: derived from several
    keys, the error then names the table).
    """
    try:
        return make()
    except InvalidParameter as exc:
        key = exc.key if keys is None else keys.get(exc.key, exc.key)
        raise SpecError(f"{where}.{key}: {exc.problem}" if key else f"{where}: {exc.problem}") from exc


def get_table(table: Mapping[str, Any], key: str, where: str, default: Any = REQUIRED) -> dict[str, Any]:
    value = get(table, key, dict, where, default=default)
    return dict(value) if value is not None else value


def one_of(*allowed: Any) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"expected one of {list(allowed)}"

    return check


def in_range(
    lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False
) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if lo is not None and (value < lo or (lo_open and value == lo)):
            return f"must be {'>' if lo_open else '>='} {lo}"
        if hi is not None and (value > hi or (hi_open and value == hi)):
            return f"must be {'<' if hi_open else '<='} {hi}"
        return None

    return check
