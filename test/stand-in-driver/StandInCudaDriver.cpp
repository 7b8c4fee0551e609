//===- StandInCudaDriver.cpp - A CUDA driver without a GPU, for tests -----===//
//
// Part of moba-mlir. libmoba-stand-in-cuda.so: test scaffolding that the
// runtime loads in place of libcuda.so.1 (MOBA_CUDA_DRIVER=<this library>),
// so that CI, which has no GPU, runs the runtime's every driver call and
// every failure path. It exports the driver entry points that
// lib/Runtime/CudaDriver.cpp resolves, with the driver's C ABI, plus the few
// a test uses to make device buffers and contexts (cuMemAlloc_v2,
// cuMemFree_v2, cuMemcpyHtoD_v2, cuMemcpyDtoH_v2, cuStreamCreate,
// cuStreamDestroy_v2, cuCtxCreate_v2, cuCtxDestroy_v2).
// libmoba-stand-in-cuda-11.so, built from the same source, is a driver
// older than CUDA 12: it has no cuTensorMapEncodeTiled.
//
// It behaves like a small device with no compute:
//  * one device (compute capability 9.0, or MOBA_STAND_IN_COMPUTE_CAPABILITY,
//    e.g. "8.0") with its primary context, and more from cuCtxCreate_v2;
//    a context is current per thread, a module's functions run only in the
//    context it was loaded into, and destroying a context unloads them;
//  * device memory is host memory (256-byte aligned), every allocation
//    booked with its size, so that a test sees what is still live;
//  * a module load accepts PTX (text with .version, .target and .entry, its
//    .target runnable on the device) or a cubin (an ELF for EM_CUDA) and
//    rejects anything else as the driver does (CUDA_ERROR_INVALID_IMAGE /
//    CUDA_ERROR_INVALID_PTX, with a JIT log); functions are found by name in
//    the image (CUDA_ERROR_NOT_FOUND otherwise);
//  * a launch checks its function, grid, block, stream, shared memory (over
//    48 KiB only after cuFuncSetAttribute opted in) and argument count
//    (from the PTX), records it and runs nothing: outputs keep their bytes;
//  * handles are checked: a freed pointer, an unloaded module's function or
//    an unknown stream is CUDA_ERROR_INVALID_VALUE / _INVALID_HANDLE, as is
//    a call that needs a context on a thread without one.
//
// Failure injection: MOBA_STAND_IN_FAIL, or mobaStandInSetFailures() at run
// time, takes a comma-separated list of `entry:when[=code]`:
//   cuMemAllocFromPoolAsync:2      the 2nd call from now fails
//   cuModuleLoadDataEx:1+          the 1st call and every one after it
//   cuLaunchKernel:*               every call
//   cuLaunchKernel:1=700           with CUDA_ERROR_ILLEGAL_ADDRESS instead of
//                                  the entry's usual error (here 719,
//                                  CUDA_ERROR_LAUNCH_FAILED)
// MOBA_STAND_IN_TRACE=1 prints every call, its result and each launch's
// kernel and grid to stderr. Calls are counted per entry from when the plan
// was set. A failing call
// returns before it has any effect and leaves its outputs untouched (a
// module load also writes "injected by the stand-in driver" to the JIT
// error log it was given).
//
// Test hooks (extern "C"):
//   int mobaStandInSetFailures(const char *spec)   0, or -1 for a bad spec
//   void mobaStandInSetComputeCapability(int major, int minor)
//   void mobaStandInSetLatency(int microseconds)   each call sleeps first
//                                                  (outside the lock)
//   long long mobaStandInCount(const char *what)   -1 for an unknown name
// where `what` is "allocations" / "bytes" (live device memory: the pool's
// and cuMemAlloc's), "pool_allocations", "modules", "contexts" (created
// ones), "pools",
// "pools_keeping_memory" (their release threshold UINT64_MAX), "streams",
// "launches", "injected" (failures injected so far), "rejected" (calls the
// stand-in failed on its own: a bad handle, value or image -- in a correct
// runtime, only those a test provokes), "last_launch_stream",
// "max_dynamic_shared" (of the last launch's function),
// "pool_bytes_requested" (the bytes the pools' allocations asked for since
// the failure plan was set, freed or not), "calls:<entry>"
// (calls of an entry since the failure plan was set), or
// "after_failure:<entry>" (its calls since the last injected failure).
//
// Not a CUDA implementation: no kernel runs, no stream orders anything.
//
//===----------------------------------------------------------------------===//

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#define STAND_IN_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;

// The handle types are opaque pointers to these.
struct Context {
  CUdevice device = 0;
};
struct Function;
struct Module {
  Context *context = nullptr; ///< Where it was loaded; its functions run there.
  std::string image;          ///< PTX text, or the cubin's bytes.
  bool isPtx = false;
  std::map<std::string, std::unique_ptr<Function>> functions;
};
struct Function {
  Module *module = nullptr;
  std::string name;
  int parameters = -1; ///< From the PTX's .entry; -1 when unknown (cubin).
  int maxDynamicShared = 48 * 1024;
};
struct Stream {};
struct Pool {
  CUdevice device = 0;
  /// Its release threshold is UINT64_MAX: it keeps what it was given.
  bool keepsMemory = false;
};

