//===- PagedConfig.cpp - One compiled paged KV cache configuration --------===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#include "moba/Runner/PagedConfig.h"

#include "moba/Dialect/Moba/IR/MobaLimits.h"

#include "llvm/ADT/STLExtras.h"
#include "llvm/Support/CheckedArithmetic.h"
#include "llvm/Support/FormatVariadic.h"

#include <limits>
#include <vector>

using namespace mlir;
using namespace mlir::moba;

llvm::StringRef mlir::moba::selectionName(Selection selection) {
  return selection == Selection::KvHead ? "kv_head" : "query_head";
}

llvm::Error PagedConfig::validate() const {
  // The fields the forward has mean the same here, with the same limits.
  AttentionConfig attention;
  attention.headDim = headDim;
  attention.numHeads = numHeads;
  attention.numKvHeads = numKvHeads;
  attention.blockSize = blockSize;
  attention.topK = topK;
  attention.scale = scale;
  if (llvm::Error e = attention.validate())
    return e;
  if (pageSize < 1 || pageSize > kMaxBlockSize)
    return llvm::createStringError("page_size must be in 1..%lld, got %lld",
                                   static_cast<long long>(kMaxBlockSize),
                                   static_cast<long long>(pageSize));
  if (blockSize % pageSize != 0)
    return llvm::createStringError(
        "block_size (%lld) must be a multiple of page_size (%lld): a MoBA "
        "block is a whole number of pages",
        static_cast<long long>(blockSize), static_cast<long long>(pageSize));
  if (maxQueryTokens < 0 || maxQueryTokens > kMaxDecodeQueryTokens)
    return llvm::createStringError(
        "max_query_tokens must be 1..%lld (decode) or 0 (any number: "
        "chunked prefill), got %lld",
        static_cast<long long>(kMaxDecodeQueryTokens),
        static_cast<long long>(maxQueryTokens));
  return llvm::Error::success();
}

std::string PagedConfig::codeKey() const {
  std::string s = llvm::formatv("paged_d{0}_h{1}_kv{2}_p{3}_b{4}_k{5}_{6}_{7}",
                                headDim, numHeads, numKvHeads, pageSize,
                                blockSize, topK, selectionName(selection),
                                elementTypeName(dtype));
  // Nine significant digits name a float32 exactly.
  if (scale)
    s += llvm::formatv("_s{0:e8}", *scale).str();
  return s;
}

std::string PagedConfig::key() const {
  return codeKey() + llvm::formatv("_q{0}", maxQueryTokens).str();
}

