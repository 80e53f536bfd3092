"""The packages of mammo-components, found instead of listed: ``mammo_components`` (this
folder) and every subfolder with an ``__init__.py`` (the components and their helpers), so a new
component folder is packaged without a line here. Everything else is in pyproject.toml.
(The build runs this file as ``__main__``; imported as ``mammo_components.setup`` it does nothing.)"""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
SUBPACKAGES = sorted(
    init.parent.relative_to(HERE).as_posix().replace("/", ".")
    for init in HERE.rglob("__init__.py")
    if init.parent != HERE and not any(part.startswith((".", "build")) or part.endswith(".egg-info")
                                       for part in init.parent.relative_to(HERE).parts)
)

if __name__ == "__main__":
    setup(packages=["mammo_components", *(f"mammo_components.{name}" for name in SUBPACKAGES)])
