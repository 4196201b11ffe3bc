"""The root conftest's check: a package of the [test] extra that is missing or too old stops the run."""
from tests.conftest import optional_dependencies, requirements, unmet


def test_the_test_extra_expands_numcaffes_own_extras():
    names = {r.name for r in requirements(optional_dependencies())}
    assert {"h5py", "lmdb", "pillow", "graphviz", "matplotlib", "pytest", "hypothesis"} <= names
    assert "numcaffe" not in names


def test_missing_and_too_old_packages_are_named():
    extras = {"test": ["numcaffe[data]", "pytest>=7"], "data": ["surely-not-a-package-xyz>=1", "pytest>=999"]}
    assert sorted(unmet(requirements(extras))) == ["pytest>=999 (found " + __import__("pytest").__version__ + ")",
                                                    "surely-not-a-package-xyz>=1 (not installed)"]
