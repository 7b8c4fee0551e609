//===- RunnerSupport.cpp - What the CPU and GPU runners share -------------===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#include "RunnerSupport.h"

#include "moba/Dialect/Moba/IR/MobaDialect.h"
#include "moba/Dialect/Moba/Transforms/BufferizableOpInterfaceImpl.h"

#include "mlir/Dialect/Affine/IR/AffineOps.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Arith/Transforms/BufferizableOpInterfaceImpl.h"
#include "mlir/Dialect/Bufferization/IR/Bufferization.h"
#include "mlir/Dialect/Bufferization/Transforms/FuncBufferizableOpInterfaceImpl.h"
#include "mlir/Dialect/ControlFlow/IR/ControlFlow.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Index/IR/IndexDialect.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Linalg/Transforms/BufferizableOpInterfaceImpl.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/MemRef/Transforms/AllocationOpInterfaceImpl.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/SCF/Transforms/BufferizableOpInterfaceImpl.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Dialect/Tensor/Transforms/BufferizableOpInterfaceImpl.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"
#include "mlir/Dialect/Vector/Transforms/BufferizableOpInterfaceImpl.h"
#include "mlir/ExecutionEngine/OptUtils.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/Target/LLVMIR/Dialect/Builtin/BuiltinToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/LLVMIR/LLVMToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Export.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Parser/Parser.h"
#include "mlir/Target/LLVMIR/Export.h"
#include "llvm/ADT/STLExtras.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/ExecutionEngine/JITEventListener.h"
#include "llvm/ExecutionEngine/Orc/CompileUtils.h"
#include "llvm/ExecutionEngine/Orc/ExecutionUtils.h"
#include "llvm/ExecutionEngine/Orc/JITTargetMachineBuilder.h"
#include "llvm/ExecutionEngine/Orc/LLJIT.h"
#include "llvm/ExecutionEngine/Orc/RTDyldObjectLinkingLayer.h"
#include "llvm/ExecutionEngine/SectionMemoryManager.h"
#include "llvm/IR/LLVMContext.h"
#include "llvm/IR/Module.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/TargetSelect.h"
#include "llvm/Support/raw_ostream.h"
#include "llvm/Target/TargetMachine.h"
#include "llvm/TargetParser/Host.h"

#include <array>
#include <cstdlib>
#include <mutex>
#include <vector>

using namespace mlir;
using namespace mlir::moba;
using namespace mlir::moba::detail;

namespace {

/// The C interface's view of a ranked memref (see CRunnerUtils.h); the
/// element type only matters to the callee.
template <int Rank>
struct MemRefDescriptor {
  const void *allocated;
  const void *aligned;
  int64_t offset;
  int64_t sizes[Rank];
  int64_t strides[Rank];
};

template <int Rank>
MemRefDescriptor<Rank> contiguous(const void *data,
                                  std::array<int64_t, Rank> sizes) {
  MemRefDescriptor<Rank> d{data, data, 0, {}, {}};
  int64_t stride = 1;
  for (int i = Rank - 1; i >= 0; --i) {
    d.sizes[i] = sizes[i];
    d.strides[i] = stride;
    stride *= sizes[i];
  }
  return d;
}

using EntryFn = void (*)(MemRefDescriptor<3> *, MemRefDescriptor<3> *,
                         MemRefDescriptor<3> *, MemRefDescriptor<1> *,
                         MemRefDescriptor<3> *, MemRefDescriptor<2> *);

using GradEntryFn = void (*)(MemRefDescriptor<3> *, MemRefDescriptor<3> *,
                             MemRefDescriptor<3> *, MemRefDescriptor<1> *,
                             MemRefDescriptor<3> *, MemRefDescriptor<2> *,
                             MemRefDescriptor<3> *, MemRefDescriptor<2> *,
                             MemRefDescriptor<3> *, MemRefDescriptor<3> *,
                             MemRefDescriptor<3> *);

std::string printModule(ModuleOp module) {
  std::string text;
  llvm::raw_string_ostream os(text);
  module.print(os);
  return text;
}

} // namespace

