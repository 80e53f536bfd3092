"""The packages of mammo-components, found instead of listed: ``mammo_components`` (this
folder) and every subfolder with an ``__init__.py`` (the components and their helpers), so a new
component folder is packaged without a line here. Everything else is in pyproject.toml.
(The build runs this file as ``__main__``; imported as ``mammo_components.setup`` it does nothing.)"""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def subpackages(root: Path) -> list[str]:
    """Dotted names of the folders below ``root`` that hold an ``__init__.py``, sorted; build
    output and hidden folders left out."""
    return sorted(
        init.parent.relative_to(root).as_posix().replace("/", ".")
        for init in root.rglob("__init__.py")
        if init.parent != root and not any(part.startswith((".", "build")) or part.endswith(".egg-info")
                                           for part in init.parent.relative_to(root).parts)
    )


SUBPACKAGES = subpackages(HERE)

if __name__ == "__main__":
    setup(packages=["mammo_components", *(f"mammo_components.{name}" for name in SUBPACKAGES)])
