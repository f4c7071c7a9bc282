"""Build hook: the protocol catalogue and the example experiments ship inside the package.

They live once, at the top of the repository (``protocols/*.toml``, ``experiments/*.toml`` and the
protocol files those name, ``experiments/protocols/*.toml``); building a wheel copies them into
``secure_fl/_data/``, where :mod:`secure_fl.catalogue` reads them with ``importlib.resources``.
Everything else about the package is in ``pyproject.toml``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
#: (folder in the repository, file pattern) -> copied to secure_fl/_data/<same folder>
SHIPPED = [("protocols", "*.toml"), ("experiments", "*.toml"), ("experiments/protocols", "*.toml")]


class BuildWithCatalogue(build_py):
    def run(self) -> None:
        super().run()
        for folder, pattern in SHIPPED:
            files = sorted((ROOT / folder).glob(pattern))
            if folder == "protocols" and not files:
                raise RuntimeError(f"{ROOT / folder}: no protocol specs to ship (is this a complete source tree?)")
            dest = Path(self.build_lib) / "secure_fl" / "_data" / folder
            dest.mkdir(parents=True, exist_ok=True)
            for file in files:
                shutil.copyfile(file, dest / file.name)


setup(cmdclass={"build_py": BuildWithCatalogue})
