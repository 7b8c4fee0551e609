//===- Moba.cpp - C API of moba-mlir --------------------------------------===//
//
// Part of moba-mlir. Implements include/moba-c/Moba.h over the C++ runner.
// Errors become strings; nothing here aborts on bad input, and a compile
// runs recoverably (CrashRecovery.h).
//
//===----------------------------------------------------------------------===//

#include "moba-c/Moba.h"

#include "CrashRecovery.h"

#include "moba/Runner/CpuPagedRunner.h"
#include "moba/Runner/CpuRunner.h"
#include "moba/Runner/GpuPagedRunner.h"
#include "moba/Runner/GpuRunner.h"
#include "moba/Runtime/CudaDriver.h"

#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/raw_ostream.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>

using namespace mlir::moba;

struct MobaKernel {
  MobaTarget target;
  std::unique_ptr<CpuAttentionKernel> cpu; ///< Set for MOBA_TARGET_CPU.
  std::unique_ptr<GpuAttentionKernel> gpu; ///< Set for the GPU targets.
  /// Set for a paged KV cache kernel (mobaCompilePaged), alone: `paged`
  /// for MOBA_TARGET_CPU, `pagedGpu` for the GPU targets.
  std::unique_ptr<CpuPagedKernel> paged;
  std::unique_ptr<GpuPagedKernel> pagedGpu;
  /// The tensor-core kernel's plan, printed; empty without one.
  std::string plan;
};

