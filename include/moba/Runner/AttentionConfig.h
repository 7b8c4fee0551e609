//===- AttentionConfig.h - One compiled MoBA configuration ------*- C++ -*-===//
//
// Part of moba-mlir. What a user picks when compiling MoBA attention, and the
// moba IR made from it.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_RUNNER_ATTENTIONCONFIG_H
#define MOBA_RUNNER_ATTENTIONCONFIG_H

#include "moba/Dialect/Moba/IR/MobaLimits.h"

#include "llvm/ADT/StringRef.h"
#include "llvm/Support/Error.h"

#include <cstdint>
#include <limits>
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

/// The limits of what a user picks, each from what the lowerings do with the
/// value (docs/python.md, "Limits", says the same for users). Within them
/// every size and offset the kernels compute fits int64.
///
/// head_dim, top_k and tile_k become vector widths: a row of q, the running
/// top-k and one tile's scores live in vector registers, and past this width
/// the code grows without bound for no real model. They are the dialect's
/// own limits (MobaLimits.h: kMaxHeadDim, kMaxSelectedBlocks,
/// kMaxTileKeys), which its verifiers and passes enforce on any IR.
/// Token offsets (cu_seqlens) are int32: a batch holds at most this many
/// tokens, and at most this many sequences.
constexpr int64_t kMaxTokens = std::numeric_limits<int32_t>::max();
constexpr int64_t kMaxSequences = kMaxTokens;
/// block_size and tile_q: no sequence is longer than kMaxTokens, so larger
/// values mean the same as it; the bound keeps `first key + block_size`,
/// `tile start + tile_q` and the block pooling's chunk count far from int64
/// overflow (a loop counter that wrapped once ran the query-tile loop past
/// the sequence).
constexpr int64_t kMaxBlockSize = kMaxTokens;
constexpr int64_t kMaxTileQ = kMaxTokens;
/// num_heads and num_kv_heads: with head_dim <= kMaxHeadDim and at most
/// kMaxTokens tokens, every byte offset into q, k, v, out and lse is below
/// 2^31 * 2^20 * 2^10 * 4 = 2^63.
constexpr int64_t kMaxHeads = int64_t(1) << 20;

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
  /// Also compile the gradient entry `@moba_attention_grad`: one
  /// compilation holds both, so that the backward
  /// recomputes the forward's selection with the same lowering.
  bool backward = false;

  /// Checks the configuration against the limits above; the error names
  /// the offending field and its value.
  llvm::Error validate() const;
  /// A short stable spelling, e.g. "d128_h32_kv8_b512_k3_causal_bf16"; a
  /// scale is spelled exactly (its float32 bits), and "_grad" ends the key
  /// of a configuration with the backward.
  std::string key() const;
};

/// Checks a softmax scale as given (before it is rounded to float32): a
/// finite float32 no smaller than the least normal one. Zero is no scale
/// (the C API's "default") and subnormals are flushed to zero by the GPU
/// kernels' fast exponentials, so the CPU and the GPU would disagree.
llvm::Error checkScale(double scale);

/// Checks the tile sizes of the loop lowerings against the limits above:
/// `tileQ` (queries per tile, a loop step; none for the GPU targets) and
/// `tileK` (keys per online-softmax update, a vector width).
llvm::Error checkTileSizes(std::optional<int64_t> tileQ, int64_t tileK);

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

/// The buffers of one backward call, contiguous, in the memory the kernel
/// runs on (as AttentionBuffers): the
/// forward's inputs and results, the upstream gradients, and the gradients
/// written.
struct GradBuffers {
  const void *q = nullptr;            ///< [tokens, Hq, D]
  const void *k = nullptr;            ///< [tokens, Hkv, D]
  const void *v = nullptr;            ///< [tokens, Hkv, D]
  const int32_t *cuSeqlens = nullptr; ///< [numSequences + 1]
  const void *out = nullptr;          ///< [tokens, Hq, D], the forward's
  const float *lse = nullptr;         ///< [tokens, Hq], the forward's
  const void *dout = nullptr;         ///< [tokens, Hq, D]
  /// [tokens, Hq]; null: the caller does not differentiate lse (zero).
  const float *dlse = nullptr;
  void *dq = nullptr; ///< [tokens, Hq, D]
  void *dk = nullptr; ///< [tokens, Hkv, D]
  void *dv = nullptr; ///< [tokens, Hkv, D]
  int64_t tokens = 0;
  int64_t numSequences = 0;
};

