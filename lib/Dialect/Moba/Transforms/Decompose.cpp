//===- Decompose.cpp - moba.attention into its stages ---------------------===//
//
// Part of moba-mlir. Implements `moba-decompose`: moba.attention becomes
// moba.block_pool -> moba.gate -> moba.topk -> moba.sparse_attention on the
// packed variable-length layout, and moba.attention_grad becomes the same
// selection -> moba.attention_row_term -> moba.group_queries ->
// moba.grouped_block_attention_grad -> moba.sum_slots. See Passes.td for the
// contract.
//
//===----------------------------------------------------------------------===//

#include "moba/Dialect/Moba/IR/MobaOps.h"
#include "moba/Dialect/Moba/Transforms/Passes.h"

#include "mlir/Dialect/Arith/Utils/Utils.h"
#include "mlir/Dialect/Utils/StaticValueUtils.h"
#include "mlir/IR/PatternMatch.h"
#include "mlir/Transforms/WalkPatternRewriteDriver.h"

#include <limits>

namespace mlir::moba {
#define GEN_PASS_DEF_MOBADECOMPOSE
#include "moba/Dialect/Moba/Transforms/Passes.h.inc"
} // namespace mlir::moba

using namespace mlir;
using namespace mlir::moba;

namespace {

/// Index arithmetic on OpFoldResults: folds when both sides are static,
/// emits arith ops on `index` otherwise. Sizes in the decomposition are
/// static for static shapes and computed at run time for dynamic ones.
class SizeBuilder {
public:
  SizeBuilder(OpBuilder &b, Location loc) : b(b), loc(loc) {}

  OpFoldResult dim(Value tensor, int64_t i) {
    auto type = cast<RankedTensorType>(tensor.getType());
    if (!type.isDynamicDim(i))
      return b.getIndexAttr(type.getDimSize(i));
    return tensor::DimOp::create(b, loc, tensor, i).getResult();
  }
  OpFoldResult constant(int64_t v) { return b.getIndexAttr(v); }

  OpFoldResult add(OpFoldResult x, OpFoldResult y) {
    return binary<arith::AddIOp>(x, y, [](int64_t a, int64_t c) { return a + c; });
  }
  OpFoldResult sub(OpFoldResult x, OpFoldResult y) {
    return binary<arith::SubIOp>(x, y, [](int64_t a, int64_t c) { return a - c; });
  }
  OpFoldResult mul(OpFoldResult x, OpFoldResult y) {
    return binary<arith::MulIOp>(x, y, [](int64_t a, int64_t c) { return a * c; });
  }
  OpFoldResult floorDiv(OpFoldResult x, OpFoldResult y) {
    return binary<arith::DivUIOp>(x, y, [](int64_t a, int64_t c) { return a / c; });
  }
  OpFoldResult ceilDiv(OpFoldResult x, OpFoldResult y) {
    return binary<arith::CeilDivUIOp>(
        x, y, [](int64_t a, int64_t c) { return moba::ceilDiv(a, c); });
  }
  OpFoldResult min(OpFoldResult x, OpFoldResult y) {
    return binary<arith::MinUIOp>(x, y,
                                  [](int64_t a, int64_t c) { return std::min(a, c); });
  }
  OpFoldResult max(OpFoldResult x, OpFoldResult y) {
    return binary<arith::MaxUIOp>(x, y,
                                  [](int64_t a, int64_t c) { return std::max(a, c); });
  }

  /// A tensor.empty of the given sizes.
  Value empty(ArrayRef<OpFoldResult> sizes, Type elementType) {
    return tensor::EmptyOp::create(b, loc, sizes, elementType);
  }

private:
  template <typename ArithOp, typename Fold>
  OpFoldResult binary(OpFoldResult x, OpFoldResult y, Fold fold) {
    std::optional<int64_t> cx = getConstantIntValue(x), cy = getConstantIntValue(y);
    if (cx && cy)
      return b.getIndexAttr(fold(*cx, *cy));
    Value vx = getValueOrCreateConstantIndexOp(b, loc, x);
    Value vy = getValueOrCreateConstantIndexOp(b, loc, y);
    return ArithOp::create(b, loc, vx, vy).getResult();
  }

