//===- AttentionConfig.cpp - One compiled MoBA configuration --------------===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#include "moba/Runner/AttentionConfig.h"

#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/CheckedArithmetic.h"

#include <cmath>
#include <limits>
#include <sys/sysinfo.h>

using namespace mlir;
using namespace mlir::moba;

llvm::StringRef mlir::moba::elementTypeName(ElementType type) {
  switch (type) {
  case ElementType::F32:
    return "f32";
  case ElementType::F16:
    return "f16";
  case ElementType::BF16:
    return "bf16";
  }
  llvm_unreachable("unknown element type");
}

llvm::Expected<ElementType> mlir::moba::parseElementType(llvm::StringRef name) {
  if (name == "f32" || name == "float32")
    return ElementType::F32;
  if (name == "f16" || name == "float16")
    return ElementType::F16;
  if (name == "bf16" || name == "bfloat16")
    return ElementType::BF16;
  return llvm::createStringError(
      "dtype must be one of f32, f16, bf16; got '%s'", name.str().c_str());
}

int64_t mlir::moba::elementTypeBytes(ElementType type) {
  return type == ElementType::F32 ? 4 : 2;
}

namespace {

/// A sum of products in checked int64 arithmetic.
class CheckedSum {
public:
  /// Adds the product of `factors`.
  CheckedSum &add(std::initializer_list<int64_t> factors) {
    int64_t product = 1;
    for (int64_t factor : factors) {
      std::optional<int64_t> next =
          valid ? llvm::checkedMul(product, factor) : std::nullopt;
      valid = next.has_value();
      product = valid ? *next : 0;
    }
    std::optional<int64_t> next =
        valid ? llvm::checkedAdd(total, product) : std::nullopt;
    valid = next.has_value();
    total = valid ? *next : 0;
    return *this;
  }
  std::optional<int64_t> value() const {
    return valid ? std::optional<int64_t>(total) : std::nullopt;
  }

private:
  int64_t total = 0;
  bool valid = true;
};

/// "`name` must be at least 1" and "at most `max`", naming the value.
llvm::Error checkCount(const char *name, int64_t value, int64_t max) {
  if (value < 1)
    return llvm::createStringError("%s must be at least 1, got %lld", name,
                                   static_cast<long long>(value));
  if (value > max)
    return llvm::createStringError("%s must be at most %lld, got %lld", name,
                                   static_cast<long long>(max),
                                   static_cast<long long>(value));
  return llvm::Error::success();
}

} // namespace

llvm::Error AttentionConfig::validate() const {
  const std::pair<const char *, std::pair<int64_t, int64_t>> counts[] = {
      {"head_dim", {headDim, kMaxHeadDim}},
      {"num_heads", {numHeads, kMaxHeads}},
      {"num_kv_heads", {numKvHeads, kMaxHeads}},
      {"block_size", {blockSize, kMaxBlockSize}},
      {"top_k", {topK, kMaxSelectedBlocks}},
  };
  for (const auto &[name, valueAndMax] : counts)
    if (llvm::Error e = checkCount(name, valueAndMax.first, valueAndMax.second))
      return e;
  if (numHeads % numKvHeads != 0)
    return llvm::createStringError(
        "num_heads (%lld) must be a multiple of num_kv_heads (%lld)",
        static_cast<long long>(numHeads), static_cast<long long>(numKvHeads));
  if (scale)
    return checkScale(*scale);
  return llvm::Error::success();
}

llvm::Error mlir::moba::checkScale(double scale) {
  constexpr double least = std::numeric_limits<float>::min();
  if (std::isfinite(scale) && scale >= least &&
      std::isfinite(static_cast<float>(scale)))
    return llvm::Error::success();
  return llvm::createStringError(
      "scale must be a positive normal float32 (finite, at least %.9g), got "
      "%.9g",
      least, scale);
}

llvm::Error mlir::moba::checkTileSizes(std::optional<int64_t> tileQ,
                                       int64_t tileK) {
  if (tileQ)
    if (llvm::Error e = checkCount("tile_q", *tileQ, kMaxTileQ))
      return e;
  return checkCount("tile_k", tileK, kMaxTileKeys);
}

std::string AttentionConfig::key() const {
  std::string s = llvm::formatv("d{0}_h{1}_kv{2}_b{3}_k{4}_{5}_{6}", headDim,
                                numHeads, numKvHeads, blockSize, topK,
                                causal ? "causal" : "full",
                                elementTypeName(dtype));
  // Nine significant digits name a float32 exactly.
  if (scale)
    s += llvm::formatv("_s{0:e8}", *scale).str();
  if (backward)
    s += "_grad";
  return s;
}

