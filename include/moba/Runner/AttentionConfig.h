//===- AttentionConfig.h - One compiled MoBA configuration ------*- C++ -*-===//
//
// Part of moba-mlir. What a user picks when compiling MoBA attention, and the
// moba IR made from it.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_RUNNER_ATTENTIONCONFIG_H
#define MOBA_RUNNER_ATTENTIONCONFIG_H

#include "llvm/ADT/StringRef.h"
#include "llvm/Support/Error.h"

#include <cstdint>
#include <optional>
#include <string>

namespace mlir::moba {

enum class ElementType { F32, F16, BF16 };

/// The MLIR spelling of an element type ("f32", "f16", "bf16").
llvm::StringRef elementTypeName(ElementType type);
/// Parses "f32", "f16" or "bf16".
llvm::Expected<ElementType> parseElementType(llvm::StringRef name);
/// Bytes per element.
int64_t elementTypeBytes(ElementType type);

/// The largest head_dim and top_k the loop lowerings accept: both become
/// vector widths.
constexpr int64_t kMaxVectorWidth = 1024;

/// One MoBA attention configuration on the packed variable-length layout.
/// Token and sequence counts are not part of it: one compiled kernel serves
/// every batch.
struct AttentionConfig {
  int64_t headDim = 128;
  int64_t numHeads = 32;
  int64_t numKvHeads = 32;
  int64_t blockSize = 512;
  int64_t topK = 3;
  bool causal = true;
  std::optional<float> scale; ///< Default: 1/sqrt(headDim).
  ElementType dtype = ElementType::BF16;

  /// Checks the configuration; the error names the offending field.
  llvm::Error validate() const;
  /// A short stable spelling, e.g. "d128_h32_kv8_b512_k3_causal_bf16".
  std::string key() const;
};

/// The buffers of one call, all contiguous (row-major), in the memory the
/// kernel runs on: host memory for the CPU target, device memory for GPUs.
struct AttentionBuffers {
  const void *q = nullptr;            ///< [tokens, Hq, D]
  const void *k = nullptr;            ///< [tokens, Hkv, D]
  const void *v = nullptr;            ///< [tokens, Hkv, D]
  const int32_t *cuSeqlens = nullptr; ///< [numSequences + 1]
  void *out = nullptr;                ///< [tokens, Hq, D]
  float *lse = nullptr;               ///< [tokens, Hq]
  int64_t tokens = 0;
  int64_t numSequences = 0;
};

/// Checks the sizes of `buffers` and, when `hostCuSeqlens` is not null, the
/// offsets there (start at 0, never decrease, end at the token count); the
/// error names the first violation.
llvm::Error checkAttentionBuffers(const AttentionBuffers &buffers,
                                  const int32_t *hostCuSeqlens);

/// The moba IR of `config`: a function `@moba_attention` taking the buffers
/// q [T, Hq, D], k and v [T, Hkv, D], cu_seqlens [B + 1] (i32), out
/// [T, Hq, D] and lse [T, Hq] (f32), with a C interface, whose body is one
/// moba.attention.
std::string buildAttentionModule(const AttentionConfig &config);

} // namespace mlir::moba

#endif // MOBA_RUNNER_ATTENTIONCONFIG_H
