//===- GpuRuntime.h - What the GPU pipeline's host code calls ---*- C++ -*-===//
//
// Part of moba-mlir. The host code that `moba-gpu-pipeline` emits calls the
// runtime entry points of MLIR's CUDA runtime wrappers (mgpuStreamCreate,
// mgpuLaunchKernel, ...). Debian ships no such library, so the project
// provides them here, over the driver API of CudaDriver.h, and the GPU runner
// hands their addresses to its JIT.
//
// They differ from upstream's on purpose:
//  * No stream of their own: "creating" a stream yields the caller's stream
//    (set by a LaunchScope), and destroying it does nothing, so every launch
//    and allocation of one call is ordered on the stream the user passed.
//  * No waiting: synchronizing does nothing (one stream orders everything),
//    and scratch comes from a stream-ordered pool (cuMemAllocFromPoolAsync,
//    cuMemFreeAsync) that keeps its memory between calls, or from the
//    caller's allocator when the LaunchScope has one (torch's caching
//    allocator, so that torch's memory statistics see it); a call returns
//    once its work is queued.
//  * Kernels with more than 48 KiB of dynamic shared memory are opted in
//    (cuFuncSetAttribute) at launch.
//  * No aborts: the first failing driver call is recorded, with its name, in
//    the LaunchScope; the calls after it do nothing, and the runner turns the
//    record into an error when the entry function returns.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_RUNTIME_GPURUNTIME_H
#define MOBA_RUNTIME_GPURUNTIME_H

#include "moba/Runtime/CudaDriver.h"
#include "moba/Runtime/ScratchAllocator.h"

#include "llvm/ExecutionEngine/Orc/Core.h"
#include "llvm/ExecutionEngine/Orc/Mangling.h"

namespace mlir::moba::cuda {

/// The runtime entry points by name, for ExecutionEngine::registerSymbols.
llvm::orc::SymbolMap runtimeSymbols(llvm::orc::MangleAndInterner interner);

/// The names of the entry points runtimeSymbols() provides.
llvm::ArrayRef<llvm::StringRef> runtimeSymbolNames();

/// For its lifetime, the entry points called on this thread use `stream` and
/// record the first error; scratch comes from `allocator` when it is set,
/// else from the device's pool. Whatever the allocator gave and the host
/// code did not free (it frees everything, even after an error) is given
/// back when the scope ends. Scopes do not nest.
class LaunchScope {
public:
  explicit LaunchScope(CUstream stream,
                       const ScratchAllocator &allocator = {});
  ~LaunchScope();
  LaunchScope(const LaunchScope &) = delete;
  LaunchScope &operator=(const LaunchScope &) = delete;

  /// The first error recorded since the scope began, or success.
  llvm::Error takeError();
};

} // namespace mlir::moba::cuda

#endif // MOBA_RUNTIME_GPURUNTIME_H
