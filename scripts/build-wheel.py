#!/usr/bin/env python3
"""Writes the moba-mlir wheel from the package assembled in <build>/python/moba.

    build-wheel.py PACKAGE_DIR OUT_DIR      (the `moba-wheel` target runs it)

A wheel is a zip of the package as it is installed plus a .dist-info folder
(METADATA, WHEEL, and RECORD: every file with its sha256 and size; PEP 427,
PEP 376). Writing it here with the standard library alone, rather than through
setuptools or `pip wheel`, keeps the build offline and free of build
isolation: there is nothing to compile, only files to pack.

The wheel is tagged py3-none-<platform>: the Python code binds libMobaC.so
through ctypes, so it runs on any CPython 3 (no ABI tag), but the library is
native code for one machine. The platform is `linux_<arch>` of the library's
ELF header and not a manylinux tag, which would promise a library that needs
only what the manylinux policy allows; libMobaC.so also needs libz.so.1 and
the glibc it was built against (docs/python.md, "Installing"). The script
refuses a library that needs any other shared library (a development build
with MOBA_STANDALONE_LIBRARY=OFF needs libMLIR.so), since the wheel would not
work where LLVM is not installed.

The version is the library's own (mobaVersion(), "0.1.0+<git revision>"), so
that `pip show moba-mlir` and moba.version() agree. Entries are sorted and
dated 1980-01-01, so the same inputs give the same bytes. Older moba_mlir
wheels in OUT_DIR are removed, leaving one.
"""
import base64
import ctypes
import hashlib
import os
import re
import subprocess
import sys
import zipfile

NAME = "moba-mlir"
DISTRIBUTION = "moba_mlir"  # NAME as wheel file names spell it (PEP 427)
LIBRARY = "libMobaC.so"
# The shared libraries libMobaC.so may need at run time: the C library's
# parts, zlib, and the C++ runtime should a build link it dynamically.
# libcuda.so.1 is not among them: the library dlopens it on the first GPU
# call (lib/Runtime/CudaDriver.cpp), so the CPU target runs without it.
ALLOWED_NEEDED = re.compile(
    r"(libc|libm|libdl|librt|libpthread|libz|libgcc_s|libstdc\+\+)\.so\.\d+"
    r"|ld-linux-[\w-]+\.so\.\d+")
ELF_MACHINES = {62: "x86_64", 183: "aarch64"}  # e_machine (ELF header)
FIXED_DATE = (1980, 1, 1, 0, 0, 0)


def fail(message):
    sys.exit(f"build-wheel.py: {message}")


def library_platform(path):
    """linux_<arch> of the ELF shared library at `path`."""
    with open(path, "rb") as f:
        header = f.read(20)
    if header[:4] != b"\x7fELF" or header[5] != 1:  # little-endian only
        fail(f"{path} is not a little-endian ELF file")
    machine = int.from_bytes(header[18:20], "little")
    if machine not in ELF_MACHINES:
        fail(f"{path} is for ELF machine {machine}, which has no tag here")
    return "linux_" + ELF_MACHINES[machine]


def check_self_contained(path):
    """Fails unless every DT_NEEDED entry of `path` is in ALLOWED_NEEDED."""
    dynamic = subprocess.run(["readelf", "-d", path], capture_output=True,
                             text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)
    if not needed:
        fail(f"readelf -d {path} lists no NEEDED library: unexpected output")
    foreign = [n for n in needed if not ALLOWED_NEEDED.fullmatch(n)]
    if foreign:
        fail(f"{path} needs {', '.join(foreign)}: a wheel of it would not work "
             "without them (build with MOBA_STANDALONE_LIBRARY=ON)")


