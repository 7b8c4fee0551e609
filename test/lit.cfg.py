# -*- Python -*-
# lit configuration for the moba-mlir regression tests.

import os

import lit.formats
from lit.llvm import llvm_config
from lit.llvm.subst import ToolSubst

config.name = "MOBA"
config.test_format = lit.formats.ShTest(not llvm_config.use_lit_shell)
config.suffixes = [".mlir", ".test"]
config.excludes = ["CMakeLists.txt", "README.md", "lit.cfg.py", "lit.site.cfg.py", "grid.py",
                   "grad_check.py"]

config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(config.moba_obj_root, "test")

config.substitutions.append(("%PATH%", config.environment["PATH"]))
config.substitutions.append(("%moba_src_root", config.moba_src_root))
config.substitutions.append(("%moba_obj_root", config.moba_obj_root))
config.substitutions.append(("%python", config.python_executable))
# The runtime libraries of mlir-runner (print functions), beside LLVM's.
config.substitutions.append(
    ("%mlir_lib_dir", os.path.join(config.llvm_tools_dir, "..", "lib")))
config.substitutions.append(
    ("%moba_opt", os.path.join(config.moba_tools_dir, "moba-opt")))
config.substitutions.append(
    ("%moba_run", os.path.join(config.moba_tools_dir, "moba-run")))
config.substitutions.append(
    ("%moba_reference_check",
     os.path.join(config.moba_tools_dir, "moba-reference-check")))

# FileCheck variables are scoped to their CHECK-LABEL block, so a capture in
# one function can never satisfy a use in the next.
config.environment["FILECHECK_OPTS"] = "--enable-var-scope"

llvm_config.with_system_environment(["HOME", "INCLUDE", "LIB", "TMP", "TEMP"])
# `not`, `count` and FileCheck live with the LLVM tools, off PATH on Debian.
llvm_config.with_environment("PATH", config.llvm_tools_dir, append_path=True)
llvm_config.use_default_substitutions()

tool_dirs = [config.moba_tools_dir, config.llvm_tools_dir]
tools = [ToolSubst("moba-opt", unresolved="fatal")]
llvm_config.add_tool_substitutions(tools, tool_dirs)

# The GPU pipelines serialize kernels with the CUDA toolkit's ptxas
# (gpu-module-to-binary finds it on PATH). Tests that need it say
# REQUIRES: ptxas.
import shutil
cuda_bin = os.environ.get("CUDA_HOME", "/usr/local/cuda") + "/bin"
if os.path.exists(os.path.join(cuda_bin, "ptxas")):
    llvm_config.with_environment("PATH", cuda_bin, append_path=True)
    config.available_features.add("ptxas")
elif shutil.which("ptxas"):
    config.available_features.add("ptxas")

# `lit -Dgrad_grid=full`: the whole numeric grid of the backward
# (test/Numerics/grad-full-grid.test: 1728 cases, 9 minutes on one core)
# rather than the slices CI runs.
if lit_config.params.get("grad_grid") == "full":
    config.available_features.add("full-grad-grid")
