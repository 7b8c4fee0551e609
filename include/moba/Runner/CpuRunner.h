//===- CpuRunner.h - JIT-compiled MoBA attention on the host ----*- C++ -*-===//
//
// Part of moba-mlir. The CPU backend: compiles an AttentionConfig through the
// moba CPU pipeline with MLIR's ExecutionEngine and runs it on host buffers.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_RUNNER_CPURUNNER_H
#define MOBA_RUNNER_CPURUNNER_H

#include "moba/Pipelines/Pipelines.h"
#include "moba/Runner/AttentionConfig.h"

#include "llvm/Support/Error.h"

#include <functional>
#include <memory>
#include <string>

namespace llvm {
class MemoryBuffer;
namespace orc {
class LLJIT;
} // namespace orc
} // namespace llvm

namespace mlir {
namespace moba {

struct CpuCompileOptions {
  CpuStage stage = CpuStage::Fused;
  int64_t tileQ = 32;
  int64_t tileK = 16;
  /// Lower through scf.forall (the GPU form), run serially.
  bool parallel = false;
  /// Attention as per-block pieces grouped by key block, merged by
  /// log-sum-exp (moba-densify-attention).
  bool densify = false;
  /// LLVM optimization level of the JIT (0-3).
  unsigned optLevel = 3;
  /// When set, called with a stage name and the module's text after each
  /// stage ("moba", "loops", "llvm").
  std::function<void(llvm::StringRef stage, llvm::StringRef ir)> dumpIR;
  /// When not empty, compiled object code is kept in this directory under
  /// cacheKey() and loaded from there instead of compiled again. The
  /// directory must belong to the caller with mode 0700 (it is created so);
  /// files are verified before they run (lib/Runner/KernelCache.h,
  /// docs/python.md). A directory or file that fails is reported through
  /// CpuAttentionKernel::cacheWarning(), never an error.
  std::string cacheDir;
};

/// The compiler's version: the project version and the git revision it was
/// built from ("-dirty" when the tree had changes).
llvm::StringRef compilerVersion();
/// What a cached kernel must have been compiled by: compilerVersion() and
/// the LLVM/MLIR release the library links (statically, so a rebuild
/// against another release at the same revision is another compiler).
std::string compilerIdentity();

/// A name of `config` compiled with `options`: the configuration and the
/// pipeline options, e.g. "cpu-d64_h8_kv2_b64_k3_causal_bf16-fused-q32-k16-O3"
/// (the IR dumps' file names).
std::string kernelName(const AttentionConfig &config,
                       const CpuCompileOptions &options);

/// The disk cache's key of a kernel named `name` on this host: the name, the
/// compiler version and the host CPU's name, then after a '|' the CPU
/// features the code is compiled for ("+avx2,+fma,...").
std::string hostCacheKey(llvm::StringRef name);

/// The disk cache's key of `config` compiled with `options` on this host:
/// kernelName(), the compiler version and the host CPU's name, then after a
/// '|' the CPU features the code is compiled for ("+avx2,+fma,...").
std::string cacheKey(const AttentionConfig &config,
                     const CpuCompileOptions &options);

class CpuAttentionKernel {
public:
  /// Compiles `config`; errors carry the pipeline's diagnostics.
  static llvm::Expected<std::unique_ptr<CpuAttentionKernel>>
  compile(const AttentionConfig &config, const CpuCompileOptions &options);
  /// Checks `config` and `options` as compile() does, without compiling.
  static llvm::Error check(const AttentionConfig &config,
                           const CpuCompileOptions &options);
  ~CpuAttentionKernel();

  /// Runs the forward on `buffers`. Checks the shapes it can (cu_seqlens
  /// starts at 0, never decreases, ends at `tokens`) and reports the first
  /// violation.
  llvm::Error run(const AttentionBuffers &buffers) const;

  /// Runs the backward on `buffers` (a kernel compiled with
  /// `config().backward`): writes dq, dk and dv. Checks what run() checks
  /// and that no gradient overlaps another buffer; a null `dlse` is a zero
  /// one the kernel provides.
  llvm::Error runGrad(const GradBuffers &buffers) const;

  const AttentionConfig &config() const { return cfg; }
  /// True when the code was loaded from the disk cache.
  bool fromCache() const { return loadedFromCache; }
  /// What went wrong with the disk cache, one sentence a line: a refused
  /// directory (the kernel was compiled without the cache), a cached file
  /// that failed verification (compiled again and replaced), a file that
  /// could not be written. Empty when nothing did.
  const std::string &cacheWarning() const { return cacheProblems; }

private:
  CpuAttentionKernel(AttentionConfig config);
  /// Links `object` (a relocatable object for this host) into a JIT of its
  /// own and finds the entry points.
  llvm::Error load(std::unique_ptr<llvm::MemoryBuffer> object);

  AttentionConfig cfg;
  /// What the kernel allocates per call (checked before each run).
  KernelScratch scratch;
  std::unique_ptr<llvm::orc::LLJIT> jit;
  void *entry = nullptr;
  /// `_mlir_ciface_moba_attention_grad`; null without the backward.
  void *gradEntry = nullptr;
  bool loadedFromCache = false;
  std::string cacheProblems;
};

} // namespace moba
} // namespace mlir

#endif // MOBA_RUNNER_CPURUNNER_H
