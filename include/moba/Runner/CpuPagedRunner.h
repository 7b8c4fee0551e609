//===- CpuPagedRunner.h - JIT-compiled paged KV cache ops -------*- C++ -*-===//
//
// Part of moba-mlir. The CPU backend of decode against a paged KV cache:
// compiles a PagedConfig (its append and decode entry points) through the
// moba CPU pipeline and runs them on host buffers.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_RUNNER_CPUPAGEDRUNNER_H
#define MOBA_RUNNER_CPUPAGEDRUNNER_H

#include "moba/Runner/PagedConfig.h"

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

namespace mlir::moba {

struct CpuPagedCompileOptions {
  /// LLVM optimization level of the JIT (0-3).
  unsigned optLevel = 3;
  /// As CpuCompileOptions::dumpIR: stages "moba", "loops", "llvm".
  std::function<void(llvm::StringRef stage, llvm::StringRef ir)> dumpIR;
  /// As CpuCompileOptions::cacheDir: a directory of the caller's own (mode
  /// 0700) where the object code is kept under pagedCacheKey().
  std::string cacheDir;
};

/// A name of `config` compiled with `options`, e.g.
/// "cpu-paged_d64_h8_kv2_p16_b64_k3_query_head_f32_q16-O3" (the IR dumps'
/// file names).
std::string pagedKernelName(const PagedConfig &config,
                            const CpuPagedCompileOptions &options);

/// The disk cache's key of `config`'s code with `options` on this host
/// (hostCacheKey of its name without max_query_tokens: the code is the same
/// for every value).
std::string pagedCacheKey(const PagedConfig &config,
                          const CpuPagedCompileOptions &options);

class CpuPagedKernel {
public:
  /// Compiles `config`; errors carry the pipeline's diagnostics.
  static llvm::Expected<std::unique_ptr<CpuPagedKernel>>
  compile(const PagedConfig &config, const CpuPagedCompileOptions &options);
  /// Checks `config` and `options` as compile() does, without compiling.
  static llvm::Error check(const PagedConfig &config,
                           const CpuPagedCompileOptions &options);
  ~CpuPagedKernel();

  /// Appends the tokens of `append` to `cache` (checkPagedAppend first; the
  /// first violation is the error and nothing is written).
  llvm::Error append(const PagedCacheBuffers &cache,
                     const PagedAppendBuffers &append) const;
  /// Runs decode (or prefill with the cache) on `cache`
  /// (checkPagedDecode first).
  llvm::Error decode(const PagedCacheBuffers &cache,
                     const PagedDecodeBuffers &decode) const;

  const PagedConfig &config() const { return cfg; }
  /// True when the code was loaded from the disk cache.
  bool fromCache() const { return loadedFromCache; }
  /// As CpuAttentionKernel::cacheWarning().
  const std::string &cacheWarning() const { return cacheProblems; }

private:
  explicit CpuPagedKernel(PagedConfig config);
  /// Links `object` and finds the two entry points.
  llvm::Error load(std::unique_ptr<llvm::MemoryBuffer> object);

  PagedConfig cfg;
  std::unique_ptr<llvm::orc::LLJIT> jit;
  void *appendEntry = nullptr;
  void *decodeEntry = nullptr;
  bool loadedFromCache = false;
  std::string cacheProblems;
};

} // namespace mlir::moba

#endif // MOBA_RUNNER_CPUPAGEDRUNNER_H
