//===- GpuRunner.cpp - JIT-compiled MoBA attention on NVIDIA GPUs ---------===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#include "moba/Runner/GpuRunner.h"

#include "GpuSupport.h"
#include "KernelCache.h"
#include "RunnerSupport.h"

#include "moba/Dialect/Moba/IR/MobaDialect.h"
#include "moba/Dialect/Moba/Transforms/BufferizableOpInterfaceImpl.h"
#include "moba/Pipelines/MmaTuning.h"
#include "moba/Pipelines/Pipelines.h"
#include "moba/Runner/CpuRunner.h"
#include "moba/Runtime/CudaDriver.h"
#include "moba/Runtime/GpuRuntime.h"

#include "mlir/Conversion/ArithToLLVM/ArithToLLVM.h"
#include "mlir/Conversion/ControlFlowToLLVM/ControlFlowToLLVM.h"
#include "mlir/Conversion/FuncToLLVM/ConvertFuncToLLVM.h"
#include "mlir/Conversion/GPUCommon/GPUToLLVM.h"
#include "mlir/Conversion/GPUToNVVM/GPUToNVVM.h"
#include "mlir/Conversion/IndexToLLVM/IndexToLLVM.h"
#include "mlir/Conversion/MathToLLVM/MathToLLVM.h"
#include "mlir/Conversion/MemRefToLLVM/MemRefToLLVM.h"
#include "mlir/Conversion/NVVMToLLVM/NVVMToLLVM.h"
#include "mlir/Conversion/UBToLLVM/UBToLLVM.h"
#include "mlir/Conversion/VectorToLLVM/ConvertVectorToLLVM.h"
#include "mlir/Dialect/Affine/IR/AffineOps.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Arith/Transforms/BufferizableOpInterfaceImpl.h"
#include "mlir/Dialect/Bufferization/IR/Bufferization.h"
#include "mlir/Dialect/Bufferization/Transforms/FuncBufferizableOpInterfaceImpl.h"
#include "mlir/Dialect/ControlFlow/IR/ControlFlow.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/Index/IR/IndexDialect.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Linalg/Transforms/BufferizableOpInterfaceImpl.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/MemRef/Transforms/AllocationOpInterfaceImpl.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/SCF/Transforms/BufferizableOpInterfaceImpl.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Dialect/Tensor/Transforms/BufferizableOpInterfaceImpl.h"
#include "mlir/Dialect/UB/IR/UBOps.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"
#include "mlir/Dialect/Vector/Transforms/BufferizableOpInterfaceImpl.h"
#include "mlir/Target/LLVM/NVVM/Target.h"
#include "mlir/Target/LLVMIR/Dialect/Builtin/BuiltinToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/GPU/GPUToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/LLVMIR/LLVMToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/NVVM/NVVMToLLVMIRTranslation.h"
#include "llvm/ExecutionEngine/Orc/ExecutionUtils.h"
#include "llvm/ExecutionEngine/Orc/LLJIT.h"
#include "llvm/IR/IRBuilder.h"
#include "llvm/IR/Module.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/Program.h"
#include "llvm/Support/TargetSelect.h"
#include "llvm/Support/raw_ostream.h"
#include "llvm/TargetParser/Host.h"

using namespace mlir;
using namespace mlir::moba;
using namespace mlir::moba::detail;

/// The dialects, interfaces and translations the GPU pipeline meets.
DialectRegistry mlir::moba::detail::gpuRegistry() {
  DialectRegistry registry = loopPipelineRegistry();
  registry.insert<gpu::GPUDialect, NVVM::NVVMDialect, ub::UBDialect>();
  // gpu-to-llvm and convert-gpu-to-nvvm convert every dialect they find
  // through its ConvertToLLVMPatternInterface.
  arith::registerConvertArithToLLVMInterface(registry);
  cf::registerConvertControlFlowToLLVMInterface(registry);
  registerConvertFuncToLLVMInterface(registry);
  gpu::registerConvertGpuToLLVMInterface(registry);
  NVVM::registerConvertGpuToNVVMInterface(registry);
  index::registerConvertIndexToLLVMInterface(registry);
  registerConvertMathToLLVMInterface(registry);
  registerConvertMemRefToLLVMInterface(registry);
  registerConvertNVVMToLLVMInterface(registry);
  ub::registerConvertUBToLLVMInterface(registry);
  vector::registerConvertVectorToLLVMInterface(registry);
  // Serializing kernels (NVVM target), and translating the host module with
  // its embedded binaries and launches.
  NVVM::registerNVVMTargetInterfaceExternalModels(registry);
  registerGPUDialectTranslation(registry);
  registerNVVMDialectTranslation(registry);
  gpu::registerOffloadingLLVMTranslationInterfaceExternalModels(registry);
  return registry;
}