/// The bytes of each buffer of a call of `config` on `tokens` tokens, in
/// checked 64-bit arithmetic (an error when one does not fit int64).
struct AttentionBufferBytes {
  int64_t q = 0, kv = 0, out = 0, lse = 0; ///< kv: each of k and v.
};
llvm::Expected<AttentionBufferBytes>
attentionBufferBytes(const AttentionConfig &config, int64_t tokens);

/// How a kernel was lowered, as far as the scratch memory it allocates per
/// call goes (besides the block means, the selected blocks and staging rows
/// of out and lse that every kernel may have).
struct KernelScratch {
  /// The gate's scores of every query and block, [T, Hq, ceil(T /
  /// block_size)]: the tiled and decomposed CPU stages.
  bool scores = false;
  /// Block means summed in chunks of 256 keys, [rows * ceil(block_size /
  /// 256), Hkv, D]: the parallel (GPU) form.
  bool chunkedPooling = false;
  /// Query groups and per-slot partial rows [top_k, T, Hq, D]: densify.
  bool densified = false;
};

/// An upper bound of the bytes a kernel lowered as `scratch` allocates for
/// one call on `tokens` tokens in `numSequences` sequences, in checked
/// arithmetic: an error when it does not fit int64 (the kernel's own size
/// computations would wrap).
llvm::Expected<int64_t> kernelScratchBytes(const AttentionConfig &config,
                                           KernelScratch scratch,
                                           int64_t tokens,
                                           int64_t numSequences);

/// An upper bound of the bytes the backward of `config` allocates for one
/// call on `tokens` tokens in `numSequences` sequences (the selection
/// recomputed: block means, gate scores and selected blocks; the row term,
/// the query groups, the per-slot dq partials [top_k, T, Hq, D] in f32 and
/// f32 accumulators of dk and dv, and with `scratch.chunkedPooling` the
/// parallel form's chunk sums of the block means), in checked arithmetic.
llvm::Expected<int64_t> gradScratchBytes(const AttentionConfig &config,
                                         int64_t tokens, int64_t numSequences,
                                         KernelScratch scratch = {});

/// The bytes of memory and swap of this host (0 when unknown): more than
/// that, malloc fails.
uint64_t hostMemoryBytes();

/// Checks the counts of `buffers` (tokens and sequences within the limits
/// above, the buffers' sizes addressable), their pointers (none null, but
/// for an empty batch the data buffers may be) and, when `hostCuSeqlens` is
/// not null, the offsets there (start at 0, never decrease, end at the token
/// count); the error names the first violation. cu_seqlens must hold
/// numSequences + 1 offsets: no pointer says how long it is.
llvm::Error checkAttentionBuffers(const AttentionConfig &config,
                                  const AttentionBuffers &buffers,
                                  const int32_t *hostCuSeqlens);

/// Checks a backward call's buffers as checkAttentionBuffers does the
/// forward's (out and lse are the forward's results, read here), and that
/// dout, dq, dk and dv are not null when there are tokens and that no
/// gradient written overlaps another buffer (their sizes are known from
/// the counts). `dlse` may be null.
llvm::Error checkGradBuffers(const AttentionConfig &config,
                             const GradBuffers &buffers,
                             const int32_t *hostCuSeqlens);

/// The moba IR of `config`: a function `@moba_attention` taking the buffers
/// q [T, Hq, D], k and v [T, Hkv, D], cu_seqlens [B + 1] (i32), out
/// [T, Hq, D] and lse [T, Hq] (f32), with a C interface, whose body is one
/// moba.attention. With `config.backward`, a second function
/// `@moba_attention_grad` taking q, k, v, cu_seqlens, out, lse, dout
/// [T, Hq, D], dlse [T, Hq] (f32), and the results dq [T, Hq, D], dk and dv
/// [T, Hkv, D], whose body is one moba.attention_grad with the same
/// attributes.
std::string buildAttentionModule(const AttentionConfig &config);

} // namespace mlir::moba

#endif // MOBA_RUNNER_ATTENTIONCONFIG_H
