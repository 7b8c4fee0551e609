//===- GpuRuntime.cpp - What the GPU pipeline's host code calls -----------===//
//
// Part of moba-mlir. The signatures are those of upstream's
// mlir/lib/ExecutionEngine/CudaRuntimeWrappers.cpp, which the host code of
// gpu-to-llvm calls; test/Pipelines/moba-gpu-pipeline.mlir pins them.
//
//===----------------------------------------------------------------------===//

#include "moba/Runtime/GpuRuntime.h"

#include "llvm/Support/FormatVariadic.h"

#include <cstring>
#include <string>

using namespace mlir::moba;
using namespace mlir::moba::cuda;

namespace {

struct ThreadState {
  CUstream stream = nullptr;
  std::string error;
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

void streamSynchronize(CUstream stream) {
  if (const DriverApi *api = ready())
    ok(api->cuStreamSynchronize(stream), [] { return "cuStreamSynchronize"; });
}

void streamDestroy(CUstream) {}

void *memAlloc(uint64_t bytes, CUstream, bool hostShared) {
  const DriverApi *api = ready();
  if (!api || bytes == 0)
    return nullptr;
  if (hostShared) {
    state.error = "the GPU runtime has no host-shared allocations (a "
                  "gpu.alloc host_shared reached it)";
    return nullptr;
  }
  CUdeviceptr pointer = 0;
  if (!ok(api->cuMemAlloc(&pointer, bytes), [&] {
        return llvm::formatv("cuMemAlloc({0} bytes)", bytes).str();
      }))
    return nullptr;
  return reinterpret_cast<void *>(pointer);
}

void memFree(void *pointer, CUstream) {
  // Frees even after an error, so that a failed call leaks nothing.
  auto api = driver();
  if (!api) {
    llvm::consumeError(api.takeError());
    return;
  }
  if (pointer)
    ok(api->cuMemFree(reinterpret_cast<CUdeviceptr>(pointer)),
       [] { return "cuMemFree"; });
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
  if (!ok(api->cuModuleLoadDataEx(&module, data, count, options, values),
          [&] {
            return llvm::formatv("cuModuleLoadDataEx({0}){1}{2}", what,
                                 *log ? ": " : "", log)
                .str();
          }))
    return nullptr;
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

LaunchScope::LaunchScope(CUstream stream) {
  state.stream = stream;
  state.error.clear();
}

LaunchScope::~LaunchScope() {
  state.stream = nullptr;
  state.error.clear();
}

llvm::Error LaunchScope::takeError() {
  if (state.error.empty())
    return llvm::Error::success();
  std::string message = std::move(state.error);
  state.error.clear();
  return llvm::createStringError(message);
}
