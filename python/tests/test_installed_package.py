"""The suite runs against the installed wheel when CI says so.

scripts/test.sh installs the wheel into a fresh virtual environment and runs
this suite with that environment's python and MOBA_INSTALLED_PREFIX set to
it. These tests then fail if moba came from anywhere else (the build folder
on PYTHONPATH, say), if the library it loads is not the wheel's, or if the
wheel's metadata and the library disagree on the version. Without
MOBA_INSTALLED_PREFIX (PYTHONPATH=<build>/python) they are skipped. They
also check the wheel's RECORD (scripts/build-wheel.py) against the installed
files, which pip does not.
"""
import base64
import hashlib
import importlib.metadata
import os
import sys

import pytest

import moba
from moba import _capi

PREFIX = os.environ.get("MOBA_INSTALLED_PREFIX")
pytestmark = pytest.mark.skipif(
    not PREFIX, reason="MOBA_INSTALLED_PREFIX is not set: the suite runs on "
    "the build folder's package")


def inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def test_moba_is_imported_from_the_installed_wheel():
    assert inside(sys.prefix, PREFIX), (
        f"the tests run on {sys.executable}, not the python of {PREFIX}")
    assert inside(moba.__file__, PREFIX), (
        f"moba was imported from {moba.__file__}, not from {PREFIX}")


def test_the_library_is_the_wheels():
    override = os.environ.get("MOBA_LIBRARY")
    assert not override, f"MOBA_LIBRARY={override} overrides the library"
    path = _capi._library_path()
    assert os.path.dirname(path) == os.path.dirname(moba.__file__)
    assert inside(path, PREFIX)
    installed = importlib.metadata.files("moba-mlir")
    assert "moba/libMobaC.so" in {str(f) for f in installed}


def test_the_wheels_version_is_the_librarys():
    # build-wheel.py writes the library's version with its local part's '-'
    # as '.' (PEP 440).
    public, _, local = moba.version().partition("+")
    want = public + ("+" + local.replace("-", ".") if local else "")
    assert importlib.metadata.version("moba-mlir") == want


def test_every_installed_file_matches_the_wheels_record():
    checked = 0
    for entry in importlib.metadata.files("moba-mlir"):
        if entry.hash is None:  # RECORD itself, and what pip adds
            continue
        assert entry.hash.mode == "sha256", entry
        data = entry.read_binary()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest())
        assert digest.rstrip(b"=").decode() == entry.hash.value, entry
        assert len(data) == entry.size, entry
        checked += 1
    # moba's __init__.py, _capi.py, torch_ops.py and libMobaC.so, METADATA
    # and WHEEL at least.
    assert checked >= 6
