//===- GpuRuntime.cpp - What the GPU pipeline's host code calls -----------===//
//
// Part of moba-mlir. The signatures are those of upstream's
// mlir/lib/ExecutionEngine/CudaRuntimeWrappers.cpp, which the host code of
// gpu-to-llvm calls; test/Pipelines/moba-gpu-pipeline.mlir pins them. Two
// are ours, called by the host code of moba-convert-grouped-attention-to-
// nvvm: mobaEncodeTensorMap (key-value-loads=tma) and
// mobaMultiprocessorCount (schedule=persistent).
//
//===----------------------------------------------------------------------===//

#include "moba/Runtime/GpuRuntime.h"
#include "moba/Conversion/SwizzledPanelLayout.h"

#include "llvm/Support/FormatVariadic.h"

#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

using namespace mlir::moba;
using namespace mlir::moba::cuda;

namespace {

/// One scratch buffer from the caller's allocator, not yet given back.
struct CallerAllocation {
  void *pointer;
  int64_t bytes;
};

struct ThreadState {
  CUstream stream = nullptr;
  std::string error;
  ScratchAllocator allocator;
  /// What `allocator` gave in this scope and was not freed yet: a call
  /// holds a handful at once.
  std::vector<CallerAllocation> outstanding;
};

thread_local ThreadState state;

/// The driver when no error came before; nullptr after recording why not.
const DriverApi *ready() {
  if (!state.error.empty())
    return nullptr;
  auto api = driver();
  if (!api) {
    state.error = llvm::toString(api.takeError());
    return nullptr;
  }
  return &*api;
}

/// Records the first failure; true when `result` is success.
bool ok(CUresult result, llvm::function_ref<std::string()> call) {
  llvm::Error error = check(result, call());
  if (!error)
    return true;
  std::string message = llvm::toString(std::move(error));
  if (state.error.empty())
    state.error = std::move(message);
  return false;
}

CUstream streamCreate() { return state.stream; }

// The host code synchronizes after every launch (upstream's synchronous
// gpu.launch form). Here that would stall the caller's stream for nothing:
// every launch and allocation of a call is ordered on that one stream, so
// the call returns once its work is queued, as a CUDA library call does.
void streamSynchronize(CUstream) {}

void streamDestroy(CUstream) {}

/// The stream-ordered pool of the current context's device, created on
/// first use. It keeps what it was given (no release threshold): the
/// scratch of one call is reused by the next without cuMemAlloc's cost and
/// implicit synchronization, the way torch's caching allocator does. A pool
/// whose threshold could not be set is set again at its next use.
CUmemoryPool devicePool(const DriverApi &api) {
  struct DevicePool {
    CUmemoryPool pool = nullptr;
    bool keepsMemory = false;
  };
  static std::mutex mutex;
  static std::map<CUdevice, DevicePool> pools;
  CUdevice device = 0;
  if (!ok(api.cuCtxGetDevice(&device), [] { return "cuCtxGetDevice"; }))
    return nullptr;
  std::lock_guard<std::mutex> lock(mutex);
  DevicePool &entry = pools[device];
  if (!entry.pool) {
    CUmemPoolProps props = {};
    props.allocType = 1;    // pinned device memory
    props.locationType = 1; // on a device
    props.locationId = device;
    if (!ok(api.cuMemPoolCreate(&entry.pool, &props), [&] {
          return llvm::formatv("cuMemPoolCreate(device {0})", device).str();
        }))
      return entry.pool = nullptr;
  }
  if (!entry.keepsMemory) {
    constexpr int kReleaseThreshold = 4; // CU_MEMPOOL_ATTR_RELEASE_THRESHOLD
    uint64_t keepAll = UINT64_MAX;
    if (!ok(api.cuMemPoolSetAttribute(entry.pool, kReleaseThreshold, &keepAll),
            [] { return "cuMemPoolSetAttribute(release threshold)"; }))
      return nullptr;
    entry.keepsMemory = true;
  }
  return entry.pool;
}

/// `bytes` of scratch from the caller's allocator, checked; nullptr after
/// recording why not.
void *callerAlloc(uint64_t bytes, CUstream stream) {
  const ScratchAllocator &allocator = state.allocator;
  if (bytes > static_cast<uint64_t>(INT64_MAX)) {
    state.error = llvm::formatv("the caller's scratch allocator cannot be "
                                "asked for {0} bytes (more than 2^63 - 1)",
                                bytes)
                      .str();
    return nullptr;
  }
  auto size = static_cast<int64_t>(bytes);
  void *pointer = allocator.allocate(allocator.userData, size, stream);
  if (!pointer) {
    state.error = llvm::formatv("the caller's scratch allocator could not "
                                "allocate {0} bytes on stream {1:x}",
                                size, reinterpret_cast<uintptr_t>(stream))
                      .str();
    return nullptr;
  }
  if (reinterpret_cast<uintptr_t>(pointer) % kScratchAlignment != 0) {
    allocator.deallocate(allocator.userData, pointer, size, stream);
    state.error = llvm::formatv("the caller's scratch allocator returned "
                                "{0:x} for {1} bytes: scratch must be "
                                "{2}-byte aligned",
                                reinterpret_cast<uintptr_t>(pointer), size,
                                kScratchAlignment)
                      .str();
    return nullptr;
  }
  state.outstanding.push_back({pointer, size});
  return pointer;
}

/// Gives `pointer` back to the caller's allocator; false when it did not
/// come from there.
bool callerFree(void *pointer, CUstream stream) {
  auto &outstanding = state.outstanding;
  for (auto it = outstanding.begin(); it != outstanding.end(); ++it) {
    if (it->pointer != pointer)
      continue;
    CallerAllocation allocation = *it;
    outstanding.erase(it);
    state.allocator.deallocate(state.allocator.userData, allocation.pointer,
                               allocation.bytes, stream);
    return true;
  }
  return false;
}

void *memAlloc(uint64_t bytes, CUstream stream, bool hostShared) {
  const DriverApi *api = ready();
  if (!api || bytes == 0)
    return nullptr;
  if (hostShared) {
    state.error = "the GPU runtime has no host-shared allocations (a "
                  "gpu.alloc host_shared reached it)";
    return nullptr;
  }
  if (state.allocator)
    return callerAlloc(bytes, stream);
  CUmemoryPool pool = devicePool(*api);
  if (!pool)
    return nullptr;
  CUdeviceptr pointer = 0;
  if (!ok(api->cuMemAllocFromPoolAsync(&pointer, bytes, pool, stream), [&] {
        return llvm::formatv("cuMemAllocFromPoolAsync({0} bytes)", bytes)
            .str();
      }))
    return nullptr;
  return reinterpret_cast<void *>(pointer);
}

void memFree(void *pointer, CUstream stream) {
  // Frees even after an error, so that a failed call leaks nothing; the
  // memory returns to the pool (or the caller's allocator) once the
  // stream's work before it is done.
  if (pointer && callerFree(pointer, stream))
    return;
  auto api = driver();
  if (!api) {
    llvm::consumeError(api.takeError());
    return;
  }
  if (pointer)
    ok(api->cuMemFreeAsync(reinterpret_cast<CUdeviceptr>(pointer), stream),
       [] { return "cuMemFreeAsync"; });
}

CUmodule moduleLoadWithLog(const void *data, int optLevel, const char *what) {
  const DriverApi *api = ready();
  if (!api)
    return nullptr;
  if (auto context = currentContext(); !context) {
    state.error = llvm::toString(context.takeError());
    return nullptr;
  }
  // The JIT's error log says which PTX line it rejects.
  constexpr int kErrorLogBuffer = 5, kErrorLogBufferSize = 6,
                kOptimizationLevel = 7;
  char log[4096] = {};
  int options[] = {kErrorLogBuffer, kErrorLogBufferSize, kOptimizationLevel};
  void *values[] = {log, reinterpret_cast<void *>(sizeof(log) - 1),
                    reinterpret_cast<void *>(static_cast<intptr_t>(optLevel))};
  unsigned count = optLevel >= 0 ? 3 : 2;
  CUmodule module = nullptr;
  if (llvm::Error error =
          check(api->cuModuleLoadDataEx(&module, data, count, options, values),
                llvm::formatv("cuModuleLoadDataEx({0})", what).str())) {
    // The driver's error, then what its JIT said.
    state.error = llvm::toString(std::move(error));
    if (llvm::StringRef said = llvm::StringRef(log).trim(); !said.empty())
      state.error += ": " + said.str();
    return nullptr;
  }
  return module;
}

CUmodule moduleLoad(void *data, size_t) {
  return moduleLoadWithLog(data, /*optLevel=*/-1, "cubin");
}

CUmodule moduleLoadJIT(void *data, int optLevel) {
  return moduleLoadWithLog(data, optLevel, "PTX");
}

void moduleUnload(CUmodule module) {
  // Runs from the JIT's global destructors, outside any call: failures
  // (the driver already shut down at exit) are not anyone's to report.
  auto api = driver();
  if (!api) {
    llvm::consumeError(api.takeError());
    return;
  }
  if (module)
    api->cuModuleUnload(module);
}

CUfunction moduleGetFunction(CUmodule module, const char *name) {
  const DriverApi *api = ready();
  if (!api || !module)
    return nullptr;
  CUfunction function = nullptr;
  if (!ok(api->cuModuleGetFunction(&function, module, name), [&] {
        return llvm::formatv("cuModuleGetFunction({0})", name).str();
      }))
    return nullptr;
  return function;
}

void launchKernel(CUfunction function, intptr_t gridX, intptr_t gridY,
                  intptr_t gridZ, intptr_t blockX, intptr_t blockY,
                  intptr_t blockZ, int32_t sharedBytes, CUstream stream,
                  void **params, void **extra, size_t) {
  const DriverApi *api = ready();
  if (!api || !function)
    return;
  // An empty batch (no tokens) gives an empty grid: nothing to run.
  if (gridX == 0 || gridY == 0 || gridZ == 0)
    return;
  // Past 48 KiB of dynamic shared memory a kernel must opt in.
  constexpr int kDefaultSharedBytes = 48 * 1024;
  constexpr int kMaxDynamicShared = 8; // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_...
  if (sharedBytes > kDefaultSharedBytes &&
      !ok(api->cuFuncSetAttribute(function, kMaxDynamicShared, sharedBytes),
          [&] {
            return llvm::formatv("cuFuncSetAttribute(max dynamic shared "
                                 "memory, {0} bytes)",
                                 sharedBytes)
                .str();
          }))
    return;
  ok(api->cuLaunchKernel(function, gridX, gridY, gridZ, blockX, blockY, blockZ,
                         sharedBytes, stream, params, extra),
     [&] {
       return llvm::formatv("cuLaunchKernel(grid {0}x{1}x{2}, block "
                            "{3}x{4}x{5}, {6} bytes shared)",
                            gridX, gridY, gridZ, blockX, blockY, blockZ,
                            sharedBytes)
           .str();
     });
}

/// The TMA descriptor of K or V (`name`), written to `map` (host memory,
/// the 128 bytes of a CUtensorMap): it views the operand, [tokens, heads,
/// headDim] with rows `tokenStride` and heads `headStride` elements apart,
/// as boxes of `boxRows` tokens x 1 head x one panel of columns, swizzled:
/// the kernel's shared-memory layout (hopper::SwizzledPanelLayout). Keys past
/// `tokens` read as zeros. `element` is 0 for f16 and 1 for bf16. Pure host
/// work: the host code passes the bytes to a kernel as arguments, which
/// puts them in device memory in stream order (a copy from pageable host
/// memory could synchronize).
void encodeTensorMap(int64_t map, int64_t address, int64_t tokens,
                     int64_t heads, int64_t headDim, int64_t tokenStride,
                     int64_t headStride, int64_t element, int64_t boxRows,
                     int64_t operand) {
  CUtensorMap encoded = {};
  auto *out = reinterpret_cast<void *>(static_cast<intptr_t>(map));
  const char *name = operand == 0 ? "K" : "V";
  const DriverApi *api = ready();
  if (api && tokens > 0 && !api->cuTensorMapEncodeTiled)
    state.error = "the CUDA driver has no cuTensorMapEncodeTiled (it is "
                  "older than CUDA 12.0): the kernels' TMA loads need it";
  using Layout = mlir::moba::hopper::SwizzledPanelLayout;
  constexpr int64_t kElementBytes = Layout::kElementBytes;
  // TMA's own rules (cuTensorMapEncodeTiled): a 16-byte aligned base and
  // strides in multiples of 16 bytes.
  if (state.error.empty() && tokens > 0 &&
      (address % 16 != 0 || (tokenStride * kElementBytes) % 16 != 0 ||
       (headStride * kElementBytes) % 16 != 0))
    state.error =
        llvm::formatv("{0} cannot be loaded by TMA: its address (0x{1:x}) "
                      "must be 16-byte aligned and its token and head "
                      "strides ({2}, {3} elements) multiples of 8",
                      name, address, tokenStride, headStride)
            .str();
  if (state.error.empty() && tokens > 0) {
    constexpr int kFloat16 = 6, kBFloat16 = 9; // CU_TENSOR_MAP_DATA_TYPE_*
    constexpr int kInterleaveNone = 0, kPromote256 = 3;
    constexpr int kFillZeros = 0; // CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE
    uint64_t dims[3] = {uint64_t(headDim), uint64_t(heads), uint64_t(tokens)};
    uint64_t strides[2] = {uint64_t(headStride * kElementBytes),
                           uint64_t(tokenStride * kElementBytes)};
    unsigned box[3] = {unsigned(Layout::kColumns), 1, unsigned(boxRows)};
    unsigned unit[3] = {1, 1, 1};
    ok(api->cuTensorMapEncodeTiled(
           &encoded, element == 1 ? kBFloat16 : kFloat16, 3,
           reinterpret_cast<void *>(address), dims, strides, box, unit,
           kInterleaveNone, Layout::kTensorMapSwizzle128, kPromote256,
           kFillZeros),
       [&] {
         return llvm::formatv("cuTensorMapEncodeTiled({0}: {1} tokens x {2} "
                              "heads x {3}, box {4} rows)",
                              name, tokens, heads, headDim, boxRows)
             .str();
       });
  }
  // Zeros when there is nothing to load or after an error (the launches
  // that would read them are then skipped).
  std::memcpy(out, &encoded, sizeof(encoded));
}

/// The SMs of the current context's device (a persistent kernel's grid is
/// a wave of CTAs on them); 1 after recording why not, which keeps such a
/// grid right, only narrow, until the error fails the call.
int64_t multiprocessorCount() {
  constexpr int kMultiprocessorCount = 16; // CU_DEVICE_ATTRIBUTE_*
  const DriverApi *api = ready();
  if (!api)
    return 1;
  CUdevice device = 0;
  int count = 0;
  if (!ok(api->cuCtxGetDevice(&device), [] { return "cuCtxGetDevice"; }) ||
      !ok(api->cuDeviceGetAttribute(&count, kMultiprocessorCount, device),
          [] { return "cuDeviceGetAttribute(multiprocessor count)"; }))
    return 1;
  return count > 0 ? count : 1;
}

struct EntryPoint {
  llvm::StringRef name;
  void *address;
};

const EntryPoint kEntryPoints[] = {
    {"mgpuStreamCreate", reinterpret_cast<void *>(&streamCreate)},
    {"mgpuStreamSynchronize", reinterpret_cast<void *>(&streamSynchronize)},
    {"mgpuStreamDestroy", reinterpret_cast<void *>(&streamDestroy)},
    {"mgpuMemAlloc", reinterpret_cast<void *>(&memAlloc)},
    {"mgpuMemFree", reinterpret_cast<void *>(&memFree)},
    {"mgpuModuleLoad", reinterpret_cast<void *>(&moduleLoad)},
    {"mgpuModuleLoadJIT", reinterpret_cast<void *>(&moduleLoadJIT)},
    {"mgpuModuleUnload", reinterpret_cast<void *>(&moduleUnload)},
    {"mgpuModuleGetFunction", reinterpret_cast<void *>(&moduleGetFunction)},
    {"mgpuLaunchKernel", reinterpret_cast<void *>(&launchKernel)},
    {"mobaEncodeTensorMap", reinterpret_cast<void *>(&encodeTensorMap)},
    {"mobaMultiprocessorCount",
     reinterpret_cast<void *>(&multiprocessorCount)},
};

} // namespace

