"""The catalogue of secure-sum kinds. Unknown names fail loudly with the list of known ones.

Entries are import paths, resolved on use, so importing the catalogue does not import
TenSEAL or the masking primitives until a spec asks for them.
"""

from __future__ import annotations

from .._lazy import resolve
from ..errors import SpecError
from .base import SecureSum

__all__ = ["SECURE_SUMS", "secure_sum_class"]

SECURE_SUMS: dict[str, str] = {
    "plain": "secure_fl.protocol.plain:PlainSum",
    "ckks": "secure_fl.protocol.ckks:CkksSum",
    "secagg": "secure_fl.protocol.secagg:SecAggSum",
    "secagg-plus": "secure_fl.protocol.secagg:SecAggPlusSum",
}


def secure_sum_class(kind: str, where: str) -> type[SecureSum]:
    try:
        target = SECURE_SUMS[kind]
    except KeyError:
        raise SpecError(f"{where}.kind: unknown secure sum {kind!r}; known kinds are {sorted(SECURE_SUMS)}") from None
    try:
        cls = resolve(target)
    except (ImportError, AttributeError) as exc:
        raise SpecError(f"{where}.kind: secure sum {kind!r} is not available in this install ({exc})") from exc
    return cls  # type: ignore[no-any-return]
