//===- GpuPagedRunner.cpp - Paged KV cache ops on NVIDIA GPUs -------------===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#include "moba/Runner/GpuPagedRunner.h"

#include "GpuSupport.h"
#include "RunnerSupport.h"

#include "moba/Pipelines/Pipelines.h"
#include "moba/Runtime/CudaDriver.h"
#include "moba/Runtime/GpuRuntime.h"

#include "llvm/ExecutionEngine/Orc/LLJIT.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/MemoryBuffer.h"

using namespace mlir;
using namespace mlir::moba;
using namespace mlir::moba::detail;

namespace {

/// The GPU pipeline's options for the paged ops: their generic (SIMT)
/// kernels need none of the attention's (tile_k, densify, mma). Fills
/// `pipeline` and checks it.
llvm::Error pagedPipeline(const PagedConfig &config,
                          const GpuCompileOptions &o,
                          GpuPipelineOptions &pipeline) {
  if (llvm::Error e = config.validate())
    return e;
  pipeline.chip = o.chip;
  pipeline.format = o.format;
  pipeline.threadsPerBlock = o.threadsPerBlock;
  pipeline.toolkit = o.toolkit;
  pipeline.densify = false;
  pipeline.mma = false;
  return checkRunnerPipeline(pipeline, o);
}

} // namespace

GpuPagedKernel::GpuPagedKernel(PagedConfig config, std::string chip)
    : cfg(std::move(config)), chipName(std::move(chip)) {}

GpuPagedKernel::~GpuPagedKernel() {
  if (loadedContext)
    unloadModules();
}

llvm::Error GpuPagedKernel::check(const PagedConfig &config,
                                  const GpuCompileOptions &options) {
  GpuPipelineOptions pipeline;
  return pagedPipeline(config, options, pipeline);
}

llvm::Error GpuPagedKernel::link(std::unique_ptr<llvm::MemoryBuffer> object) {
  auto linked = linkHostObject(std::move(object), cuda::runtimeSymbols);
  if (!linked)
    return linked.takeError();
  std::unique_ptr<llvm::orc::LLJIT> linkedJit = std::move(*linked);
  auto lookup = [&](llvm::StringRef name) -> llvm::Expected<void *> {
    auto symbol = linkedJit->lookup(name);
    if (!symbol)
      return symbol.takeError();
    return symbol->toPtr<void *>();
  };
  auto append = lookup("_mlir_ciface_moba_paged_append");
  if (!append)
    return append.takeError();
  auto decode = lookup("_mlir_ciface_moba_paged_decode");
  if (!decode)
    return decode.takeError();
  auto load = lookup(kLoadModules);
  if (!load)
    return load.takeError();
  auto unload = lookup(kUnloadModules);
  if (!unload)
    return unload.takeError();
  appendEntry = *append;
  decodeEntry = *decode;
  loadModules = reinterpret_cast<void (*)()>(*load);
  unloadModules = reinterpret_cast<void (*)()>(*unload);
  jit = std::move(linkedJit);
  return llvm::Error::success();
}

llvm::Expected<std::unique_ptr<GpuPagedKernel>>
GpuPagedKernel::compile(const PagedConfig &config,
                        const GpuCompileOptions &options) {
  GpuPipelineOptions pipeline;
  if (llvm::Error e = pagedPipeline(config, options, pipeline))
    return std::move(e);
  initializeGpuTargets();
  std::unique_ptr<GpuPagedKernel> kernel(
      new GpuPagedKernel(config, options.chip));
  EntryCompiler compiler(gpuRegistry(), buildPagedModule(config),
                         config.key(), options.dumpIR);
  auto module = compiler.parse();
  if (!module)
    return module.takeError();
  if (llvm::Error e = compiler.run("the GPU pipeline", "gpu",
                                   [&](OpPassManager &pm) {
                                     buildMobaGpuPipeline(pm, pipeline);
                                   }))
    return std::move(e);
  auto object = compiler.emitHostObject(options.optLevel, exposeModuleLoading);
  if (!object)
    return object.takeError();
  if (llvm::Error e = kernel->link(std::move(*object)))
    return llvm::createStringError("loading the compiled code of %s failed: %s",
                                   config.key().c_str(),
                                   llvm::toString(std::move(e)).c_str());
  return std::move(kernel);
}

llvm::Error GpuPagedKernel::load() const {
  return loadModulesOnce(loadMutex, loadedContext, cfg.key(), chipName,
                         loadModules, unloadModules);
}

llvm::Error GpuPagedKernel::append(const PagedCacheBuffers &cache,
                                   const PagedAppendBuffers &append,
                                   void *stream) const {
  if (llvm::Error e =
          checkPagedAppend(cfg, cache, append, PagedMemory::Device))
    return e;
  if (llvm::Error e = checkRowAlignment({{"k", append.tokens ? append.k
                                                             : nullptr},
                                         {"v", append.tokens ? append.v
                                                             : nullptr},
                                         {"k_cache", cache.kCache},
                                         {"v_cache", cache.vCache},
                                         {"block_key_sums",
                                          cache.blockKeySums}}))
    return e;
  return launch("append", stream, [&] {
    callPagedAppendEntry(appendEntry, cfg, cache, append);
  });
}

llvm::Error GpuPagedKernel::decode(const PagedCacheBuffers &cache,
                                   const PagedDecodeBuffers &decode,
                                   void *stream) const {
  if (llvm::Error e =
          checkPagedDecode(cfg, cache, decode, PagedMemory::Device))
    return e;
  bool any = decode.tokens > 0;
  if (llvm::Error e = checkRowAlignment({{"q", any ? decode.q : nullptr},
                                         {"out", any ? decode.out : nullptr},
                                         {"k_cache", cache.kCache},
                                         {"v_cache", cache.vCache},
                                         {"block_key_sums",
                                          cache.blockKeySums}}))
    return e;
  return launch("decode", stream, [&] {
    callPagedDecodeEntry(decodeEntry, cfg, cache, decode);
  });
}

llvm::Error GpuPagedKernel::launch(llvm::StringRef what, void *stream,
                                   llvm::function_ref<void()> call) const {
  if (llvm::Error e = load())
    return e;
  cuda::LaunchScope scope(static_cast<cuda::CUstream>(stream));
  call();
  if (llvm::Error e = scope.takeError())
    return llvm::createStringError("running the " + what + " of " +
                                   cfg.key() + " failed: " +
                                   llvm::toString(std::move(e)));
  return llvm::Error::success();
}
