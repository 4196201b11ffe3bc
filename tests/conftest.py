"""Checks for the whole test run: every package of the [test] extra is installed.

numcaffe's optional packages are optional for users, not for its tests.  The
``test`` extra in pyproject.toml names every package the suite uses, so the
test files import them plainly; when one is missing (or too old) the run
stops at once with the list of what to install, rather than skipping the tests
that need it, which would look like a pass.
"""
import os
from importlib import metadata

import pytest
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def optional_dependencies(pyproject=os.path.join(ROOT, "pyproject.toml")):
    """pyproject's ``[project.optional-dependencies]``: {extra: [requirement, ...]}."""
    try:
        import tomllib
    except ModuleNotFoundError:      # Python 3.10: the installed metadata says the same
        extras = {}
        for spec in metadata.requires("numcaffe") or ():
            req = Requirement(spec)
            for name in metadata.metadata("numcaffe").get_all("Provides-Extra") or ():
                if req.marker is not None and req.marker.evaluate({"extra": name}):
                    extras.setdefault(name, []).append(f"{req.name}{req.specifier}")
        return extras
    with open(pyproject, "rb") as f:
        return tomllib.load(f)["project"]["optional-dependencies"]


def requirements(extras, extra="test"):
    """The requirements of ``extra``, with numcaffe's own extras (``numcaffe[all]``) expanded."""
    for spec in extras[extra]:
        req = Requirement(spec)
        if req.name == "numcaffe":
            for inner in sorted(req.extras):
                yield from requirements(extras, inner)
        else:
            yield req


def unmet(reqs):
    """'name>=x (not installed)' / 'name>=x (found y)' for each requirement the environment lacks."""
    for req in reqs:
        try:
            found = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            yield f"{req} (not installed)"
            continue
        if req.specifier and not req.specifier.contains(found, prereleases=True):
            yield f"{req} (found {found})"


def pytest_configure(config):
    missing = sorted(set(unmet(requirements(optional_dependencies()))))
    if missing:
        raise pytest.UsageError("numcaffe's tests need every package of the [test] extra; missing: "
                                + ", ".join(missing) + ". Install them with: pip install -e '.[test]'")