/// The host module's global constructors load its kernels (an
/// mgpuModuleLoad* per gpu.binary, kept in a global) and its destructors
/// unload them. A JIT would run the constructors once, when the object is
/// linked, so a load that failed half way could neither give back what it
/// had loaded nor be tried again. They become two functions that the runner
/// calls instead, kLoadModules and kUnloadModules: a failed load unloads
/// what it loaded, and the next call loads afresh (every constructor stores
/// its module, so no handle of the unloaded ones survives a load).
llvm::Error mlir::moba::detail::exposeModuleLoading(llvm::Module &module) {
  auto makeCaller = [&](llvm::StringRef name, llvm::StringRef list,
                        auto functions, bool reversed) -> llvm::Error {
    std::vector<std::pair<unsigned, llvm::Function *>> ordered;
    for (const llvm::orc::CtorDtorIterator::Element &element : functions) {
      llvm::Function *function = element.Func;
      bool plain = function && function->getReturnType()->isVoidTy() &&
                   function->arg_empty() &&
                   (!element.Data ||
                    llvm::isa<llvm::ConstantPointerNull>(element.Data));
      if (!plain)
        return llvm::createStringError("the host module's %s has an entry "
                                       "other than a void function without "
                                       "data",
                                       list.str().c_str());
      ordered.emplace_back(element.Priority, function);
    }
    std::stable_sort(
        ordered.begin(), ordered.end(),
        [](const auto &a, const auto &b) { return a.first < b.first; });
    if (reversed)
      std::reverse(ordered.begin(), ordered.end());
    if (llvm::GlobalVariable *global = module.getGlobalVariable(list))
      global->eraseFromParent();
    llvm::LLVMContext &context = module.getContext();
    auto *caller = llvm::Function::Create(
        llvm::FunctionType::get(llvm::Type::getVoidTy(context), false),
        llvm::GlobalValue::ExternalLinkage, name, module);
    llvm::IRBuilder<> builder(llvm::BasicBlock::Create(context, "", caller));
    for (auto [priority, function] : ordered)
      builder.CreateCall(function);
    builder.CreateRetVoid();
    return llvm::Error::success();
  };
  if (llvm::Error e =
          makeCaller(kLoadModules, "llvm.global_ctors",
                     llvm::orc::getConstructors(module), /*reversed=*/false))
    return e;
  return makeCaller(kUnloadModules, "llvm.global_dtors",
                    llvm::orc::getDestructors(module), /*reversed=*/true);
}

void mlir::moba::detail::initializeGpuTargets() {
  static std::once_flag once;
  std::call_once(once, [] {
    llvm::InitializeNativeTarget();
    llvm::InitializeNativeTargetAsmPrinter();
  });
}

llvm::Error mlir::moba::detail::checkRowAlignment(
    llvm::ArrayRef<std::pair<const char *, const void *>> rowBuffers) {
  for (auto [name, pointer] : rowBuffers)
    if (reinterpret_cast<uintptr_t>(pointer) % 16 != 0) {
      std::vector<llvm::StringRef> names;
      for (auto [each, unused] : rowBuffers)
        names.push_back(each);
      return llvm::createStringError(
          llvm::formatv("{0} at {1} is not 16-byte aligned: the GPU kernels "
                        "need 16-byte aligned {2}",
                        name, pointer, llvm::join(names, ", "))
              .str());
    }
  return llvm::Error::success();
}

GpuAttentionKernel::GpuAttentionKernel(AttentionConfig config, std::string chip)
    : cfg(std::move(config)), chipName(std::move(chip)) {}

GpuAttentionKernel::~GpuAttentionKernel() {
  if (loadedContext)
    unloadModules();
}