DialectRegistry mlir::moba::detail::loopPipelineRegistry() {
  DialectRegistry registry;
  registry.insert<MobaDialect, affine::AffineDialect, arith::ArithDialect,
                  bufferization::BufferizationDialect, cf::ControlFlowDialect,
                  func::FuncDialect, index::IndexDialect, LLVM::LLVMDialect,
                  linalg::LinalgDialect, math::MathDialect,
                  memref::MemRefDialect, scf::SCFDialect,
                  tensor::TensorDialect, vector::VectorDialect>();
  arith::registerBufferizableOpInterfaceExternalModels(registry);
  bufferization::func_ext::registerBufferizableOpInterfaceExternalModels(
      registry);
  linalg::registerBufferizableOpInterfaceExternalModels(registry);
  memref::registerAllocationOpInterfaceExternalModels(registry);
  scf::registerBufferizableOpInterfaceExternalModels(registry);
  tensor::registerBufferizableOpInterfaceExternalModels(registry);
  vector::registerBufferizableOpInterfaceExternalModels(registry);
  moba::registerBufferizableOpInterfaceExternalModels(registry);
  registerBuiltinDialectTranslation(registry);
  registerLLVMDialectTranslation(registry);
  return registry;
}

EntryCompiler::EntryCompiler(const DialectRegistry &registry,
                             const AttentionConfig &config, DumpFn dump)
    : EntryCompiler(registry, buildAttentionModule(config), config.key(),
                    std::move(dump)) {}

EntryCompiler::EntryCompiler(const DialectRegistry &registry,
                             std::string source, std::string name, DumpFn dump)
    : source(std::move(source)), name(std::move(name)), dump(std::move(dump)),
      context(std::make_unique<MLIRContext>(registry)) {
  context->disableMultithreading();
  handler = context->getDiagEngine().registerHandler([this](Diagnostic &d) {
    llvm::raw_string_ostream os(diagnostics);
    os << d.getLocation() << ": " << d << "\n";
    return success();
  });
}

EntryCompiler::~EntryCompiler() {
  if (context)
    context->getDiagEngine().eraseHandler(handler);
}

llvm::Error EntryCompiler::fail(llvm::StringRef what) const {
  return llvm::createStringError("%s failed for %s:\n%s", what.str().c_str(),
                                 name.c_str(), diagnostics.c_str());
}

llvm::Expected<ModuleOp> EntryCompiler::parse() {
  module = parseSourceString<ModuleOp>(source,
                                       ParserConfig(context.get()));
  if (!module)
    return fail("parsing the generated moba IR");
  if (dump)
    dump("moba", printModule(*module));
  return *module;
}

llvm::Error
EntryCompiler::run(llvm::StringRef what, llvm::StringRef stage,
                   llvm::function_ref<void(OpPassManager &)> build) {
  PassManager pm(context.get());
  build(pm);
  if (failed(pm.run(*module)))
    return fail(what);
  if (dump)
    dump(stage, printModule(*module));
  return llvm::Error::success();
}

llvm::Expected<std::unique_ptr<llvm::MemoryBuffer>>
EntryCompiler::emitHostObject(
    unsigned optLevel,
    llvm::function_ref<llvm::Error(llvm::Module &)> prepare) {
  auto failed = [&](llvm::StringRef what, llvm::Error e) {
    return llvm::createStringError("%s failed for %s: %s", what.str().c_str(),
                                   name.c_str(),
                                   llvm::toString(std::move(e)).c_str());
  };
  llvm::LLVMContext llvmContext;
  std::unique_ptr<llvm::Module> llvmModule =
      translateModuleToLLVMIR(*module, llvmContext);
  if (!llvmModule)
    return fail("translating to LLVM IR");
  if (prepare)
    if (llvm::Error e = prepare(*llvmModule))
      return failed("preparing the host module", std::move(e));
  // What ExecutionEngine::create does: the host's CPU name and features.
  auto builder = llvm::orc::JITTargetMachineBuilder::detectHost();
  if (!builder)
    return failed("detecting the host", builder.takeError());
  builder->setCodeGenOptLevel(static_cast<llvm::CodeGenOptLevel>(optLevel));
  auto machine = builder->createTargetMachine();
  if (!machine)
    return failed("creating the host target machine", machine.takeError());
  llvmModule->setDataLayout((*machine)->createDataLayout());
  llvmModule->setTargetTriple((*machine)->getTargetTriple());
  if (llvm::Error e = makeOptimizingTransformer(optLevel, /*sizeLevel=*/0,
                                                /*targetMachine=*/nullptr)(
          llvmModule.get()))
    return failed("optimizing LLVM IR", std::move(e));
  llvm::orc::SimpleCompiler compile(**machine);
  auto object = compile(*llvmModule);
  if (!object)
    return failed("code generation", object.takeError());
  return std::move(*object);
}

