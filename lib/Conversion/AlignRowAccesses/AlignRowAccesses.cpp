//===- AlignRowAccesses.cpp - Whole-row vector accesses, aligned ----------===//
//
// Part of moba-mlir. Implements `moba-align-row-accesses`: a 1-D
// vector.transfer_read/transfer_write along a buffer row, at a start the
// pass proves aligned, becomes a vector.load/store that states the
// alignment, so that the NVPTX backend can use 8- and 16-byte accesses
// instead of one per element (the SIMT gate loaded each block mean as 128
// scalar ld.global.b32; the merge read its f32 partials one by one).
//
//===----------------------------------------------------------------------===//

#include "moba/Conversion/Passes.h"

#include "mlir/Dialect/Affine/IR/AffineOps.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Arith/Utils/Utils.h"
#include "mlir/Dialect/MemRef/Transforms/Transforms.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"
#include "mlir/IR/PatternMatch.h"
#include "mlir/Transforms/GreedyPatternRewriteDriver.h"

namespace mlir::moba {
#define GEN_PASS_DEF_MOBAALIGNROWACCESSES
#include "moba/Conversion/Passes.h.inc"
} // namespace mlir::moba

using namespace mlir;

namespace {

/// The largest power of two, up to `cap`, that divides `n` (`cap` for 0).
int64_t powerOfTwoDividing(int64_t n, int64_t cap) {
  if (n == 0)
    return cap;
  return std::min<int64_t>(cap, int64_t(1) << llvm::countr_zero(
                                    static_cast<uint64_t>(std::abs(n))));
}

/// A power of two, up to `cap`, that provably divides the index `value`:
/// from constants, sums, products, shifts and affine maps of them; 1 where
/// nothing is known (thread ids, loads).
int64_t knownDivisor(Value value, int64_t cap, int depth = 0) {
  if (std::optional<int64_t> constant = getConstantIntValue(value))
    return powerOfTwoDividing(*constant, cap);
  Operation *def = value.getDefiningOp();
  if (!def || depth > 8)
    return 1;
  auto of = [&](Value operand) {
    return knownDivisor(operand, cap, depth + 1);
  };
  if (isa<arith::AddIOp, arith::SubIOp>(def))
    return std::min(of(def->getOperand(0)), of(def->getOperand(1)));
  if (isa<arith::MulIOp>(def))
    return std::min(cap, of(def->getOperand(0)) * of(def->getOperand(1)));
  if (isa<arith::ShLIOp>(def))
    if (std::optional<int64_t> shift = getConstantIntValue(def->getOperand(1)))
      if (*shift >= 0 && *shift < 32)
        return std::min(cap, of(def->getOperand(0)) << *shift);
  if (isa<arith::IndexCastOp, arith::IndexCastUIOp>(def))
    return of(def->getOperand(0));
  if (auto apply = dyn_cast<affine::AffineApplyOp>(def)) {
    AffineMap map = apply.getAffineMap();
    unsigned dims = map.getNumDims();
    std::function<int64_t(AffineExpr)> expr = [&](AffineExpr e) -> int64_t {
      if (auto c = dyn_cast<AffineConstantExpr>(e))
        return powerOfTwoDividing(c.getValue(), cap);
      if (auto d = dyn_cast<AffineDimExpr>(e))
        return of(apply.getMapOperands()[d.getPosition()]);
      if (auto s = dyn_cast<AffineSymbolExpr>(e))
        return of(apply.getMapOperands()[dims + s.getPosition()]);
      auto binary = cast<AffineBinaryOpExpr>(e);
      if (e.getKind() == AffineExprKind::Add)
        return std::min(expr(binary.getLHS()), expr(binary.getRHS()));
      if (e.getKind() == AffineExprKind::Mul)
        return std::min(cap, expr(binary.getLHS()) * expr(binary.getRHS()));
      return 1; // floordiv, ceildiv, mod
    };
    return expr(map.getResult(0));
  }
  return 1;
}

/// The alignment (a power of two, up to `maxAlignment` bytes) at which a
/// 1-D, in-bounds, unmasked transfer of `vector` at `indices` of `memref`
/// provably starts, relative to the buffer's base: the layout's offset,
/// every index times its dim's stride and the vector's bytes are multiples
/// of it. An identity layout's dynamic strides are multiples of the static
/// sizes inside them. 0 when the transfer is none such or the innermost
/// stride is not 1.
int64_t provenAlignment(MemRefType memref, VectorType vector,
                        ValueRange indices, AffineMap map, ArrayAttr inBounds,
                        Value mask, int64_t maxAlignment) {
  if (mask || vector.getRank() != 1 || !map.isMinorIdentity() ||
      indices.empty() || !memref.getElementType().isIntOrFloat())
    return 0;
  if (!llvm::all_of(inBounds.getAsValueRange<BoolAttr>(),
                    [](bool b) { return b; }))
    return 0;
  int64_t bytes = memref.getElementType().getIntOrFloatBitWidth() / 8;
  if (bytes == 0)
    return 0;
  SmallVector<int64_t> strides;
  int64_t offset;
  if (failed(memref.getStridesAndOffset(strides, offset)) ||
      strides.back() != 1)
    return 0;
  // Multiples of each stride, in elements.
  SmallVector<int64_t> strideMultiples(strides.size(), 1);
  int64_t inner = 1;
  for (int64_t i = memref.getRank() - 1; i >= 0; --i) {
    if (!ShapedType::isDynamic(strides[i]))
      strideMultiples[i] = strides[i];
    else if (memref.getLayout().isIdentity())
      strideMultiples[i] = inner;
    if (!memref.isDynamicDim(i))
      inner *= memref.getDimSize(i);
  }
  int64_t alignment =
      powerOfTwoDividing(vector.getNumElements() * bytes, maxAlignment);
  if (ShapedType::isDynamic(offset))
    alignment = std::min(alignment, bytes);
  else
    alignment = std::min(alignment, powerOfTwoDividing(offset * bytes,
                                                       maxAlignment));
  for (auto [index, multiple] : llvm::zip(indices, strideMultiples))
    alignment = std::min(
        alignment,
        std::min(maxAlignment,
                 knownDivisor(index, maxAlignment) *
                     powerOfTwoDividing(multiple * bytes, maxAlignment)));
  return alignment;
}

/// The aligned access that replaces `op`.
Operation *alignedAccess(PatternRewriter &rewriter,
                         vector::TransferReadOp op, int64_t alignment) {
  return rewriter.replaceOpWithNewOp<vector::LoadOp>(
      op, op.getVectorType(), op.getBase(), op.getIndices(),
      /*nontemporal=*/false, llvm::MaybeAlign(alignment));
}
Operation *alignedAccess(PatternRewriter &rewriter,
                         vector::TransferWriteOp op, int64_t alignment) {
  return rewriter.replaceOpWithNewOp<vector::StoreOp>(
      op, op.getVector(), op.getBase(), op.getIndices(),
      /*nontemporal=*/false, llvm::MaybeAlign(alignment));
}

/// A transfer_read or transfer_write of an aligned row, as a load or store.
template <typename TransferOp>
struct AlignRow : OpRewritePattern<TransferOp> {
  AlignRow(MLIRContext *context, int64_t alignment)
      : OpRewritePattern<TransferOp>(context), alignment(alignment) {}
  LogicalResult matchAndRewrite(TransferOp op,
                                PatternRewriter &rewriter) const override {
    auto memref = dyn_cast<MemRefType>(op.getBase().getType());
    if (!memref)
      return failure();
    int64_t proven = provenAlignment(
        memref, op.getVectorType(), op.getIndices(), op.getPermutationMap(),
        op.getInBoundsAttr(), op.getMask(), alignment);
    // Only worth it where more than one element is known aligned.
    int64_t bytes = memref.getElementType().getIntOrFloatBitWidth() / 8;
    if (proven <= bytes)
      return failure();
    alignedAccess(rewriter, op, proven);
    return success();
  }
  int64_t alignment;
};

struct MobaAlignRowAccessesPass
    : public moba::impl::MobaAlignRowAccessesBase<MobaAlignRowAccessesPass> {
  using Base::Base;

  void runOnOperation() override {
    if (alignment < 1 || !llvm::isPowerOf2_64(alignment)) {
      getOperation()->emitError()
          << "moba-align-row-accesses: alignment must be a power of two, got "
          << static_cast<int64_t>(alignment);
      return signalPassFailure();
    }
    RewritePatternSet patterns(&getContext());
    patterns.add<AlignRow<vector::TransferReadOp>,
                 AlignRow<vector::TransferWriteOp>>(
        &getContext(), static_cast<int64_t>(alignment));
    // Transfers of subviews become transfers of the buffer (its layout and
    // the subview's offsets then tell the alignment).
    memref::populateFoldMemRefAliasOpPatterns(patterns);
    if (failed(applyPatternsGreedily(getOperation(), std::move(patterns))))
      return signalPassFailure();
  }
};

} // namespace