namespace {

/// Fills `pipeline` with the options of `options` for `config` (the tuning
/// table's choices filled in) and checks them.
llvm::Error fillPipelineOptions(const AttentionConfig &config,
                                const GpuCompileOptions &options,
                                GpuPipelineOptions &pipeline,
                                AttentionKernelPlan *filledPlan = nullptr) {
  if (llvm::Error e = config.validate())
    return e;
  if (llvm::Error e = checkTileSizes(std::nullopt, options.tileK))
    return e;
  pipeline.chip = options.chip;
  pipeline.format = options.format;
  pipeline.threadsPerBlock = options.threadsPerBlock;
  pipeline.tileK = options.tileK;
  pipeline.toolkit = options.toolkit;
  pipeline.densify = options.densify;
  pipeline.mma = options.mma;
  AttentionKernelPlan plan = fillKernelPlan(
      options.mmaPlan,
      tunedKernelPlan(options.chip, elementTypeName(config.dtype),
                      config.headDim, config.numHeads / config.numKvHeads,
                      config.blockSize));
  // The plan's rules, named as the C API's fields; the pipeline's check
  // below finds them all kept.
  if (SmallVector<std::string> problems =
          plan.problems(StringRef(options.chip), PlanSpelling::CField);
      !problems.empty())
    return llvm::createStringError(llvm::join(problems, "; ") + " (plan " +
                                   plan.print() + ")");
  setMmaKernelPlan(pipeline, plan);
  if (filledPlan)
    *filledPlan = plan;
  return checkRunnerPipeline(pipeline, options);
}

} // namespace

namespace {

/// A file's identity in a cache key: its path, size and modification time;
/// "<path>:absent" when there is none.
std::string fileIdentity(llvm::StringRef path) {
  llvm::sys::fs::file_status status;
  if (llvm::sys::fs::status(path, status) || !llvm::sys::fs::exists(status))
    return (path + ":absent").str();
  return llvm::formatv(
             "{0}:{1}:{2}", path, status.getSize(),
             status.getLastModificationTime().time_since_epoch().count())
      .str();
}

/// The ptxas gpu-module-to-binary runs for `toolkit` (format bin): the
/// toolkit's bin/ptxas when it is executable, else the first on PATH, the
/// order in which MLIR's NVVM target looks.
std::string ptxasPath(llvm::StringRef toolkit) {
  llvm::SmallString<256> path(toolkit);
  llvm::sys::path::append(path, "bin", "ptxas");
  if (llvm::sys::fs::can_execute(path))
    return path.str().str();
  if (llvm::ErrorOr<std::string> found = llvm::sys::findProgramByName("ptxas"))
    return *found;
  return "ptxas";
}

/// The readable part of a GPU kernel's cache key (its file name's prefix).
std::string gpuKernelName(const AttentionConfig &config,
                          const GpuCompileOptions &options) {
  return llvm::formatv("gpu-{0}-{1}-{2}-{3}-O{4}", options.chip, config.key(),
                       options.mma ? "mma" : "simt", options.format,
                       options.optLevel)
      .str();
}

/// cacheKey() of `config` and `options`, whose pipeline options and plan
/// fillPipelineOptions() gave.
std::string gpuCacheKey(const AttentionConfig &config,
                        const GpuCompileOptions &options,
                        const GpuPipelineOptions &pipeline,
                        const AttentionKernelPlan &plan) {
  std::string pipelineText;
  llvm::raw_string_ostream os(pipelineText);
  pipeline.print(os);
  std::string toolkit = cudaToolkitPath(options.toolkit);
  llvm::SmallString<256> libdevice(toolkit);
  llvm::sys::path::append(libdevice, "nvvm", "libdevice", "libdevice.10.bc");
  // PTX (isa) is compiled by the driver when it is loaded, a cubin (bin)
  // by ptxas here: only the latter depends on ptxas.
  bool ptx = options.format == "isa";
  return llvm::formatv(
             "{0}-{1}-{2}|{3}|plan={4}|pipeline={5}|loading={6}|toolkit={7}|"
             "libdevice={8}|ptxas={9}",
             gpuKernelName(config, options), compilerIdentity(),
             llvm::sys::getHostCPUName(), hostCpuFeatures(),
             options.mma ? plan.print() : std::string("none"), pipelineText,
             ptx ? "moba_load_modules,mgpuModuleLoadJIT"
                 : "moba_load_modules,mgpuModuleLoad",
             toolkit, fileIdentity(libdevice),
             ptx ? std::string("unused") : fileIdentity(ptxasPath(toolkit)))
      .str();
}

} // namespace

llvm::Expected<std::string>
mlir::moba::cacheKey(const AttentionConfig &config,
                     const GpuCompileOptions &options) {
  GpuPipelineOptions pipeline;
  AttentionKernelPlan plan;
  if (llvm::Error e = fillPipelineOptions(config, options, pipeline, &plan))
    return std::move(e);
  return gpuCacheKey(config, options, pipeline, plan);
}

