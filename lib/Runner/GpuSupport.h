//===- GpuSupport.h - What the GPU runners share ----------------*- C++ -*-===//
//
// Part of moba-mlir. Private to lib/Runner: the parts of compiling and
// loading a GPU kernel that the attention runner (GpuRunner.cpp) and the
// paged KV cache runner (GpuPagedRunner.cpp) share.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_LIB_RUNNER_GPUSUPPORT_H
#define MOBA_LIB_RUNNER_GPUSUPPORT_H

#include "mlir/IR/DialectRegistry.h"
#include "llvm/ADT/ArrayRef.h"
#include "llvm/ADT/StringRef.h"
#include "llvm/Support/Error.h"

#include <utility>

namespace llvm {
class Module;
} // namespace llvm

namespace mlir::moba::detail {

/// The dialects, interfaces and translations the GPU pipeline meets.
DialectRegistry gpuRegistry();

/// The functions exposeModuleLoading() makes.
constexpr llvm::StringLiteral kLoadModules = "moba_load_modules";
constexpr llvm::StringLiteral kUnloadModules = "moba_unload_modules";

/// Turns the host module's global constructors (which load its kernels)
/// and destructors (which unload them) into kLoadModules and
/// kUnloadModules, which the runner calls: a failed load can then give
/// back what it loaded and be tried again.
llvm::Error exposeModuleLoading(llvm::Module &module);

/// Initializes the native target once per process.
void initializeGpuTargets();

/// The kernels read rows as vectors: every buffer of rows must be 16-byte
/// aligned. The error names the first one that is not.
llvm::Error checkRowAlignment(
    llvm::ArrayRef<std::pair<const char *, const void *>> rowBuffers);

} // namespace mlir::moba::detail

#endif // MOBA_LIB_RUNNER_GPUSUPPORT_H
