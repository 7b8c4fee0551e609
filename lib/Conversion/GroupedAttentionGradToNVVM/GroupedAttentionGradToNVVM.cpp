//===- GroupedAttentionGradToNVVM.cpp - The backward on tensor cores ------===//
//
// Part of moba-mlir. Implements `moba-convert-grouped-attention-grad-to-nvvm`:
// moba.grouped_block_attention_grad on buffers becomes the dq kernels
// (QueryGradKernel.cpp: the partials zeroed, the forward's tile list, the dq
// kernel on the forward's CTA frame) and the key/value kernel
// (KeyValueGradKernel.cpp). Why two kernels: a CTA that owned a block's
// keys and also produced its queries' dq would share each dq row with the
// other CTAs of the block (for a block longer than one CTA's keys) and have
// to add to it in memory, in an order that changes from run to run; the dq
// kernel instead owns its rows and recomputes S and dP (two products of the
// five), so that every sum is one thread's, and the result the same bits
// on every run.
//
//===----------------------------------------------------------------------===//

#include "GradKernels.h"

#include "moba/Conversion/Passes.h"
#include "moba/Dialect/Moba/IR/MobaOps.h"

#include "mlir/IR/PatternMatch.h"

namespace mlir::moba {
#define GEN_PASS_DEF_MOBACONVERTGROUPEDATTENTIONGRADTONVVM
#include "moba/Conversion/Passes.h.inc"
} // namespace mlir::moba

using namespace mlir;
using namespace mlir::moba;
using namespace mlir::moba::grouped_attention_grad;