llvm::Error GpuAttentionKernel::check(const AttentionConfig &config,
                                      const GpuCompileOptions &options) {
  GpuPipelineOptions pipeline;
  return fillPipelineOptions(config, options, pipeline);
}

llvm::Error
GpuAttentionKernel::link(std::unique_ptr<llvm::MemoryBuffer> object) {
  // The host code calls the project's runtime, never a library's; malloc
  // and free come from this process.
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
  auto attention = lookup("_mlir_ciface_moba_attention");
  if (!attention)
    return attention.takeError();
  void *grad = nullptr;
  if (cfg.backward) {
    auto found = lookup("_mlir_ciface_moba_attention_grad");
    if (!found)
      return found.takeError();
    grad = *found;
  }
  auto load = lookup(kLoadModules);
  if (!load)
    return load.takeError();
  auto unload = lookup(kUnloadModules);
  if (!unload)
    return unload.takeError();
  entry = *attention;
  gradEntry = grad;
  loadModules = reinterpret_cast<void (*)()>(*load);
  unloadModules = reinterpret_cast<void (*)()>(*unload);
  jit = std::move(linkedJit);
  return llvm::Error::success();
}

llvm::Expected<std::unique_ptr<GpuAttentionKernel>>
GpuAttentionKernel::compile(const AttentionConfig &config,
                            const GpuCompileOptions &options) {
  GpuPipelineOptions pipeline;
  AttentionKernelPlan plan;
  if (llvm::Error e = fillPipelineOptions(config, options, pipeline, &plan))
    return std::move(e);
  initializeGpuTargets();

  std::unique_ptr<GpuAttentionKernel> kernel(
      new GpuAttentionKernel(config, options.chip));
  if (options.mma)
    kernel->plan = plan;
  kernel->scratch.chunkedPooling = true;
  kernel->scratch.densified = options.densify;
  std::unique_ptr<KernelCache> cache;
  std::string key;
  if (!options.cacheDir.empty()) {
    cache = std::make_unique<KernelCache>(options.cacheDir);
    key = gpuCacheKey(config, options, pipeline, plan);
  }
  // Problems met on the way, reported with the kernel.
  std::string linkProblem;
  auto finish = [&]() -> std::unique_ptr<GpuAttentionKernel> {
    kernel->cacheProblems = linkProblem + (cache ? cache->problems() : "");
    return std::move(kernel);
  };
  if (cache && cache->usable()) {
    if (auto object = cache->load(key)) {
      // Verified, so this is our own object for this key; linking it can
      // still fail (a compiler whose version string did not change). The
      // kernels it embeds are loaded on first use, as a fresh compile's.
      llvm::Error e = kernel->link(std::move(object));
      if (!e) {
        kernel->loadedFromCache = true;
        return finish();
      }
      linkProblem = "the cached kernel of " + gpuKernelName(config, options) +
                    " could not be linked (" + llvm::toString(std::move(e)) +
                    "); compiling it again\n";
    }
  }

  EntryCompiler compiler(gpuRegistry(), config, options.dumpIR);
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

  // The bytes that are cached are the bytes that run. A cache that cannot
  // be written is not an error: the kernel works without it.
  if (cache && cache->usable())
    cache->store(key, (*object)->getBuffer());
  if (llvm::Error e = kernel->link(std::move(*object)))
    return llvm::createStringError("loading the compiled code of %s failed: %s",
                                   config.key().c_str(),
                                   llvm::toString(std::move(e)).c_str());
  return finish();
}

llvm::Error
mlir::moba::detail::checkRunnerPipeline(const GpuPipelineOptions &pipeline,
                                        const GpuCompileOptions &options) {
  if (std::string problem = checkGpuPipelineOptions(pipeline);
      !problem.empty())
    return llvm::createStringError(problem);
  if (auto chip = cuda::parseChip(options.chip); !chip)
    return chip.takeError();
  if (options.format == "fatbin")
    return llvm::createStringError(
        "format fatbin is for moba-opt; the GPU runner loads isa (PTX) or "
        "bin (cubin)");
  if (options.optLevel > 3)
    return llvm::createStringError("opt_level must be 0-3, got %u",
                                   options.optLevel);
  return llvm::Error::success();
}

