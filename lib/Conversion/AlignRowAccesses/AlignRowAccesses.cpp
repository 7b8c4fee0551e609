//===- AlignRowAccesses.cpp - Whole-row vector accesses, aligned ----------===//
//
// Part of moba-mlir. Implements `moba-align-row-accesses`: a 1-D
// vector.transfer_read/transfer_write of a whole buffer row becomes a
// vector.load/store that states the row's alignment, so that the NVPTX
// backend can use 16-byte loads instead of one per element (the SIMT gate
// loaded each block mean as 128 scalar ld.global.b32).
//
//===----------------------------------------------------------------------===//

#include "moba/Conversion/Passes.h"

#include "mlir/Dialect/Arith/Utils/Utils.h"
#include "mlir/IR/PatternMatch.h"
#include "mlir/Transforms/GreedyPatternRewriteDriver.h"

namespace mlir::moba {
#define GEN_PASS_DEF_MOBAALIGNROWACCESSES
#include "moba/Conversion/Passes.h.inc"
} // namespace mlir::moba

using namespace mlir;

namespace {

/// Whether a 1-D, in-bounds, unmasked transfer of `vector` at `indices` of
/// `memref` starts `alignment`-aligned relative to the buffer's base: the
/// layout's offset and every stride but the unit innermost one are static
/// multiples of the alignment, the innermost index is 0, and the vector's
/// bytes are a multiple of it.
bool isAlignedRow(MemRefType memref, VectorType vector, ValueRange indices,
                  AffineMap map, ArrayAttr inBounds, Value mask,
                  int64_t alignment) {
  if (mask || vector.getRank() != 1 || !map.isMinorIdentity() ||
      indices.empty() || !memref.getElementType().isIntOrFloat())
    return false;
  if (!llvm::all_of(inBounds.getAsValueRange<BoolAttr>(),
                    [](bool b) { return b; }))
    return false;
  int64_t bytes = memref.getElementType().getIntOrFloatBitWidth() / 8;
  if (bytes == 0 || (vector.getNumElements() * bytes) % alignment != 0)
    return false;
  std::optional<int64_t> last = getConstantIntValue(indices.back());
  if (!last || *last != 0)
    return false;
  SmallVector<int64_t> strides;
  int64_t offset;
  if (failed(memref.getStridesAndOffset(strides, offset)) ||
      ShapedType::isDynamic(offset) || (offset * bytes) % alignment != 0 ||
      strides.back() != 1)
    return false;
  for (int64_t stride : ArrayRef<int64_t>(strides).drop_back())
    if (ShapedType::isDynamic(stride) || (stride * bytes) % alignment != 0)
      return false;
  return true;
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
    if (!memref ||
        !isAlignedRow(memref, op.getVectorType(), op.getIndices(),
                      op.getPermutationMap(), op.getInBoundsAttr(),
                      op.getMask(), alignment))
      return failure();
    alignedAccess(rewriter, op, alignment);
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
    if (failed(applyPatternsGreedily(getOperation(), std::move(patterns))))
      return signalPassFailure();
  }
};

} // namespace