std::string mlir::moba::buildAttentionModule(const AttentionConfig &c) {
  std::string e = elementTypeName(c.dtype).str();
  std::string qt = llvm::formatv("?x{0}x{1}x{2}", c.numHeads, c.headDim, e);
  std::string kvt = llvm::formatv("?x{0}x{1}x{2}", c.numKvHeads, c.headDim, e);
  std::string lset = llvm::formatv("?x{0}xf32", c.numHeads);
  std::string attrs = llvm::formatv("block_size = {0}, top_k = {1}, causal = {2}",
                                    c.blockSize, c.topK,
                                    c.causal ? "true" : "false");
  if (c.scale)
    attrs += llvm::formatv(", scale = {0:e8} : f32", *c.scale).str();
  std::string module = llvm::formatv(R"mlir(
func.func @moba_attention(%q: memref<{0}>, %k: memref<{1}>, %v: memref<{1}>,
                          %cu: memref<?xi32>, %out: memref<{0}>,
                          %lse: memref<{2}>) attributes {{llvm.emit_c_interface} {
  %qt = bufferization.to_tensor %q restrict : memref<{0}> to tensor<{0}>
  %kt = bufferization.to_tensor %k restrict : memref<{1}> to tensor<{1}>
  %vt = bufferization.to_tensor %v restrict : memref<{1}> to tensor<{1}>
  %cut = bufferization.to_tensor %cu restrict : memref<?xi32> to tensor<?xi32>
  %o, %l = moba.attention q(%qt : tensor<{0}>) k(%kt : tensor<{1}>)
      v(%vt : tensor<{1}>) cu_seqlens(%cut : tensor<?xi32>) {{{3}}
      -> tensor<{0}>, tensor<{2}>
  bufferization.materialize_in_destination %o in restrict writable %out
      : (tensor<{0}>, memref<{0}>) -> ()
  bufferization.materialize_in_destination %l in restrict writable %lse
      : (tensor<{2}>, memref<{2}>) -> ()
  return
}
)mlir",
                                     qt, kvt, lset, attrs);
  if (!c.backward)
    return module;
  return module + llvm::formatv(R"mlir(
func.func @moba_attention_grad(%q: memref<{0}>, %k: memref<{1}>,
                               %v: memref<{1}>, %cu: memref<?xi32>,
                               %out: memref<{0}>, %lse: memref<{2}>,
                               %dout: memref<{0}>, %dlse: memref<{2}>,
                               %dq: memref<{0}>, %dk: memref<{1}>,
                               %dv: memref<{1}>)
    attributes {{llvm.emit_c_interface} {
  %qt = bufferization.to_tensor %q restrict : memref<{0}> to tensor<{0}>
  %kt = bufferization.to_tensor %k restrict : memref<{1}> to tensor<{1}>
  %vt = bufferization.to_tensor %v restrict : memref<{1}> to tensor<{1}>
  %cut = bufferization.to_tensor %cu restrict : memref<?xi32> to tensor<?xi32>
  %ot = bufferization.to_tensor %out restrict : memref<{0}> to tensor<{0}>
  %lt = bufferization.to_tensor %lse restrict : memref<{2}> to tensor<{2}>
  %dot = bufferization.to_tensor %dout restrict : memref<{0}> to tensor<{0}>
  %dlt = bufferization.to_tensor %dlse restrict : memref<{2}> to tensor<{2}>
  %gq, %gk, %gv = moba.attention_grad q(%qt : tensor<{0}>)
      k(%kt : tensor<{1}>) v(%vt : tensor<{1}>)
      cu_seqlens(%cut : tensor<?xi32>) out(%ot : tensor<{0}>)
      lse(%lt : tensor<{2}>) grad_out(%dot : tensor<{0}>)
      grad_lse(%dlt : tensor<{2}>) {{{3}}
      -> tensor<{0}>, tensor<{1}>, tensor<{1}>
  bufferization.materialize_in_destination %gq in restrict writable %dq
      : (tensor<{0}>, memref<{0}>) -> ()
  bufferization.materialize_in_destination %gk in restrict writable %dk
      : (tensor<{1}>, memref<{1}>) -> ()
  bufferization.materialize_in_destination %gv in restrict writable %dv
      : (tensor<{1}>, memref<{1}>) -> ()
  return
}
)mlir",
                                qt, kvt, lset, attrs)
                      .str();
}

llvm::Expected<AttentionBufferBytes>
mlir::moba::attentionBufferBytes(const AttentionConfig &c, int64_t tokens) {
  int64_t element = elementTypeBytes(c.dtype);
  std::optional<int64_t> q =
      CheckedSum().add({tokens, c.numHeads, c.headDim, element}).value();
  std::optional<int64_t> kv =
      CheckedSum().add({tokens, c.numKvHeads, c.headDim, element}).value();
  std::optional<int64_t> lse =
      CheckedSum().add({tokens, c.numHeads, 4}).value();
  if (!q || !kv || !lse)
    return llvm::createStringError(
        "the buffers of %lld tokens of %s would need more than 2^63 bytes",
        static_cast<long long>(tokens), c.key().c_str());
  AttentionBufferBytes bytes;
  bytes.q = bytes.out = *q;
  bytes.kv = *kv;
  bytes.lse = *lse;
  return bytes;
}

llvm::Expected<int64_t> mlir::moba::kernelScratchBytes(
    const AttentionConfig &c, KernelScratch scratch, int64_t tokens,
    int64_t numSequences) {
  const int64_t f32 = 4, element = elementTypeBytes(c.dtype);
  const int64_t t = tokens, hq = c.numHeads, hkv = c.numKvHeads,
                d = c.headDim, k = c.topK;
  // sum over sequences of ceil(length / block_size) <= T / block_size + B.
  const int64_t rows = t / c.blockSize + numSequences;
  CheckedSum bytes;
  bytes.add({rows, hkv, d, f32})   // block means
      .add({t, hq, k, f32})        // selected blocks
      .add({t, hq, d, element})    // staging rows of out
      .add({t, hq, f32});          // staging log-sum-exps
  if (scratch.scores)
    bytes.add({t, hq, (t + c.blockSize - 1) / c.blockSize, f32});
  if (scratch.chunkedPooling)
    bytes.add({rows, (c.blockSize + 255) / 256, hkv, d, f32});
  if (scratch.densified)
    bytes.add({2, hq, rows, f32})  // group starts and counts
        .add({hq, t, k, f32})      // group entries
        .add({k, t, hq, d, element}) // partial rows
        .add({k, t, hq, f32});     // partial log-sum-exps
  if (std::optional<int64_t> total = bytes.value())
    return *total;
  return llvm::createStringError(
      "a call on %lld tokens in %lld sequences would need more than 2^63 "
      "bytes of scratch memory for %s",
      static_cast<long long>(tokens), static_cast<long long>(numSequences),
      c.key().c_str());
}

llvm::Expected<int64_t> mlir::moba::gradScratchBytes(const AttentionConfig &c,
                                                     int64_t tokens,
                                                     int64_t numSequences,
                                                     KernelScratch scratch) {
  const int64_t f32 = 4, i32 = 4, element = elementTypeBytes(c.dtype);
  const int64_t t = tokens, hq = c.numHeads, hkv = c.numKvHeads,
                d = c.headDim, k = c.topK;
  // As in kernelScratchBytes: the blocks of all sequences.
  const int64_t rows = t / c.blockSize + numSequences;
  CheckedSum bytes;
  bytes.add({rows, hkv, d, f32})                          // block means
      .add({t, hq, (t + c.blockSize - 1) / c.blockSize, f32}) // gate scores
      .add({t, hq, k, i32})                               // selected blocks
      .add({t, hq, f32})                                  // the row term
      .add({t, hq, f32})                                  // a zero dlse
      .add({2, hq, rows, i32})          // group starts and counts
      .add({hq, t, k, i32})             // group entries
      .add({k, t, hq, d, f32})          // dq partials per slot
      .add({2, t, hkv, d, f32})         // dk and dv accumulators
      .add({3, t, hq, d, element});     // staging rows of dq, dk, dv
  if (scratch.chunkedPooling)
    bytes.add({rows, (c.blockSize + 255) / 256, hkv, d, f32});
  if (std::optional<int64_t> total = bytes.value())
    return *total;
  return llvm::createStringError(
      "a backward call on %lld tokens in %lld sequences would need more "
      "than 2^63 bytes of scratch memory for %s",
      static_cast<long long>(tokens), static_cast<long long>(numSequences),
      c.key().c_str());
}

uint64_t mlir::moba::hostMemoryBytes() {
  struct sysinfo info;
  if (sysinfo(&info) != 0)
    return 0;
  return (uint64_t(info.totalram) + uint64_t(info.totalswap)) * info.mem_unit;
}

llvm::Error mlir::moba::checkAttentionBuffers(const AttentionConfig &config,
                                              const AttentionBuffers &b,
                                              const int32_t *cu) {
  if (b.tokens < 0)
    return llvm::createStringError("tokens must not be negative, got %lld",
                                   static_cast<long long>(b.tokens));
  if (b.tokens > kMaxTokens)
    return llvm::createStringError(
        "%lld tokens do not fit the int32 offsets of cu_seqlens (at most "
        "%lld)",
        static_cast<long long>(b.tokens), static_cast<long long>(kMaxTokens));
  if (b.numSequences < 1)
    return llvm::createStringError(
        "need at least one sequence, got num_sequences=%lld",
        static_cast<long long>(b.numSequences));
  if (b.numSequences > kMaxSequences)
    return llvm::createStringError(
        "num_sequences must be at most %lld, got %lld",
        static_cast<long long>(kMaxSequences),
        static_cast<long long>(b.numSequences));
  if (!b.cuSeqlens)
    return llvm::createStringError("cu_seqlens is null");
  // An empty batch reads and writes nothing: its buffers may be null (an
  // empty torch tensor's data pointer is).
  const std::pair<const char *, const void *> data[] = {
      {"q", b.q}, {"k", b.k}, {"v", b.v}, {"out", b.out}, {"lse", b.lse}};
  if (b.tokens > 0)
    for (auto [name, pointer] : data)
      if (!pointer)
        return llvm::createStringError("%s is null but there are %lld tokens",
                                       name,
                                       static_cast<long long>(b.tokens));
  if (auto bytes = attentionBufferBytes(config, b.tokens); !bytes)
    return bytes.takeError();
  if (!cu)
    return llvm::Error::success();
  if (cu[0] != 0)
    return llvm::createStringError("cu_seqlens[0] must be 0, got %d", cu[0]);
  for (int64_t i = 1; i <= b.numSequences; ++i)
    if (cu[i] < cu[i - 1])
      return llvm::createStringError(
          "cu_seqlens must not decrease: cu_seqlens[%lld]=%d < "
          "cu_seqlens[%lld]=%d",
          static_cast<long long>(i), cu[i], static_cast<long long>(i - 1),
          cu[i - 1]);
  if (cu[b.numSequences] != b.tokens)
    return llvm::createStringError(
        "cu_seqlens must end at the token count %lld, got %d",
        static_cast<long long>(b.tokens), cu[b.numSequences]);
  return llvm::Error::success();
}

namespace {

/// The byte range [begin, end) of a buffer.
struct ByteRange {
  const char *name;
  uintptr_t begin, end;
};

ByteRange rangeOf(const char *name, const void *pointer, int64_t bytes) {
  uintptr_t begin = reinterpret_cast<uintptr_t>(pointer);
  return {name, begin, begin + static_cast<uintptr_t>(bytes)};
}

} // namespace

llvm::Error mlir::moba::checkGradBuffers(const AttentionConfig &config,
                                         const GradBuffers &b,
                                         const int32_t *cu) {
  AttentionBuffers forward{b.q,
                           b.k,
                           b.v,
                           b.cuSeqlens,
                           const_cast<void *>(b.out),
                           const_cast<float *>(b.lse),
                           b.tokens,
                           b.numSequences};
  if (llvm::Error e = checkAttentionBuffers(config, forward, cu))
    return e;
  if (b.tokens == 0)
    return llvm::Error::success();
  const std::pair<const char *, const void *> data[] = {
      {"dout", b.dout}, {"dq", b.dq}, {"dk", b.dk}, {"dv", b.dv}};
  for (auto [name, pointer] : data)
    if (!pointer)
      return llvm::createStringError("%s is null but there are %lld tokens",
                                     name, static_cast<long long>(b.tokens));
  // Checked by checkAttentionBuffers: these fit int64.
  AttentionBufferBytes bytes = cantFail(attentionBufferBytes(config, b.tokens));
  ByteRange written[] = {rangeOf("dq", b.dq, bytes.q),
                         rangeOf("dk", b.dk, bytes.kv),
                         rangeOf("dv", b.dv, bytes.kv)};
  ByteRange all[] = {rangeOf("q", b.q, bytes.q),
                     rangeOf("k", b.k, bytes.kv),
                     rangeOf("v", b.v, bytes.kv),
                     rangeOf("cu_seqlens", b.cuSeqlens,
                             4 * (b.numSequences + 1)),
                     rangeOf("out", b.out, bytes.out),
                     rangeOf("lse", b.lse, bytes.lse),
                     rangeOf("dout", b.dout, bytes.out),
                     rangeOf("dlse", b.dlse, b.dlse ? bytes.lse : 0),
                     written[0],
                     written[1],
                     written[2]};
  for (const ByteRange &w : written)
    for (const ByteRange &r : all)
      if (llvm::StringRef(r.name) != w.name && r.begin < r.end &&
          w.begin < r.end && r.begin < w.end)
        return llvm::createStringError(
            "%s overlaps %s: each gradient needs a buffer of its own", w.name,
            r.name);
  return llvm::Error::success();
}
