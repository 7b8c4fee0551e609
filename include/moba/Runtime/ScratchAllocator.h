//===- ScratchAllocator.h - The caller's allocator for scratch --*- C++ -*-===//
//
// Part of moba-mlir. A GPU call's temporary buffers come from the runtime's
// stream-ordered pool, or from an allocator the caller supplies through the
// C API (MobaScratchAllocator), so that memory the caller's framework
// manages (torch's caching allocator) holds them and its statistics, cache
// release and limits see them.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_RUNTIME_SCRATCHALLOCATOR_H
#define MOBA_RUNTIME_SCRATCHALLOCATOR_H

#include <cstdint>

namespace mlir::moba::cuda {

/// The caller's allocator for a call's scratch, in place of the pool: the
/// C API's MobaScratchAllocator. `allocate` returns device memory of at
/// least `bytes` bytes usable in order on `stream`, or null when it cannot;
/// `deallocate` takes back what `allocate` returned, in order on `stream`
/// (the memory may be reused by work queued on that stream after it).
struct ScratchAllocator {
  void *(*allocate)(void *userData, int64_t bytes, void *stream) = nullptr;
  void (*deallocate)(void *userData, void *pointer, int64_t bytes,
                     void *stream) = nullptr;
  void *userData = nullptr;

  explicit operator bool() const { return allocate && deallocate; }
};

/// The alignment the caller's allocator must give (cudaMalloc's, and what
/// the pool gives): the kernels' vector and TMA accesses of scratch assume
/// it.
constexpr uint64_t kScratchAlignment = 256;

} // namespace mlir::moba::cuda

#endif // MOBA_RUNTIME_SCRATCHALLOCATOR_H
