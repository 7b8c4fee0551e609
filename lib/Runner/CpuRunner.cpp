//===- CpuRunner.cpp - JIT-compiled MoBA attention on the host ------------===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#include "moba/Runner/CpuRunner.h"

#include "KernelCache.h"
#include "RunnerSupport.h"

#include "moba/Version.h"

#include "llvm/Config/llvm-config.h"
#include "llvm/ExecutionEngine/Orc/LLJIT.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/TargetParser/Host.h"

using namespace mlir;
using namespace mlir::moba;
using namespace mlir::moba::detail;

llvm::StringRef mlir::moba::compilerVersion() { return MOBA_VERSION; }

std::string mlir::moba::compilerIdentity() {
  return llvm::formatv("{0}+llvm-{1}", compilerVersion(), LLVM_VERSION_STRING)
      .str();
}

std::string mlir::moba::kernelName(const AttentionConfig &config,
                                   const CpuCompileOptions &options) {
  return llvm::formatv("cpu-{0}-{1}{2}{3}-q{4}-k{5}-O{6}", config.key(),
                       cpuStageName(options.stage),
                       options.parallel ? "-parallel" : "",
                       options.densify ? "-densify" : "", options.tileQ,
                       options.tileK, options.optLevel)
      .str();
}

std::string mlir::moba::hostCacheKey(llvm::StringRef name) {
  return llvm::formatv("{0}-{1}-{2}|{3}", name, compilerIdentity(),
                       llvm::sys::getHostCPUName(), hostCpuFeatures())
      .str();
}

std::string mlir::moba::cacheKey(const AttentionConfig &config,
                                 const CpuCompileOptions &options) {
  return hostCacheKey(kernelName(config, options));
}

CpuAttentionKernel::CpuAttentionKernel(AttentionConfig config)
    : cfg(std::move(config)) {}

CpuAttentionKernel::~CpuAttentionKernel() = default;

llvm::Error
CpuAttentionKernel::load(std::unique_ptr<llvm::MemoryBuffer> object) {
  // The object calls malloc, free and libm: resolved in this process.
  auto linked = linkHostObject(std::move(object));
  if (!linked)
    return linked.takeError();
  std::unique_ptr<llvm::orc::LLJIT> loaded = std::move(*linked);
  auto symbol = loaded->lookup("_mlir_ciface_moba_attention");
  if (!symbol)
    return symbol.takeError();
  entry = symbol->toPtr<void *>();
  if (cfg.backward) {
    auto grad = loaded->lookup("_mlir_ciface_moba_attention_grad");
    if (!grad)
      return grad.takeError();
    gradEntry = grad->toPtr<void *>();
  }
  jit = std::move(loaded);
  return llvm::Error::success();
}

llvm::Error CpuAttentionKernel::check(const AttentionConfig &config,
                                      const CpuCompileOptions &options) {
  if (llvm::Error e = config.validate())
    return e;
  if (llvm::Error e = checkTileSizes(options.tileQ, options.tileK))
    return e;
  if (options.optLevel > 3)
    return llvm::createStringError("opt_level must be 0-3, got %u",
                                   options.optLevel);
  return llvm::Error::success();
}

