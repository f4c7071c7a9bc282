"""Where protocol specs and experiment specs are found: the user's folders first, then the shipped ones.

The protocol catalogue (``protocols/*.toml``) and the example experiments (``experiments/*.toml``,
with the protocol files they name relative to themselves, ``experiments/protocols/*.toml``) live
once, at the top of the repository. An installed package carries them as package data: the build
hook in ``setup.py`` copies them into ``secure_fl/_data/`` of the wheel, read here with
:mod:`importlib.resources`. A source checkout (editable install, or ``PYTHONPATH``) has no
``_data`` folder and reads them from the checkout instead.

A name (``ckks-fedavg``, ``quickstart``) is looked up, in order, in

1. the current folder's ``protocols/`` (resp. ``experiments/``): a user's own specs, which
   may replace a shipped one of the same name;
2. the shipped folder: the package data of an installed package, else the checkout's folder.

A path (anything ending in ``.toml``, or naming an existing file) is read as given and never searched.
The shipped folders are expected on disk, as ``pip`` installs packages (not zipped).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["shipped_dir", "search_dirs", "find_spec_file", "spec_names", "KINDS"]

#: the two kinds of spec, each a folder name both in the repository and in the package data
KINDS = ("protocols", "experiments")
_DATA = "_data"


def _check(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, found {kind!r}")


def shipped_dir(kind: str) -> Path:
    """The shipped folder of ``kind``: ``secure_fl/_data/<kind>`` of an installed package, else
    ``<checkout>/<kind>`` (the repository the package was imported from).

    Returns the package-data path even when it is missing, so that an error names where specs were
    expected; a checkout is recognised by its ``pyproject.toml`` beside the package folder.
    """
    _check(kind)
    packaged = resources.files("secure_fl").joinpath(_DATA, kind)
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / kind).is_dir():
        return checkout / kind
    return Path(str(packaged))


def search_dirs(kind: str) -> list[Path]:
    """The folders searched for a spec name, first match wins: ``./<kind>`` (if it exists), then the shipped one."""
    _check(kind)
    out: list[Path] = []
    for folder in (Path.cwd() / kind, shipped_dir(kind)):
        if folder.is_dir() and all(folder.resolve() != seen.resolve() for seen in out):
            out.append(folder)
    return out or [shipped_dir(kind)]


def find_spec_file(kind: str, name: str) -> Path | None:
    """``<folder>/<name>.toml`` in the first of :func:`search_dirs` that has it, else ``None``."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    for folder in search_dirs(kind):
        path = folder / f"{name}.toml"
        if path.is_file():
            return path
    return None


def spec_names(kind: str) -> list[str]:
    """Every spec name in :func:`search_dirs`, sorted (a user's spec and a shipped one of one name count once)."""
    return sorted({p.stem for folder in search_dirs(kind) for p in folder.glob("*.toml")})
