"""scripts/build-wheel.py's refusals: a library that needs a shared library
a machine without LLVM lacks, or one for a machine the wheel has no tag for.
(The wheel it writes from the real package is installed and checked by
test_installed_package.py in CI.)"""
import importlib.util
import os

import pytest

from paged_decode_runner import moba_opt
from stand_in_device import library_path as stand_in_driver

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "build-wheel.py")


@pytest.fixture(scope="module")
def build_wheel():
    spec = importlib.util.spec_from_file_location("build_wheel", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_library_that_needs_llvm_is_refused(build_wheel):
    # moba-opt links libMLIR.so and libLLVM.so (MOBA_LINK_MLIR_DYLIB).
    with pytest.raises(SystemExit, match=r"needs libMLIR\.so\.\S+, libLLVM"):
        build_wheel.check_self_contained(moba_opt())


def test_a_library_that_needs_only_the_c_runtime_is_taken(build_wheel):
    # The stand-in CUDA driver needs libc, libstdc++ and libgcc_s only.
    build_wheel.check_self_contained(stand_in_driver())


def test_the_platform_is_the_librarys_machine(build_wheel, tmp_path):
    assert build_wheel.library_platform(stand_in_driver()) == "linux_x86_64"
    header = bytearray(open(stand_in_driver(), "rb").read(64))
    header[18:20] = (40).to_bytes(2, "little")  # EM_ARM
    arm = tmp_path / "libarm.so"
    arm.write_bytes(bytes(header))
    with pytest.raises(SystemExit, match="ELF machine 40"):
        build_wheel.library_platform(str(arm))
    (tmp_path / "text.so").write_text("not an ELF file")
    with pytest.raises(SystemExit, match="not a little-endian ELF"):
        build_wheel.library_platform(str(tmp_path / "text.so"))
