//===- Passes.h - moba dialect passes ---------------------------*- C++ -*-===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_DIALECT_MOBA_TRANSFORMS_PASSES_H
#define MOBA_DIALECT_MOBA_TRANSFORMS_PASSES_H

#include "moba/Dialect/Moba/IR/MobaOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"
#include "mlir/Pass/Pass.h"

namespace mlir {
class RewritePatternSet;
namespace moba {

#define GEN_PASS_DECL
#include "moba/Dialect/Moba/Transforms/Passes.h.inc"

/// Patterns that rewrite moba.attention into the decomposed moba ops.
void populateMobaDecomposePatterns(RewritePatternSet &patterns);

/// moba.topk(moba.gate(...)) -> moba.gate_topk(...).
void populateMobaFuseGateTopKPatterns(RewritePatternSet &patterns);

/// moba.sparse_attention (with a selection) -> moba.group_queries +
/// moba.grouped_block_attention + moba.lse_merge.
void populateMobaDensifyAttentionPatterns(RewritePatternSet &patterns);

/// moba.lse_merge(moba.grouped_block_attention(...)) -> the attention op with
/// `merge(...)`.
void populateMobaFuseLseMergePatterns(RewritePatternSet &patterns);

/// A merged moba.grouped_block_attention -> the op without `merge` and a
/// moba.lse_merge of its partials (for lowerings with no fused merge).
/// Returns the merge.
LseMergeOp splitLseMerge(RewriterBase &rewriter, GroupedBlockAttentionOp op);

/// moba.sparse_attention -> tiled online-softmax loops.
/// With `parallel`, one scf.forall over (token, head) instead.
void populateMobaTileAttentionPatterns(RewritePatternSet &patterns,
                                       int64_t tileQ, int64_t tileK,
                                       bool parallel = false);

/// The other decomposed ops (and untiled sparse attention) -> loops; with
/// `parallel`, scf.forall loops over independent rows.
/// With `keepMmaCompatibleAttention` (`keepMmaCompatibleGate`,
/// `keepWarpCompatibleGrouping`, `keepSplitKDecode`),
/// moba.grouped_block_attention and moba.grouped_block_attention_grad
/// (moba.gate_topk, moba.group_queries, moba.paged_decode_attention) ops
/// that the GPU lowerings handle are left as they are.
void populateMobaLowerToLoopsPatterns(RewritePatternSet &patterns,
                                      bool parallel = false,
                                      bool keepMmaCompatibleAttention = false,
                                      bool keepMmaCompatibleGate = false,
                                      bool keepWarpCompatibleGrouping = false,
                                      bool keepSplitKDecode = false);

#define GEN_PASS_REGISTRATION
#include "moba/Dialect/Moba/Transforms/Passes.h.inc"

} // namespace moba
} // namespace mlir

#endif // MOBA_DIALECT_MOBA_TRANSFORMS_PASSES_H