llvm::orc::SymbolMap
mlir::moba::cuda::runtimeSymbols(llvm::orc::MangleAndInterner interner) {
  llvm::orc::SymbolMap symbols;
  for (const EntryPoint &entry : kEntryPoints)
    symbols[interner(entry.name)] = {
        llvm::orc::ExecutorAddr::fromPtr(entry.address),
        llvm::JITSymbolFlags::Exported};
  return symbols;
}

llvm::ArrayRef<llvm::StringRef> mlir::moba::cuda::runtimeSymbolNames() {
  static const std::vector<llvm::StringRef> names = [] {
    std::vector<llvm::StringRef> result;
    for (const EntryPoint &entry : kEntryPoints)
      result.push_back(entry.name);
    return result;
  }();
  return names;
}

LaunchScope::LaunchScope(CUstream stream, const ScratchAllocator &allocator) {
  state.stream = stream;
  state.error.clear();
  state.allocator = allocator ? allocator : ScratchAllocator{};
  state.outstanding.clear();
  // Room for every buffer of a call (about ten), made here, where running
  // out of memory can still unwind to the C API, rather than in the host
  // code's calls; the capacity stays with the thread.
  state.outstanding.reserve(64);
}

LaunchScope::~LaunchScope() {
  // The host code frees what it allocated on every path; this is the net
  // under it, so that the caller's allocator never loses a buffer.
  while (!state.outstanding.empty())
    callerFree(state.outstanding.back().pointer, state.stream);
  state.stream = nullptr;
  state.error.clear();
  state.allocator = {};
}

llvm::Error LaunchScope::takeError() {
  if (state.error.empty())
    return llvm::Error::success();
  std::string message = std::move(state.error);
  state.error.clear();
  return llvm::createStringError(message);
}
