//===- Moba.cpp - C API of moba-mlir --------------------------------------===//
//
// Part of moba-mlir. Implements include/moba-c/Moba.h over the C++ runner.
// Errors become strings; nothing here aborts on bad input.
//
//===----------------------------------------------------------------------===//

#include "moba-c/Moba.h"

#include "moba/Runner/CpuRunner.h"
#include "moba/Runner/GpuRunner.h"
#include "moba/Runtime/CudaDriver.h"

#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/raw_ostream.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

using namespace mlir::moba;

struct MobaKernel {
  MobaTarget target;
  std::unique_ptr<CpuAttentionKernel> cpu; ///< Set for MOBA_TARGET_CPU.
  std::unique_ptr<GpuAttentionKernel> gpu; ///< Set for the GPU targets.
};

namespace {

/// Kernels compiled and not yet destroyed.
std::atomic<int64_t> liveKernels{0};

MobaKernel *tracked(MobaKernel *kernel) {
  ++liveKernels;
  return kernel;
}

void setError(char **error, const std::string &message) {
  if (!error)
    return;
  *error = static_cast<char *>(std::malloc(message.size() + 1));
  if (*error)
    std::memcpy(*error, message.c_str(), message.size() + 1);
}

/// Writes the IR of each stage to `<dir>/<key>.<stage>.mlir`.
std::function<void(llvm::StringRef, llvm::StringRef)>
dumpToDirectory(std::string dir, std::string key) {
  return [dir = std::move(dir), key = std::move(key)](llvm::StringRef stage,
                                                      llvm::StringRef ir) {
    if (llvm::sys::fs::create_directories(dir))
      return;
    llvm::SmallString<256> path(dir);
    llvm::sys::path::append(path, key + "." + stage.str() + ".mlir");
    std::error_code ec;
    llvm::raw_fd_ostream os(path, ec);
    if (!ec)
      os << ir;
  };
}

MobaKernel *compileForGpu(const AttentionConfig &config, const MobaConfig &c,
                          int32_t *fromCache, char **error) {
  if (c.stage != MOBA_STAGE_FUSED) {
    setError(error, "GPU targets always use the fused stage");
    return nullptr;
  }
  GpuCompileOptions options;
  options.chip = c.target == MOBA_TARGET_SM80 ? "sm_80" : "sm_90a";
  if (c.tile_k)
    options.tileK = c.tile_k;
  if (c.mma_warps < 0 || c.mma_key_chunk < 0) {
    setError(error, "mma_warps and mma_key_chunk must be 0 (tuned) or "
                    "positive, got " +
                        std::to_string(c.mma_warps) + " and " +
                        std::to_string(c.mma_key_chunk));
    return nullptr;
  }
  options.mmaWarps = c.mma_warps;
  options.mmaKeyChunk = c.mma_key_chunk;
  switch (c.mma_instruction) {
  case MOBA_MMA_INSTRUCTION_TUNED:
    break;
  case MOBA_MMA_INSTRUCTION_MMA_SYNC:
    options.mmaInstruction = "mma.sync";
    break;
  case MOBA_MMA_INSTRUCTION_WGMMA:
    options.mmaInstruction = "wgmma";
    break;
  default:
    setError(error, "unknown mma_instruction " +
                        std::to_string(static_cast<int>(c.mma_instruction)));
    return nullptr;
  }
  switch (c.mma_key_value_loads) {
  case MOBA_KEY_VALUE_LOADS_DEFAULT:
    break;
  case MOBA_KEY_VALUE_LOADS_CP_ASYNC:
    options.mmaKeyValueLoads = "cp.async";
    break;
  case MOBA_KEY_VALUE_LOADS_TMA:
    options.mmaKeyValueLoads = "tma";
    break;
  case MOBA_KEY_VALUE_LOADS_TMA_MULTICAST:
    options.mmaKeyValueLoads = "tma-multicast";
    break;
  default:
    setError(error,
             "unknown mma_key_value_loads " +
                 std::to_string(static_cast<int>(c.mma_key_value_loads)));
    return nullptr;
  }
  switch (c.mma_merge) {
  case MOBA_MERGE_FUSED:
    options.mmaFusedMerge = true;
    break;
  case MOBA_MERGE_DEFAULT:
  case MOBA_MERGE_SEPARATE:
    options.mmaFusedMerge = false;
    break;
  default:
    setError(error, "unknown mma_merge " +
                        std::to_string(static_cast<int>(c.mma_merge)));
    return nullptr;
  }
  switch (c.gpu_attention) {
  case MOBA_GPU_ATTENTION_MMA:
    options.densify = options.mma = true;
    break;
  case MOBA_GPU_ATTENTION_SIMT:
    options.densify = options.mma = false;
    break;
  default:
    setError(error, "unknown gpu_attention " +
                        std::to_string(static_cast<int>(c.gpu_attention)));
    return nullptr;
  }
  if (c.dump_dir && *c.dump_dir)
    options.dumpIR = dumpToDirectory(
        c.dump_dir, options.chip + (options.mma ? "-mma-" : "-simt-") +
                        config.key());
  auto kernel = GpuAttentionKernel::compile(config, options);
  if (!kernel) {
    setError(error, llvm::toString(kernel.takeError()));
    return nullptr;
  }
  if (fromCache)
    *fromCache = 0;
  return tracked(new MobaKernel{c.target, nullptr, std::move(*kernel)});
}

} // namespace