void mlir::moba::detail::initializeNativeTarget() {
  static std::once_flag once;
  std::call_once(once, [] {
    llvm::InitializeNativeTarget();
    llvm::InitializeNativeTargetAsmPrinter();
  });
}

bool mlir::moba::detail::jitDebugRequested() {
  const char *value = std::getenv("MOBA_JIT_DEBUG");
  return value && llvm::StringRef(value) == "1";
}

llvm::Expected<std::unique_ptr<llvm::orc::LLJIT>>
mlir::moba::detail::linkHostObject(std::unique_ptr<llvm::MemoryBuffer> object,
                                   SymbolsFn symbols) {
  // The object layer ExecutionEngine uses, with its listeners only on
  // request.
  bool debug = jitDebugRequested();
  auto created =
      llvm::orc::LLJITBuilder()
          .setObjectLinkingLayerCreator([debug](llvm::orc::ExecutionSession
                                                    &session)
                                            -> llvm::Expected<std::unique_ptr<
                                                llvm::orc::ObjectLayer>> {
            auto layer = std::make_unique<llvm::orc::RTDyldObjectLinkingLayer>(
                session, [](const llvm::MemoryBuffer &) {
                  return std::make_unique<llvm::SectionMemoryManager>();
                });
            if (debug) {
              layer->registerJITEventListener(
                  *llvm::JITEventListener::createGDBRegistrationListener());
              if (auto *perf =
                      llvm::JITEventListener::createPerfJITEventListener())
                layer->registerJITEventListener(*perf);
            }
            return layer;
          })
          .create();
  if (!created)
    return created.takeError();
  std::unique_ptr<llvm::orc::LLJIT> jit = std::move(*created);
  llvm::orc::JITDylib &library = jit->getMainJITDylib();
  // Definitions come before the generator: `symbols` win over any library
  // of this process that exports the same names.
  if (symbols) {
    llvm::orc::MangleAndInterner interner(jit->getExecutionSession(),
                                          jit->getDataLayout());
    if (llvm::Error e =
            library.define(llvm::orc::absoluteSymbols(symbols(interner))))
      return std::move(e);
  }
  auto generator =
      llvm::orc::DynamicLibrarySearchGenerator::GetForCurrentProcess(
          jit->getDataLayout().getGlobalPrefix());
  if (!generator)
    return generator.takeError();
  library.addGenerator(std::move(*generator));
  if (llvm::Error e = jit->addObjectFile(std::move(object)))
    return std::move(e);
  return std::move(jit);
}

const std::string &mlir::moba::detail::hostCpuFeatures() {
  static const std::string features = [] {
    std::vector<std::string> enabled;
    for (const auto &feature : llvm::sys::getHostCPUFeatures())
      if (feature.second)
        enabled.push_back("+" + feature.first().str());
    llvm::sort(enabled);
    return llvm::join(enabled, ",");
  }();
  return features;
}

void mlir::moba::detail::callAttentionEntry(void *entry,
                                            const AttentionConfig &cfg,
                                            const AttentionBuffers &b) {
  auto q = contiguous<3>(b.q, {b.tokens, cfg.numHeads, cfg.headDim});
  auto k = contiguous<3>(b.k, {b.tokens, cfg.numKvHeads, cfg.headDim});
  auto v = contiguous<3>(b.v, {b.tokens, cfg.numKvHeads, cfg.headDim});
  auto cu = contiguous<1>(b.cuSeqlens, {b.numSequences + 1});
  auto out = contiguous<3>(b.out, {b.tokens, cfg.numHeads, cfg.headDim});
  auto lse = contiguous<2>(b.lse, {b.tokens, cfg.numHeads});
  reinterpret_cast<EntryFn>(entry)(&q, &k, &v, &cu, &out, &lse);
}