namespace {

/// The shared memory one CTA may use on sm_80 and sm_90 (227 KiB).
constexpr int64_t kMaxSharedBytes = 227 * 1024;

struct MobaConvertGroupedAttentionGradToNVVMPass
    : public moba::impl::MobaConvertGroupedAttentionGradToNVVMBase<
          MobaConvertGroupedAttentionGradToNVVMPass> {
  using Base::Base;

  /// The options' problems, one message each.
  SmallVector<std::string> optionProblems() {
    SmallVector<std::string> problems;
    if (!llvm::is_contained({1, 2, 4, 8}, static_cast<int64_t>(warps)))
      problems.push_back("warps must be 1, 2, 4 or 8, got " +
                         std::to_string(warps));
    if (!llvm::is_contained({0, 1, 2, 4, 8},
                            static_cast<int64_t>(keyValueWarps)))
      problems.push_back("key-value-warps must be 0, 1, 2, 4 or 8, got " +
                         std::to_string(keyValueWarps));
    auto chunkProblem = [&](StringRef name, int64_t value, bool zeroOk) {
      if ((zeroOk && value == 0) ||
          (value >= 16 && value <= 128 && value % 16 == 0))
        return;
      problems.push_back((name + " must be a multiple of 16 in [16, 128]" +
                          (zeroOk ? " or 0" : "") + ", got " +
                          std::to_string(value))
                             .str());
    };
    chunkProblem("key-chunk", keyChunk, /*zeroOk=*/true);
    chunkProblem("query-chunk", queryChunk, /*zeroOk=*/true);
    return problems;
  }

  /// Why `op` has no lowering here, or "".
  static std::string unsupported(GroupedBlockAttentionGradOp op) {
    auto qType = cast<MemRefType>(op.getQ().getType());
    auto kType = cast<MemRefType>(op.getK().getType());
    Type element = qType.getElementType();
    if (!element.isF16() && !element.isBF16())
      return "needs f16 or bf16 operands";
    int64_t headDim = qType.getDimSize(2);
    if (qType.isDynamicDim(2) || headDim % 16 != 0 || headDim > 128)
      return "needs head_dim a static multiple of 16 up to 128";
    if (qType.isDynamicDim(1) || kType.isDynamicDim(1) ||
        cast<MemRefType>(op.getSelected().getType()).isDynamicDim(2))
      return "needs static heads and top_k";
    for (Value rows : {op.getQ(), op.getK(), op.getV(), op.getGradOut(),
                       op.getDqPartialsInit(), op.getDkInit(),
                       op.getDvInit()})
      if (!cast<MemRefType>(rows.getType()).isLastDimUnitStride())
        return "needs every row operand with a unit-stride innermost dim";
    return "";
  }

  void runOnOperation() override {
    SmallVector<GroupedBlockAttentionGradOp> ops;
    getOperation()->walk([&](GroupedBlockAttentionGradOp op) {
      if (isa<MemRefType>(op.getQ().getType()))
        ops.push_back(op);
    });
    SmallVector<std::string> problems = optionProblems();
    for (const std::string &problem : problems)
      getOperation()->emitError()
          << "moba-convert-grouped-attention-grad-to-nvvm: " << problem;
    if (!problems.empty())
      return signalPassFailure();
    IRRewriter rewriter(&getContext());
    for (GroupedBlockAttentionGradOp op : ops) {
      if (std::string why = unsupported(op); !why.empty()) {
        op.emitOpError("has no mma.sync lowering: it ") << why;
        return signalPassFailure();
      }
      auto qType = cast<MemRefType>(op.getQ().getType());
      auto kType = cast<MemRefType>(op.getK().getType());
      int64_t headDim = qType.getDimSize(2);
      int64_t bytes = qType.getElementType().getIntOrFloatBitWidth() / 8;
      GradOperands grad{op.getQ(),
                        op.getK(),
                        op.getV(),
                        op.getCuSeqlens(),
                        op.getSelected(),
                        op.getStarts(),
                        op.getCounts(),
                        op.getEntries(),
                        op.getGradOut(),
                        op.getLse(),
                        op.getRowTerm(),
                        op.getDqPartialsInit(),
                        op.getDkInit(),
                        op.getDvInit(),
                        qType.getDimSize(1),
                        qType.getDimSize(1) / kType.getDimSize(1),
                        headDim,
                        cast<MemRefType>(op.getSelected().getType())
                            .getDimSize(2),
                        static_cast<int64_t>(op.getBlockSize()),
                        op.getCausal(),
                        op.getScale().convertToDouble()};
      // The dq kernel: steps of 64 keys keep its two products (2 x 32 f32
      // a lane) beside its accumulators (head_dim f32 a lane, with the Q
      // and dO fragments) within 255 registers up to head_dim 64; past it
      // steps of 32 (64 measured the same at head_dim 128). The key/value
      // kernel: steps of 64 queries at every head_dim; at 128 ptxas spills
      // a few bytes more than at 32, but each step's gathers and barrier
      // serve twice the queries (at head_dim 128 the backward 7-11% faster,
      // the key/value kernel 12-16%; docs/PERFORMANCE.md).
      int64_t keys = keyChunk != 0 ? keyChunk : headDim <= 64 ? 64 : 32;
      KeyValueGradShape shape{keyValueWarps != 0 ? keyValueWarps : warps,
                              queryChunk != 0 ? queryChunk : 64};
      int64_t keyValueBytes = shape.sharedBytes(headDim, bytes, grad.group);
      // The dq kernel's: the forward's mma.sync stages of K and V.
      int64_t queryBytes = 2 * 2 * keys * (headDim + 8) * bytes;
      for (auto [kernel, needed] :
           {std::make_pair("key/value", keyValueBytes),
            std::make_pair("dq", queryBytes)})
        if (needed > kMaxSharedBytes) {
          op.emitOpError() << "needs " << needed << " bytes of shared memory "
                           << "in its " << kernel << " kernel (at most "
                           << kMaxSharedBytes << "): use fewer warps or a "
                           << "smaller key-chunk or query-chunk";
          return signalPassFailure();
        }
      rewriter.setInsertionPoint(op);
      ImplicitLocOpBuilder b(op.getLoc(), rewriter);
      emitQueryGrad(b, grad, warps, keys);
      emitKeyValueGrad(b, grad, shape);
      rewriter.eraseOp(op);
    }
  }
};

} // namespace
