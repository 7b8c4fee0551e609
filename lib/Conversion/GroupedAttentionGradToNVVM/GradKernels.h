//===- GradKernels.h - The grouped attention backward's kernels -*- C++ -*-===//
//
// Part of moba-mlir. What moba-convert-grouped-attention-grad-to-nvvm's
// kernels share: the op's buffers and sizes, the shape of the key/value
// kernel's CTA and its shared memory, and the two kernels' emitters: the
// dq kernel on the forward kernel's frame (QueryGradKernel.cpp) and the
// key/value kernel (KeyValueGradKernel.cpp).
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_LIB_CONVERSION_GROUPEDATTENTIONGRADTONVVM_GRADKERNELS_H
#define MOBA_LIB_CONVERSION_GROUPEDATTENTIONGRADTONVVM_GRADKERNELS_H

#include "KernelBuilder/KernelBuilder.h"

namespace mlir::moba::grouped_attention_grad {

/// The buffers and sizes of one moba.grouped_block_attention_grad.
struct GradOperands {
  Value q, k, v, cu, selected, starts, counts, entries, gradOut, lse, rowTerm;
  Value dqPartials, dk, dv;
  int64_t numHeads, group, headDim, slotsPerToken, blockSize;
  bool causal;
  double scale;

  Type element() const {
    return cast<MemRefType>(q.getType()).getElementType();
  }
  int64_t kvHeads() const { return numHeads / group; }
};

/// The key/value kernel's CTA: `warps` warps of 16 keys each, the queries
/// staged `queryChunk` at a time through two buffers.
struct KeyValueGradShape {
  int64_t warps;
  int64_t queryChunk;

  int64_t keys() const { return 16 * warps; }
  int64_t threads() const { return 32 * warps; }
  /// Elements between two staged rows: head_dim + 8, so that the eight row
  /// addresses of an ldmatrix phase fall in distinct banks.
  static int64_t pitch(int64_t headDim) { return headDim + 8; }

  /// The shared memory, in this order: the CTA's K and V rows
  /// [2][keys][pitch]; the two query buffers [2][Q or dO][queryChunk][pitch];
  /// their columns' token (-1 past the group's end), lse * log2(e) and
  /// delta, [2][queryChunk] each; per query head of the group, its first
  /// and end entry and its count of chunks (i32).
  int64_t keyValueBytes(int64_t headDim, int64_t bytes) const {
    return 2 * keys() * pitch(headDim) * bytes;
  }
  int64_t queryBytes(int64_t headDim, int64_t bytes) const {
    return 2 * 2 * queryChunk * pitch(headDim) * bytes;
  }
  int64_t columnBytes() const { return 3 * 2 * queryChunk * 4; }
  int64_t tableBytes(int64_t group) const { return 3 * group * 4; }
  int64_t sharedBytes(int64_t headDim, int64_t bytes, int64_t group) const {
    return keyValueBytes(headDim, bytes) + queryBytes(headDim, bytes) +
           columnBytes() + tableBytes(group);
  }
};

/// dq: zeroes the partials of the slots that attend nothing, then the dq
/// kernel (the forward's tile list and
/// CTA frame, mma.sync, `warps` warps, `keyChunk` keys a step) writes the
/// partial of every listed (slot, token, head).
void emitQueryGrad(ImplicitLocOpBuilder &b, const GradOperands &ops,
                   int64_t warps, int64_t keyChunk);
/// dK and dV of every key of every block row, for each KV head.
void emitKeyValueGrad(ImplicitLocOpBuilder &b, const GradOperands &ops,
                      const KeyValueGradShape &shape);

} // namespace mlir::moba::grouped_attention_grad

#endif // MOBA_LIB_CONVERSION_GROUPEDATTENTIONGRADTONVVM_GRADKERNELS_H