extern "C" {

const char *mobaVersion(void) { return compilerVersion().data(); }

void mobaConfigInit(MobaConfig *config) {
  if (!config)
    return;
  AttentionConfig defaults;
  CpuCompileOptions options;
  *config = MobaConfig{};
  config->head_dim = defaults.headDim;
  config->num_heads = defaults.numHeads;
  config->num_kv_heads = defaults.numKvHeads;
  config->block_size = defaults.blockSize;
  config->top_k = defaults.topK;
  config->causal = 1;
  config->scale = 0.0f;
  config->dtype = MOBA_DTYPE_BF16;
  config->target = MOBA_TARGET_CPU;
  config->stage = MOBA_STAGE_FUSED;
  config->tile_q = options.tileQ;
  config->tile_k = options.tileK;
  config->gpu_attention = MOBA_GPU_ATTENTION_MMA;
}

MobaKernel *mobaCompile(const MobaConfig *c, int32_t *fromCache,
                        char **error) {
  if (!c) {
    setError(error, "config is NULL");
    return nullptr;
  }
  if (c->target != MOBA_TARGET_CPU && c->target != MOBA_TARGET_SM80 &&
      c->target != MOBA_TARGET_SM90A) {
    setError(error, "unknown target " + std::to_string(c->target));
    return nullptr;
  }
  AttentionConfig config;
  config.headDim = c->head_dim;
  config.numHeads = c->num_heads;
  config.numKvHeads = c->num_kv_heads;
  config.blockSize = c->block_size;
  config.topK = c->top_k;
  config.causal = c->causal != 0;
  if (c->scale != 0.0f)
    config.scale = c->scale;
  switch (c->dtype) {
  case MOBA_DTYPE_F32:
    config.dtype = ElementType::F32;
    break;
  case MOBA_DTYPE_F16:
    config.dtype = ElementType::F16;
    break;
  case MOBA_DTYPE_BF16:
    config.dtype = ElementType::BF16;
    break;
  default:
    setError(error, "unknown dtype");
    return nullptr;
  }
  CpuCompileOptions options;
  switch (c->stage) {
  case MOBA_STAGE_FUSED:
    options.stage = CpuStage::Fused;
    break;
  case MOBA_STAGE_TILED:
    options.stage = CpuStage::Tiled;
    break;
  case MOBA_STAGE_DECOMPOSED:
    options.stage = CpuStage::Decomposed;
    break;
  default:
    setError(error, "unknown stage");
    return nullptr;
  }
  if (c->tile_q)
    options.tileQ = c->tile_q;
  if (c->tile_k)
    options.tileK = c->tile_k;
  if (c->cache_dir)
    options.cacheDir = c->cache_dir;
  if (c->dump_dir && *c->dump_dir) {
    // Dumps mean every stage runs: the cache would skip them.
    options.cacheDir.clear();
    options.dumpIR = dumpToDirectory(c->dump_dir, kernelName(config, options));
  }

  if (c->target != MOBA_TARGET_CPU)
    return compileForGpu(config, *c, fromCache, error);
  auto kernel = CpuAttentionKernel::compile(config, options);
  if (!kernel) {
    setError(error, llvm::toString(kernel.takeError()));
    return nullptr;
  }
  if (fromCache)
    *fromCache = (*kernel)->fromCache() ? 1 : 0;
  return tracked(new MobaKernel{MOBA_TARGET_CPU, std::move(*kernel), nullptr});
}

const char *mobaKernelCacheWarning(const MobaKernel *kernel) {
  if (!kernel || !kernel->cpu || kernel->cpu->cacheWarning().empty())
    return nullptr;
  return kernel->cpu->cacheWarning().c_str();
}

int64_t mobaLiveKernels(void) { return liveKernels.load(); }

MobaTarget mobaKernelTarget(const MobaKernel *kernel) {
  return kernel ? kernel->target : MOBA_TARGET_CPU;
}

int32_t mobaGpuComputeCapability(char **error) {
  cuda::DeviceInfo device;
  auto context = cuda::currentContext(&device);
  if (!context) {
    setError(error, llvm::toString(context.takeError()));
    return 0;
  }
  return device.computeCapability;
}

int32_t mobaRun(const MobaKernel *kernel, const void *q, const void *k,
                const void *v, const int32_t *cuSeqlens, int64_t numSequences,
                int64_t tokens, void *out, float *lse, char **error) {
  if (!kernel) {
    setError(error, "kernel is NULL");
    return 1;
  }
  if (!kernel->cpu) {
    setError(error, "this kernel runs on the GPU: call mobaRunDevice with "
                    "device buffers");
    return 1;
  }
  AttentionBuffers buffers;
  buffers.q = q;
  buffers.k = k;
  buffers.v = v;
  buffers.cuSeqlens = cuSeqlens;
  buffers.out = out;
  buffers.lse = lse;
  buffers.tokens = tokens;
  buffers.numSequences = numSequences;
  if (llvm::Error e = kernel->cpu->run(buffers)) {
    setError(error, llvm::toString(std::move(e)));
    return 1;
  }
  return 0;
}

int32_t mobaRunDevice(const MobaKernel *kernel, const void *q, const void *k,
                      const void *v, const int32_t *cuSeqlens,
                      int64_t numSequences, int64_t tokens, void *out,
                      float *lse, void *stream, const int32_t *hostCuSeqlens,
                      char **error) {
  if (!kernel) {
    setError(error, "kernel is NULL");
    return 1;
  }
  if (!kernel->gpu) {
    setError(error, "this kernel runs on the CPU: call mobaRun with host "
                    "buffers");
    return 1;
  }
  AttentionBuffers buffers{q, k, v, cuSeqlens, out, lse, tokens, numSequences};
  GpuLaunch launch{stream, hostCuSeqlens};
  if (llvm::Error e = kernel->gpu->run(buffers, launch)) {
    setError(error, llvm::toString(std::move(e)));
    return 1;
  }
  return 0;
}

void mobaDestroy(MobaKernel *kernel) {
  if (!kernel)
    return;
  delete kernel;
  --liveKernels;
}

void mobaFreeString(char *string) { std::free(string); }

} // extern "C"