llvm::Error mlir::moba::detail::loadModulesOnce(
    std::mutex &mutex, void *&loadedContext, llvm::StringRef key,
    llvm::StringRef chip, void (*loadModules)(), void (*unloadModules)()) {
  std::lock_guard<std::mutex> lock(mutex);
  cuda::DeviceInfo device;
  auto context = cuda::currentContext(&device);
  if (!context)
    return context.takeError();
  if (loadedContext) {
    if (loadedContext == *context)
      return llvm::Error::success();
    return llvm::createStringError(llvm::formatv(
        "the {0} kernel was loaded into another CUDA context than the "
        "current one (device {1}): compile one kernel per device",
        key, device.ordinal).str());
  }
  if (llvm::Error e = cuda::checkChipRunsOn(chip, device))
    return e;
  // After the first failure the loads do nothing; what loaded before it is
  // unloaded, so that a failed load holds no module and the next call tries
  // again.
  cuda::LaunchScope scope(/*stream=*/nullptr);
  loadModules();
  if (llvm::Error e = scope.takeError()) {
    unloadModules();
    return llvm::createStringError(
        "loading the kernels of " + key + " on device " +
        std::to_string(device.ordinal) + " (" + device.name +
        ") failed: " + llvm::toString(std::move(e)));
  }
  loadedContext = *context;
  return llvm::Error::success();
}

llvm::Error GpuAttentionKernel::load() const {
  return loadModulesOnce(loadMutex, loadedContext, cfg.key(), chipName,
                         loadModules, unloadModules);
}

llvm::Error GpuAttentionKernel::run(const AttentionBuffers &buffers,
                                    const GpuLaunch &launch) const {
  if (llvm::Error e =
          checkAttentionBuffers(cfg, buffers, launch.hostCuSeqlens))
    return e;
  // Device allocations that fail are errors of the runtime; sizes that
  // wrap would not be.
  if (auto bytes = kernelScratchBytes(cfg, scratch, buffers.tokens,
                                      buffers.numSequences);
      !bytes)
    return bytes.takeError();
  if (llvm::Error e = checkRowAlignment({{"q", buffers.q},
                                         {"k", buffers.k},
                                         {"v", buffers.v},
                                         {"out", buffers.out}}))
    return e;
  if (llvm::Error e = load())
    return e;
  cuda::LaunchScope scope(static_cast<cuda::CUstream>(launch.stream),
                          launch.allocator);
  callAttentionEntry(entry, cfg, buffers);
  if (llvm::Error e = scope.takeError())
    return llvm::createStringError("running " + cfg.key() + " failed: " +
                                   llvm::toString(std::move(e)));
  return llvm::Error::success();
}

llvm::Error GpuAttentionKernel::runGrad(const GradBuffers &buffers,
                                        const GpuLaunch &launch) const {
  if (!gradEntry)
    return llvm::createStringError(
        "%s was compiled without the backward: compile it with backward "
        "set",
        cfg.key().c_str());
  if (llvm::Error e = checkGradBuffers(cfg, buffers, launch.hostCuSeqlens))
    return e;
  if (buffers.tokens > 0 && !buffers.dlse)
    return llvm::createStringError(
        "dlse is null but there are %lld tokens: the GPU backward takes a "
        "device buffer of lse's gradient (zeros when the loss does not use "
        "lse)",
        static_cast<long long>(buffers.tokens));
  // The backward's scratch (the selection recomputed, the query groups,
  // the per-slot dq partials in f32, ...) comes from the runtime's pool;
  // sizes that wrap would not be its errors.
  if (auto bytes =
          gradScratchBytes(cfg, buffers.tokens, buffers.numSequences, scratch);
      !bytes)
    return bytes.takeError();
  if (llvm::Error e = checkRowAlignment({{"q", buffers.q},
                                         {"k", buffers.k},
                                         {"v", buffers.v},
                                         {"out", buffers.out},
                                         {"dout", buffers.dout},
                                         {"dq", buffers.dq},
                                         {"dk", buffers.dk},
                                         {"dv", buffers.dv}}))
    return e;
  if (llvm::Error e = load())
    return e;
  cuda::LaunchScope scope(static_cast<cuda::CUstream>(launch.stream),
                          launch.allocator);
  callGradEntry(gradEntry, cfg, buffers);
  if (llvm::Error e = scope.takeError())
    return llvm::createStringError("running the backward of " + cfg.key() +
                                   " failed: " + llvm::toString(std::move(e)));
  return llvm::Error::success();
}
