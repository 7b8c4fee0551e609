//===- CudaDriver.cpp - The CUDA driver API, loaded at run time -----------===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#include "moba/Runtime/CudaDriver.h"

#include "llvm/Support/FormatVariadic.h"

#include <cstdlib>
#include <dlfcn.h>
#include <mutex>

using namespace mlir::moba::cuda;

namespace {

constexpr CUresult kSuccess = 0;
constexpr int kComputeCapabilityMajor = 75;
constexpr int kComputeCapabilityMinor = 76;

/// The library to open: $MOBA_CUDA_DRIVER when set (tests point it at a
/// missing file to see the no-driver path on a GPU machine), else the
/// driver's versioned soname, as every CUDA program finds it.
const char *driverLibraryName() {
  const char *overridden = std::getenv("MOBA_CUDA_DRIVER");
  return overridden && *overridden ? overridden : "libcuda.so.1";
}

struct LoadedDriver {
  DriverApi api{};
  std::string error; ///< Why the driver is unusable; empty when it is fine.
};

template <typename Fn>
bool resolve(void *library, const char *name, Fn &slot, std::string &error) {
  slot = reinterpret_cast<Fn>(dlsym(library, name));
  if (!slot && error.empty())
    error = llvm::formatv("the CUDA driver {0} has no {1}: it is older than "
                          "CUDA 11 or not NVIDIA's driver",
                          driverLibraryName(), name)
                .str();
  return slot != nullptr;
}

LoadedDriver load() {
  LoadedDriver loaded;
  const char *name = driverLibraryName();
  void *library = dlopen(name, RTLD_NOW | RTLD_LOCAL);
  if (!library) {
    const char *why = dlerror();
    loaded.error =
        llvm::formatv("no CUDA driver: {0} could not be loaded ({1}); GPU "
                      "targets need an NVIDIA GPU and its driver, the CPU "
                      "target needs neither",
                      name, why ? why : "unknown reason")
            .str();
    return loaded;
  }
  DriverApi &a = loaded.api;
  std::string &e = loaded.error;
  resolve(library, "cuInit", a.cuInit, e);
  resolve(library, "cuDriverGetVersion", a.cuDriverGetVersion, e);
  resolve(library, "cuDeviceGetCount", a.cuDeviceGetCount, e);
  resolve(library, "cuDeviceGet", a.cuDeviceGet, e);
  resolve(library, "cuDeviceGetName", a.cuDeviceGetName, e);
  resolve(library, "cuDeviceGetAttribute", a.cuDeviceGetAttribute, e);
  resolve(library, "cuDevicePrimaryCtxRetain", a.cuDevicePrimaryCtxRetain, e);
  resolve(library, "cuCtxGetCurrent", a.cuCtxGetCurrent, e);
  resolve(library, "cuCtxSetCurrent", a.cuCtxSetCurrent, e);
  resolve(library, "cuCtxGetDevice", a.cuCtxGetDevice, e);
  resolve(library, "cuStreamSynchronize", a.cuStreamSynchronize, e);
  resolve(library, "cuMemPoolCreate", a.cuMemPoolCreate, e);
  resolve(library, "cuMemPoolSetAttribute", a.cuMemPoolSetAttribute, e);
  resolve(library, "cuMemAllocFromPoolAsync", a.cuMemAllocFromPoolAsync, e);
  resolve(library, "cuMemFreeAsync", a.cuMemFreeAsync, e);
  resolve(library, "cuFuncSetAttribute", a.cuFuncSetAttribute, e);
  resolve(library, "cuModuleLoadDataEx", a.cuModuleLoadDataEx, e);
  resolve(library, "cuModuleUnload", a.cuModuleUnload, e);
  resolve(library, "cuModuleGetFunction", a.cuModuleGetFunction, e);
  resolve(library, "cuLaunchKernel", a.cuLaunchKernel, e);
  resolve(library, "cuGetErrorName", a.cuGetErrorName, e);
  resolve(library, "cuGetErrorString", a.cuGetErrorString, e);
  a.cuTensorMapEncodeTiled = reinterpret_cast<decltype(
      a.cuTensorMapEncodeTiled)>(dlsym(library, "cuTensorMapEncodeTiled"));
  if (!e.empty())
    return loaded;

  CUresult init = a.cuInit(0);
  int count = 0;
  if (init == kSuccess)
    init = a.cuDeviceGetCount(&count);
  if (init != kSuccess) {
    const char *errorName = nullptr;
    a.cuGetErrorName(init, &errorName);
    loaded.error =
        llvm::formatv("no usable GPU: cuInit failed with {0} (the driver is "
                      "installed, but no device answered)",
                      errorName ? errorName : std::to_string(init).c_str())
            .str();
  } else if (count == 0) {
    loaded.error = "no GPU: the CUDA driver is installed but reports 0 devices";
  }
  return loaded;
}

const LoadedDriver &loadedDriver() {
  static LoadedDriver loaded = load();
  return loaded;
}

} // namespace