llvm::Expected<std::unique_ptr<CpuAttentionKernel>>
CpuAttentionKernel::compile(const AttentionConfig &config,
                            const CpuCompileOptions &options) {
  if (llvm::Error e = check(config, options))
    return std::move(e);
  initializeNativeTarget();

  std::unique_ptr<CpuAttentionKernel> kernel(new CpuAttentionKernel(config));
  std::unique_ptr<KernelCache> cache;
  std::string key;
  kernel->scratch.scores = options.stage != CpuStage::Fused;
  kernel->scratch.chunkedPooling = options.parallel;
  kernel->scratch.densified = options.densify;
  if (!options.cacheDir.empty()) {
    cache = std::make_unique<KernelCache>(options.cacheDir);
    key = cacheKey(config, options);
  }
  // Problems met on the way, reported with the kernel.
  std::string linkProblem;
  auto finish = [&]() -> std::unique_ptr<CpuAttentionKernel> {
    kernel->cacheProblems = linkProblem + (cache ? cache->problems() : "");
    return std::move(kernel);
  };
  if (cache && cache->usable()) {
    if (auto object = cache->load(key)) {
      // Verified, so this is our own object for this key; linking it can
      // still fail (a compiler whose version string did not change).
      llvm::Error e = kernel->load(std::move(object));
      if (!e) {
        kernel->loadedFromCache = true;
        return finish();
      }
      linkProblem = "the cached kernel of " + kernelName(config, options) +
                    " could not be linked (" + llvm::toString(std::move(e)) +
                    "); compiling it again\n";
    }
  }

  EntryCompiler compiler(loopPipelineRegistry(), config, options.dumpIR);
  auto module = compiler.parse();
  if (!module)
    return module.takeError();
  CpuPipelineOptions pipeline;
  pipeline.stage = options.stage;
  pipeline.tileQ = options.tileQ;
  pipeline.tileK = options.tileK;
  pipeline.parallel = options.parallel;
  pipeline.densify = options.densify;
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

  // The bytes that are cached are the bytes that run. A cache that cannot
  // be written is not an error: the kernel works without it.
  if (cache && cache->usable())
    cache->store(key, (*object)->getBuffer());
  if (llvm::Error e = kernel->load(std::move(*object)))
    return llvm::createStringError("loading the compiled code of %s failed: %s",
                                   config.key().c_str(),
                                   llvm::toString(std::move(e)).c_str());
  return finish();
}

namespace {

/// The kernel's allocations are not checked for failure: refuses calls
/// whose scratch memory (`scratchBytes`, or the error computing it) malloc
/// could not give.
llvm::Error checkScratch(llvm::Expected<int64_t> scratchBytes,
                         const AttentionConfig &cfg, int64_t tokens,
                         int64_t numSequences) {
  if (!scratchBytes)
    return scratchBytes.takeError();
  uint64_t memory = hostMemoryBytes();
  if (memory && uint64_t(*scratchBytes) > memory)
    return llvm::createStringError(
        "a call on %lld tokens in %lld sequences needs up to %lld bytes of "
        "scratch memory for %s, more than the %llu bytes of memory and swap "
        "here",
        static_cast<long long>(tokens), static_cast<long long>(numSequences),
        static_cast<long long>(*scratchBytes), cfg.key().c_str(),
        static_cast<unsigned long long>(memory));
  return llvm::Error::success();
}

} // namespace

llvm::Error CpuAttentionKernel::run(const AttentionBuffers &b) const {
  if (llvm::Error e = checkAttentionBuffers(cfg, b, b.cuSeqlens))
    return e;
  if (llvm::Error e = checkScratch(
          kernelScratchBytes(cfg, scratch, b.tokens, b.numSequences), cfg,
          b.tokens, b.numSequences))
    return e;
  callAttentionEntry(entry, cfg, b);
  return llvm::Error::success();
}

llvm::Error CpuAttentionKernel::runGrad(const GradBuffers &b) const {
  if (!gradEntry)
    return llvm::createStringError(
        "%s was compiled without the backward: compile it with backward "
        "set",
        cfg.key().c_str());
  if (llvm::Error e = checkGradBuffers(cfg, b, b.cuSeqlens))
    return e;
  if (llvm::Error e =
          checkScratch(gradScratchBytes(cfg, b.tokens, b.numSequences, scratch),
                       cfg, b.tokens, b.numSequences))
    return e;
  // A caller who does not differentiate lse passes none: its gradient is
  // zero, in a buffer of our own (the bound above counts it).
  std::vector<float> zeroDlse;
  GradBuffers call = b;
  if (!call.dlse) {
    zeroDlse.assign(size_t(b.tokens) * size_t(cfg.numHeads), 0.0f);
    call.dlse = zeroDlse.data();
  }
  callGradEntry(gradEntry, cfg, call);
  return llvm::Error::success();
}