std::string mlir::moba::buildPagedModule(const PagedConfig &c) {
  std::string e = elementTypeName(c.dtype).str();
  std::string qt = llvm::formatv("?x{0}x{1}x{2}", c.numHeads, c.headDim, e);
  std::string kvt = llvm::formatv("?x{0}x{1}x{2}", c.numKvHeads, c.headDim, e);
  std::string cachet = llvm::formatv("?x{0}x{1}x{2}x{3}", c.pageSize,
                                     c.numKvHeads, c.headDim, e);
  std::string sumst =
      llvm::formatv("?x?x{0}x{1}xf32", c.numKvHeads, c.headDim);
  std::string lset = llvm::formatv("?x{0}xf32", c.numHeads);
  std::string attrs = llvm::formatv(
      "block_size = {0}, top_k = {1}, selection = \"{2}\"", c.blockSize, c.topK,
      selectionName(c.selection));
  if (c.scale)
    attrs += llvm::formatv(", scale = {0:e8} : f32", *c.scale).str();
  // The caches and sums are read and written in place: `restrict writable`
  // tensors of the caller's buffers, materialized back into them, which
  // one-shot bufferization turns into writes to those buffers (no copy).
  return llvm::formatv(R"mlir(
func.func @moba_paged_append(%k: memref<{0}>, %v: memref<{0}>,
    %cu: memref<?xi32>, %table: memref<?x?xi32>, %lens: memref<?xi32>,
    %kc: memref<{1}>, %vc: memref<{1}>, %sums: memref<{2}>)
    attributes {{llvm.emit_c_interface} {
  %kt = bufferization.to_tensor %k restrict : memref<{0}> to tensor<{0}>
  %vt = bufferization.to_tensor %v restrict : memref<{0}> to tensor<{0}>
  %cut = bufferization.to_tensor %cu restrict : memref<?xi32> to tensor<?xi32>
  %tt = bufferization.to_tensor %table restrict
      : memref<?x?xi32> to tensor<?x?xi32>
  %lt = bufferization.to_tensor %lens restrict : memref<?xi32> to tensor<?xi32>
  %kct = bufferization.to_tensor %kc restrict writable
      : memref<{1}> to tensor<{1}>
  %vct = bufferization.to_tensor %vc restrict writable
      : memref<{1}> to tensor<{1}>
  %st = bufferization.to_tensor %sums restrict writable
      : memref<{2}> to tensor<{2}>
  %kc2, %vc2, %s2 = moba.paged_kv_append k(%kt : tensor<{0}>)
      v(%vt : tensor<{0}>) cu_seqlens(%cut : tensor<?xi32>)
      block_table(%tt : tensor<?x?xi32>) cache_lens(%lt : tensor<?xi32>)
      outs(%kct : tensor<{1}>, %vct : tensor<{1}>, %st : tensor<{2}>)
      {{block_size = {5}}
  bufferization.materialize_in_destination %kc2 in restrict writable %kc
      : (tensor<{1}>, memref<{1}>) -> ()
  bufferization.materialize_in_destination %vc2 in restrict writable %vc
      : (tensor<{1}>, memref<{1}>) -> ()
  bufferization.materialize_in_destination %s2 in restrict writable %sums
      : (tensor<{2}>, memref<{2}>) -> ()
  return
}

func.func @moba_paged_decode(%q: memref<{3}>, %cu: memref<?xi32>,
    %kc: memref<{1}>, %vc: memref<{1}>, %table: memref<?x?xi32>,
    %lens: memref<?xi32>, %sums: memref<{2}>, %out: memref<{3}>,
    %lse: memref<{4}>) attributes {{llvm.emit_c_interface} {
  %qt = bufferization.to_tensor %q restrict : memref<{3}> to tensor<{3}>
  %cut = bufferization.to_tensor %cu restrict : memref<?xi32> to tensor<?xi32>
  %kct = bufferization.to_tensor %kc restrict : memref<{1}> to tensor<{1}>
  %vct = bufferization.to_tensor %vc restrict : memref<{1}> to tensor<{1}>
  %tt = bufferization.to_tensor %table restrict
      : memref<?x?xi32> to tensor<?x?xi32>
  %lt = bufferization.to_tensor %lens restrict : memref<?xi32> to tensor<?xi32>
  %st = bufferization.to_tensor %sums restrict : memref<{2}> to tensor<{2}>
  %ot = bufferization.to_tensor %out restrict writable
      : memref<{3}> to tensor<{3}>
  %lst = bufferization.to_tensor %lse restrict writable
      : memref<{4}> to tensor<{4}>
  %o, %l = moba.paged_decode_attention q(%qt : tensor<{3}>)
      cu_seqlens_q(%cut : tensor<?xi32>) k_cache(%kct : tensor<{1}>)
      v_cache(%vct : tensor<{1}>) block_table(%tt : tensor<?x?xi32>)
      cache_lens(%lt : tensor<?xi32>) block_key_sums(%st : tensor<{2}>)
      outs(%ot : tensor<{3}>, %lst : tensor<{4}>) {{{6}}
  bufferization.materialize_in_destination %o in restrict writable %out
      : (tensor<{3}>, memref<{3}>) -> ()
  bufferization.materialize_in_destination %l in restrict writable %lse
      : (tensor<{4}>, memref<{4}>) -> ()
  return
}
)mlir",
                       kvt, cachet, sumst, qt, lset, c.blockSize, attrs)
      .str();
}

namespace {

/// The product of `factors` in checked int64 arithmetic; nullopt when it
/// does not fit.
std::optional<int64_t> product(std::initializer_list<int64_t> factors) {
  int64_t total = 1;
  for (int64_t factor : factors) {
    std::optional<int64_t> next = llvm::checkedMul(total, factor);
    if (!next)
      return std::nullopt;
    total = *next;
  }
  return total;
}

long long ll(int64_t v) { return static_cast<long long>(v); }

/// "`name` must be in [min, max], got value".
llvm::Error checkRange(const char *name, int64_t value, int64_t min,
                       int64_t max) {
  if (value >= min && value <= max)
    return llvm::Error::success();
  return llvm::createStringError("%s must be in %lld..%lld, got %lld", name,
                                 ll(min), ll(max), ll(value));
}

/// The bytes of a buffer of `name` with `factors` elements' bytes: at most
/// 2^62 (the kernels' index arithmetic is int64, MobaLimits.h).
llvm::Expected<int64_t> bufferBytes(const char *name,
                                    std::initializer_list<int64_t> factors) {
  std::optional<int64_t> bytes = product(factors);
  if (!bytes || *bytes > kMaxStaticBytes)
    return llvm::createStringError(
        "%s would need more than 2^62 bytes with these counts", name);
  return *bytes;
}

/// The byte range [begin, end) of a buffer.
struct ByteRange {
  const char *name;
  uintptr_t begin, end;
};

ByteRange rangeOf(const char *name, const void *pointer, int64_t bytes) {
  uintptr_t begin = reinterpret_cast<uintptr_t>(pointer);
  return {name, begin, begin + static_cast<uintptr_t>(bytes)};
}

/// An error when a buffer of `written` shares a byte with another of `all`.
llvm::Error checkNoOverlap(llvm::ArrayRef<ByteRange> written,
                           llvm::ArrayRef<ByteRange> all) {
  for (const ByteRange &w : written)
    for (const ByteRange &r : all)
      if (llvm::StringRef(r.name) != w.name && r.begin < r.end &&
          w.begin < w.end && w.begin < r.end && r.begin < w.end)
        return llvm::createStringError(
            "%s overlaps %s: a buffer the kernel writes needs memory of its "
            "own",
            w.name, r.name);
  return llvm::Error::success();
}

/// The cache's counts and pointers, and its buffers' bytes.
struct CacheBytes {
  int64_t cache = 0, sums = 0, table = 0, lens = 0;
};

llvm::Expected<CacheBytes> checkCache(const PagedConfig &config,
                                      const PagedCacheBuffers &c) {
  // Page ids are int32, and so are lengths: a pool of more pages, or a
  // table of more pages a sequence than int32 positions, names nothing more.
  constexpr int64_t int32Max = std::numeric_limits<int32_t>::max();
  if (llvm::Error e = checkRange("num_sequences", c.numSequences, 1,
                                 kMaxSequences))
    return std::move(e);
  if (llvm::Error e = checkRange("num_pages", c.pages, 1, int32Max))
    return std::move(e);
  if (llvm::Error e = checkRange("max_pages", c.maxPages, 1, int32Max))
    return std::move(e);
  if (llvm::Error e = checkRange("max_blocks", c.maxBlocks, 1, int32Max))
    return std::move(e);
  const std::pair<const char *, const void *> pointers[] = {
      {"k_cache", c.kCache},         {"v_cache", c.vCache},
      {"block_key_sums", c.blockKeySums}, {"block_table", c.blockTable},
      {"cache_lens", c.cacheLens}};
  for (auto [name, pointer] : pointers)
    if (!pointer)
      return llvm::createStringError("%s is null", name);
  int64_t element = elementTypeBytes(config.dtype);
  CacheBytes bytes;
  auto cache = bufferBytes("k_cache", {c.pages, config.pageSize,
                                       config.numKvHeads, config.headDim,
                                       element});
  if (!cache)
    return cache.takeError();
  auto sums = bufferBytes("block_key_sums", {c.numSequences, c.maxBlocks,
                                             config.numKvHeads, config.headDim,
                                             4});
  if (!sums)
    return sums.takeError();
  auto table = bufferBytes("block_table", {c.numSequences, c.maxPages, 4});
  if (!table)
    return table.takeError();
  bytes.cache = *cache;
  bytes.sums = *sums;
  bytes.table = *table;
  bytes.lens = 4 * c.numSequences;
  return bytes;
}

/// Checks offsets `cu` of `name` over `tokens` tokens and `n` sequences.
llvm::Error checkOffsets(const char *name, const int32_t *cu, int64_t n,
                         int64_t tokens) {
  if (!cu)
    return llvm::createStringError("%s is null", name);
  if (cu[0] != 0)
    return llvm::createStringError("%s[0] must be 0, got %d", name, cu[0]);
  for (int64_t i = 1; i <= n; ++i)
    if (cu[i] < cu[i - 1])
      return llvm::createStringError(
          "%s must not decrease: %s[%lld]=%d < %s[%lld]=%d", name, name, ll(i),
          cu[i], name, ll(i - 1), cu[i - 1]);
  if (cu[n] != tokens)
    return llvm::createStringError("%s must end at the token count %lld, got "
                                   "%d",
                                   name, ll(tokens), cu[n]);
  return llvm::Error::success();
}

/// Checks that sequence `b` may hold `length` tokens: within its pages, its
/// blocks, and every page id of them in [0, pages). `what` says where the
/// length comes from, for the message.
llvm::Error checkSequence(const PagedConfig &config, const PagedCacheBuffers &c,
                          int64_t b, int64_t length, const std::string &what) {
  // Checked by checkCache: these products fit int64.
  int64_t positions = c.maxPages * config.pageSize;
  std::optional<int64_t> blockPositions =
      llvm::checkedMul(c.maxBlocks, config.blockSize);
  if (length > positions)
    return llvm::createStringError(
        "sequence %lld: %s = %lld tokens exceed the %lld positions of its "
        "max_pages = %lld pages of page_size %lld",
        ll(b), what.c_str(), ll(length), ll(positions), ll(c.maxPages),
        ll(config.pageSize));
  if (blockPositions && length > *blockPositions)
    return llvm::createStringError(
        "sequence %lld: %s = %lld tokens exceed the %lld positions of the "
        "max_blocks = %lld blocks of block_key_sums (block_size %lld)",
        ll(b), what.c_str(), ll(length), ll(*blockPositions), ll(c.maxBlocks),
        ll(config.blockSize));
  int64_t used = (length + config.pageSize - 1) / config.pageSize;
  const int32_t *row = c.blockTable + b * c.maxPages;
  for (int64_t i = 0; i < used; ++i)
    if (row[i] < 0 || row[i] >= c.pages)
      return llvm::createStringError(
          "sequence %lld: block_table[%lld, %lld] = %d is not a page of the "
          "pool (0..%lld), and the sequence's %lld tokens use it",
          ll(b), ll(b), ll(i), row[i], ll(c.pages - 1), ll(length));
  return llvm::Error::success();
}

/// Refuses an append that writes a page some other position of the table
/// also names: the same page at two positions of one sequence, or in two
/// sequences' rows. Both would land in the same cache slots, and the other
/// sequence (or position) would read this append's keys with no error.
/// Pages only read (finished ones shared by a common prefix) may repeat.
llvm::Error checkWrittenPagesUnshared(const PagedConfig &config,
                                      const PagedCacheBuffers &c,
                                      const PagedAppendBuffers &a) {
  struct Use {
    int32_t page;
    int64_t sequence, position;
    bool written;
  };
  std::vector<Use> uses;
  for (int64_t b = 0; b < c.numSequences; ++b) {
    int64_t old = c.cacheLens[b];
    int64_t fresh = a.cuSeqlens[b + 1] - a.cuSeqlens[b];
    int64_t used = (old + fresh + config.pageSize - 1) / config.pageSize;
    int64_t firstWritten = fresh > 0 ? old / config.pageSize : used;
    const int32_t *row = c.blockTable + b * c.maxPages;
    for (int64_t i = 0; i < used; ++i)
      uses.push_back({row[i], b, i, i >= firstWritten});
  }
  llvm::stable_sort(uses,
                    [](const Use &x, const Use &y) { return x.page < y.page; });
  for (size_t i = 0; i < uses.size();) {
    size_t end = i + 1;
    while (end < uses.size() && uses[end].page == uses[i].page)
      ++end;
    for (size_t w = i; end - i > 1 && w < end; ++w) {
      if (!uses[w].written)
        continue;
      const Use &other = uses[w == i ? i + 1 : i];
      return llvm::createStringError(
          "block_table[%lld, %lld] = %d is written by this append, and "
          "block_table[%lld, %lld] names the same page: two positions "
          "cannot share a page that is written",
          ll(uses[w].sequence), ll(uses[w].position), uses[w].page,
          ll(other.sequence), ll(other.position));
    }
    i = end;
  }
  return llvm::Error::success();
}

} // namespace

llvm::Error mlir::moba::checkPagedAppend(const PagedConfig &config,
                                         const PagedCacheBuffers &c,
                                         const PagedAppendBuffers &a,
                                         PagedMemory memory) {
  auto bytes = checkCache(config, c);
  if (!bytes)
    return bytes.takeError();
  if (llvm::Error e = checkRange("tokens", a.tokens, 0, kMaxTokens))
    return e;
  int64_t element = elementTypeBytes(config.dtype);
  auto kv = bufferBytes("k", {a.tokens, config.numKvHeads, config.headDim,
                              element});
  if (!kv)
    return kv.takeError();
  if (a.tokens > 0)
    for (auto [name, pointer] : {std::pair<const char *, const void *>{"k", a.k},
                                 {"v", a.v}})
      if (!pointer)
        return llvm::createStringError("%s is null but there are %lld tokens",
                                       name, ll(a.tokens));
  if (memory == PagedMemory::Device && !a.cuSeqlens)
    return llvm::createStringError("cu_seqlens is null");
  if (memory == PagedMemory::Host)
    if (llvm::Error e =
            checkOffsets("cu_seqlens", a.cuSeqlens, c.numSequences, a.tokens))
      return e;
  for (int64_t b = 0; memory == PagedMemory::Host && b < c.numSequences;
       ++b) {
    int64_t old = c.cacheLens[b];
    int64_t fresh = a.cuSeqlens[b + 1] - a.cuSeqlens[b];
    if (old < 0)
      return llvm::createStringError(
          "cache_lens[%lld] must not be negative, got %lld", ll(b), ll(old));
    if (old + fresh > std::numeric_limits<int32_t>::max())
      return llvm::createStringError(
          "sequence %lld: cache_lens[%lld] = %lld plus %lld new tokens do "
          "not fit an int32 length",
          ll(b), ll(b), ll(old), ll(fresh));
    std::string what = llvm::formatv("cache_lens[{0}] + {1} new", b, fresh);
    if (llvm::Error e = checkSequence(config, c, b, old + fresh, what))
      return e;
  }
  // The host's tables only: device tables are the kernels' to check, and
  // their check does not look for shared pages yet.
  if (memory == PagedMemory::Host)
    if (llvm::Error e = checkWrittenPagesUnshared(config, c, a))
      return e;
  ByteRange written[] = {rangeOf("k_cache", c.kCache, bytes->cache),
                         rangeOf("v_cache", c.vCache, bytes->cache),
                         rangeOf("block_key_sums", c.blockKeySums,
                                 bytes->sums)};
  ByteRange all[] = {written[0],
                     written[1],
                     written[2],
                     rangeOf("k", a.k, *kv),
                     rangeOf("v", a.v, *kv),
                     rangeOf("cu_seqlens", a.cuSeqlens,
                             4 * (c.numSequences + 1)),
                     rangeOf("block_table", c.blockTable, bytes->table),
                     rangeOf("cache_lens", c.cacheLens, bytes->lens)};
  return checkNoOverlap(written, all);
}

llvm::Error mlir::moba::checkPagedDecode(const PagedConfig &config,
                                         const PagedCacheBuffers &c,
                                         const PagedDecodeBuffers &d,
                                         PagedMemory memory) {
  auto bytes = checkCache(config, c);
  if (!bytes)
    return bytes.takeError();
  if (llvm::Error e = checkRange("tokens", d.tokens, 0, kMaxTokens))
    return e;
  int64_t element = elementTypeBytes(config.dtype);
  auto q = bufferBytes("q", {d.tokens, config.numHeads, config.headDim,
                             element});
  if (!q)
    return q.takeError();
  auto lse = bufferBytes("lse", {d.tokens, config.numHeads, 4});
  if (!lse)
    return lse.takeError();
  if (d.tokens > 0)
    for (auto [name, pointer] :
         {std::pair<const char *, const void *>{"q", d.q}, {"out", d.out},
          {"lse", d.lse}})
      if (!pointer)
        return llvm::createStringError("%s is null but there are %lld tokens",
                                       name, ll(d.tokens));
  if (memory == PagedMemory::Device && !d.cuSeqlensQ)
    return llvm::createStringError("cu_seqlens_q is null");
  if (memory == PagedMemory::Host)
    if (llvm::Error e = checkOffsets("cu_seqlens_q", d.cuSeqlensQ,
                                     c.numSequences, d.tokens))
      return e;
  for (int64_t b = 0; memory == PagedMemory::Host && b < c.numSequences;
       ++b) {
    int64_t length = c.cacheLens[b];
    int64_t queries = d.cuSeqlensQ[b + 1] - d.cuSeqlensQ[b];
    if (length < 0)
      return llvm::createStringError(
          "cache_lens[%lld] must not be negative, got %lld", ll(b),
          ll(length));
    if (config.maxQueryTokens && queries > config.maxQueryTokens)
      return llvm::createStringError(
          "sequence %lld has %lld queries, more than this kernel's "
          "max_query_tokens = %lld (compile with max_query_tokens 0 for "
          "chunked prefill)",
          ll(b), ll(queries), ll(config.maxQueryTokens));
    if (length < queries)
      return llvm::createStringError(
          "sequence %lld: cache_lens[%lld] = %lld, fewer than its %lld "
          "queries (the queries are the last tokens of the cache: append "
          "their keys and values first)",
          ll(b), ll(b), ll(length), ll(queries));
    std::string what = llvm::formatv("cache_lens[{0}]", b);
    if (llvm::Error e = checkSequence(config, c, b, length, what))
      return e;
  }
  ByteRange written[] = {rangeOf("out", d.out, *q),
                         rangeOf("lse", d.lse, *lse)};
  ByteRange all[] = {written[0],
                     written[1],
                     rangeOf("q", d.q, *q),
                     rangeOf("cu_seqlens_q", d.cuSeqlensQ,
                             4 * (c.numSequences + 1)),
                     rangeOf("k_cache", c.kCache, bytes->cache),
                     rangeOf("v_cache", c.vCache, bytes->cache),
                     rangeOf("block_key_sums", c.blockKeySums, bytes->sums),
                     rangeOf("block_table", c.blockTable, bytes->table),
                     rangeOf("cache_lens", c.cacheLens, bytes->lens)};
  return checkNoOverlap(written, all);
}
