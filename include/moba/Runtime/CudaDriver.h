//===- CudaDriver.h - The CUDA driver API, loaded at run time ---*- C++ -*-===//
//
// Part of moba-mlir. The project's CUDA runtime talks to the driver API
// through libcuda.so.1 opened with dlopen, never linked: the compiler library
// loads on a machine with no GPU and no driver, and says so only when a GPU
// is asked for. Only the calls the runtime makes are declared here, with the
// driver's C ABI, so that building needs no CUDA headers.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_RUNTIME_CUDADRIVER_H
#define MOBA_RUNTIME_CUDADRIVER_H

#include "llvm/ADT/StringRef.h"
#include "llvm/Support/Error.h"

#include <cstddef>
#include <cstdint>

namespace mlir::moba::cuda {

// The driver's handle types, as cuda.h declares them.
using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;
using CUcontext = struct CUctx_st *;
using CUmodule = struct CUmod_st *;
using CUfunction = struct CUfunc_st *;
using CUstream = struct CUstream_st *;
using CUmemoryPool = struct CUmemPoolHandle_st *;

/// CUmemPoolProps of cuda.h (CUDA 12 and 13 share its layout).
struct CUmemPoolProps {
  int allocType;   ///< CU_MEM_ALLOCATION_TYPE_PINNED = 1
  int handleTypes; ///< CU_MEM_HANDLE_TYPE_NONE = 0
  int locationType; ///< CU_MEM_LOCATION_TYPE_DEVICE = 1
  int locationId;   ///< the device ordinal
  void *win32SecurityAttributes;
  size_t maxSize;
  unsigned short usage;
  unsigned char reserved[54];
};
static_assert(sizeof(CUmemPoolProps) == 88, "cuda.h's CUmemPoolProps");

/// cuda.h's CUtensorMap: a TMA descriptor, 128 opaque bytes, 64-byte
/// aligned.
struct alignas(64) CUtensorMap {
  uint64_t opaque[16];
};
static_assert(sizeof(CUtensorMap) == 128, "cuda.h's CUtensorMap");

/// The driver entry points the runtime calls, resolved once per process.
struct DriverApi {
  CUresult (*cuInit)(unsigned);
  CUresult (*cuDriverGetVersion)(int *);
  CUresult (*cuDeviceGetCount)(int *);
  CUresult (*cuDeviceGet)(CUdevice *, int);
  CUresult (*cuDeviceGetName)(char *, int, CUdevice);
  CUresult (*cuDeviceGetAttribute)(int *, int, CUdevice);
  CUresult (*cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
  CUresult (*cuCtxGetCurrent)(CUcontext *);
  CUresult (*cuCtxSetCurrent)(CUcontext);
  CUresult (*cuCtxGetDevice)(CUdevice *);
  CUresult (*cuStreamSynchronize)(CUstream);
  CUresult (*cuMemPoolCreate)(CUmemoryPool *, const CUmemPoolProps *);
  CUresult (*cuMemPoolSetAttribute)(CUmemoryPool, int, void *);
  CUresult (*cuMemAllocFromPoolAsync)(CUdeviceptr *, size_t, CUmemoryPool,
                                      CUstream);
  CUresult (*cuMemFreeAsync)(CUdeviceptr, CUstream);
  CUresult (*cuFuncSetAttribute)(CUfunction, int, int);
  CUresult (*cuModuleLoadDataEx)(CUmodule *, const void *, unsigned, int *,
                                 void **);
  CUresult (*cuModuleUnload)(CUmodule);
  CUresult (*cuModuleGetFunction)(CUfunction *, CUmodule, const char *);
  CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned,
                             unsigned, unsigned, unsigned, unsigned, CUstream,
                             void **, void **);
  CUresult (*cuGetErrorName)(CUresult, const char **);
  CUresult (*cuGetErrorString)(CUresult, const char **);
  /// Since CUDA 12.0; nullptr in an older driver (which has no sm_90 either),
  /// so that its absence fails only the calls that need it.
  CUresult (*cuTensorMapEncodeTiled)(CUtensorMap *, int, unsigned, void *,
                                     const uint64_t *, const uint64_t *,
                                     const unsigned *, const unsigned *, int,
                                     int, int, int);
};

/// The driver, loaded and initialized (cuInit) on first use. Fails with a
/// message saying that no NVIDIA driver or no GPU is there.
llvm::Expected<const DriverApi &> driver();

/// An error naming the driver call and the driver's name and text for
/// `result`, e.g. "cuMemAlloc(1048576 bytes) failed:
/// CUDA_ERROR_OUT_OF_MEMORY (out of memory)"; success for CUDA_SUCCESS.
llvm::Error check(CUresult result, llvm::StringRef call);

/// A device's compute capability, e.g. 90 for 9.0, and its name.
struct DeviceInfo {
  int ordinal = 0;
  int computeCapability = 0;
  std::string name;
};

/// Makes a context current on this thread if none is: the caller's (torch
/// and CUDA runtime programs make the device's primary context current), or
/// else the primary context of device 0. Returns it and describes its device.
llvm::Expected<CUcontext> currentContext(DeviceInfo *device = nullptr);

/// The compute capability `chip` ("sm_80", "sm_90a") needs, e.g. 90, and
/// whether only exactly that capability runs it (the "a" variants).
struct ChipRequirement {
  int computeCapability = 0;
  bool exact = false;
};
llvm::Expected<ChipRequirement> parseChip(llvm::StringRef chip);

/// Fails, naming both, unless code for `chip` runs on `device`.
llvm::Error checkChipRunsOn(llvm::StringRef chip, const DeviceInfo &device);

} // namespace mlir::moba::cuda

#endif // MOBA_RUNTIME_CUDADRIVER_H