  OpBuilder &b;
  Location loc;
};

/// The largest static batch whose offsets become a constant: a constant holds
/// B + 1 values in the IR itself, so a batch of 2^33 would take 64 GiB.
constexpr int64_t kMaxConstantOffsets = 1 << 16;

/// The batched layout's `cu_seqlens = [0, S, 2S, ..., B*S]`: a constant when
/// B and S are static and B is at most kMaxConstantOffsets, a
/// tensor.generate otherwise. i32 offsets when the token count fits, i64
/// otherwise. (The verifier bounds q's static bytes, so B * S cannot wrap.)
Value buildUniformCuSeqlens(OpBuilder &b, Location loc, SizeBuilder &sizes,
                            OpFoldResult batch, OpFoldResult seq) {
  std::optional<int64_t> staticBatch = getConstantIntValue(batch);
  std::optional<int64_t> staticSeq = getConstantIntValue(seq);
  bool fitsI32 = staticBatch && staticSeq &&
                 *staticBatch * *staticSeq <= std::numeric_limits<int32_t>::max();
  Type offsetType = fitsI32 ? b.getI32Type() : b.getI64Type();
  if (staticBatch && staticSeq && *staticBatch <= kMaxConstantOffsets) {
    auto type = RankedTensorType::get({*staticBatch + 1}, offsetType);
    SmallVector<APInt> offsets;
    for (int64_t i = 0; i <= *staticBatch; ++i)
      offsets.emplace_back(offsetType.getIntOrFloatBitWidth(), i * *staticSeq);
    return arith::ConstantOp::create(b, loc, DenseElementsAttr::get(type, offsets));
  }
  OpFoldResult count = sizes.add(batch, sizes.constant(1));
  std::optional<int64_t> staticCount = getConstantIntValue(count);
  auto type = RankedTensorType::get(
      {staticCount ? *staticCount : ShapedType::kDynamic}, offsetType);
  Value seqValue = getValueOrCreateConstantIndexOp(b, loc, seq);
  SmallVector<Value> dynamicCount;
  if (!staticCount)
    dynamicCount.push_back(getValueOrCreateConstantIndexOp(b, loc, count));
  return tensor::GenerateOp::create(
      b, loc, type, dynamicCount,
      [&](OpBuilder &nb, Location nloc, ValueRange indices) {
        Value offset = arith::MulIOp::create(nb, nloc, indices[0], seqValue);
        Value cast = arith::IndexCastOp::create(nb, nloc, offsetType, offset);
        tensor::YieldOp::create(nb, nloc, cast);
      });
}

/// [B, S, ...] -> [B * S, ...].
Value collapseBatch(OpBuilder &b, Location loc, Value v) {
  auto type = cast<RankedTensorType>(v.getType());
  SmallVector<ReassociationIndices> groups = {{0, 1}};
  for (int64_t i = 2; i < type.getRank(); ++i)
    groups.push_back({i});
  return tensor::CollapseShapeOp::create(b, loc, v, groups);
}

/// [B * S, ...] -> [B, S, ...] with the shape of `like` (rank + 1).
Value expandBatch(OpBuilder &b, Location loc, SizeBuilder &sizes, Value v,
                  RankedTensorType resultType, OpFoldResult batch,
                  OpFoldResult seq) {
  auto type = cast<RankedTensorType>(v.getType());
  SmallVector<ReassociationIndices> groups = {{0, 1}};
  SmallVector<OpFoldResult> shape = {batch, seq};
  for (int64_t i = 1; i < type.getRank(); ++i) {
    groups.push_back({i + 1});
    shape.push_back(sizes.dim(v, i));
  }
  return tensor::ExpandShapeOp::create(b, loc, resultType, v, groups, shape);
}

/// Blocks per sequence (MB) and in the whole batch (NB), both at least 1
/// so that empty inputs still give well-formed tensors. NB takes the
/// tighter of two bounds on sum_b ceil(len_b / block_size).
struct BlockCounts {
  OpFoldResult perSequence, total;
};
BlockCounts countBlocks(SizeBuilder &sizes, OpFoldResult batch,
                        OpFoldResult tokens, OpFoldResult seqBound,
                        int64_t blockSize) {
  OpFoldResult one = sizes.constant(1), block = sizes.constant(blockSize);
  OpFoldResult perSequence = sizes.max(sizes.ceilDiv(seqBound, block), one);
  OpFoldResult total = sizes.max(
      sizes.min(sizes.mul(batch, perSequence),
                sizes.add(sizes.floorDiv(tokens, block), batch)),
      one);
  return {perSequence, total};
}

/// The selection `[T, Hq, top_k]` (i32 local block indices) of packed `q`
/// and `k`: moba.block_pool -> moba.gate -> moba.topk. moba.attention and
/// moba.attention_grad both build their selection here, so the later passes
/// (canonicalization, moba-fuse-gate-topk, the loop or GPU lowering of the
/// gate) see the same ops with the same operands and attributes in both, and
/// the backward's selection is bit-identical to the forward's
/// (docs/semantics.md, "Gradients"). Keep it the one place that does.
Value buildSelection(PatternRewriter &rewriter, Location loc,
                     SizeBuilder &sizes, Value q, Value k, Value cu,
                     OpFoldResult batch, OpFoldResult tokens,
                     OpFoldResult seqBound, int64_t blockSize, int64_t topK,
                     BoolAttr causal) {
  OpFoldResult qHeads = sizes.dim(q, 1);
  OpFoldResult kvHeads = sizes.dim(k, 1);
  OpFoldResult headDim = sizes.dim(q, 2);
  BlockCounts blocks = countBlocks(sizes, batch, tokens, seqBound, blockSize);
  Type f32 = rewriter.getF32Type();
  auto blockSizeAttr = rewriter.getI64IntegerAttr(blockSize);
  Value meansInit = sizes.empty({blocks.total, kvHeads, headDim}, f32);
  Value means = BlockPoolOp::create(rewriter, loc, meansInit.getType(), k,
                                    cu, meansInit, blockSizeAttr);
  Value scoresInit = sizes.empty({tokens, qHeads, blocks.perSequence}, f32);
  Value scores = GateOp::create(rewriter, loc, scoresInit.getType(), q, means,
                                cu, scoresInit, blockSizeAttr);
  Value selectedInit = sizes.empty({tokens, qHeads, sizes.constant(topK)},
                                   rewriter.getI32Type());
  return TopKOp::create(rewriter, loc, selectedInit.getType(), scores, cu,
                        selectedInit, blockSizeAttr, causal);
}

struct DecomposeAttention : OpRewritePattern<AttentionOp> {
  using OpRewritePattern::OpRewritePattern;

