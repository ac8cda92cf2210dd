"""The floors of the package are a checked contract: ``lint-imports`` runs the layers contract of
pyproject.toml (tools > trainers > pretraining > core), which sees imports inside functions too.

``pretraining/`` and ``trainers/`` are mapped into ``nnunet_cl`` by pyproject's ``package-dir``, which
import-linter cannot follow in the source tree: the test assembles the installed layout from symlinks
(the same files, so an edit is seen at once) and points ``lint-imports`` at it."""

from __future__ import annotations

import os
import subprocess
import tomllib

from nnunet_cl.console_scripts import console_script
from tests.conftest import REPO


def installed_layout(root: str) -> str:
    """``root/nnunet_cl`` laid out as pip installs it, each entry a symlink into the repository."""
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        package_dir = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    package = os.path.join(root, "nnunet_cl")
    os.makedirs(package)
    source = os.path.join(REPO, package_dir["nnunet_cl"])
    for entry in os.listdir(source):
        if entry != "__pycache__":
            os.symlink(os.path.join(source, entry), os.path.join(package, entry))
    for name, folder in package_dir.items():
        if name != "nnunet_cl":
            os.symlink(os.path.join(REPO, folder), os.path.join(root, *name.split(".")))
    return root


def test_import_contract_holds(tmp_path):
    root = installed_layout(str(tmp_path))
    env = dict(os.environ, PYTHONPATH=root)
    # Run from the layout's folder: lint-imports puts the working directory first on sys.path.
    result = subprocess.run([console_script("lint-imports"), "--no-cache", os.path.join(REPO, "pyproject.toml")],
                            cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout, result.stdout
