//===- PagedConfig.h - One compiled paged KV cache configuration -*- C++ -*-===//
//
// Part of moba-mlir. What a user picks when compiling MoBA decode against a
// paged KV cache (docs/semantics.md, "Decode and chunked prefill"), the moba
// IR made from it, and the checks of one call's buffers.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_RUNNER_PAGEDCONFIG_H
#define MOBA_RUNNER_PAGEDCONFIG_H

#include "moba/Runner/AttentionConfig.h"

#include "llvm/Support/Error.h"

#include <cstdint>
#include <optional>
#include <string>

namespace mlir::moba {

/// Which query heads share a top-k (docs/semantics.md, `selection`).
enum class Selection { QueryHead, KvHead };

/// "query_head" or "kv_head", as the op's attribute spells it.
llvm::StringRef selectionName(Selection selection);

/// The most queries per sequence a decode kernel takes (speculative
/// decoding verifies a few tokens a step); a longer chunk is chunked
/// prefill, which a kernel compiled with `maxQueryTokens = 0` takes.
constexpr int64_t kMaxDecodeQueryTokens = 16;

/// One configuration of the paged cache's two entry points, the append and
/// decode (or prefill with the cache). Page, sequence and token counts are
/// not part of it: one compiled kernel serves every cache and batch.
struct PagedConfig {
  int64_t headDim = 128;
  int64_t numHeads = 32;
  int64_t numKvHeads = 8;
  /// Tokens a page, dim 1 of the caches.
  int64_t pageSize = 16;
  /// A MoBA block: a whole number of pages.
  int64_t blockSize = 512;
  int64_t topK = 3;
  Selection selection = Selection::QueryHead;
  std::optional<float> scale; ///< Default: 1/sqrt(headDim).
  ElementType dtype = ElementType::BF16;
  /// The most queries a sequence may have in one decode call, 1 to
  /// kMaxDecodeQueryTokens; 0: any number (chunked prefill). Checked per
  /// call; the CPU code is the same for every value.
  int64_t maxQueryTokens = 1;

  /// Checks the configuration (the attention's limits, page_size dividing
  /// block_size, maxQueryTokens); the error names the offending field.
  llvm::Error validate() const;
  /// A short stable spelling, e.g.
  /// "paged_d128_h32_kv8_p16_b512_k3_query_head_q1_bf16" ("_s<scale>" when
  /// one is given).
  std::string key() const;
  /// key() without maxQueryTokens: the name of the code, which is the same
  /// for every maxQueryTokens.
  std::string codeKey() const;
};

/// The moba IR of `config`: two functions with a C interface,
///   @moba_paged_append(k, v [N, Hkv, D], cu_seqlens [B + 1] i32,
///                      block_table [B, max_pages] i32, cache_lens [B] i32,
///                      k_cache, v_cache [pages, page_size, Hkv, D],
///                      block_key_sums [B, max_blocks, Hkv, D] f32)
/// writing the caches and sums in place (moba.paged_kv_append), and
///   @moba_paged_decode(q [Tq, Hq, D], cu_seqlens_q [B + 1] i32,
///                      k_cache, v_cache, block_table, cache_lens,
///                      block_key_sums, out [Tq, Hq, D], lse [Tq, Hq] f32)
/// (moba.paged_decode_attention).
std::string buildPagedModule(const PagedConfig &config);

/// The cache of one call: host pointers for the CPU target, contiguous,
/// with its counts. `cacheLens` are the lengths before an append and after
/// it for a decode.
struct PagedCacheBuffers {
  void *kCache = nullptr;         ///< [pages, page_size, Hkv, D]
  void *vCache = nullptr;         ///< [pages, page_size, Hkv, D]
  float *blockKeySums = nullptr;  ///< [B, max_blocks, Hkv, D]
  const int32_t *blockTable = nullptr; ///< [B, max_pages]
  const int32_t *cacheLens = nullptr;  ///< [B]
  int64_t pages = 0;
  int64_t maxPages = 0;
  int64_t maxBlocks = 0;
  int64_t numSequences = 0;
};

/// New tokens packed as the forward's k and v.
struct PagedAppendBuffers {
  const void *k = nullptr;            ///< [tokens, Hkv, D]
  const void *v = nullptr;            ///< [tokens, Hkv, D]
  const int32_t *cuSeqlens = nullptr; ///< [B + 1]
  int64_t tokens = 0;
};

/// The queries of a decode (or prefill) step and its results.
struct PagedDecodeBuffers {
  const void *q = nullptr;             ///< [tokens, Hq, D]
  const int32_t *cuSeqlensQ = nullptr; ///< [B + 1]
  void *out = nullptr;                 ///< [tokens, Hq, D]
  float *lse = nullptr;                ///< [tokens, Hq]
  int64_t tokens = 0;
};

/// Where a call's buffers are. On the device the host reads none of them:
/// the checks below keep to the counts, the pointers and the byte ranges,
/// and the kernels check the lengths, offsets and page ids they read
/// (docs/gpu-backend.md, "Paged KV cache").
enum class PagedMemory { Host, Device };

/// Checks an append on host memory: the counts within their limits and
/// every buffer's bytes in int64, no null pointer where something is read
/// or written, cu_seqlens well formed, and for every sequence that its
/// grown length fits its pages, its blocks and int32, and that the page ids
/// of those positions are in [0, pages); the written buffers (caches and
/// sums) overlap neither each other nor an input. The error names the first
/// bad value (a sequence by its index). With PagedMemory::Device, the
/// contents of cu_seqlens, block_table and cache_lens are not read.
llvm::Error checkPagedAppend(const PagedConfig &config,
                             const PagedCacheBuffers &cache,
                             const PagedAppendBuffers &append,
                             PagedMemory memory = PagedMemory::Host);

/// Checks a decode on host memory as checkPagedAppend does an append: a
/// sequence's queries are its last tokens, so none may have more queries
/// than cached tokens, nor more than `config.maxQueryTokens` (when not 0);
/// out and lse overlap no other buffer.
llvm::Error checkPagedDecode(const PagedConfig &config,
                             const PagedCacheBuffers &cache,
                             const PagedDecodeBuffers &decode,
                             PagedMemory memory = PagedMemory::Host);

} // namespace mlir::moba

#endif // MOBA_RUNNER_PAGEDCONFIG_H
