//===- CpuRunner.cpp - JIT-compiled MoBA attention on the host ------------===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#include "moba/Runner/CpuRunner.h"

#include "RunnerSupport.h"

#include "moba/Version.h"

#include "mlir/ExecutionEngine/ExecutionEngine.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/Parser/Parser.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/ExecutionEngine/Orc/ExecutionUtils.h"
#include "llvm/ExecutionEngine/Orc/LLJIT.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/Process.h"
#include "llvm/Support/TargetSelect.h"
#include "llvm/Support/raw_ostream.h"
#include "llvm/TargetParser/Host.h"

#include <mutex>

using namespace mlir;
using namespace mlir::moba;
using namespace mlir::moba::detail;

namespace {

void initializeNativeTarget() {
  static std::once_flag once;
  std::call_once(once, [] {
    llvm::InitializeNativeTarget();
    llvm::InitializeNativeTargetAsmPrinter();
  });
}

} // namespace

llvm::StringRef mlir::moba::compilerVersion() { return MOBA_VERSION; }

std::string mlir::moba::cacheKey(const AttentionConfig &config,
                                 const CpuCompileOptions &options) {
  return llvm::formatv("cpu-{0}-{1}{2}{8}-q{3}-k{4}-O{5}-{6}-{7}",
                       config.key(), cpuStageName(options.stage),
                       options.parallel ? "-parallel" : "", options.tileQ,
                       options.tileK, options.optLevel, compilerVersion(),
                       llvm::sys::getHostCPUName(),
                       options.densify ? "-densify" : "")
      .str();
}

CpuAttentionKernel::CpuAttentionKernel(AttentionConfig config)
    : cfg(std::move(config)) {}

bool CpuAttentionKernel::loadCached(const std::string &path) {
  auto object = llvm::MemoryBuffer::getFile(path);
  if (!object)
    return false;
  auto jit = llvm::orc::LLJITBuilder().create();
  if (!jit) {
    llvm::consumeError(jit.takeError());
    return false;
  }
  // The object calls malloc, free and libm: resolve them in this process.
  auto generator =
      llvm::orc::DynamicLibrarySearchGenerator::GetForCurrentProcess(
          (*jit)->getDataLayout().getGlobalPrefix());
  if (!generator) {
    llvm::consumeError(generator.takeError());
    return false;
  }
  (*jit)->getMainJITDylib().addGenerator(std::move(*generator));
  if (llvm::Error e = (*jit)->addObjectFile(std::move(*object))) {
    llvm::consumeError(std::move(e));
    return false;
  }
  auto symbol = (*jit)->lookup("_mlir_ciface_moba_attention");
  if (!symbol) {
    llvm::consumeError(symbol.takeError());
    return false;
  }
  entry = symbol->toPtr<void *>();
  cachedJit = std::move(*jit);
  return true;
}

CpuAttentionKernel::~CpuAttentionKernel() = default;

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
  kernel->scratch.scores = options.stage != CpuStage::Fused;
  kernel->scratch.chunkedPooling = options.parallel;
  kernel->scratch.densified = options.densify;
  std::string cachePath;
  if (!options.cacheDir.empty()) {
    llvm::SmallString<256> path(options.cacheDir);
    llvm::sys::path::append(path, cacheKey(config, options) + ".o");
    cachePath = path.str().str();
    if (kernel->loadCached(cachePath))
      return kernel;
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

  auto engine = compiler.jit(options.optLevel, !cachePath.empty());
  kernel->context = compiler.takeContext();
  if (!engine)
    return engine.takeError();
  kernel->engine = std::move(*engine);
  auto entry = kernel->engine->lookup("_mlir_ciface_moba_attention");
  if (!entry)
    return entry.takeError();
  kernel->entry = *entry;

  // Keep the object for next time; write to a temporary name and rename, so
  // that a concurrent reader never sees half a file. A cache that cannot be
  // written is not an error: the kernel works without it.
  if (!cachePath.empty() &&
      !llvm::sys::fs::create_directories(options.cacheDir)) {
    std::string temporary =
        llvm::formatv("{0}.{1}.tmp", cachePath, llvm::sys::Process::getProcessId());
    kernel->engine->dumpToObjectFile(temporary);
    if (llvm::sys::fs::rename(temporary, cachePath))
      llvm::sys::fs::remove(temporary);
  }
  return kernel;
}

llvm::Error CpuAttentionKernel::run(const AttentionBuffers &b) const {
  if (llvm::Error e = checkAttentionBuffers(cfg, b, b.cuSeqlens))
    return e;
  // The kernel's allocations are not checked for failure: refuse calls
  // whose scratch memory malloc could not give.
  auto scratchBytes =
      kernelScratchBytes(cfg, scratch, b.tokens, b.numSequences);
  if (!scratchBytes)
    return scratchBytes.takeError();
  uint64_t memory = hostMemoryBytes();
  if (memory && uint64_t(*scratchBytes) > memory)
    return llvm::createStringError(
        "a call on %lld tokens in %lld sequences needs up to %lld bytes of "
        "scratch memory for %s, more than the %llu bytes of memory and swap "
        "here",
        static_cast<long long>(b.tokens),
        static_cast<long long>(b.numSequences),
        static_cast<long long>(*scratchBytes), cfg.key().c_str(),
        static_cast<unsigned long long>(memory));
  callAttentionEntry(entry, cfg, b);
  return llvm::Error::success();
}
