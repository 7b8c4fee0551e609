//===- RunnerSupport.h - What the CPU and GPU runners share -----*- C++ -*-===//
//
// Part of moba-mlir. Private to lib/Runner: compiling the generated entry
// function through pass pipelines with every diagnostic collected, linking
// its object code into a JIT, and calling its C interface.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_LIB_RUNNER_RUNNERSUPPORT_H
#define MOBA_LIB_RUNNER_RUNNERSUPPORT_H

#include "moba/Runner/AttentionConfig.h"
#include "moba/Runner/PagedConfig.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/DialectRegistry.h"
#include "mlir/IR/OwningOpRef.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/ExecutionEngine/Orc/Core.h"
#include "llvm/ExecutionEngine/Orc/Mangling.h"

#include <functional>
#include <memory>
#include <string>

namespace llvm {
class MemoryBuffer;
class Module;
namespace orc {
class LLJIT;
} // namespace orc
} // namespace llvm

namespace mlir::moba::detail {

/// The dialects, bufferization models and LLVM IR translations both
/// pipelines meet on the way to loops on buffers and host code -- exactly
/// those rather than all of MLIR, which keeps the standalone libMobaC.so
/// small.
DialectRegistry loopPipelineRegistry();

/// Called with a stage name and the module's text after each stage.
using DumpFn = std::function<void(llvm::StringRef stage, llvm::StringRef ir)>;

/// One compilation of generated entry functions: owns the context, turns
/// diagnostics into the errors it returns, dumps the IR after each stage.
class EntryCompiler {
public:
  /// Compiles `config`'s entry functions (buildAttentionModule).
  EntryCompiler(const DialectRegistry &registry, const AttentionConfig &config,
                DumpFn dump);
  /// Compiles the moba IR `source`; `name` names it in errors.
  EntryCompiler(const DialectRegistry &registry, std::string source,
                std::string name, DumpFn dump);
  ~EntryCompiler();

  /// Parses the entry functions (stage "moba").
  llvm::Expected<ModuleOp> parse();
  /// Runs the passes `build` adds on the parsed module, then dumps it as
  /// `stage`; `what` says what failed ("lowering moba to loops").
  llvm::Error run(llvm::StringRef what, llvm::StringRef stage,
                  llvm::function_ref<void(OpPassManager &)> build);
  /// An error "`what` failed for <config>" with the diagnostics so far.
  llvm::Error fail(llvm::StringRef what) const;

  /// Compiles the module to a relocatable object for this host at LLVM
  /// `optLevel` (0-3), as MLIR's ExecutionEngine would compile it: the same
  /// optimization and target machine (the host CPU with all its features).
  /// `prepare`, when given, changes the module once translated to LLVM IR;
  /// its error fails the compilation.
  llvm::Expected<std::unique_ptr<llvm::MemoryBuffer>>
  emitHostObject(unsigned optLevel,
                 llvm::function_ref<llvm::Error(llvm::Module &)> prepare = {});


private:
  std::string source;
  std::string name;
  DumpFn dump;
  std::unique_ptr<MLIRContext> context;
  std::string diagnostics;
  uint64_t handler = 0;
  OwningOpRef<ModuleOp> module;
};

/// The entry points an object's undefined symbols resolve to before this
/// process's own, named through the JIT's mangler.
using SymbolsFn =
    llvm::function_ref<llvm::orc::SymbolMap(llvm::orc::MangleAndInterner)>;

/// Links `object` (a relocatable object for this host, as emitHostObject()
/// makes it) into a JIT of its own. Its undefined symbols resolve to
/// `symbols`, when given, then to this process's (malloc, free, libm): an
/// object resolves the same whether it was just compiled or read from the
/// disk cache. The debugger and perf listeners are registered only when
/// jitDebugRequested().
llvm::Expected<std::unique_ptr<llvm::orc::LLJIT>>
linkHostObject(std::unique_ptr<llvm::MemoryBuffer> object,
               SymbolsFn symbols = {});

/// The host CPU's features the host code is compiled for, enabled ones
/// only, sorted: "+aes,+avx,+avx2,...". Part of every disk cache key.
const std::string &hostCpuFeatures();

/// Initializes LLVM's native target and its printer, once per process.
void initializeNativeTarget();

/// True when MOBA_JIT_DEBUG=1: JIT-compiled code is then announced to
/// debuggers (GDB's JIT interface) and to perf, which writes
/// `.debug/jit/.../jit-<pid>.dump` files. Off by default: the dumps pile up
/// in the temporary directory, one per process.
bool jitDebugRequested();

/// Calls the C interface `_mlir_ciface_moba_attention` at `entry` with
/// contiguous memref descriptors of `buffers`.
void callAttentionEntry(void *entry, const AttentionConfig &config,
                        const AttentionBuffers &buffers);

/// Calls the C interface `_mlir_ciface_moba_attention_grad` at `entry`
/// with contiguous memref descriptors of `buffers` (whose dlse is set).
void callGradEntry(void *entry, const AttentionConfig &config,
                   const GradBuffers &buffers);

/// Calls the C interface `_mlir_ciface_moba_paged_append` at `entry` with
/// contiguous memref descriptors of `cache` and `append`.
void callPagedAppendEntry(void *entry, const PagedConfig &config,
                          const PagedCacheBuffers &cache,
                          const PagedAppendBuffers &append);

/// Calls the C interface `_mlir_ciface_moba_paged_decode` at `entry` with
/// contiguous memref descriptors of `cache` and `decode`.
void callPagedDecodeEntry(void *entry, const PagedConfig &config,
                          const PagedCacheBuffers &cache,
                          const PagedDecodeBuffers &decode);

} // namespace mlir::moba::detail

#endif // MOBA_LIB_RUNNER_RUNNERSUPPORT_H