namespace {

/// Kernels compiled and not yet destroyed.
std::atomic<int64_t> liveKernels{0};

/// The calling thread's scratch allocator (mobaSetScratchAllocator); unset:
/// the runtime's pool.
thread_local cuda::ScratchAllocator threadScratchAllocator;

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

/// Runs `body`, turning a C++ exception into an error (the entry points are
/// C: nothing may unwind through them).
llvm::Error catchExceptions(llvm::function_ref<llvm::Error()> body) {
  try {
    return body();
  } catch (const std::exception &e) {
    return llvm::createStringError(
        llvm::Twine("internal error: C++ exception: ") + e.what());
  } catch (...) {
    return llvm::createStringError(
        "internal error: an exception of unknown type");
  }
}

/// Writes the IR of each stage to `<dir>/<key>.<stage>.mlir`; the first
/// failure is kept in `*failure`.
std::function<void(llvm::StringRef, llvm::StringRef)>
dumpToDirectory(std::string dir, std::string key,
                std::shared_ptr<std::string> failure) {
  return [dir = std::move(dir), key = std::move(key),
          failure = std::move(failure)](llvm::StringRef stage,
                                        llvm::StringRef ir) {
    if (!failure->empty())
      return;
    if (std::error_code ec = llvm::sys::fs::create_directories(dir)) {
      *failure = "could not create the IR dump directory " + dir + ": " +
                 ec.message();
      return;
    }
    llvm::SmallString<256> path(dir);
    llvm::sys::path::append(path, key + "." + stage.str() + ".mlir");
    std::error_code ec;
    llvm::raw_fd_ostream os(path, ec);
    if (!ec) {
      os << ir;
      os.close();
      ec = os.error();
      // A stream destroyed with an error ends the process.
      os.clear_error();
    }
    if (ec)
      *failure = "could not write the IR dump " + path.str().str() + ": " +
                 ec.message();
  };
}

/// The error of an attention entry point given a paged kernel.
llvm::Error refusePaged() {
  return llvm::createStringError(
      "this kernel is a paged KV cache kernel (mobaCompilePaged): call "
      "mobaPagedAppend or mobaPagedDecode");
}

/// What mobaCompile makes of a MobaConfig.
struct CompileRequest {
  MobaTarget target = MOBA_TARGET_CPU;
  AttentionConfig config;
  CpuCompileOptions cpu;
  GpuCompileOptions gpu;
  std::string dumpDir;
  /// The first failure to write an IR dump.
  std::shared_ptr<std::string> dumpFailure = std::make_shared<std::string>();
};

/// Reads the enums and the GPU options of `c` into `r`; the limits are
/// checked by the runners' check() and compile().
llvm::Error readGpuOptions(const MobaConfig &c, CompileRequest &r) {
  GpuCompileOptions &options = r.gpu;
  options.chip = c.target == MOBA_TARGET_SM80 ? "sm_80" : "sm_90a";
  if (c.tile_k)
    options.tileK = c.tile_k;
  // 0 (or the enum's tuned value) leaves a field to the tuning table; the
  // plan's rules are checked once it is filled in (GpuRunner), the
  // messages naming these fields.
  RequestedKernelPlan &plan = options.mmaPlan;
  if (c.mma_warps)
    plan.warps = c.mma_warps;
  if (c.mma_key_chunk)
    plan.keyChunk = c.mma_key_chunk;
  if (c.mma_stages)
    plan.stages = c.mma_stages;
  switch (c.mma_instruction) {
  case MOBA_MMA_INSTRUCTION_TUNED:
    break;
  case MOBA_MMA_INSTRUCTION_MMA_SYNC:
    plan.instruction = MatrixInstruction::MmaSync;
    break;
  case MOBA_MMA_INSTRUCTION_WGMMA:
    plan.instruction = MatrixInstruction::Wgmma;
    break;
  default:
    return llvm::createStringError(
        "unknown mma_instruction %d", static_cast<int>(c.mma_instruction));
  }
  switch (c.mma_key_value_loads) {
  case MOBA_KEY_VALUE_LOADS_DEFAULT:
    break;
  case MOBA_KEY_VALUE_LOADS_CP_ASYNC:
    plan.loads = KeyValueLoads::CpAsync;
    break;
  case MOBA_KEY_VALUE_LOADS_TMA:
    plan.loads = KeyValueLoads::Tma;
    break;
  case MOBA_KEY_VALUE_LOADS_TMA_MULTICAST:
    plan.loads = KeyValueLoads::TmaMulticast;
    break;
  default:
    return llvm::createStringError("unknown mma_key_value_loads %d",
                                   static_cast<int>(c.mma_key_value_loads));
  }
  switch (c.mma_merge) {
  case MOBA_MERGE_DEFAULT:
    break;
  case MOBA_MERGE_FUSED:
    plan.merge = MergeMode::Fused;
    break;
  case MOBA_MERGE_SEPARATE:
    plan.merge = MergeMode::Separate;
    break;
  default:
    return llvm::createStringError("unknown mma_merge %d",
                                   static_cast<int>(c.mma_merge));
  }
  switch (c.mma_schedule) {
  case MOBA_SCHEDULE_AUTO:
    break;
  case MOBA_SCHEDULE_IN_ORDER:
    plan.schedule = KernelSchedule::InOrder;
    break;
  case MOBA_SCHEDULE_OVERLAPPED:
    plan.schedule = KernelSchedule::Overlapped;
    break;
  case MOBA_SCHEDULE_WARP_SPECIALIZED:
    plan.schedule = KernelSchedule::WarpSpecialized;
    break;
  case MOBA_SCHEDULE_WARP_SPECIALIZED_OVERLAPPED:
    plan.schedule = KernelSchedule::WarpSpecializedOverlapped;
    break;
  case MOBA_SCHEDULE_PING_PONG:
    plan.schedule = KernelSchedule::PingPong;
    break;
  case MOBA_SCHEDULE_PERSISTENT:
    plan.schedule = KernelSchedule::Persistent;
    break;
  default:
    return llvm::createStringError("unknown mma_schedule %d",
                                   static_cast<int>(c.mma_schedule));
  }
  switch (c.gpu_attention) {
  case MOBA_GPU_ATTENTION_MMA:
    options.densify = options.mma = true;
    break;
  case MOBA_GPU_ATTENTION_SIMT:
    options.densify = options.mma = false;
    break;
  default:
    return llvm::createStringError("unknown gpu_attention %d",
                                   static_cast<int>(c.gpu_attention));
  }
  if (c.cache_dir)
    options.cacheDir = c.cache_dir;
  if (!r.dumpDir.empty()) {
    // Dumps mean every stage runs: the cache would skip them.
    options.cacheDir.clear();
    options.dumpIR = dumpToDirectory(
        r.dumpDir,
        options.chip + (options.mma ? "-mma-" : "-simt-") + r.config.key(),
        r.dumpFailure);
  }
  return llvm::Error::success();
}

/// Reads `c` into `r`: every enum known, the stage one the target takes.
llvm::Error readConfig(const MobaConfig &c, CompileRequest &r) {
  if (c.target != MOBA_TARGET_CPU && c.target != MOBA_TARGET_SM80 &&
      c.target != MOBA_TARGET_SM90A)
    return llvm::createStringError("unknown target %d",
                                   static_cast<int>(c.target));
  r.target = c.target;
  AttentionConfig &config = r.config;
  config.headDim = c.head_dim;
  config.numHeads = c.num_heads;
  config.numKvHeads = c.num_kv_heads;
  config.blockSize = c.block_size;
  config.topK = c.top_k;
  config.causal = c.causal != 0;
  config.backward = c.backward != 0;
  if (c.scale != 0.0f)
    config.scale = c.scale;
  switch (c.dtype) {
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
    return llvm::createStringError("unknown dtype %d",
                                   static_cast<int>(c.dtype));
  }
  if (c.dump_dir && *c.dump_dir)
    r.dumpDir = c.dump_dir;
  if (c.target != MOBA_TARGET_CPU) {
    if (c.stage != MOBA_STAGE_FUSED)
      return llvm::createStringError(
          "stage %d is for the CPU: GPU targets take only the fused stage",
          static_cast<int>(c.stage));
    if (llvm::Error e = readGpuOptions(c, r))
      return e;
    // The GPU backward is the tensor-core path's (GpuPipeline.cpp,
    // RejectGradientsPass): said here, before a compile, so that a caller
    // asking whether a GPU kernel can carry the backward learns it now.
    if (config.backward) {
      if (!r.gpu.mma)
        return llvm::createStringError(
            "backward on a GPU target needs gpu_attention mma (the GPU "
            "backward's kernels are on tensor cores)");
      if (config.dtype == ElementType::F32 || config.headDim % 16 != 0 ||
          config.headDim > 128)
        return llvm::createStringError(
            "backward on a GPU target needs f16 or bf16 and head_dim a "
            "multiple of 16 up to 128, got %s and head_dim %lld: compile "
            "it for the CPU",
            config.dtype == ElementType::F32 ? "f32" : "f16/bf16",
            static_cast<long long>(config.headDim));
    }
    return llvm::Error::success();
  }
  // The GPU fields do nothing on the CPU, but a value that no GPU would
  // take is refused here too: a caller of target "auto" on a machine
  // without a GPU learns of it now, not on the first machine with one.
  CompileRequest gpuFields;
  if (llvm::Error e = readGpuOptions(c, gpuFields))
    return e;
  const RequestedKernelPlan &requested = gpuFields.gpu.mmaPlan;
  AttentionKernelPlan fields;
  fields.warps = requested.warps.value_or(fields.warps);
  fields.keyChunk = requested.keyChunk.value_or(fields.keyChunk);
  fields.stages = requested.stages.value_or(fields.stages);
  if (llvm::SmallVector<std::string> problems =
          fields.fieldProblems(PlanSpelling::CField);
      !problems.empty())
    return llvm::createStringError(llvm::join(problems, "; "));
  CpuCompileOptions &options = r.cpu;
  switch (c.stage) {
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
    return llvm::createStringError("unknown stage %d",
                                   static_cast<int>(c.stage));
  }
  if (c.tile_q)
    options.tileQ = c.tile_q;
  if (c.tile_k)
    options.tileK = c.tile_k;
  if (c.cache_dir)
    options.cacheDir = c.cache_dir;
  if (!r.dumpDir.empty()) {
    // Dumps mean every stage runs: the cache would skip them.
    options.cacheDir.clear();
    options.dumpIR = dumpToDirectory(r.dumpDir, kernelName(config, options),
                                     r.dumpFailure);
  }
  return llvm::Error::success();
}

llvm::Error checkRequest(const CompileRequest &r) {
  if (r.target == MOBA_TARGET_CPU)
    return CpuAttentionKernel::check(r.config, r.cpu);
  return GpuAttentionKernel::check(r.config, r.gpu);
}

/// The buffers of a backward call, as mobaRunGrad and mobaRunGradDevice
/// take them.
GradBuffers gradBuffers(const void *q, const void *k, const void *v,
                        const int32_t *cuSeqlens, int64_t numSequences,
                        int64_t tokens, const void *out, const float *lse,
                        const void *dout, const float *dlse, void *dq, void *dk,
                        void *dv) {
  GradBuffers buffers;
  buffers.q = q;
  buffers.k = k;
  buffers.v = v;
  buffers.cuSeqlens = cuSeqlens;
  buffers.out = out;
  buffers.lse = lse;
  buffers.dout = dout;
  buffers.dlse = dlse;
  buffers.dq = dq;
  buffers.dk = dk;
  buffers.dv = dv;
  buffers.tokens = tokens;
  buffers.numSequences = numSequences;
  return buffers;
}

/// Compiles `r`; the request has been read and checked.
llvm::Expected<std::unique_ptr<MobaKernel>>
compileRequest(const CompileRequest &r) {
  auto kernel = std::make_unique<MobaKernel>();
  kernel->target = r.target;
  if (r.target == MOBA_TARGET_CPU) {
    auto cpu = CpuAttentionKernel::compile(r.config, r.cpu);
    if (!cpu)
      return cpu.takeError();
    kernel->cpu = std::move(*cpu);
  } else {
    auto gpu = GpuAttentionKernel::compile(r.config, r.gpu);
    if (!gpu)
      return gpu.takeError();
    kernel->gpu = std::move(*gpu);
    if (const auto &plan = kernel->gpu->mmaPlan())
      kernel->plan = plan->print();
  }
  if (!r.dumpFailure->empty())
    return llvm::createStringError(*r.dumpFailure);
  return std::move(kernel);
}

/// What mobaCompilePaged makes of a MobaPagedConfig.
struct PagedRequest {
  MobaTarget target = MOBA_TARGET_CPU;
  PagedConfig config;
  CpuPagedCompileOptions cpu;
  GpuCompileOptions gpu;
  std::shared_ptr<std::string> dumpFailure = std::make_shared<std::string>();
};

/// Reads `c` into `r`: every enum known.
llvm::Error readPagedConfig(const MobaPagedConfig &c, PagedRequest &r) {
  if (c.target != MOBA_TARGET_CPU && c.target != MOBA_TARGET_SM80 &&
      c.target != MOBA_TARGET_SM90A)
    return llvm::createStringError("unknown target %d",
                                   static_cast<int>(c.target));
  r.target = c.target;
  if (c.target != MOBA_TARGET_CPU)
    r.gpu.chip = c.target == MOBA_TARGET_SM80 ? "sm_80" : "sm_90a";
  PagedConfig &config = r.config;
  config.headDim = c.head_dim;
  config.numHeads = c.num_heads;
  config.numKvHeads = c.num_kv_heads;
  config.pageSize = c.page_size;
  config.blockSize = c.block_size;
  config.topK = c.top_k;
  config.maxQueryTokens = c.max_query_tokens;
  if (c.scale != 0.0f)
    config.scale = c.scale;
  switch (c.dtype) {
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
    return llvm::createStringError("unknown dtype %d",
                                   static_cast<int>(c.dtype));
  }
  switch (c.selection) {
  case MOBA_SELECTION_QUERY_HEAD:
    config.selection = Selection::QueryHead;
    break;
  case MOBA_SELECTION_KV_HEAD:
    config.selection = Selection::KvHead;
    break;
  default:
    return llvm::createStringError("unknown selection %d",
                                   static_cast<int>(c.selection));
  }
  if (c.cache_dir)
    r.cpu.cacheDir = c.cache_dir;
  if (c.dump_dir && *c.dump_dir) {
    // Dumps mean every stage runs: the cache would skip them.
    r.cpu.cacheDir.clear();
    std::string name = r.target == MOBA_TARGET_CPU
                           ? pagedKernelName(config, r.cpu)
                           : "gpu-" + r.gpu.chip + "-" + config.key();
    auto dump = dumpToDirectory(c.dump_dir, name, r.dumpFailure);
    r.cpu.dumpIR = dump;
    r.gpu.dumpIR = dump;
  }
  if (r.target != MOBA_TARGET_CPU)
    return GpuPagedKernel::check(config, r.gpu);
  return CpuPagedKernel::check(config, r.cpu);
}

/// The paged kernel of `kernel`, or the error of a call that needs one.
llvm::Expected<const CpuPagedKernel *> pagedKernel(const MobaKernel *kernel) {
  if (!kernel)
    return llvm::createStringError("kernel is NULL");
  if (kernel->pagedGpu)
    return llvm::createStringError(
        "this paged kernel runs on the GPU: call mobaPagedAppendDevice or "
        "mobaPagedDecodeDevice with device buffers");
  if (!kernel->paged)
    return llvm::createStringError(
        "this kernel is an attention kernel (mobaCompile): paged calls need "
        "a kernel of mobaCompilePaged");
  return kernel->paged.get();
}

/// The GPU paged kernel of `kernel`, or the error of a call that needs one.
llvm::Expected<const GpuPagedKernel *>
pagedGpuKernel(const MobaKernel *kernel) {
  if (!kernel)
    return llvm::createStringError("kernel is NULL");
  if (kernel->paged)
    return llvm::createStringError(
        "this paged kernel runs on the CPU: call mobaPagedAppend or "
        "mobaPagedDecode with host buffers");
  if (!kernel->pagedGpu)
    return llvm::createStringError(
        "this kernel is an attention kernel (mobaCompile): paged calls need "
        "a kernel of mobaCompilePaged");
  return kernel->pagedGpu.get();
}

/// The C struct's cache as the runner takes it.
llvm::Expected<PagedCacheBuffers> pagedCache(const MobaPagedCache *c) {
  if (!c)
    return llvm::createStringError("cache is NULL");
  PagedCacheBuffers buffers;
  buffers.kCache = c->k_cache;
  buffers.vCache = c->v_cache;
  buffers.blockKeySums = c->block_key_sums;
  buffers.blockTable = c->block_table;
  buffers.cacheLens = c->cache_lens;
  buffers.pages = c->num_pages;
  buffers.maxPages = c->max_pages;
  buffers.maxBlocks = c->max_blocks;
  buffers.numSequences = c->num_sequences;
  return buffers;
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

int32_t mobaCheckConfig(const MobaConfig *c, char **error) {
  llvm::Error e = catchExceptions([&]() -> llvm::Error {
    if (!c)
      return llvm::createStringError("config is NULL");
    CompileRequest request;
    if (llvm::Error e = readConfig(*c, request))
      return e;
    return checkRequest(request);
  });
  if (e) {
    setError(error, llvm::toString(std::move(e)));
    return 1;
  }
  return 0;
}

MobaKernel *mobaCompile(const MobaConfig *c, int32_t *fromCache,
                        char **error) {
  std::unique_ptr<MobaKernel> kernel;
  llvm::Error e = capi::runRecoverably([&]() -> llvm::Error {
    if (const char *crash = std::getenv("MOBA_TEST_CRASH"))
      capi::crashForTesting(crash);
    if (!c)
      return llvm::createStringError("config is NULL");
    CompileRequest request;
    if (llvm::Error e = readConfig(*c, request))
      return e;
    if (llvm::Error e = checkRequest(request))
      return e;
    auto compiled = compileRequest(request);
    if (!compiled)
      return compiled.takeError();
    kernel = std::move(*compiled);
    return llvm::Error::success();
  });
  if (e) {
    setError(error, llvm::toString(std::move(e)));
    return nullptr;
  }
  if (fromCache)
    *fromCache = (kernel->cpu && kernel->cpu->fromCache()) ||
                         (kernel->gpu && kernel->gpu->fromCache())
                     ? 1
                     : 0;
  return tracked(kernel.release());
}

const char *mobaKernelCacheWarning(const MobaKernel *kernel) {
  if (!kernel)
    return nullptr;
  const std::string *warning = kernel->cpu     ? &kernel->cpu->cacheWarning()
                               : kernel->gpu   ? &kernel->gpu->cacheWarning()
                               : kernel->paged ? &kernel->paged->cacheWarning()
                                               : nullptr;
  if (!warning || warning->empty())
    return nullptr;
  return warning->c_str();
}

const char *mobaKernelPlan(const MobaKernel *kernel) {
  if (!kernel || kernel->plan.empty())
    return nullptr;
  return kernel->plan.c_str();
}

int64_t mobaConfigSize(void) { return sizeof(MobaConfig); }

int64_t mobaLiveKernels(void) { return liveKernels.load(); }

MobaTarget mobaKernelTarget(const MobaKernel *kernel) {
  return kernel ? kernel->target : MOBA_TARGET_CPU;
}

int32_t mobaGpuComputeCapability(char **error) {
  int32_t capability = 0;
  llvm::Error e = catchExceptions([&]() -> llvm::Error {
    cuda::DeviceInfo device;
    auto context = cuda::currentContext(&device);
    if (!context)
      return context.takeError();
    capability = device.computeCapability;
    return llvm::Error::success();
  });
  if (e) {
    setError(error, llvm::toString(std::move(e)));
    return 0;
  }
  return capability;
}

int32_t mobaRun(const MobaKernel *kernel, const void *q, const void *k,
                const void *v, const int32_t *cuSeqlens, int64_t numSequences,
                int64_t tokens, void *out, float *lse, char **error) {
  llvm::Error e = catchExceptions([&]() -> llvm::Error {
    if (!kernel)
      return llvm::createStringError("kernel is NULL");
    if (kernel->paged || kernel->pagedGpu)
      return refusePaged();
    if (!kernel->cpu)
      return llvm::createStringError(
          "this kernel runs on the GPU: call mobaRunDevice with device "
          "buffers");
    AttentionBuffers buffers{q,   k,   v,      cuSeqlens,
                             out, lse, tokens, numSequences};
    return kernel->cpu->run(buffers);
  });
  if (e) {
    setError(error, llvm::toString(std::move(e)));
    return 1;
  }
  return 0;
}

int32_t mobaRunGrad(const MobaKernel *kernel, const void *q, const void *k,
                    const void *v, const int32_t *cuSeqlens,
                    int64_t numSequences, int64_t tokens, const void *out,
                    const float *lse, const void *dout, const float *dlse,
                    void *dq, void *dk, void *dv, char **error) {
  llvm::Error e = catchExceptions([&]() -> llvm::Error {
    if (!kernel)
      return llvm::createStringError("kernel is NULL");
    if (kernel->paged || kernel->pagedGpu)
      return refusePaged();
    if (!kernel->cpu)
      return llvm::createStringError(
          "this kernel runs on the GPU: call mobaRunGradDevice with device "
          "buffers");
    return kernel->cpu->runGrad(gradBuffers(q, k, v, cuSeqlens, numSequences,
                                            tokens, out, lse, dout, dlse, dq,
                                            dk, dv));
  });
  if (e) {
    setError(error, llvm::toString(std::move(e)));
    return 1;
  }
  return 0;
}

int32_t mobaSetScratchAllocator(const MobaScratchAllocator *allocator,
                                MobaScratchAllocator *previous,
                                char **error) {
  if (allocator && (!allocator->allocate || !allocator->deallocate)) {
    setError(error, allocator->allocate
                        ? "the scratch allocator's deallocate is NULL"
                        : "the scratch allocator's allocate is NULL");
    return 1;
  }
  if (previous) {
    previous->allocate = threadScratchAllocator.allocate;
    previous->deallocate = threadScratchAllocator.deallocate;
    previous->user_data = threadScratchAllocator.userData;
  }
  threadScratchAllocator = {};
  if (allocator) {
    threadScratchAllocator.allocate = allocator->allocate;
    threadScratchAllocator.deallocate = allocator->deallocate;
    threadScratchAllocator.userData = allocator->user_data;
  }
  return 0;
}

int32_t mobaRunDevice(const MobaKernel *kernel, const void *q, const void *k,
                      const void *v, const int32_t *cuSeqlens,
                      int64_t numSequences, int64_t tokens, void *out,
                      float *lse, void *stream, const int32_t *hostCuSeqlens,
                      char **error) {
  llvm::Error e = catchExceptions([&]() -> llvm::Error {
    if (!kernel)
      return llvm::createStringError("kernel is NULL");
    if (kernel->paged || kernel->pagedGpu)
      return refusePaged();
    if (!kernel->gpu)
      return llvm::createStringError(
          "this kernel runs on the CPU: call mobaRun with host buffers");
    AttentionBuffers buffers{q,   k,   v,      cuSeqlens,
                             out, lse, tokens, numSequences};
    GpuLaunch launch{stream, hostCuSeqlens, threadScratchAllocator};
    return kernel->gpu->run(buffers, launch);
  });
  if (e) {
    setError(error, llvm::toString(std::move(e)));
    return 1;
  }
  return 0;
}

int32_t mobaRunGradDevice(const MobaKernel *kernel, const void *q,
                          const void *k, const void *v,
                          const int32_t *cuSeqlens, int64_t numSequences,
                          int64_t tokens, const void *out, const float *lse,
                          const void *dout, const float *dlse, void *dq,
                          void *dk, void *dv, void *stream,
                          const int32_t *hostCuSeqlens, char **error) {
  llvm::Error e = catchExceptions([&]() -> llvm::Error {
    if (!kernel)
      return llvm::createStringError("kernel is NULL");
    if (kernel->paged || kernel->pagedGpu)
      return refusePaged();
    if (!kernel->gpu)
      return llvm::createStringError(
          "this kernel runs on the CPU: call mobaRunGrad with host buffers");
    GpuLaunch launch{stream, hostCuSeqlens, threadScratchAllocator};
    return kernel->gpu->runGrad(gradBuffers(q, k, v, cuSeqlens, numSequences,
                                            tokens, out, lse, dout, dlse, dq,
                                            dk, dv),
                                launch);
  });
  if (e) {
    setError(error, llvm::toString(std::move(e)));
    return 1;
  }
  return 0;
}

void mobaPagedConfigInit(MobaPagedConfig *config) {
  if (!config)
    return;
  PagedConfig defaults;
  *config = MobaPagedConfig{};
  config->head_dim = defaults.headDim;
  config->num_heads = defaults.numHeads;
  config->num_kv_heads = defaults.numKvHeads;
  config->page_size = defaults.pageSize;
  config->block_size = defaults.blockSize;
  config->top_k = defaults.topK;
  config->max_query_tokens = defaults.maxQueryTokens;
  config->scale = 0.0f;
  config->dtype = MOBA_DTYPE_BF16;
  config->selection = MOBA_SELECTION_QUERY_HEAD;
  config->target = MOBA_TARGET_CPU;
}

int64_t mobaPagedConfigSize(void) { return sizeof(MobaPagedConfig); }

int64_t mobaPagedCacheSize(void) { return sizeof(MobaPagedCache); }

int32_t mobaCheckPagedConfig(const MobaPagedConfig *c, char **error) {
  llvm::Error e = catchExceptions([&]() -> llvm::Error {
    if (!c)
      return llvm::createStringError("config is NULL");
    PagedRequest request;
    return readPagedConfig(*c, request);
  });
  if (e) {
    setError(error, llvm::toString(std::move(e)));
    return 1;
  }
  return 0;
}

MobaKernel *mobaCompilePaged(const MobaPagedConfig *c, int32_t *fromCache,
                             char **error) {
  std::unique_ptr<MobaKernel> kernel;
  llvm::Error e = capi::runRecoverably([&]() -> llvm::Error {
    if (const char *crash = std::getenv("MOBA_TEST_CRASH"))
      capi::crashForTesting(crash);
    if (!c)
      return llvm::createStringError("config is NULL");
    PagedRequest request;
    if (llvm::Error e = readPagedConfig(*c, request))
      return e;
    kernel = std::make_unique<MobaKernel>();
    kernel->target = request.target;
    if (request.target == MOBA_TARGET_CPU) {
      auto compiled = CpuPagedKernel::compile(request.config, request.cpu);
      if (!compiled)
        return compiled.takeError();
      kernel->paged = std::move(*compiled);
    } else {
      auto compiled = GpuPagedKernel::compile(request.config, request.gpu);
      if (!compiled)
        return compiled.takeError();
      kernel->pagedGpu = std::move(*compiled);
    }
    if (!request.dumpFailure->empty())
      return llvm::createStringError(*request.dumpFailure);
    return llvm::Error::success();
  });
  if (e) {
    setError(error, llvm::toString(std::move(e)));
    return nullptr;
  }
  if (fromCache)
    *fromCache = kernel->paged && kernel->paged->fromCache() ? 1 : 0;
  return tracked(kernel.release());
}

int32_t mobaPagedAppend(const MobaKernel *kernel, const MobaPagedCache *cache,
                        const void *k, const void *v,
                        const int32_t *cuSeqlens, int64_t tokens,
                        char **error) {
  llvm::Error e = catchExceptions([&]() -> llvm::Error {
    auto paged = pagedKernel(kernel);
    if (!paged)
      return paged.takeError();
    auto buffers = pagedCache(cache);
    if (!buffers)
      return buffers.takeError();
    PagedAppendBuffers append;
    append.k = k;
    append.v = v;
    append.cuSeqlens = cuSeqlens;
    append.tokens = tokens;
    return (*paged)->append(*buffers, append);
  });
  if (e) {
    setError(error, llvm::toString(std::move(e)));
    return 1;
  }
  return 0;
}

int32_t mobaPagedDecode(const MobaKernel *kernel, const MobaPagedCache *cache,
                        const void *q, const int32_t *cuSeqlensQ,
                        int64_t tokens, void *out, float *lse, char **error) {
  llvm::Error e = catchExceptions([&]() -> llvm::Error {
    auto paged = pagedKernel(kernel);
    if (!paged)
      return paged.takeError();
    auto buffers = pagedCache(cache);
    if (!buffers)
      return buffers.takeError();
    PagedDecodeBuffers decode;
    decode.q = q;
    decode.cuSeqlensQ = cuSeqlensQ;
    decode.out = out;
    decode.lse = lse;
    decode.tokens = tokens;
    return (*paged)->decode(*buffers, decode);
  });
  if (e) {
    setError(error, llvm::toString(std::move(e)));
    return 1;
  }
  return 0;
}

int32_t mobaPagedAppendDevice(const MobaKernel *kernel,
                              const MobaPagedCache *cache, const void *k,
                              const void *v, const int32_t *cuSeqlens,
                              int64_t tokens, void *stream, char **error) {
  llvm::Error e = catchExceptions([&]() -> llvm::Error {
    auto paged = pagedGpuKernel(kernel);
    if (!paged)
      return paged.takeError();
    auto buffers = pagedCache(cache);
    if (!buffers)
      return buffers.takeError();
    PagedAppendBuffers append;
    append.k = k;
    append.v = v;
    append.cuSeqlens = cuSeqlens;
    append.tokens = tokens;
    return (*paged)->append(*buffers, append, stream);
  });
  if (e) {
    setError(error, llvm::toString(std::move(e)));
    return 1;
  }
  return 0;
}

int32_t mobaPagedDecodeDevice(const MobaKernel *kernel,
                              const MobaPagedCache *cache, const void *q,
                              const int32_t *cuSeqlensQ, int64_t tokens,
                              void *out, float *lse, void *stream,
                              char **error) {
  llvm::Error e = catchExceptions([&]() -> llvm::Error {
    auto paged = pagedGpuKernel(kernel);
    if (!paged)
      return paged.takeError();
    auto buffers = pagedCache(cache);
    if (!buffers)
      return buffers.takeError();
    PagedDecodeBuffers decode;
    decode.q = q;
    decode.cuSeqlensQ = cuSeqlensQ;
    decode.out = out;
    decode.lse = lse;
    decode.tokens = tokens;
    return (*paged)->decode(*buffers, decode, stream);
  });
  if (e) {
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
