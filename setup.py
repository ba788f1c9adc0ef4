"""Build hook only (everything else is in pyproject.toml): the wheel carries notebooks/*.ipynb as package data in
``workbench/notebooks/``, so ``workbench quickstart``, ``workbench run quickstart`` and ``workbench lab`` work from a
``pip install`` with no source tree (``workbench.experiments.runner.notebooks_dir`` finds them there)."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"


class BuildWithNotebooks(build_py):
    """``build_py`` plus a copy of the repository's notebooks into the built ``workbench`` package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads the checkout's notebooks/ directly
            return
        target = Path(self.build_lib) / "workbench" / "notebooks"
        target.mkdir(parents=True, exist_ok=True)
        for nb in sorted(NOTEBOOKS.glob("*.ipynb")):
            shutil.copyfile(nb, target / nb.name)


setup(cmdclass={"build_py": BuildWithNotebooks})