def library_version(path):
    """mobaVersion() of the library, as a PEP 440 version: the local part
    after '+' has its '-' turned into '.' ("0.1.0+abc-dirty-def" becomes
    "0.1.0+abc.dirty.def", which is how pip normalizes it)."""
    library = ctypes.CDLL(path)
    library.mobaVersion.restype = ctypes.c_char_p
    version = library.mobaVersion().decode()
    public, _, local = version.partition("+")
    pep440 = public + ("+" + local.replace("-", ".") if local else "")
    if not re.fullmatch(r"\d+(\.\d+)*(\+[a-z0-9]+(\.[a-z0-9]+)*)?", pep440):
        fail(f"the library's version {version!r} is not a PEP 440 version")
    return pep440


def metadata(version):
    return (
        "Metadata-Version: 2.1\n"
        f"Name: {NAME}\n"
        f"Version: {version}\n"
        "Summary: MoBA (Mixture of Block Attention) compiled by MLIR, for "
        "numpy arrays and torch tensors\n"
        "Requires-Python: >=3.8\n"
        "Requires-Dist: numpy\n"
        "Provides-Extra: torch\n"
        "Requires-Dist: torch>=2.4; extra == \"torch\"\n")


def wheel_file(tag):
    return ("Wheel-Version: 1.0\n"
            "Generator: moba-mlir scripts/build-wheel.py\n"
            "Root-Is-Purelib: false\n"
            f"Tag: {tag}\n")


def record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest())
    return f"{name},sha256={digest.rstrip(b'=').decode()},{len(data)}\n"


def add(archive, name, data, executable=False):
    info = zipfile.ZipInfo(name, FIXED_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (0o100755 if executable else 0o100644) << 16
    archive.writestr(info, data)


def main(argv):
    if len(argv) != 3:
        fail("usage: build-wheel.py PACKAGE_DIR OUT_DIR")
    package, out = argv[1], argv[2]
    library = os.path.join(package, LIBRARY)
    if not os.path.isfile(library):
        fail(f"{library} is missing: build the MobaC target first")
    check_self_contained(library)
    platform = library_platform(library)
    version = library_version(library)

    sources = sorted(f for f in os.listdir(package) if f.endswith(".py"))
    if "__init__.py" not in sources:
        fail(f"{package} has no __init__.py")
    # Subpackages one level down (moba/integrations), each a package.
    for sub in sorted(os.listdir(package)):
        folder = os.path.join(package, sub)
        if os.path.isdir(folder) and not os.path.islink(folder) and \
                os.path.isfile(os.path.join(folder, "__init__.py")):
            sources += sorted(f"{sub}/{f}" for f in os.listdir(folder)
                              if f.endswith(".py"))
    files = [(f"moba/{f}", os.path.join(package, f)) for f in sources]
    files.append((f"moba/{LIBRARY}", library))
    files.sort()

    tag = f"py3-none-{platform}"
    stem = f"{DISTRIBUTION}-{version}"
    info = f"{stem}.dist-info"
    wheel = os.path.join(out, f"{stem}-{tag}.whl")
    os.makedirs(out, exist_ok=True)
    partial = wheel + ".partial"
    record = []
    with zipfile.ZipFile(partial, "w") as archive:
        for name, path in files:
            with open(path, "rb") as f:
                data = f.read()
            add(archive, name, data, executable=name.endswith(".so"))
            record.append(record_line(name, data))
        for name, text in ((f"{info}/METADATA", metadata(version)),
                           (f"{info}/WHEEL", wheel_file(tag))):
            add(archive, name, text.encode())
            record.append(record_line(name, text.encode()))
        record.append(f"{info}/RECORD,,\n")
        add(archive, f"{info}/RECORD", "".join(record).encode())
    # The new wheel first, then the others gone: a reader of dist/ (a
    # concurrent device-bundle.sh) always finds one.
    os.replace(partial, wheel)
    for old in os.listdir(out):
        if (old.startswith(DISTRIBUTION + "-") and old.endswith(".whl")
                and old != os.path.basename(wheel)):
            os.remove(os.path.join(out, old))
    print(wheel)


if __name__ == "__main__":
    main(sys.argv)