  LogicalResult matchAndRewrite(AttentionOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    SizeBuilder sizes(rewriter, loc);
    Value q = op.getQ(), k = op.getK(), v = op.getV();
    Value cu = op.getCuSeqlens();
    int64_t blockSize = op.getBlockSize();

    // One layout for every later stage: packed [T, H, D] with cu_seqlens.
    // `seqBound` bounds the length of one sequence.
    OpFoldResult batch, seq, seqBound, tokens;
    if (op.isVarlen()) {
      tokens = sizes.dim(q, 0);
      batch = sizes.sub(sizes.dim(cu, 0), sizes.constant(1));
      seqBound = op.getMaxSeqlen() ? sizes.constant(*op.getMaxSeqlen())
                                   : tokens;
    } else {
      batch = sizes.dim(q, 0);
      seq = sizes.dim(q, 1);
      seqBound = seq;
      tokens = sizes.mul(batch, seq);
      cu = buildUniformCuSeqlens(rewriter, loc, sizes, batch, seq);
      q = collapseBatch(rewriter, loc, q);
      k = collapseBatch(rewriter, loc, k);
      v = collapseBatch(rewriter, loc, v);
    }
    auto blockSizeAttr = rewriter.getI64IntegerAttr(blockSize);
    Value selected = buildSelection(rewriter, loc, sizes, q, k, cu, batch,
                                    tokens, seqBound, blockSize, op.getTopK(),
                                    op.getCausalAttr());
    Type f32 = rewriter.getF32Type();
    OpFoldResult qHeads = sizes.dim(q, 1);
    OpFoldResult headDim = sizes.dim(q, 2);
    auto qType = cast<RankedTensorType>(q.getType());
    Value outInit = sizes.empty({tokens, qHeads, headDim}, qType.getElementType());
    Value lseInit = sizes.empty({tokens, qHeads}, f32);
    auto attention = SparseAttentionOp::create(
        rewriter, loc, outInit.getType(), lseInit.getType(), q, k, v, cu,
        selected, outInit, lseInit, blockSizeAttr,
        rewriter.getF32FloatAttr(op.getScaleOrDefault()), op.getCausalAttr());

    // Back to the caller's layout; the log-sum-exp only when asked for.
    Value output = attention.getOutput(), lse = attention.getLse();
    if (!op.isVarlen())
      output = expandBatch(rewriter, loc, sizes, output,
                           op.getOutput().getType(), batch, seq);
    SmallVector<Value> replacements = {output};
    if (Value userLse = op.getLse()) {
      if (!op.isVarlen())
        lse = expandBatch(rewriter, loc, sizes, lse,
                          cast<RankedTensorType>(userLse.getType()), batch,
                          seq);
      replacements.push_back(lse);
    }
    rewriter.replaceOp(op, replacements);
    return success();
  }
};

/// moba.attention_grad (packed layout only): the selection as the forward
/// builds it (or the caller's), the row term, the groups of each key block,
/// the grouped backward and the sum of the dq partials over the slots.
struct DecomposeAttentionGrad : OpRewritePattern<AttentionGradOp> {
  using OpRewritePattern::OpRewritePattern;