// cuda.h's CUresult values that this driver returns.
enum : CUresult {
  kSuccess = 0,
  kInvalidValue = 1,
  kOutOfMemory = 2,
  kNotInitialized = 3,
  kNoDevice = 100,
  kInvalidDevice = 101,
  kInvalidImage = 200,
  kInvalidContext = 201,
  kInvalidPtx = 218,
  kInvalidHandle = 400,
  kNotFound = 500,
  kIllegalAddress = 700,
  kLaunchOutOfResources = 701,
  kLaunchFailed = 719,
  kNotSupported = 801,
  kUnknown = 999,
};

struct ErrorText {
  CUresult code;
  const char *name;
  const char *text;
};
const ErrorText kErrors[] = {
    {kSuccess, "CUDA_SUCCESS", "no error"},
    {kInvalidValue, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {kOutOfMemory, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {kNotInitialized, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {kNoDevice, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {kInvalidDevice, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {kInvalidImage, "CUDA_ERROR_INVALID_IMAGE",
     "device kernel image is invalid"},
    {kInvalidContext, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {kInvalidPtx, "CUDA_ERROR_INVALID_PTX", "a PTX JIT compilation failed"},
    {kInvalidHandle, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {kNotFound, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {kIllegalAddress, "CUDA_ERROR_ILLEGAL_ADDRESS",
     "an illegal memory access was encountered"},
    {kLaunchOutOfResources, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
     "too many resources requested for launch"},
    {kLaunchFailed, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"},
    {kNotSupported, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {kUnknown, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

/// Every entry point, with the error an injected failure returns unless the
/// plan names another: what the real driver returns for the usual failure
/// of that call.
struct Entry {
  const char *name;
  CUresult injected;
};
const Entry kEntries[] = {
    {"cuInit", kNoDevice},
    {"cuDriverGetVersion", kInvalidValue},
    {"cuDeviceGetCount", kNotInitialized},
    {"cuDeviceGet", kInvalidDevice},
    {"cuDeviceGetName", kInvalidDevice},
    {"cuDeviceGetAttribute", kInvalidDevice},
    {"cuDevicePrimaryCtxRetain", kOutOfMemory},
    {"cuCtxGetCurrent", kNotInitialized},
    {"cuCtxSetCurrent", kInvalidContext},
    {"cuCtxGetDevice", kInvalidContext},
    {"cuCtxCreate_v2", kOutOfMemory},
    {"cuCtxDestroy_v2", kInvalidContext},
    {"cuStreamCreate", kOutOfMemory},
    {"cuStreamDestroy_v2", kInvalidHandle},
    {"cuStreamSynchronize", kLaunchFailed},
    {"cuMemAlloc_v2", kOutOfMemory},
    {"cuMemFree_v2", kIllegalAddress},
    {"cuMemcpyHtoD_v2", kIllegalAddress},
    {"cuMemcpyDtoH_v2", kIllegalAddress},
    {"cuMemPoolCreate", kOutOfMemory},
    {"cuMemPoolSetAttribute", kInvalidValue},
    {"cuMemAllocFromPoolAsync", kOutOfMemory},
    {"cuMemFreeAsync", kIllegalAddress},
    {"cuFuncSetAttribute", kInvalidValue},
    {"cuModuleLoadDataEx", kInvalidImage},
    {"cuModuleUnload", kInvalidHandle},
    {"cuModuleGetFunction", kNotFound},
    {"cuLaunchKernel", kLaunchFailed},
    {"cuGetErrorName", kInvalidValue},
    {"cuGetErrorString", kInvalidValue},
    {"cuTensorMapEncodeTiled", kInvalidValue},
};

const Entry *findEntry(const std::string &name) {
  for (const Entry &entry : kEntries)
    if (name == entry.name)
      return &entry;
  return nullptr;
}

/// One rule of the failure plan.
struct Failure {
  std::string entry;
  long long first = 0; ///< The first call (1-based) that fails.
  bool onward = false; ///< And every call after it.
  CUresult code = kUnknown;
};

struct Allocation {
  size_t bytes = 0;
  bool fromPool = false;
};

struct Device {
  std::mutex mutex;
  bool initialized = false;
  bool trace = false; ///< MOBA_STAND_IN_TRACE: every call to stderr.
  int major = 9, minor = 0;
  Context primary;
  std::set<Context *> contexts; ///< Those cuCtxCreate_v2 made.
  std::map<uintptr_t, Allocation> allocations;
  /// The bytes asked of the memory pools since the failure plan was set.
  long long poolBytesRequested = 0;
  std::set<Module *> modules;
  std::set<Function *> functions;
  std::set<Stream *> streams;
  std::set<Pool *> pools;
  std::vector<Failure> plan;
  std::map<std::string, long long> calls;
  /// Calls of each entry since the last failure the plan injected.
  std::map<std::string, long long> afterFailure;
  bool failedSincePlan = false;
  long long launches = 0, injected = 0, rejected = 0;
  uintptr_t lastLaunchStream = 0;
  int lastLaunchMaxDynamicShared = 0;
};

Device &device() {
  static Device *instance = new Device; // Outlives every caller's exit.
  return *instance;
}

thread_local Context *current = nullptr;

/// How long each call takes before it does anything, outside the lock, so
/// that calls from several threads interleave as a driver's do.
std::atomic<int> latencyMicroseconds{0};

/// Parses `spec` (see the header) into `plan`; false when malformed.
bool parsePlan(const char *spec, std::vector<Failure> &plan, std::string &why) {
  plan.clear();
  std::string text = spec ? spec : "";
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos)
      end = text.size();
    std::string rule = text.substr(start, end - start);
    start = end + 1;
    if (rule.empty())
      continue;
    size_t colon = rule.find(':');
    if (colon == std::string::npos) {
      why = "'" + rule + "' has no ':when'";
      return false;
    }
    Failure failure;
    failure.entry = rule.substr(0, colon);
    const Entry *entry = findEntry(failure.entry);
    if (!entry) {
      why = "'" + failure.entry + "' is no entry point of the stand-in";
      return false;
    }
    failure.code = entry->injected;
    std::string when = rule.substr(colon + 1);
    size_t equals = when.find('=');
    if (equals != std::string::npos) {
      char *rest = nullptr;
      std::string code = when.substr(equals + 1);
      long value = std::strtol(code.c_str(), &rest, 10);
      if (code.empty() || *rest || value <= 0 || value > 100000) {
        why = "'" + rule + "' has a bad error code";
        return false;
      }
      failure.code = static_cast<CUresult>(value);
      when.resize(equals);
    }
    if (when == "*") {
      failure.first = 1;
      failure.onward = true;
    } else {
      if (!when.empty() && when.back() == '+') {
        failure.onward = true;
        when.pop_back();
      }
      char *rest = nullptr;
      long long value = std::strtoll(when.c_str(), &rest, 10);
      if (when.empty() || *rest || value < 1) {
        why = "'" + rule + "' must name a call as N, N+ or *";
        return false;
      }
      failure.first = value;
    }
    plan.push_back(failure);
  }
  return true;
}

/// Counts a call of `entry` and returns the failure the plan injects into
/// it, or kSuccess. Called with the device's mutex held.
CUresult injectedFailure(Device &d, const char *entry) {
  long long call = ++d.calls[entry];
  for (const Failure &failure : d.plan) {
    if (failure.entry != entry)
      continue;
    if (call == failure.first || (failure.onward && call > failure.first)) {
      ++d.injected;
      d.failedSincePlan = true;
      d.afterFailure.clear();
      return failure.code;
    }
  }
  if (d.failedSincePlan)
    ++d.afterFailure[entry];
  return kSuccess;
}

/// Reads the environment once, at cuInit.
CUresult configureFromEnvironment(Device &d) {
  const char *trace = std::getenv("MOBA_STAND_IN_TRACE");
  d.trace = trace && *trace && std::strcmp(trace, "0") != 0;
  if (const char *spec = std::getenv("MOBA_STAND_IN_FAIL")) {
    std::string why;
    if (!parsePlan(spec, d.plan, why)) {
      std::fprintf(stderr, "stand-in CUDA driver: MOBA_STAND_IN_FAIL: %s\n",
                   why.c_str());
      return kInvalidValue;
    }
  }
  if (const char *cc = std::getenv("MOBA_STAND_IN_COMPUTE_CAPABILITY")) {
    int major = 0, minor = 0;
    char extra = 0;
    if (std::sscanf(cc, "%d.%d%c", &major, &minor, &extra) != 2 || major < 1 ||
        major > 99 || minor < 0 || minor > 9) {
      std::fprintf(stderr,
                   "stand-in CUDA driver: MOBA_STAND_IN_COMPUTE_CAPABILITY "
                   "must look like 9.0, got '%s'\n",
                   cc);
      return kInvalidValue;
    }
    d.major = major;
    d.minor = minor;
  }
  return kSuccess;
}

/// The most dynamic shared memory a kernel may opt into, per block.
int maxOptInShared(const Device &d) {
  int cc = d.major * 10 + d.minor;
  if (cc >= 90)
    return 227 * 1024;
  if (cc == 80 || cc == 87)
    return 163 * 1024;
  return 99 * 1024;
}

bool validStream(const Device &d, void *stream) {
  // Null and the two special handles (CU_STREAM_LEGACY, CU_STREAM_PER_THREAD)
  // need no creating.
  auto value = reinterpret_cast<uintptr_t>(stream);
  return value <= 2 || d.streams.count(static_cast<Stream *>(stream));
}

/// The compute capability a PTX `.target sm_XY[a]` needs, and whether only
/// exactly that one runs it; false when the PTX names no target.
bool ptxTarget(const std::string &ptx, int &capability, bool &exact) {
  size_t at = ptx.find(".target");
  if (at == std::string::npos)
    return false;
  at = ptx.find("sm_", at);
  if (at == std::string::npos)
    return false;
  char *rest = nullptr;
  capability = static_cast<int>(std::strtol(ptx.c_str() + at + 3, &rest, 10));
  exact = *rest == 'a' || *rest == 'f';
  return capability > 0;
}

/// The number of parameters of `.entry name(...)` in `ptx`; -1 when it has
/// no such entry.
int ptxParameters(const std::string &ptx, const std::string &name) {
  std::string needle = ".entry " + name;
  for (size_t at = ptx.find(needle); at != std::string::npos;
       at = ptx.find(needle, at + 1)) {
    size_t after = at + needle.size();
    if (after < ptx.size() &&
        (std::isalnum(ptx[after]) || ptx[after] == '_' || ptx[after] == '$'))
      continue; // a longer name
    size_t open = ptx.find_first_not_of(" \t\r\n", after);
    if (open == std::string::npos || ptx[open] != '(')
      return 0;
    size_t close = ptx.find(')', open);
    if (close == std::string::npos)
      return -1;
    int count = 0;
    for (size_t p = ptx.find(".param", open);
         p != std::string::npos && p < close; p = ptx.find(".param", p + 1))
      ++count;
    return count;
  }
  return -1;
}

/// The size of the ELF image at `image`: its section headers come last.
size_t elfSize(const unsigned char *image) {
  uint64_t shoff = 0;
  uint16_t shentsize = 0, shnum = 0;
  std::memcpy(&shoff, image + 0x28, sizeof(shoff));
  std::memcpy(&shentsize, image + 0x3A, sizeof(shentsize));
  std::memcpy(&shnum, image + 0x3C, sizeof(shnum));
  return shoff + uint64_t(shentsize) * shnum;
}

/// Writes `text` to the JIT error log among a module load's options.
void writeLog(unsigned count, const int *options, void **values,
              const std::string &text) {
  constexpr int kErrorLogBuffer = 5, kErrorLogBufferSize = 6;
  char *buffer = nullptr;
  size_t size = 0;
  for (unsigned i = 0; options && values && i < count; ++i) {
    if (options[i] == kErrorLogBuffer)
      buffer = static_cast<char *>(values[i]);
    else if (options[i] == kErrorLogBufferSize)
      size = reinterpret_cast<uintptr_t>(values[i]);
  }
  if (!buffer || size == 0)
    return;
  size_t length = std::min(text.size(), size - 1);
  std::memcpy(buffer, text.data(), length);
  buffer[length] = '\0';
}

/// Runs `body` for a call of `entry` under the device's lock, unless the
/// plan injects a failure (then calls `onInjected` with `argument`); counts
/// the calls the body rejects.
template <typename Body>
CUresult call(const char *entry, Body body,
              void (*onInjected)(Device &, const void *) = nullptr,
              const void *argument = nullptr) {
  if (int latency = latencyMicroseconds.load())
    std::this_thread::sleep_for(std::chrono::microseconds(latency));
  Device &d = device();
  std::lock_guard<std::mutex> lock(d.mutex);
  if (CUresult injected = injectedFailure(d, entry)) {
    if (d.trace)
      std::fprintf(stderr, "stand-in: %s -> %d (injected)\n", entry, injected);
    if (onInjected)
      onInjected(d, argument);
    return injected;
  }
  CUresult result = body(d);
  if (result != kSuccess)
    ++d.rejected;
  if (d.trace)
    std::fprintf(stderr, "stand-in: %s -> %d\n", entry, result);
  return result;
}

#define NEEDS_INIT                                                             \
  if (!d.initialized)                                                          \
    return kNotInitialized;

#define NEEDS_CONTEXT                                                          \
  NEEDS_INIT                                                                   \
  if (!current)                                                                \
    return kInvalidContext;

} // namespace

//===----------------------------------------------------------------------===//
// The test hooks.
//===----------------------------------------------------------------------===//

STAND_IN_EXPORT int mobaStandInSetFailures(const char *spec) {
  Device &d = device();
  std::lock_guard<std::mutex> lock(d.mutex);
  std::vector<Failure> plan;
  std::string why;
  if (!parsePlan(spec, plan, why)) {
    std::fprintf(stderr, "stand-in CUDA driver: %s\n", why.c_str());
    return -1;
  }
  d.plan = std::move(plan);
  d.calls.clear();
  d.afterFailure.clear();
  d.poolBytesRequested = 0;
  d.failedSincePlan = false;
  return 0;
}

STAND_IN_EXPORT void mobaStandInSetLatency(int microseconds) {
  latencyMicroseconds.store(microseconds < 0 ? 0 : microseconds);
}

STAND_IN_EXPORT void mobaStandInSetComputeCapability(int major, int minor) {
  Device &d = device();
  std::lock_guard<std::mutex> lock(d.mutex);
  d.major = major;
  d.minor = minor;
}

STAND_IN_EXPORT long long mobaStandInCount(const char *what) {
  Device &d = device();
  std::lock_guard<std::mutex> lock(d.mutex);
  std::string name = what ? what : "";
  if (name == "allocations")
    return static_cast<long long>(d.allocations.size());
  if (name == "bytes" || name == "pool_allocations") {
    long long bytes = 0, pooled = 0;
    for (const auto &[address, allocation] : d.allocations) {
      bytes += static_cast<long long>(allocation.bytes);
      pooled += allocation.fromPool;
    }
    return name == "bytes" ? bytes : pooled;
  }
  if (name == "pool_bytes_requested")
    return d.poolBytesRequested;
  if (name == "modules")
    return static_cast<long long>(d.modules.size());
  if (name == "pools")
    return static_cast<long long>(d.pools.size());
  if (name == "pools_keeping_memory")
    return std::count_if(d.pools.begin(), d.pools.end(),
                         [](const Pool *pool) { return pool->keepsMemory; });
  if (name == "contexts")
    return static_cast<long long>(d.contexts.size());
  if (name == "streams")
    return static_cast<long long>(d.streams.size());
  if (name == "launches")
    return d.launches;
  if (name == "injected")
    return d.injected;
  if (name == "rejected")
    return d.rejected;
  if (name == "last_launch_stream")
    return static_cast<long long>(d.lastLaunchStream);
  if (name == "max_dynamic_shared")
    return d.lastLaunchMaxDynamicShared;
  if (name.rfind("calls:", 0) == 0 && findEntry(name.substr(6))) {
    auto found = d.calls.find(name.substr(6));
    return found == d.calls.end() ? 0 : found->second;
  }
  constexpr size_t kAfterFailure = sizeof("after_failure:") - 1;
  if (name.rfind("after_failure:", 0) == 0 &&
      findEntry(name.substr(kAfterFailure))) {
    auto found = d.afterFailure.find(name.substr(kAfterFailure));
    return found == d.afterFailure.end() ? 0 : found->second;
  }
  return -1;
}

//===----------------------------------------------------------------------===//
// Initialization, devices and contexts.
//===----------------------------------------------------------------------===//

STAND_IN_EXPORT CUresult cuInit(unsigned flags) {
  Device &d = device();
  std::lock_guard<std::mutex> lock(d.mutex);
  if (!d.initialized) {
    if (CUresult bad = configureFromEnvironment(d))
      return bad;
  }
  if (CUresult injected = injectedFailure(d, "cuInit"))
    return injected;
  if (flags != 0)
    return kInvalidValue;
  d.initialized = true;
  return kSuccess;
}

STAND_IN_EXPORT CUresult cuDriverGetVersion(int *version) {
  return call("cuDriverGetVersion", [&](Device &) -> CUresult {
    if (!version)
      return kInvalidValue;
#ifdef MOBA_STAND_IN_CUDA_11
    *version = 11080;
#else
    *version = 12080;
#endif
    return kSuccess;
  });
}

STAND_IN_EXPORT CUresult cuDeviceGetCount(int *count) {
  return call("cuDeviceGetCount", [&](Device &d) -> CUresult {
    NEEDS_INIT;
    if (!count)
      return kInvalidValue;
    *count = 1;
    return kSuccess;
  });
}

STAND_IN_EXPORT CUresult cuDeviceGet(CUdevice *result, int ordinal) {
  return call("cuDeviceGet", [&](Device &d) -> CUresult {
    NEEDS_INIT;
    if (!result)
      return kInvalidValue;
    if (ordinal != 0)
      return kInvalidDevice;
    *result = 0;
    return kSuccess;
  });
}

STAND_IN_EXPORT CUresult cuDeviceGetName(char *name, int length,
                                         CUdevice ordinal) {
  return call("cuDeviceGetName", [&](Device &d) -> CUresult {
    NEEDS_INIT;
    if (!name || length <= 0)
      return kInvalidValue;
    if (ordinal != 0)
      return kInvalidDevice;
    std::snprintf(name, static_cast<size_t>(length),
                  "moba stand-in CUDA device (%d.%d)", d.major, d.minor);
    return kSuccess;
  });
}

STAND_IN_EXPORT CUresult cuDeviceGetAttribute(int *value, int attribute,
                                              CUdevice ordinal) {
  return call("cuDeviceGetAttribute", [&](Device &d) -> CUresult {
    NEEDS_INIT;
    if (!value)
      return kInvalidValue;
    if (ordinal != 0)
      return kInvalidDevice;
    constexpr int kMajor = 75, kMinor = 76, kMaxSharedOptIn = 97;
    switch (attribute) {
    case kMajor:
      *value = d.major;
      return kSuccess;
    case kMinor:
      *value = d.minor;
      return kSuccess;
    case kMaxSharedOptIn:
      *value = maxOptInShared(d);
      return kSuccess;
    default:
      return kInvalidValue;
    }
  });
}

STAND_IN_EXPORT CUresult cuDevicePrimaryCtxRetain(Context **context,
                                                  CUdevice ordinal) {
  return call("cuDevicePrimaryCtxRetain", [&](Device &d) -> CUresult {
    NEEDS_INIT;
    if (!context)
      return kInvalidValue;
    if (ordinal != 0)
      return kInvalidDevice;
    *context = &d.primary;
    return kSuccess;
  });
}

STAND_IN_EXPORT CUresult cuCtxGetCurrent(Context **context) {
  return call("cuCtxGetCurrent", [&](Device &d) -> CUresult {
    NEEDS_INIT;
    if (!context)
      return kInvalidValue;
    *context = current;
    return kSuccess;
  });
}

STAND_IN_EXPORT CUresult cuCtxSetCurrent(Context *context) {
  return call("cuCtxSetCurrent", [&](Device &d) -> CUresult {
    NEEDS_INIT;
    if (context && context != &d.primary && !d.contexts.count(context))
      return kInvalidContext;
    current = context;
    return kSuccess;
  });
}

STAND_IN_EXPORT CUresult cuCtxCreate_v2(Context **context, unsigned flags,
                                        CUdevice ordinal) {
  return call("cuCtxCreate_v2", [&](Device &d) -> CUresult {
    NEEDS_INIT;
    if (!context)
      return kInvalidValue;
    if (ordinal != 0)
      return kInvalidDevice;
    (void)flags;
    *context = new Context{ordinal};
    d.contexts.insert(*context);
    current = *context; // A new context is made current, as the driver does.
    return kSuccess;
  });
}

STAND_IN_EXPORT CUresult cuCtxDestroy_v2(Context *context) {
  return call("cuCtxDestroy_v2", [&](Device &d) -> CUresult {
    NEEDS_INIT;
    if (!d.contexts.erase(context))
      return kInvalidContext;
    // Its modules go with it.
    for (auto it = d.modules.begin(); it != d.modules.end();) {
      Module *module = *it;
      if (module->context != context) {
        ++it;
        continue;
      }
      for (auto &[name, function] : module->functions)
        d.functions.erase(function.get());
      it = d.modules.erase(it);
      delete module;
    }
    if (current == context)
      current = nullptr;
    delete context;
    return kSuccess;
  });
}

STAND_IN_EXPORT CUresult cuCtxGetDevice(CUdevice *ordinal) {
  return call("cuCtxGetDevice", [&](Device &d) -> CUresult {
    NEEDS_CONTEXT;
    if (!ordinal)
      return kInvalidValue;
    *ordinal = current->device;
    return kSuccess;
  });
}

STAND_IN_EXPORT CUresult cuGetErrorName(CUresult error, const char **name) {
  return call("cuGetErrorName", [&](Device &) -> CUresult {
    if (!name)
      return kInvalidValue;
    for (const ErrorText &known : kErrors)
      if (known.code == error) {
        *name = known.name;
        return kSuccess;
      }
    *name = nullptr;
    return kInvalidValue;
  });
}

STAND_IN_EXPORT CUresult cuGetErrorString(CUresult error, const char **text) {
  return call("cuGetErrorString", [&](Device &) -> CUresult {
    if (!text)
      return kInvalidValue;
    for (const ErrorText &known : kErrors)
      if (known.code == error) {
        *text = known.text;
        return kSuccess;
      }
    *text = nullptr;
    return kInvalidValue;
  });
}

//===----------------------------------------------------------------------===//
// Streams and memory.
//===----------------------------------------------------------------------===//

STAND_IN_EXPORT CUresult cuStreamCreate(Stream **stream, unsigned flags) {
  return call("cuStreamCreate", [&](Device &d) -> CUresult {
    NEEDS_CONTEXT;
    if (!stream || flags > 1)
      return kInvalidValue;
    *stream = new Stream;
    d.streams.insert(*stream);
    return kSuccess;
  });
}

STAND_IN_EXPORT CUresult cuStreamDestroy_v2(Stream *stream) {
  return call("cuStreamDestroy_v2", [&](Device &d) -> CUresult {
    NEEDS_CONTEXT;
    if (!d.streams.erase(stream))
      return kInvalidHandle;
    delete stream;
    return kSuccess;
  });
}

STAND_IN_EXPORT CUresult cuStreamSynchronize(Stream *stream) {
  return call("cuStreamSynchronize", [&](Device &d) -> CUresult {
    NEEDS_CONTEXT;
    if (!validStream(d, stream))
      return kInvalidHandle;
    return kSuccess;
  });
}

namespace {
/// Books `bytes` of fresh host memory as device memory.
CUresult allocate(Device &d, CUdeviceptr *pointer, size_t bytes,
                  bool fromPool) {
  if (!pointer || bytes == 0)
    return kInvalidValue;
  constexpr size_t kAlignment = 256;
  if (bytes > (size_t(1) << 40))
    return kOutOfMemory;
  size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  void *memory = std::aligned_alloc(kAlignment, rounded);
  if (!memory)
    return kOutOfMemory;
  d.allocations[reinterpret_cast<uintptr_t>(memory)] = {bytes, fromPool};
  *pointer = reinterpret_cast<CUdeviceptr>(memory);
  return kSuccess;
}

CUresult release(Device &d, CUdeviceptr pointer, bool fromPool) {
  auto found = d.allocations.find(static_cast<uintptr_t>(pointer));
  if (found == d.allocations.end() || found->second.fromPool != fromPool)
    return kInvalidValue;
  d.allocations.erase(found);
  std::free(reinterpret_cast<void *>(static_cast<uintptr_t>(pointer)));
  return kSuccess;
}

/// Whether [pointer, pointer + bytes) lies in one live allocation.
bool isDeviceRange(const Device &d, CUdeviceptr pointer, size_t bytes) {
  auto after = d.allocations.upper_bound(static_cast<uintptr_t>(pointer));
  if (after == d.allocations.begin())
    return false;
  auto found = std::prev(after);
  uintptr_t offset = static_cast<uintptr_t>(pointer) - found->first;
  return offset <= found->second.bytes && bytes <= found->second.bytes - offset;
}
} // namespace

STAND_IN_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *pointer, size_t bytes) {
  return call("cuMemAlloc_v2", [&](Device &d) -> CUresult {
    NEEDS_CONTEXT;
    return allocate(d, pointer, bytes, /*fromPool=*/false);
  });
}

STAND_IN_EXPORT CUresult cuMemFree_v2(CUdeviceptr pointer) {
  return call("cuMemFree_v2", [&](Device &d) -> CUresult {
    NEEDS_CONTEXT;
    return release(d, pointer, /*fromPool=*/false);
  });
}

STAND_IN_EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr destination,
                                         const void *source, size_t bytes) {
  return call("cuMemcpyHtoD_v2", [&](Device &d) -> CUresult {
    NEEDS_CONTEXT;
    if (!source || !isDeviceRange(d, destination, bytes))
      return kInvalidValue;
    std::memcpy(reinterpret_cast<void *>(static_cast<uintptr_t>(destination)),
                source, bytes);
    return kSuccess;
  });
}

STAND_IN_EXPORT CUresult cuMemcpyDtoH_v2(void *destination, CUdeviceptr source,
                                         size_t bytes) {
  return call("cuMemcpyDtoH_v2", [&](Device &d) -> CUresult {
    NEEDS_CONTEXT;
    if (!destination || !isDeviceRange(d, source, bytes))
      return kInvalidValue;
    std::memcpy(destination,
                reinterpret_cast<const void *>(static_cast<uintptr_t>(source)),
                bytes);
    return kSuccess;
  });
}

/// cuda.h's CUmemPoolProps, as lib/Runtime/CudaDriver.h declares it.
struct PoolProps {
  int allocType;
  int handleTypes;
  int locationType;
  int locationId;
  void *win32SecurityAttributes;
  size_t maxSize;
  unsigned short usage;
  unsigned char reserved[54];
};
static_assert(sizeof(PoolProps) == 88, "cuda.h's CUmemPoolProps");

STAND_IN_EXPORT CUresult cuMemPoolCreate(Pool **pool, const PoolProps *props) {
  return call("cuMemPoolCreate", [&](Device &d) -> CUresult {
    NEEDS_INIT;
    if (!pool || !props)
      return kInvalidValue;
    constexpr int kPinned = 1, kOnDevice = 1;
    if (props->allocType != kPinned || props->locationType != kOnDevice)
      return kInvalidValue;
    if (props->locationId != 0)
      return kInvalidDevice;
    *pool = new Pool{props->locationId};
    d.pools.insert(*pool);
    return kSuccess;
  });
}

STAND_IN_EXPORT CUresult cuMemPoolSetAttribute(Pool *pool, int attribute,
                                               void *value) {
  return call("cuMemPoolSetAttribute", [&](Device &d) -> CUresult {
    NEEDS_INIT;
    if (!d.pools.count(pool))
      return kInvalidHandle;
    // CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES (1) to
    // CU_MEMPOOL_ATTR_USED_MEM_HIGH (8).
    if (!value || attribute < 1 || attribute > 8)
      return kInvalidValue;
    constexpr int kReleaseThreshold = 4;
    if (attribute == kReleaseThreshold)
      pool->keepsMemory = *static_cast<uint64_t *>(value) == UINT64_MAX;
    return kSuccess;
  });
}

STAND_IN_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *pointer,
                                                 size_t bytes, Pool *pool,
                                                 Stream *stream) {
  return call("cuMemAllocFromPoolAsync", [&](Device &d) -> CUresult {
    NEEDS_CONTEXT;
    if (!d.pools.count(pool) || !validStream(d, stream))
      return kInvalidHandle;
    CUresult result = allocate(d, pointer, bytes, /*fromPool=*/true);
    if (result == kSuccess)
      d.poolBytesRequested += static_cast<long long>(bytes);
    return result;
  });
}

STAND_IN_EXPORT CUresult cuMemFreeAsync(CUdeviceptr pointer, Stream *stream) {
  return call("cuMemFreeAsync", [&](Device &d) -> CUresult {
    NEEDS_CONTEXT;
    if (!validStream(d, stream))
      return kInvalidHandle;
    return release(d, pointer, /*fromPool=*/true);
  });
}

//===----------------------------------------------------------------------===//
// Modules, functions and launches.
//===----------------------------------------------------------------------===//

namespace {
/// A module load's options: where its JIT error log goes.
struct LoadOptions {
  unsigned count;
  const int *options;
  void **values;
};
} // namespace

STAND_IN_EXPORT CUresult cuModuleLoadDataEx(Module **module, const void *image,
                                            unsigned count, int *options,
                                            void **values) {
  LoadOptions given{count, options, values};
  auto logInjected = [](Device &d, const void *argument) {
    auto *o = static_cast<const LoadOptions *>(argument);
    writeLog(o->count, o->options, o->values,
             "injected by the stand-in driver (cuModuleLoadDataEx call " +
                 std::to_string(d.calls["cuModuleLoadDataEx"]) + ")");
  };
  return call(
      "cuModuleLoadDataEx",
      [&](Device &d) -> CUresult {
        NEEDS_CONTEXT;
        if (!module || !image || (count && (!options || !values)))
          return kInvalidValue;
        auto *bytes = static_cast<const unsigned char *>(image);
        auto loaded = std::make_unique<Module>();
        constexpr uint16_t kMachineCuda = 190;
        uint16_t machine = 0;
        if (bytes[0] == 0x7f && bytes[1] == 'E' && bytes[2] == 'L' &&
            bytes[3] == 'F') {
          std::memcpy(&machine, bytes + 18, sizeof(machine));
          if (bytes[4] != 2 || machine != kMachineCuda)
            return kInvalidImage;
          loaded->image.assign(reinterpret_cast<const char *>(bytes),
                               elfSize(bytes));
        } else {
          loaded->image = static_cast<const char *>(image);
          loaded->isPtx = true;
          const std::string &ptx = loaded->image;
          int capability = 0;
          bool exact = false;
          if (ptx.find(".version") == std::string::npos ||
              !ptxTarget(ptx, capability, exact) ||
              ptx.find(".entry") == std::string::npos) {
            writeLog(
                count, options, values,
                "ptxas fatal   : not PTX (no .version, .target or .entry)");
            return kInvalidImage;
          }
          int have = d.major * 10 + d.minor;
          if (exact ? capability != have : capability > have) {
            writeLog(count, options, values,
                     "ptxas fatal   : SM version specified by .target (sm_" +
                         std::to_string(capability) + (exact ? "a" : "") +
                         ") does not run on this device (" +
                         std::to_string(d.major) + "." +
                         std::to_string(d.minor) + ")");
            return kInvalidPtx;
          }
        }
        loaded->context = current;
        *module = loaded.release();
        d.modules.insert(*module);
        return kSuccess;
      },
      logInjected, &given);
}

STAND_IN_EXPORT CUresult cuModuleUnload(Module *module) {
  return call("cuModuleUnload", [&](Device &d) -> CUresult {
    NEEDS_INIT;
    if (!d.modules.erase(module))
      return kInvalidHandle;
    for (auto &[name, function] : module->functions)
      d.functions.erase(function.get());
    delete module;
    return kSuccess;
  });
}

STAND_IN_EXPORT CUresult cuModuleGetFunction(Function **function,
                                             Module *module, const char *name) {
  return call("cuModuleGetFunction", [&](Device &d) -> CUresult {
    NEEDS_CONTEXT;
    if (!function || !name)
      return kInvalidValue;
    if (!d.modules.count(module) || module->context != current)
      return kInvalidHandle;
    auto &slot = module->functions[name];
    if (!slot) {
      int parameters = -1;
      if (module->isPtx) {
        parameters = ptxParameters(module->image, name);
        if (parameters < 0) {
          module->functions.erase(name);
          return kNotFound;
        }
      } else {
        std::string symbol = std::string(".text.") + name;
        if (module->image.find(symbol + '\0') == std::string::npos) {
          module->functions.erase(name);
          return kNotFound;
        }
      }
      slot = std::make_unique<Function>();
      slot->module = module;
      slot->name = name;
      slot->parameters = parameters;
      d.functions.insert(slot.get());
    }
    *function = slot.get();
    return kSuccess;
  });
}

STAND_IN_EXPORT CUresult cuFuncSetAttribute(Function *function, int attribute,
                                            int value) {
  return call("cuFuncSetAttribute", [&](Device &d) -> CUresult {
    NEEDS_CONTEXT;
    if (!d.functions.count(function))
      return kInvalidHandle;
    constexpr int kMaxDynamicShared = 8;
    if (attribute == kMaxDynamicShared) {
      if (value < 0 || value > maxOptInShared(d))
        return kInvalidValue;
      function->maxDynamicShared = value;
    }
    return kSuccess;
  });
}

STAND_IN_EXPORT CUresult cuLaunchKernel(Function *function, unsigned gridX,
                                        unsigned gridY, unsigned gridZ,
                                        unsigned blockX, unsigned blockY,
                                        unsigned blockZ, unsigned sharedBytes,
                                        Stream *stream, void **params,
                                        void **extra) {
  return call("cuLaunchKernel", [&](Device &d) -> CUresult {
    NEEDS_CONTEXT;
    if (!d.functions.count(function) || !validStream(d, stream) ||
        function->module->context != current)
      return kInvalidHandle;
    if (!gridX || !gridY || !gridZ || !blockX || !blockY || !blockZ ||
        gridX > 0x7fffffffu || gridY > 65535 || gridZ > 65535 || blockZ > 64 ||
        uint64_t(blockX) * blockY * blockZ > 1024)
      return kInvalidValue;
    if (sharedBytes > unsigned(function->maxDynamicShared))
      return kInvalidValue;
    if (extra)
      return kNotSupported; // The runtime passes arguments as `params`.
    if (function->parameters > 0) {
      if (!params)
        return kInvalidValue;
      for (int i = 0; i < function->parameters; ++i)
        if (!params[i])
          return kInvalidValue;
    }
    ++d.launches;
    if (d.trace)
      std::fprintf(stderr,
                   "stand-in: launch %s grid %ux%ux%u block %ux%ux%u shared "
                   "%u\n",
                   function->name.c_str(), gridX, gridY, gridZ, blockX, blockY,
                   blockZ, sharedBytes);
    d.lastLaunchStream = reinterpret_cast<uintptr_t>(stream);
    d.lastLaunchMaxDynamicShared = function->maxDynamicShared;
    return kSuccess;
  });
}

// A CUDA 11 driver has no TMA descriptors: MOBA_STAND_IN_CUDA_11 builds the
// stand-in without them (libmoba-stand-in-cuda-11.so).
#ifndef MOBA_STAND_IN_CUDA_11
STAND_IN_EXPORT CUresult
cuTensorMapEncodeTiled(void *map, int dataType, unsigned rank, void *address,
                       const uint64_t *dims, const uint64_t *strides,
                       const unsigned *box, const unsigned *elementStrides,
                       int interleave, int swizzle, int promotion, int fill) {
  return call("cuTensorMapEncodeTiled", [&](Device &d) -> CUresult {
    NEEDS_INIT;
    (void)interleave;
    (void)swizzle;
    (void)promotion;
    (void)fill;
    constexpr int kLastDataType = 12;
    if (!map || !dims || !box || !elementStrides || rank < 1 || rank > 5 ||
        dataType < 0 || dataType > kLastDataType ||
        reinterpret_cast<uintptr_t>(address) % 16 != 0 ||
        reinterpret_cast<uintptr_t>(map) % 64 != 0 || (rank > 1 && !strides))
      return kInvalidValue;
    for (unsigned i = 0; i < rank; ++i)
      if (dims[i] == 0 || box[i] == 0 || box[i] > 256 ||
          (i + 1 < rank && strides[i] % 16 != 0))
        return kInvalidValue;
    // The 128 opaque bytes: what was asked for, never read by any kernel here.
    uint64_t encoded[16] = {};
    encoded[0] = reinterpret_cast<uintptr_t>(address);
    for (unsigned i = 0; i < rank; ++i)
      encoded[1 + i] = dims[i];
    std::memcpy(map, encoded, sizeof(encoded));
    return kSuccess;
  });
}
#endif // MOBA_STAND_IN_CUDA_11
