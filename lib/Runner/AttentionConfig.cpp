//===- AttentionConfig.cpp - One compiled MoBA configuration --------------===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#include "moba/Runner/AttentionConfig.h"

#include <limits>

#include "llvm/Support/FormatVariadic.h"

#include <cmath>

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

llvm::Error AttentionConfig::validate() const {
  auto atLeastOne = [](const char *name, int64_t value) -> llvm::Error {
    if (value >= 1)
      return llvm::Error::success();
    return llvm::createStringError("%s must be at least 1, got %lld", name,
                                   static_cast<long long>(value));
  };
  if (auto e = atLeastOne("head_dim", headDim))
    return e;
  if (auto e = atLeastOne("num_heads", numHeads))
    return e;
  if (auto e = atLeastOne("num_kv_heads", numKvHeads))
    return e;
  if (auto e = atLeastOne("block_size", blockSize))
    return e;
  if (auto e = atLeastOne("top_k", topK))
    return e;
  // Rows of head_dim and the running top-k live in vector registers; past
  // these sizes the code grows without bound for no real model.
  auto atMost = [](const char *name, int64_t value) -> llvm::Error {
    if (value <= kMaxVectorWidth)
      return llvm::Error::success();
    return llvm::createStringError("%s must be at most %lld, got %lld", name,
                                   static_cast<long long>(kMaxVectorWidth),
                                   static_cast<long long>(value));
  };
  if (auto e = atMost("head_dim", headDim))
    return e;
  if (auto e = atMost("top_k", topK))
    return e;
  if (numHeads % numKvHeads != 0)
    return llvm::createStringError(
        "num_heads (%lld) must be a multiple of num_kv_heads (%lld)",
        static_cast<long long>(numHeads), static_cast<long long>(numKvHeads));
  if (scale && !(std::isfinite(*scale) && *scale > 0))
    return llvm::createStringError("scale must be a positive finite number, got %g",
                                   static_cast<double>(*scale));
  return llvm::Error::success();
}

std::string AttentionConfig::key() const {
  std::string s = llvm::formatv("d{0}_h{1}_kv{2}_b{3}_k{4}_{5}_{6}", headDim,
                                numHeads, numKvHeads, blockSize, topK,
                                causal ? "causal" : "full",
                                elementTypeName(dtype));
  if (scale)
    s += llvm::formatv("_s{0:e}", *scale).str();
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
    attrs += llvm::formatv(", scale = {0:e} : f32", *c.scale).str();
  return llvm::formatv(R"mlir(
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
}

llvm::Error mlir::moba::checkAttentionBuffers(const AttentionBuffers &b,
                                              const int32_t *cu) {
  if (!b.q || !b.k || !b.v || !b.cuSeqlens || !b.out || !b.lse)
    return llvm::createStringError("a buffer pointer is null");
  if (b.tokens < 0)
    return llvm::createStringError("tokens must not be negative, got %lld",
                                   static_cast<long long>(b.tokens));
  if (b.tokens > std::numeric_limits<int32_t>::max())
    return llvm::createStringError(
        "%lld tokens do not fit the int32 offsets of cu_seqlens",
        static_cast<long long>(b.tokens));
  if (b.numSequences < 1)
    return llvm::createStringError(
        "need at least one sequence, got num_sequences=%lld",
        static_cast<long long>(b.numSequences));
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