llvm::Expected<const DriverApi &> mlir::moba::cuda::driver() {
  const LoadedDriver &loaded = loadedDriver();
  if (!loaded.error.empty())
    return llvm::createStringError(loaded.error);
  return loaded.api;
}

llvm::Error mlir::moba::cuda::check(CUresult result, llvm::StringRef call) {
  if (result == kSuccess)
    return llvm::Error::success();
  const DriverApi &api = loadedDriver().api;
  const char *name = nullptr, *text = nullptr;
  if (api.cuGetErrorName)
    api.cuGetErrorName(result, &name);
  if (api.cuGetErrorString)
    api.cuGetErrorString(result, &text);
  return llvm::createStringError(
      llvm::formatv("{0} failed: {1} ({2})", call,
                    name ? name : ("CUDA error " + std::to_string(result)),
                    text ? text : "no description")
          .str());
}

llvm::Expected<CUcontext>
mlir::moba::cuda::currentContext(DeviceInfo *device) {
  auto api = driver();
  if (!api)
    return api.takeError();
  CUcontext context = nullptr;
  if (llvm::Error e = check(api->cuCtxGetCurrent(&context), "cuCtxGetCurrent"))
    return std::move(e);
  if (!context) {
    CUdevice first = 0;
    if (llvm::Error e = check(api->cuDeviceGet(&first, 0), "cuDeviceGet(0)"))
      return std::move(e);
    if (llvm::Error e = check(api->cuDevicePrimaryCtxRetain(&context, first),
                              "cuDevicePrimaryCtxRetain(device 0)"))
      return std::move(e);
    if (llvm::Error e = check(api->cuCtxSetCurrent(context), "cuCtxSetCurrent"))
      return std::move(e);
  }
  if (device) {
    CUdevice ordinal = 0;
    int major = 0, minor = 0;
    char name[256] = {};
    if (llvm::Error e = check(api->cuCtxGetDevice(&ordinal), "cuCtxGetDevice"))
      return std::move(e);
    if (llvm::Error e = check(
            api->cuDeviceGetAttribute(&major, kComputeCapabilityMajor, ordinal),
            "cuDeviceGetAttribute(compute capability major)"))
      return std::move(e);
    if (llvm::Error e = check(
            api->cuDeviceGetAttribute(&minor, kComputeCapabilityMinor, ordinal),
            "cuDeviceGetAttribute(compute capability minor)"))
      return std::move(e);
    if (llvm::Error e = check(api->cuDeviceGetName(name, sizeof(name) - 1,
                                                   ordinal),
                              "cuDeviceGetName"))
      return std::move(e);
    device->ordinal = ordinal;
    device->computeCapability = major * 10 + minor;
    device->name = name;
  }
  return context;
}

llvm::Expected<ChipRequirement>
mlir::moba::cuda::parseChip(llvm::StringRef chip) {
  ChipRequirement requirement;
  llvm::StringRef digits = chip;
  if (!digits.consume_front("sm_"))
    return llvm::createStringError("chip must look like sm_80 or sm_90a, got '" +
                                   chip.str() + "'");
  requirement.exact = digits.consume_back("a") || digits.consume_back("f");
  if (digits.getAsInteger(10, requirement.computeCapability) ||
      requirement.computeCapability < 10)
    return llvm::createStringError("chip must look like sm_80 or sm_90a, got '" +
                                   chip.str() + "'");
  return requirement;
}

llvm::Error mlir::moba::cuda::checkChipRunsOn(llvm::StringRef chip,
                                             const DeviceInfo &device) {
  auto requirement = parseChip(chip);
  if (!requirement)
    return requirement.takeError();
  int need = requirement->computeCapability, have = device.computeCapability;
  bool runs = requirement->exact ? have == need : have >= need;
  if (runs)
    return llvm::Error::success();
  return llvm::createStringError(
      llvm::formatv("kernels compiled for {0} need compute capability "
                    "{1}.{2}{3}, but device {4} ({5}) has {6}.{7}",
                    chip, need / 10, need % 10,
                    requirement->exact ? " exactly" : " or newer",
                    device.ordinal, device.name, have / 10, have % 10)
          .str());
}
