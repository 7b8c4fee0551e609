//===- CpuPagedRunner.cpp - JIT-compiled paged KV cache ops ---------------===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#include "moba/Runner/CpuPagedRunner.h"

#include "KernelCache.h"
#include "RunnerSupport.h"

#include "moba/Pipelines/Pipelines.h"
#include "moba/Runner/CpuRunner.h"

#include "llvm/ExecutionEngine/Orc/LLJIT.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/MemoryBuffer.h"

using namespace mlir;
using namespace mlir::moba;
using namespace mlir::moba::detail;

std::string mlir::moba::pagedKernelName(const PagedConfig &config,
                                        const CpuPagedCompileOptions &options) {
  return llvm::formatv("cpu-{0}-O{1}", config.key(), options.optLevel).str();
}

std::string mlir::moba::pagedCacheKey(const PagedConfig &config,
                                      const CpuPagedCompileOptions &options) {
  return hostCacheKey(
      llvm::formatv("cpu-{0}-O{1}", config.codeKey(), options.optLevel).str());
}

CpuPagedKernel::CpuPagedKernel(PagedConfig config) : cfg(std::move(config)) {}

CpuPagedKernel::~CpuPagedKernel() = default;

llvm::Error CpuPagedKernel::load(std::unique_ptr<llvm::MemoryBuffer> object) {
  auto linked = linkHostObject(std::move(object));
  if (!linked)
    return linked.takeError();
  auto append = (*linked)->lookup("_mlir_ciface_moba_paged_append");
  if (!append)
    return append.takeError();
  auto decode = (*linked)->lookup("_mlir_ciface_moba_paged_decode");
  if (!decode)
    return decode.takeError();
  appendEntry = append->toPtr<void *>();
  decodeEntry = decode->toPtr<void *>();
  jit = std::move(*linked);
  return llvm::Error::success();
}

llvm::Error CpuPagedKernel::check(const PagedConfig &config,
                                  const CpuPagedCompileOptions &options) {
  if (llvm::Error e = config.validate())
    return e;
  if (options.optLevel > 3)
    return llvm::createStringError("opt_level must be 0-3, got %u",
                                   options.optLevel);
  return llvm::Error::success();
}

llvm::Expected<std::unique_ptr<CpuPagedKernel>>
CpuPagedKernel::compile(const PagedConfig &config,
                        const CpuPagedCompileOptions &options) {
  if (llvm::Error e = check(config, options))
    return std::move(e);
  initializeNativeTarget();

  std::unique_ptr<CpuPagedKernel> kernel(new CpuPagedKernel(config));
  std::unique_ptr<KernelCache> cache;
  std::string key;
  if (!options.cacheDir.empty()) {
    cache = std::make_unique<KernelCache>(options.cacheDir);
    key = pagedCacheKey(config, options);
  }
  std::string linkProblem;
  auto finish = [&]() -> std::unique_ptr<CpuPagedKernel> {
    kernel->cacheProblems = linkProblem + (cache ? cache->problems() : "");
    return std::move(kernel);
  };
  if (cache && cache->usable()) {
    if (auto object = cache->load(key)) {
      llvm::Error e = kernel->load(std::move(object));
      if (!e) {
        kernel->loadedFromCache = true;
        return finish();
      }
      linkProblem = "the cached kernel of " +
                    pagedKernelName(config, options) +
                    " could not be linked (" + llvm::toString(std::move(e)) +
                    "); compiling it again\n";
    }
  }

  EntryCompiler compiler(loopPipelineRegistry(), buildPagedModule(config),
                         config.key(), options.dumpIR);
  auto module = compiler.parse();
  if (!module)
    return module.takeError();
  // The paged ops lower to serial loops of their own: the pipeline's
  // stages and tiles are for moba.attention, which is not here.
  CpuPipelineOptions pipeline;
  if (llvm::Error e = compiler.run("lowering moba to loops", "loops",
                                   [&](OpPassManager &pm) {
                                     buildMobaToLoopsPipeline(pm, pipeline);
                                   }))
    return std::move(e);
  if (llvm::Error e = compiler.run("lowering loops to LLVM", "llvm",
                                   buildLoopsToLLVMPipeline))
    return std::move(e);
  auto object = compiler.emitHostObject(options.optLevel);
  if (!object)
    return object.takeError();
  if (cache && cache->usable())
    cache->store(key, (*object)->getBuffer());
  if (llvm::Error e = kernel->load(std::move(*object)))
    return llvm::createStringError("loading the compiled code of %s failed: %s",
                                   config.key().c_str(),
                                   llvm::toString(std::move(e)).c_str());
  return finish();
}

llvm::Error CpuPagedKernel::append(const PagedCacheBuffers &cache,
                                   const PagedAppendBuffers &append) const {
  if (llvm::Error e = checkPagedAppend(cfg, cache, append))
    return e;
  callPagedAppendEntry(appendEntry, cfg, cache, append);
  return llvm::Error::success();
}

llvm::Error CpuPagedKernel::decode(const PagedCacheBuffers &cache,
                                   const PagedDecodeBuffers &decode) const {
  if (llvm::Error e = checkPagedDecode(cfg, cache, decode))
    return e;
  callPagedDecodeEntry(decodeEntry, cfg, cache, decode);
  return llvm::Error::success();
}
