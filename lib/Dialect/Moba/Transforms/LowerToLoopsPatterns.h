//===- LowerToLoopsPatterns.h - Parts of moba-lower-to-loops -*- C++ -*-===//
//
// Part of moba-mlir. What the files of `moba-lower-to-loops` share: the
// base of their patterns and one populate function per op family, which
// LowerToLoops.cpp (the pass and populateMobaLowerToLoopsPatterns) calls.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_LIB_DIALECT_MOBA_TRANSFORMS_LOWERTOLOOPSPATTERNS_H
#define MOBA_LIB_DIALECT_MOBA_TRANSFORMS_LOWERTOLOOPSPATTERNS_H

#include "mlir/IR/PatternMatch.h"

namespace mlir::moba {

/// A lowering pattern that emits serial loops (sequences, then tokens or
/// blocks) or, when `parallel`, one scf.forall over independent rows.
template <typename OpTy>
struct LoweringPattern : OpRewritePattern<OpTy> {
  LoweringPattern(MLIRContext *context, bool parallel)
      : OpRewritePattern<OpTy>(context), parallel(parallel) {}
  bool parallel;
};

/// moba.block_pool (LowerPoolingToLoops.cpp).
void populateLowerPoolingToLoopsPatterns(RewritePatternSet &patterns,
                                         bool parallel);

/// moba.gate, moba.topk and moba.gate_topk (LowerGatingToLoops.cpp); with
/// `keepMmaCompatibleGate`, gate_topk ops the mma lowering handles stay.
void populateLowerGatingToLoopsPatterns(RewritePatternSet &patterns,
                                        bool parallel,
                                        bool keepMmaCompatibleGate);

/// moba.sparse_attention and moba.grouped_block_attention
/// (LowerAttentionToLoops.cpp); with `keepMmaCompatibleAttention`, grouped
/// ops the mma.sync lowering handles stay.
void populateLowerAttentionToLoopsPatterns(RewritePatternSet &patterns,
                                           bool parallel,
                                           bool keepMmaCompatibleAttention);

/// moba.lse_merge (LowerMergeToLoops.cpp).
void populateLowerMergeToLoopsPatterns(RewritePatternSet &patterns,
                                       bool parallel);

/// moba.group_queries (LowerGroupingToLoops.cpp); with
/// `keepWarpCompatibleGrouping`, ops the warp lowering handles stay.
void populateLowerGroupingToLoopsPatterns(RewritePatternSet &patterns,
                                          bool parallel,
                                          bool keepWarpCompatibleGrouping);

/// moba.attention_row_term, moba.grouped_block_attention_grad and
/// moba.sum_slots (LowerGradToLoops.cpp); with `keepMmaCompatibleAttention`,
/// grouped backward ops the tensor-core lowering handles stay.
void populateLowerGradToLoopsPatterns(RewritePatternSet &patterns,
                                      bool parallel,
                                      bool keepMmaCompatibleAttention);

/// moba.paged_kv_append and moba.paged_decode_attention
/// (LowerPagedToLoops.cpp): serial loops, or scf.foralls when `parallel`.
/// With `keepSplitKDecode`, decode ops the split-K GPU lowering takes
/// (PagedDecodeAttentionOp::isSplitKCompatible) are left as they are.
void populateLowerPagedToLoopsPatterns(RewritePatternSet &patterns,
                                       bool parallel, bool keepSplitKDecode);

} // namespace mlir::moba

#endif // MOBA_LIB_DIALECT_MOBA_TRANSFORMS_LOWERTOLOOPSPATTERNS_H