  LogicalResult matchAndRewrite(AttentionGradOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    SizeBuilder sizes(rewriter, loc);
    Value q = op.getQ(), k = op.getK(), v = op.getV();
    Value cu = op.getCuSeqlens();
    int64_t blockSize = op.getBlockSize();
    auto blockSizeAttr = rewriter.getI64IntegerAttr(blockSize);
    OpFoldResult tokens = sizes.dim(q, 0);
    OpFoldResult batch = sizes.sub(sizes.dim(cu, 0), sizes.constant(1));
    OpFoldResult seqBound =
        op.getMaxSeqlen() ? sizes.constant(*op.getMaxSeqlen()) : tokens;
    // moba.attention's canonicalizer clamps a top_k above the static block
    // count before this pass runs; the backward's top_k is not clamped. Its
    // extra slots hold -1 and attend nothing, and the slots before them are
    // the forward's, so the key sets, and the sums in slot order, agree.
    Value selected = op.getSelected();
    if (!selected)
      selected = buildSelection(rewriter, loc, sizes, q, k, cu, batch, tokens,
                                seqBound, blockSize, op.getTopK(),
                                op.getCausalAttr());
    OpFoldResult qHeads = sizes.dim(q, 1);
    OpFoldResult kvHeads = sizes.dim(k, 1);
    OpFoldResult headDim = sizes.dim(q, 2);
    OpFoldResult slots = sizes.dim(selected, 2);
    Type f32 = rewriter.getF32Type(), i32 = rewriter.getI32Type();

    Value rowTermInit = sizes.empty({tokens, qHeads}, f32);
    Value rowTerm = AttentionRowTermOp::create(
        rewriter, loc, rowTermInit.getType(), op.getGradOut(), op.getOut(),
        op.getGradLse(), rowTermInit);

    BlockCounts blocks = countBlocks(sizes, batch, tokens, seqBound, blockSize);
    Value starts = sizes.empty({qHeads, blocks.total}, i32);
    Value counts = sizes.empty({qHeads, blocks.total}, i32);
    Value entries = sizes.empty({qHeads, sizes.mul(tokens, slots)}, i32);
    auto groups = GroupQueriesOp::create(
        rewriter, loc,
        TypeRange{starts.getType(), counts.getType(), entries.getType()},
        selected, cu, starts, counts, entries, blockSizeAttr);

    // dk and dv are rounded once, straight to k's type: the grouped
    // backward accumulates each row over its whole group before writing.
    Type kvElement = cast<RankedTensorType>(k.getType()).getElementType();
    Value partialsInit =
        sizes.empty({slots, tokens, qHeads, headDim}, f32);
    Value dkInit = sizes.empty({tokens, kvHeads, headDim}, kvElement);
    Value dvInit = sizes.empty({tokens, kvHeads, headDim}, kvElement);
    auto grad = GroupedBlockAttentionGradOp::create(
        rewriter, loc,
        TypeRange{partialsInit.getType(), dkInit.getType(), dvInit.getType()},
        q, k, v, cu, selected, groups.getStarts(), groups.getCounts(),
        groups.getEntries(), op.getGradOut(), op.getLse(), rowTerm,
        partialsInit, dkInit, dvInit, blockSizeAttr,
        rewriter.getF32FloatAttr(op.getScaleOrDefault()), op.getCausalAttr());

    Type qElement = cast<RankedTensorType>(q.getType()).getElementType();
    Value dqInit = sizes.empty({tokens, qHeads, headDim}, qElement);
    Value dq = SumSlotsOp::create(rewriter, loc, dqInit.getType(),
                                  grad.getDqPartials(), dqInit);
    // The results keep the caller's types (static where the caller's are).
    SmallVector<Value> results = {dq, grad.getDk(), grad.getDv()};
    for (auto [result, type] : llvm::zip(results, op.getResultTypes()))
      if (result.getType() != type)
        result = tensor::CastOp::create(rewriter, loc, type, result);
    rewriter.replaceOp(op, results);
    return success();
  }
};

struct MobaDecomposePass
    : public moba::impl::MobaDecomposeBase<MobaDecomposePass> {
  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    populateMobaDecomposePatterns(patterns);
    walkAndApplyPatterns(getOperation(), std::move(patterns));
  }
};

} // namespace

void mlir::moba::populateMobaDecomposePatterns(RewritePatternSet &patterns) {
  patterns.add<DecomposeAttention, DecomposeAttentionGrad>(
      patterns.getContext());
}