void mlir::moba::detail::callGradEntry(void *entry, const AttentionConfig &cfg,
                                       const GradBuffers &b) {
  const std::array<int64_t, 3> qShape = {b.tokens, cfg.numHeads, cfg.headDim};
  const std::array<int64_t, 3> kvShape = {b.tokens, cfg.numKvHeads,
                                          cfg.headDim};
  const std::array<int64_t, 2> rowShape = {b.tokens, cfg.numHeads};
  auto q = contiguous<3>(b.q, qShape);
  auto k = contiguous<3>(b.k, kvShape);
  auto v = contiguous<3>(b.v, kvShape);
  auto cu = contiguous<1>(b.cuSeqlens, {b.numSequences + 1});
  auto out = contiguous<3>(b.out, qShape);
  auto lse = contiguous<2>(b.lse, rowShape);
  auto dout = contiguous<3>(b.dout, qShape);
  auto dlse = contiguous<2>(b.dlse, rowShape);
  auto dq = contiguous<3>(b.dq, qShape);
  auto dk = contiguous<3>(b.dk, kvShape);
  auto dv = contiguous<3>(b.dv, kvShape);
  reinterpret_cast<GradEntryFn>(entry)(&q, &k, &v, &cu, &out, &lse, &dout,
                                       &dlse, &dq, &dk, &dv);
}

namespace {

using PagedAppendFn = void (*)(MemRefDescriptor<3> *, MemRefDescriptor<3> *,
                               MemRefDescriptor<1> *, MemRefDescriptor<2> *,
                               MemRefDescriptor<1> *, MemRefDescriptor<4> *,
                               MemRefDescriptor<4> *, MemRefDescriptor<4> *);

using PagedDecodeFn = void (*)(MemRefDescriptor<3> *, MemRefDescriptor<1> *,
                               MemRefDescriptor<4> *, MemRefDescriptor<4> *,
                               MemRefDescriptor<2> *, MemRefDescriptor<1> *,
                               MemRefDescriptor<4> *, MemRefDescriptor<3> *,
                               MemRefDescriptor<2> *);

/// The descriptors of a paged cache, in the entry points' order.
struct PagedCacheDescriptors {
  MemRefDescriptor<4> kCache, vCache, sums;
  MemRefDescriptor<2> table;
  MemRefDescriptor<1> lens;
};

PagedCacheDescriptors pagedCache(const PagedConfig &cfg,
                                 const PagedCacheBuffers &c) {
  const std::array<int64_t, 4> cacheShape = {c.pages, cfg.pageSize,
                                             cfg.numKvHeads, cfg.headDim};
  return {contiguous<4>(c.kCache, cacheShape),
          contiguous<4>(c.vCache, cacheShape),
          contiguous<4>(c.blockKeySums, {c.numSequences, c.maxBlocks,
                                         cfg.numKvHeads, cfg.headDim}),
          contiguous<2>(c.blockTable, {c.numSequences, c.maxPages}),
          contiguous<1>(c.cacheLens, {c.numSequences})};
}

} // namespace

void mlir::moba::detail::callPagedAppendEntry(void *entry,
                                              const PagedConfig &cfg,
                                              const PagedCacheBuffers &c,
                                              const PagedAppendBuffers &a) {
  PagedCacheDescriptors d = pagedCache(cfg, c);
  const std::array<int64_t, 3> kvShape = {a.tokens, cfg.numKvHeads,
                                          cfg.headDim};
  auto k = contiguous<3>(a.k, kvShape);
  auto v = contiguous<3>(a.v, kvShape);
  auto cu = contiguous<1>(a.cuSeqlens, {c.numSequences + 1});
  reinterpret_cast<PagedAppendFn>(entry)(&k, &v, &cu, &d.table, &d.lens,
                                         &d.kCache, &d.vCache, &d.sums);
}

void mlir::moba::detail::callPagedDecodeEntry(void *entry,
                                              const PagedConfig &cfg,
                                              const PagedCacheBuffers &c,
                                              const PagedDecodeBuffers &q) {
  PagedCacheDescriptors d = pagedCache(cfg, c);
  const std::array<int64_t, 3> qShape = {q.tokens, cfg.numHeads, cfg.headDim};
  auto query = contiguous<3>(q.q, qShape);
  auto cu = contiguous<1>(q.cuSeqlensQ, {c.numSequences + 1});
  auto out = contiguous<3>(q.out, qShape);
  auto lse = contiguous<2>(q.lse, {q.tokens, cfg.numHeads});
  reinterpret_cast<PagedDecodeFn>(entry)(&query, &cu, &d.kCache, &d.vCache,
                                         &d.table, &d.lens, &d.sums, &out,
                                         &lse);
}
