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

#include <mutex>
#include <utility>

namespace llvm {
class Module;
} // namespace llvm

namespace mlir::moba {
struct GpuPipelineOptions;
struct GpuCompileOptions;
} // namespace mlir::moba

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

/// The checks of a GPU runner's compile after it filled `pipeline` from
/// `options`: the pipeline's own rules, the chip, and what only moba-opt
/// takes (format fatbin) or no pipeline takes (opt_level above 3).
llvm::Error checkRunnerPipeline(const GpuPipelineOptions &pipeline,
                                const GpuCompileOptions &options);

/// Loads a compiled kernel's modules into the current CUDA context, once:
/// the first call (under `mutex`) checks that the device runs `chip`, loads
/// them and records the context in `loadedContext`; after a failed load
/// what loaded is unloaded, so that the next call tries again. Later calls
/// in that context do nothing; a call from another context is an error
/// naming `key` (one kernel per device).
llvm::Error loadModulesOnce(std::mutex &mutex, void *&loadedContext,
                            llvm::StringRef key, llvm::StringRef chip,
                            void (*loadModules)(), void (*unloadModules)());

} // namespace mlir::moba::detail

#endif // MOBA_LIB_RUNNER_GPUSUPPORT_H
