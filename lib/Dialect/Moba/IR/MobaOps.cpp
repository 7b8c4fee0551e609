//===- MobaOps.cpp - moba dialect operations ------------------------------===//
//
// Part of moba-mlir. Verifiers and interface methods of the moba ops. Every
// verifier rule has its own message naming the operands and the values that
// disagree; test/Dialect/Moba/invalid.mlir holds one case per rule.
//
//===----------------------------------------------------------------------===//

#include "moba/Dialect/Moba/IR/MobaOps.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/Matchers.h"
#include "mlir/IR/OpImplementation.h"
#include "llvm/ADT/STLExtras.h"
#include "llvm/Support/CheckedArithmetic.h"
#include "llvm/Support/MathExtras.h"
#include "llvm/Support/FormatVariadic.h"

#include <cmath>

using namespace mlir;
using namespace mlir::moba;

//===----------------------------------------------------------------------===//
// Verification helpers
//===----------------------------------------------------------------------===//

namespace {

/// Prints a shape as `[4096, 32, ?]`.
std::string formatShape(ArrayRef<int64_t> shape) {
  std::string s = "[";
  llvm::raw_string_ostream os(s);
  llvm::interleaveComma(shape, os, [&](int64_t d) {
    if (ShapedType::isDynamic(d))
      os << "?";
    else
      os << d;
  });
  os << "]";
  return s;
}

/// Two dims agree when either is dynamic or both are equal.
bool dimsAgree(int64_t a, int64_t b) {
  return ShapedType::isDynamic(a) || ShapedType::isDynamic(b) || a == b;
}

/// A named tensor operand or result, for messages.
struct Named {
  StringRef name;
  ShapedType type;
  Named(StringRef name, Value v)
      : name(name), type(cast<ShapedType>(v.getType())) {}
  int64_t dim(int64_t i) const { return type.getDimSize(i); }
};

/// Emits the verifier messages shared by the moba ops.
class Checker {
public:
  explicit Checker(Operation *op) : op(op) {}

  /// `t` must have rank `rank`; `layout` spells the expected dims.
  LogicalResult rank(const Named &t, int64_t rank, StringRef layout) {
    if (t.type.getRank() == rank)
      return success();
    return op->emitOpError() << "expects " << t.name << " of rank " << rank
                             << " (" << layout << "), got rank "
                             << t.type.getRank() << " ("
                             << formatShape(t.type.getShape()) << ")";
  }

  /// Dim `ia` of `a` and dim `ib` of `b` are the same quantity `what`.
  LogicalResult sameDim(StringRef what, const Named &a, int64_t ia,
                        const Named &b, int64_t ib) {
    if (dimsAgree(a.dim(ia), b.dim(ib)))
      return success();
    return op->emitOpError()
           << what << " of " << a.name << " (" << a.dim(ia) << ") and "
           << b.name << " (" << b.dim(ib) << ") disagree";
  }

  LogicalResult sameElementType(const Named &a, const Named &b) {
    if (a.type.getElementType() == b.type.getElementType())
      return success();
    return op->emitOpError() << "element types disagree: " << a.name
                             << " has " << a.type.getElementType() << ", "
                             << b.name << " has " << b.type.getElementType();
  }

  LogicalResult sameShape(const Named &a, const Named &b) {
    ArrayRef<int64_t> sa = a.type.getShape(), sb = b.type.getShape();
    if (sa.size() == sb.size() &&
        llvm::all_of(llvm::zip(sa, sb), [](auto p) {
          return dimsAgree(std::get<0>(p), std::get<1>(p));
        }))
      return success();
    return op->emitOpError() << "shape of " << a.name << " "
                             << formatShape(sa) << " and of " << b.name << " "
                             << formatShape(sb) << " disagree";
  }

  /// A static dim that is a count of things must be at least 1.
  LogicalResult positiveDim(StringRef what, const Named &t, int64_t i) {
    int64_t d = t.dim(i);
    if (ShapedType::isDynamic(d) || d >= 1)
      return success();
    return op->emitOpError() << what << " (dim " << i << " of " << t.name
                             << ") must be at least 1, got " << d;
  }

  /// Hq query heads must share Hkv key/value heads evenly.
  LogicalResult headGroups(const Named &q, int64_t qDim, const Named &kv,
                           int64_t kvDim) {
    int64_t hq = q.dim(qDim), hkv = kv.dim(kvDim);
    if (ShapedType::isDynamic(hq) || ShapedType::isDynamic(hkv) ||
        hq % hkv == 0)
      return success();
    return op->emitOpError()
           << "number of query heads (Hq = " << hq << " in " << q.name
           << ") is not a multiple of the number of key/value heads (Hkv = "
           << hkv << " in " << kv.name << ")";
  }

  /// K, the last dim of a selection init, must be static, at least 1 and at
  /// most kMaxSelectedBlocks.
  LogicalResult selectionWidth(const Named &init) {
    int64_t k = init.type.getShape().back();
    if (ShapedType::isDynamic(k))
      return op->emitOpError("K, the last dim of init, must be static");
    if (k < 1)
      return op->emitOpError()
             << "K, the last dim of init, must be at least 1, got " << k;
    return staticDimAtMost("K", init, init.type.getRank() - 1,
                           kMaxSelectedBlocks);
  }

  /// A static dim that becomes a vector width or a register array (head_dim,
  /// K) must not exceed `limit`.
  LogicalResult staticDimAtMost(StringRef what, const Named &t, int64_t i,
                                int64_t limit) {
    int64_t d = t.dim(i);
    if (ShapedType::isDynamic(d) || d <= limit)
      return success();
    return op->emitOpError() << what << " (dim " << i << " of " << t.name
                             << ") must be at most " << limit << ", got " << d;
  }

  LogicalResult attrAtMost(StringRef attrName, int64_t value, int64_t limit) {
    if (value <= limit)
      return success();
    return op->emitOpError() << attrName << " must be at most " << limit
                             << ", got " << value;
  }

  /// Every shaped operand and result whose sizes are all static must hold
  /// fewer than kMaxStaticBytes bytes: the lowerings multiply these sizes in
  /// signed 64-bit index arithmetic, which must never wrap.
  LogicalResult staticSizes() {
    auto check = [&](Type type, StringRef kind,
                     unsigned index) -> LogicalResult {
      auto shaped = dyn_cast<ShapedType>(type);
      if (!shaped || !shaped.hasRank())
        return success();
      Type element = shaped.getElementType();
      int64_t bytes =
          element.isIntOrFloat()
              ? std::max<int64_t>(1, (element.getIntOrFloatBitWidth() + 7) / 8)
              : 8;
      for (int64_t d : shaped.getShape()) {
        if (ShapedType::isDynamic(d))
          continue;
        if (llvm::MulOverflow(bytes, d, bytes) || bytes >= kMaxStaticBytes)
          return op->emitOpError()
                 << kind << " #" << index << " of type " << type
                 << " is too large: its static sizes multiply to 2^62 bytes "
                    "or more, beyond what 64-bit index arithmetic can address";
      }
      return success();
    };
    for (auto [i, type] : llvm::enumerate(op->getOperandTypes()))
      if (failed(check(type, "operand", i)))
        return failure();
    for (auto [i, type] : llvm::enumerate(op->getResultTypes()))
      if (failed(check(type, "result", i)))
        return failure();
    return success();
  }

  LogicalResult atLeastOne(StringRef attrName, int64_t value) {
    if (value >= 1)
      return success();
    return op->emitOpError() << attrName << " must be at least 1, got "
                             << value;
  }

  LogicalResult scale(FloatAttr scale) {
    if (!scale)
      return success();
    double s = scale.getValueAsDouble();
    if (std::isfinite(s) && s > 0)
      return success();
    return op->emitOpError() << "scale must be a positive finite number, got "
                             << scale.getValueAsDouble();
  }

  /// `cu_seqlens` must be a rank-1 integer tensor of at least two offsets.
  /// When it is a constant, its values must start at 0, never decrease, and
  /// end at `tokens` (when static).
  LogicalResult cuSeqlens(Value cu, int64_t tokens) {
    auto type = dyn_cast<ShapedType>(cu.getType());
    if (!type || !type.hasRank() || type.getRank() != 1 ||
        !isa<IntegerType>(type.getElementType()))
      return op->emitOpError()
             << "expects cu_seqlens to be a rank-1 tensor of integers "
                "(sequence offsets), got "
             << cu.getType();
    if (!ShapedType::isDynamic(type.getDimSize(0)) && type.getDimSize(0) < 2)
      return op->emitOpError()
             << "expects cu_seqlens to hold at least 2 offsets (one "
                "sequence), got "
             << type.getDimSize(0);
    DenseIntElementsAttr values;
    if (!matchPattern(cu, m_Constant(&values)))
      return success();
    SmallVector<int64_t> offsets =
        llvm::map_to_vector(values.getValues<APInt>(),
                            [](const APInt &v) { return v.getSExtValue(); });
    if (offsets.front() != 0)
      return op->emitOpError() << "cu_seqlens must start at 0, got "
                               << offsets.front();
    for (size_t i = 1; i < offsets.size(); ++i)
      if (offsets[i] < offsets[i - 1])
        return op->emitOpError()
               << "cu_seqlens must not decrease, got " << offsets[i - 1]
               << " then " << offsets[i] << " at index " << i;
    if (!ShapedType::isDynamic(tokens) && offsets.back() != tokens)
      return op->emitOpError() << "cu_seqlens must end at the token count ("
                               << tokens << "), got " << offsets.back();
    return success();
  }

private:
  Operation *op;
};

/// Verifies q `[T, Hq, D]`, k and v `[T, Hkv, D]` of the packed layout, the
/// optional selection `[T, Hq, K]`, and cu_seqlens; shared by the decomposed
/// attention ops.
LogicalResult verifyPackedAttentionOperands(Operation *op, Value qv, Value kv,
                                            Value vv, Value cu,
                                            Value selected, int64_t blockSize,
                                            FloatAttr scale) {
  Checker c(op);
  if (failed(c.staticSizes()))
    return failure();
  Named q("q", qv), k("k", kv), v("v", vv);
  constexpr StringRef qLayout = "[tokens, query heads, head_dim]";
  constexpr StringRef kvLayout = "[tokens, key/value heads, head_dim]";
  if (failed(c.rank(q, 3, qLayout)) || failed(c.rank(k, 3, kvLayout)) ||
      failed(c.rank(v, 3, kvLayout)) || failed(c.sameElementType(q, k)) ||
      failed(c.sameElementType(q, v)) || failed(c.sameShape(k, v)) ||
      failed(c.sameDim("token count", q, 0, k, 0)) ||
      failed(c.sameDim("head_dim", q, 2, k, 2)) ||
      failed(c.positiveDim("number of query heads", q, 1)) ||
      failed(c.positiveDim("number of key/value heads", k, 1)) ||
      failed(c.positiveDim("head_dim", q, 2)) ||
      failed(c.staticDimAtMost("head_dim", q, 2, kMaxHeadDim)) ||
      failed(c.headGroups(q, 1, k, 1)) ||
      failed(c.atLeastOne("block_size", blockSize)) ||
      failed(c.scale(scale)) || failed(c.cuSeqlens(cu, q.dim(0))))
    return failure();
  if (!selected)
    return success();
  Named sel("selected", selected);
  if (failed(c.rank(sel, 3, "[tokens, query heads, K]")) ||
      failed(c.sameDim("token count", q, 0, sel, 0)) ||
      failed(c.sameDim("number of query heads", q, 1, sel, 1)) ||
      failed(c.positiveDim("K", sel, 2)) ||
      failed(c.staticDimAtMost("K", sel, 2, kMaxSelectedBlocks)))
    return failure();
  return success();
}

/// The last `n` operands of `op`: the inits of a moba DPS op.
MutableOperandRange trailingOperands(Operation *op, unsigned n) {
  return MutableOperandRange(op, op->getNumOperands() - n, n);
}

} // namespace

//===----------------------------------------------------------------------===//
// AttentionOp
//===----------------------------------------------------------------------===//

std::optional<int64_t> AttentionOp::getStaticHeadDim() {
  for (Value v : {getQ(), getK(), getV(), getOutput()}) {
    int64_t d = cast<RankedTensorType>(v.getType()).getShape().back();
    if (!ShapedType::isDynamic(d))
      return d;
  }
  return std::nullopt;
}

double AttentionOp::getScaleOrDefault() {
  if (std::optional<APFloat> s = getScale())
    return s->convertToDouble();
  return 1.0 / std::sqrt(double(*getStaticHeadDim()));
}

std::optional<int64_t> AttentionOp::getStaticMaxBlocksPerSequence() {
  int64_t seq = isVarlen() ? getQ().getType().getDimSize(0)
                           : getQ().getType().getDimSize(1);
  if (isVarlen() && getMaxSeqlen())
    seq = *getMaxSeqlen();
  if (ShapedType::isDynamic(seq))
    return std::nullopt;
  return ceilDiv(seq, getBlockSize());
}

LogicalResult AttentionOp::verify() {
  Checker c(*this);
  if (failed(c.staticSizes()))
    return failure();
  Named q("q", getQ()), k("k", getK()), v("v", getV()),
      out("output", getOutput());
  int64_t rank = q.type.getRank();
  if (rank != 3 && rank != 4)
    return emitOpError()
           << "expects q of rank 3 ([tokens, heads, head_dim] with "
              "cu_seqlens) or 4 ([batch, seq, heads, head_dim]), got rank "
           << rank << " (" << formatShape(q.type.getShape()) << ")";
  bool varlen = rank == 3;
  StringRef kvLayout = varlen ? "[tokens, key/value heads, head_dim]"
                              : "[batch, seq, key/value heads, head_dim]";
  if (failed(c.rank(k, rank, kvLayout)) || failed(c.rank(v, rank, kvLayout)) ||
      failed(c.sameElementType(q, k)) || failed(c.sameElementType(q, v)) ||
      failed(c.sameElementType(q, out)) || failed(c.sameShape(k, v)) ||
      failed(c.sameShape(q, out)))
    return failure();

  int64_t headDim = rank - 1, headAxis = rank - 2;
  if (varlen) {
    if (failed(c.sameDim("token count", q, 0, k, 0)))
      return failure();
  } else if (failed(c.sameDim("batch size", q, 0, k, 0)) ||
             failed(c.sameDim("sequence length", q, 1, k, 1))) {
    return failure();
  }
  if (failed(c.sameDim("head_dim", q, headDim, k, headDim)) ||
      failed(c.positiveDim("number of query heads", q, headAxis)) ||
      failed(c.positiveDim("number of key/value heads", k, headAxis)) ||
      failed(c.positiveDim("head_dim", q, headDim)) ||
      failed(c.staticDimAtMost("head_dim", q, headDim, kMaxHeadDim)) ||
      failed(c.headGroups(q, headAxis, k, headAxis)) ||
      failed(c.atLeastOne("block_size", getBlockSize())) ||
      failed(c.atLeastOne("top_k", getTopK())) ||
      failed(c.attrAtMost("top_k", getTopK(), kMaxSelectedBlocks)) ||
      failed(c.scale(getScaleAttr())))
    return failure();

  if (!getStaticHeadDim() && !getScaleAttr())
    return emitOpError("needs an explicit scale when head_dim is dynamic "
                       "(the default 1/sqrt(head_dim) must be static)");

  if (varlen) {
    if (!getCuSeqlens())
      return emitOpError("the packed layout (q of rank 3) needs cu_seqlens");
    if (failed(c.cuSeqlens(getCuSeqlens(), q.dim(0))))
      return failure();
  } else {
    if (getCuSeqlens())
      return emitOpError("the batched layout (q of rank 4) takes no "
                         "cu_seqlens: every sequence has length dim 1 of q");
    if (getMaxSeqlen())
      return emitOpError("max_seqlen is only for the packed layout; the "
                         "batched layout's sequence length is dim 1 of q");
  }
  if (std::optional<int64_t> maxSeqlen = getMaxSeqlen()) {
    if (failed(c.atLeastOne("max_seqlen", *maxSeqlen)))
      return failure();
    if (!ShapedType::isDynamic(q.dim(0)) && *maxSeqlen > q.dim(0))
      return emitOpError() << "max_seqlen (" << *maxSeqlen
                           << ") exceeds the token count (" << q.dim(0) << ")";
  }

  if (Value lseValue = getLse()) {
    Named lse("lse", lseValue);
    SmallVector<int64_t> expected(q.type.getShape().drop_back());
    if (lse.type.getRank() != rank - 1 ||
        !llvm::all_of(llvm::zip(lse.type.getShape(), expected), [](auto p) {
          return dimsAgree(std::get<0>(p), std::get<1>(p));
        }))
      return emitOpError() << "expects lse of shape " << formatShape(expected)
                           << " (q's shape without head_dim), got "
                           << formatShape(lse.type.getShape());
  }
  return success();
}

//===----------------------------------------------------------------------===//
// AttentionGradOp
//===----------------------------------------------------------------------===//

std::optional<int64_t> AttentionGradOp::getStaticHeadDim() {
  for (Value v : {getQ(), getK(), getV(), getOut(), getGradOut()}) {
    int64_t d = cast<RankedTensorType>(v.getType()).getShape().back();
    if (!ShapedType::isDynamic(d))
      return d;
  }
  return std::nullopt;
}

double AttentionGradOp::getScaleOrDefault() {
  if (std::optional<APFloat> s = getScale())
    return s->convertToDouble();
  return 1.0 / std::sqrt(double(*getStaticHeadDim()));
}

LogicalResult AttentionGradOp::verify() {
  if (failed(verifyPackedAttentionOperands(*this, getQ(), getK(), getV(),
                                           getCuSeqlens(), getSelected(),
                                           getBlockSize(), getScaleAttr())))
    return failure();
  Checker c(*this);
  Named q("q", getQ()), k("k", getK()), v("v", getV()), out("out", getOut()),
      lse("lse", getLse()), dout("grad_out", getGradOut()),
      dq("grad_q", getGradQ()), dk("grad_k", getGradK()),
      dv("grad_v", getGradV());
  if (failed(c.atLeastOne("top_k", getTopK())) ||
      failed(c.attrAtMost("top_k", getTopK(), kMaxSelectedBlocks)) ||
      failed(c.sameElementType(q, out)) || failed(c.sameShape(q, out)) ||
      failed(c.sameElementType(q, dout)) || failed(c.sameShape(q, dout)) ||
      failed(c.rank(lse, 2, "[tokens, query heads]")) ||
      failed(c.sameDim("token count", q, 0, lse, 0)) ||
      failed(c.sameDim("number of query heads", q, 1, lse, 1)))
    return failure();
  if (Value gradLse = getGradLse()) {
    Named dlse("grad_lse", gradLse);
    if (failed(c.sameShape(lse, dlse)))
      return failure();
  }
  // The gradients have the types of what they differentiate.
  for (auto [grad, input] : {std::pair(dq, q), std::pair(dk, k),
                             std::pair(dv, v)})
    if (failed(c.sameElementType(input, grad)) ||
        failed(c.sameShape(input, grad)))
      return failure();
  if (!getStaticHeadDim() && !getScaleAttr())
    return emitOpError("needs an explicit scale when head_dim is dynamic "
                       "(the default 1/sqrt(head_dim) must be static)");
  if (std::optional<int64_t> maxSeqlen = getMaxSeqlen()) {
    if (failed(c.atLeastOne("max_seqlen", *maxSeqlen)))
      return failure();
    if (!ShapedType::isDynamic(q.dim(0)) && *maxSeqlen > q.dim(0))
      return emitOpError() << "max_seqlen (" << *maxSeqlen
                           << ") exceeds the token count (" << q.dim(0) << ")";
  }
  if (Value selected = getSelected()) {
    int64_t width = cast<ShapedType>(selected.getType()).getShape().back();
    if (!ShapedType::isDynamic(width) &&
        width != static_cast<int64_t>(getTopK()))
      return emitOpError() << "selected holds " << width
                           << " blocks per token and head (dim 2), but top_k "
                              "is "
                           << getTopK();
  }
  return success();
}

//===----------------------------------------------------------------------===//
// BlockPoolOp
//===----------------------------------------------------------------------===//

MutableOperandRange BlockPoolOp::getDpsInitsMutable() {
  return getInitMutable();
}

LogicalResult BlockPoolOp::verify() {
  Checker c(*this);
  Named keys("keys", getKeys()), init("init", getInit());
  if (failed(c.staticSizes()) ||
      failed(c.rank(keys, 3, "[tokens, key/value heads, head_dim]")) ||
      failed(c.rank(init, 3, "[blocks, key/value heads, head_dim]")) ||
      failed(c.positiveDim("number of key/value heads", keys, 1)) ||
      failed(c.staticDimAtMost("head_dim", keys, 2, kMaxHeadDim)) ||
      failed(c.sameDim("number of key/value heads", keys, 1, init, 1)) ||
      failed(c.sameDim("head_dim", keys, 2, init, 2)) ||
      failed(c.atLeastOne("block_size", getBlockSize())) ||
      failed(c.cuSeqlens(getCuSeqlens(), keys.dim(0))))
    return failure();
  return success();
}

//===----------------------------------------------------------------------===//
// GateOp
//===----------------------------------------------------------------------===//

MutableOperandRange GateOp::getDpsInitsMutable() { return getInitMutable(); }

LogicalResult GateOp::verify() {
  Checker c(*this);
  Named q("queries", getQueries()), means("means", getMeans()),
      init("init", getInit());
  if (failed(c.staticSizes()) ||
      failed(c.rank(q, 3, "[tokens, query heads, head_dim]")) ||
      failed(c.rank(means, 3, "[blocks, key/value heads, head_dim]")) ||
      failed(c.rank(init, 3, "[tokens, query heads, blocks per sequence]")) ||
      failed(c.positiveDim("number of query heads", q, 1)) ||
      failed(c.staticDimAtMost("head_dim", q, 2, kMaxHeadDim)) ||
      failed(c.sameDim("head_dim", q, 2, means, 2)) ||
      failed(c.sameDim("token count", q, 0, init, 0)) ||
      failed(c.sameDim("number of query heads", q, 1, init, 1)) ||
      failed(c.positiveDim("number of key/value heads", means, 1)) ||
      failed(c.positiveDim("blocks per sequence", init, 2)) ||
      failed(c.headGroups(q, 1, means, 1)) ||
      failed(c.atLeastOne("block_size", getBlockSize())) ||
      failed(c.cuSeqlens(getCuSeqlens(), q.dim(0))))
    return failure();
  return success();
}

//===----------------------------------------------------------------------===//
// TopKOp
//===----------------------------------------------------------------------===//

MutableOperandRange TopKOp::getDpsInitsMutable() { return getInitMutable(); }

LogicalResult TopKOp::verify() {
  Checker c(*this);
  Named init("init", getInit());
  if (failed(c.staticSizes()) ||
      failed(c.rank(init, 3, "[tokens, query heads, K]")) ||
      failed(c.positiveDim("number of query heads", init, 1)) ||
      failed(c.selectionWidth(init)))
    return failure();
  int64_t k = getK();
  if (failed(c.atLeastOne("block_size", getBlockSize())) ||
      failed(c.cuSeqlens(getCuSeqlens(), init.dim(0))))
    return failure();
  if (!getScores()) {
    if (!getCausal() || k != 1)
      return emitOpError() << "scores may be omitted only for causal "
                              "selection of one block, got K = "
                           << k << " and causal = " << getCausal();
    return success();
  }
  Named scores("scores", getScores());
  if (failed(c.rank(scores, 3, "[tokens, query heads, blocks per sequence]")) ||
      failed(c.sameDim("token count", scores, 0, init, 0)) ||
      failed(c.sameDim("number of query heads", scores, 1, init, 1)) ||
      failed(c.positiveDim("blocks per sequence", scores, 2)))
    return failure();
  return success();
}

/// An op that exists on tensors and, after bufferization, on buffers: all
/// its operands on tensors with results of its inits' types (`results`
/// names them for the diagnostic), or all on buffers with none.
static LogicalResult verifyTensorOrBufferForm(DestinationStyleOpInterface op,
                                              StringRef results) {
  bool onTensors = isa<RankedTensorType>(op->getOperand(0).getType());
  for (Value operand : op->getOperands())
    if (isa<RankedTensorType, UnrankedTensorType>(operand.getType()) !=
        onTensors)
      return op->emitOpError("operands must be all tensors or all memrefs");
  if (!onTensors)
    return op->getNumResults() == 0
               ? success()
               : op->emitOpError("on memrefs, has no results");
  if (op->getNumResults() != op.getNumDpsInits() ||
      !llvm::all_of(op.getDpsInitsMutable(), [&](OpOperand &init) {
        return op.getTiedOpResult(&init).getType() == init.get().getType();
      }))
    return op->emitOpError() << "on tensors, expects " << results;
  return success();
}

/// f16 or bf16 queries with head_dim a static multiple of 16 up to 128: what
/// the tensor-core lowerings take.
static bool hasMmaCompatibleQueries(Type queries) {
  auto q = cast<ShapedType>(queries);
  int64_t d = q.getShape().back();
  return (q.getElementType().isF16() || q.getElementType().isBF16()) &&
         !ShapedType::isDynamic(d) && d % 16 == 0 && d <= 128;
}

/// The effects of an op that exists on tensors and, after bufferization, on
/// buffers: on tensors it is pure; on buffers it reads its inputs and writes
/// its inits.
static void addBufferFormEffects(
    DestinationStyleOpInterface op,
    SmallVectorImpl<SideEffects::EffectInstance<MemoryEffects::Effect>>
        &effects) {
  for (OpOperand &operand : op->getOpOperands()) {
    if (!isa<MemRefType>(operand.get().getType()))
      continue;
    if (op.isDpsInit(&operand))
      effects.emplace_back(MemoryEffects::Write::get(), &operand,
                           SideEffects::DefaultResource::get());
    else
      effects.emplace_back(MemoryEffects::Read::get(), &operand,
                           SideEffects::DefaultResource::get());
  }
}

//===----------------------------------------------------------------------===//
// GateTopKOp
//===----------------------------------------------------------------------===//

MutableOperandRange GateTopKOp::getDpsInitsMutable() {
  return getInitMutable();
}

void GateTopKOp::getEffects(
    SmallVectorImpl<SideEffects::EffectInstance<MemoryEffects::Effect>>
        &effects) {
  addBufferFormEffects(*this, effects);
}

bool GateTopKOp::isMmaSyncCompatible() {
  return hasMmaCompatibleQueries(getQueries().getType()) &&
         getKeptByScore() <= kMaxMmaKeptBlocks;
}

LogicalResult GateTopKOp::verify() {
  if (failed(verifyTensorOrBufferForm(*this, "one result of the type of "
                                             "init")))
    return failure();
  Checker c(*this);
  Named q("queries", getQueries()), means("means", getMeans()),
      init("init", getInit());
  if (failed(c.staticSizes()) ||
      failed(c.rank(q, 3, "[tokens, query heads, head_dim]")) ||
      failed(c.rank(means, 3, "[blocks, key/value heads, head_dim]")) ||
      failed(c.rank(init, 3, "[tokens, query heads, K]")) ||
      failed(c.positiveDim("number of query heads", q, 1)) ||
      failed(c.staticDimAtMost("head_dim", q, 2, kMaxHeadDim)) ||
      failed(c.sameDim("head_dim", q, 2, means, 2)) ||
      failed(c.sameDim("token count", q, 0, init, 0)) ||
      failed(c.sameDim("number of query heads", q, 1, init, 1)) ||
      failed(c.positiveDim("number of key/value heads", means, 1)) ||
      failed(c.headGroups(q, 1, means, 1)) ||
      failed(c.atLeastOne("block_size", getBlockSize())) ||
      failed(c.cuSeqlens(getCuSeqlens(), q.dim(0))) ||
      failed(c.selectionWidth(init)))
    return failure();
  return success();
}

//===----------------------------------------------------------------------===//
// SparseAttentionOp
//===----------------------------------------------------------------------===//

MutableOperandRange SparseAttentionOp::getDpsInitsMutable() {
  return trailingOperands(*this, 2);
}

LogicalResult SparseAttentionOp::verify() {
  if (failed(verifyPackedAttentionOperands(*this, getQ(), getK(), getV(),
                                           getCuSeqlens(), getSelected(),
                                           getBlockSize(), getScaleAttr())))
    return failure();
  Checker c(*this);
  Named q("q", getQ()), out("out_init", getOutInit()),
      lse("lse_init", getLseInit());
  if (failed(c.sameElementType(q, out)) || failed(c.sameShape(q, out)) ||
      failed(c.rank(lse, 2, "[tokens, query heads]")) ||
      failed(c.sameDim("token count", q, 0, lse, 0)) ||
      failed(c.sameDim("number of query heads", q, 1, lse, 1)))
    return failure();
  return success();
}

//===----------------------------------------------------------------------===//
// LseMergeOp
//===----------------------------------------------------------------------===//

MutableOperandRange LseMergeOp::getDpsInitsMutable() {
  return trailingOperands(*this, 2);
}

LogicalResult LseMergeOp::verify() {
  Checker c(*this);
  Named parts("partials", getPartials()), plse("partial_lse", getPartialLse()),
      out("out_init", getOutInit()), lse("lse_init", getLseInit());
  if (failed(c.staticSizes()) ||
      failed(c.rank(parts, 4, "[partials, tokens, heads, head_dim]")) ||
      failed(c.rank(plse, 3, "[partials, tokens, heads]")) ||
      failed(c.rank(out, 3, "[tokens, heads, head_dim]")) ||
      failed(c.rank(lse, 2, "[tokens, heads]")) ||
      failed(c.positiveDim("number of partials", parts, 0)) ||
      failed(c.staticDimAtMost("number of partials", parts, 0,
                               kMaxSelectedBlocks)) ||
      failed(c.positiveDim("number of heads", parts, 2)) ||
      failed(c.staticDimAtMost("head_dim", parts, 3, kMaxHeadDim)) ||
      failed(c.sameDim("number of partials", parts, 0, plse, 0)))
    return failure();
  for (int64_t i = 0; i < 3; ++i)
    if (failed(c.sameDim("dim " + std::to_string(i + 1), parts, i + 1, out, i)))
      return failure();
  for (int64_t i = 0; i < 2; ++i)
    if (failed(c.sameDim("dim " + std::to_string(i + 1), plse, i + 1, lse, i)))
      return failure();
  return success();
}

//===----------------------------------------------------------------------===//
// GroupQueriesOp
//===----------------------------------------------------------------------===//

MutableOperandRange GroupQueriesOp::getDpsInitsMutable() {
  return trailingOperands(*this, 3);
}

namespace {

/// starts and counts `[Hq, NB]`, entries `[Hq, T * K]` of a grouping of
/// `selected` `[T, Hq, K]`.
LogicalResult verifyGroups(Operation *op, Value selectedValue,
                           Value startsValue, Value countsValue,
                           Value entriesValue) {
  Checker c(op);
  Named sel("selected", selectedValue), starts("starts", startsValue),
      counts("counts", countsValue), entries("entries", entriesValue);
  if (failed(c.staticSizes()) ||
      failed(c.rank(sel, 3, "[tokens, query heads, K]")) ||
      failed(c.positiveDim("number of query heads", sel, 1)) ||
      failed(c.positiveDim("K", sel, 2)) ||
      failed(c.staticDimAtMost("K", sel, 2, kMaxSelectedBlocks)) ||
      failed(c.rank(starts, 2, "[query heads, block rows]")) ||
      failed(c.rank(counts, 2, "[query heads, block rows]")) ||
      failed(c.rank(entries, 2, "[query heads, tokens * K]")) ||
      failed(c.sameShape(starts, counts)) ||
      failed(c.sameDim("number of query heads", sel, 1, starts, 0)) ||
      failed(c.sameDim("number of query heads", sel, 1, entries, 0)))
    return failure();
  int64_t t = sel.dim(0), k = sel.dim(2), e = entries.dim(1);
  if (!ShapedType::isDynamic(t) && !ShapedType::isDynamic(k) &&
      !ShapedType::isDynamic(e) && e != t * k)
    return op->emitOpError()
           << "entries must hold tokens * K = " << t << " * " << k << " = "
           << t * k << " slots per head, got " << e;
  return success();
}

} // namespace

void GroupQueriesOp::getAsmResultNames(
    function_ref<void(Value, StringRef)> setNameFn) {
  // One name per result, so that each prints on its own (%starts, %counts,
  // %entries) rather than as one pack of three.
  if (getNumResults() == 3) {
    setNameFn(getStarts(), "starts");
    setNameFn(getCounts(), "counts");
    setNameFn(getEntries(), "entries");
  }
}

void GroupQueriesOp::getEffects(
    SmallVectorImpl<SideEffects::EffectInstance<MemoryEffects::Effect>>
        &effects) {
  addBufferFormEffects(*this, effects);
}

LogicalResult GroupQueriesOp::verify() {
  if (failed(verifyTensorOrBufferForm(*this, "three results of the types of "
                                             "starts_init, counts_init and "
                                             "entries_init")))
    return failure();
  Checker c(*this);
  Named sel("selected", getSelected());
  if (failed(c.atLeastOne("block_size", getBlockSize())) ||
      failed(c.cuSeqlens(getCuSeqlens(), sel.dim(0))))
    return failure();
  return verifyGroups(*this, getSelected(), getStartsInit(), getCountsInit(),
                      getEntriesInit());
}

//===----------------------------------------------------------------------===//
// GroupedBlockAttentionOp
//===----------------------------------------------------------------------===//

MutableOperandRange GroupedBlockAttentionOp::getDpsInitsMutable() {
  // partial_out_init, partial_lse_init[, out_init, lse_init]: the last
  // operands.
  return trailingOperands(*this, isMerged() ? 4 : 2);
}

void GroupedBlockAttentionOp::getEffects(
    SmallVectorImpl<SideEffects::EffectInstance<MemoryEffects::Effect>>
        &effects) {
  addBufferFormEffects(*this, effects);
}

bool GroupedBlockAttentionOp::isMmaSyncCompatible() {
  return hasMmaCompatibleQueries(getQ().getType());
}

LogicalResult GroupedBlockAttentionOp::verify() {
  if (static_cast<bool>(getOutInit()) != static_cast<bool>(getLseInit()))
    return emitOpError("merge needs both out_init and lse_init");
  if (failed(verifyTensorOrBufferForm(
          *this, isMerged() ? "four results of the types of "
                              "partial_out_init, partial_lse_init, out_init "
                              "and lse_init"
                            : "two results of the types of partial_out_init "
                              "and partial_lse_init")) ||
      failed(verifyPackedAttentionOperands(*this, getQ(), getK(), getV(),
                                           getCuSeqlens(), getSelected(),
                                           getBlockSize(), getScaleAttr())) ||
      failed(verifyGroups(*this, getSelected(), getStarts(), getCounts(),
                          getEntries())))
    return failure();
  Checker c(*this);
  Named q("q", getQ()), sel("selected", getSelected()),
      out("partial_out_init", getPartialOutInit()),
      lse("partial_lse_init", getPartialLseInit());
  Type outElement = out.type.getElementType();
  Type qElement = q.type.getElementType();
  if (!outElement.isF32() && outElement != qElement)
    return emitOpError() << "partial_out_init must hold f32 or the element "
                            "type of q ("
                         << qElement << "), got " << outElement;
  if (failed(c.rank(out, 4, "[K, tokens, query heads, head_dim]")) ||
      failed(c.rank(lse, 3, "[K, tokens, query heads]")) ||
      failed(c.sameDim("K", sel, 2, out, 0)) ||
      failed(c.sameDim("K", sel, 2, lse, 0)))
    return failure();
  for (int64_t i = 0; i < 3; ++i)
    if (failed(c.sameDim("dim " + std::to_string(i), q, i, out, i + 1)))
      return failure();
  for (int64_t i = 0; i < 2; ++i)
    if (failed(c.sameDim("dim " + std::to_string(i), q, i, lse, i + 1)))
      return failure();
  if (!isMerged())
    return success();
  // The merged result: q's shape and element type, and its rows' lse.
  Named merged("out_init", getOutInit()), mergedLse("lse_init", getLseInit());
  if (merged.type.getElementType() != qElement)
    return emitOpError() << "out_init must hold the element type of q ("
                         << qElement << "), got "
                         << merged.type.getElementType();
  if (failed(c.rank(merged, 3, "[tokens, query heads, head_dim]")) ||
      failed(c.rank(mergedLse, 2, "[tokens, query heads]")))
    return failure();
  for (int64_t i = 0; i < 3; ++i)
    if (failed(c.sameDim("dim " + std::to_string(i), q, i, merged, i)))
      return failure();
  for (int64_t i = 0; i < 2; ++i)
    if (failed(c.sameDim("dim " + std::to_string(i), q, i, mergedLse, i)))
      return failure();
  return success();
}

//===----------------------------------------------------------------------===//
// AttentionRowTermOp
//===----------------------------------------------------------------------===//

MutableOperandRange AttentionRowTermOp::getDpsInitsMutable() {
  return getInitMutable();
}

LogicalResult AttentionRowTermOp::verify() {
  Checker c(*this);
  Named dout("grad_out", getGradOut()), out("out", getOut()),
      init("init", getInit());
  if (failed(c.staticSizes()) ||
      failed(c.rank(dout, 3, "[tokens, query heads, head_dim]")) ||
      failed(c.sameShape(dout, out)) ||
      failed(c.staticDimAtMost("head_dim", dout, 2, kMaxHeadDim)) ||
      failed(c.rank(init, 2, "[tokens, query heads]")) ||
      failed(c.sameDim("token count", dout, 0, init, 0)) ||
      failed(c.sameDim("number of query heads", dout, 1, init, 1)))
    return failure();
  if (Value gradLse = getGradLse())
    if (failed(c.sameShape(Named("grad_lse", gradLse), init)))
      return failure();
  return success();
}

//===----------------------------------------------------------------------===//
// GroupedBlockAttentionGradOp
//===----------------------------------------------------------------------===//

MutableOperandRange GroupedBlockAttentionGradOp::getDpsInitsMutable() {
  return trailingOperands(*this, 3);
}

void GroupedBlockAttentionGradOp::getAsmResultNames(
    function_ref<void(Value, StringRef)> setNameFn) {
  // One name per result (%dq_partials, %dk, %dv), not one pack of three.
  if (getNumResults() == 3) {
    setNameFn(getDqPartials(), "dq_partials");
    setNameFn(getDk(), "dk");
    setNameFn(getDv(), "dv");
  }
}

void GroupedBlockAttentionGradOp::getEffects(
    SmallVectorImpl<SideEffects::EffectInstance<MemoryEffects::Effect>>
        &effects) {
  addBufferFormEffects(*this, effects);
}

bool GroupedBlockAttentionGradOp::isMmaSyncCompatible() {
  return isMmaSyncCompatible(getQ().getType(), getK().getType());
}

bool GroupedBlockAttentionGradOp::isMmaSyncCompatible(Type q, Type k) {
  // Ranked [tokens, heads, head_dim] (the verifiers of both ops check).
  auto qType = cast<ShapedType>(q), kType = cast<ShapedType>(k);
  return hasMmaCompatibleQueries(q) && !qType.isDynamicDim(1) &&
         !kType.isDynamicDim(1);
}

LogicalResult GroupedBlockAttentionGradOp::verify() {
  if (failed(verifyTensorOrBufferForm(*this, "three results of the types of "
                                             "dq_partials_init, dk_init and "
                                             "dv_init")) ||
      failed(verifyPackedAttentionOperands(*this, getQ(), getK(), getV(),
                                           getCuSeqlens(), getSelected(),
                                           getBlockSize(), getScaleAttr())) ||
      failed(verifyGroups(*this, getSelected(), getStarts(), getCounts(),
                          getEntries())))
    return failure();
  Checker c(*this);
  Named q("q", getQ()), k("k", getK()), sel("selected", getSelected()),
      dout("grad_out", getGradOut()), lse("lse", getLse()),
      rowTerm("row_term", getRowTerm()),
      dqp("dq_partials_init", getDqPartialsInit()),
      dk("dk_init", getDkInit()), dv("dv_init", getDvInit());
  if (failed(c.sameElementType(q, dout)) || failed(c.sameShape(q, dout)) ||
      failed(c.rank(lse, 2, "[tokens, query heads]")) ||
      failed(c.sameDim("token count", q, 0, lse, 0)) ||
      failed(c.sameDim("number of query heads", q, 1, lse, 1)) ||
      failed(c.sameShape(lse, rowTerm)) ||
      failed(c.rank(dqp, 4, "[K, tokens, query heads, head_dim]")) ||
      failed(c.sameDim("K", sel, 2, dqp, 0)))
    return failure();
  for (int64_t i = 0; i < 3; ++i)
    if (failed(c.sameDim("dim " + std::to_string(i), q, i, dqp, i + 1)))
      return failure();
  Type kElement = k.type.getElementType();
  for (const Named &grad : {dk, dv}) {
    Type element = grad.type.getElementType();
    if (!element.isF32() && element != kElement)
      return emitOpError() << grad.name
                           << " must hold f32 or the element type of k ("
                           << kElement << "), got " << element;
    if (failed(c.sameShape(k, grad)))
      return failure();
  }
  return success();
}

//===----------------------------------------------------------------------===//
// SumSlotsOp
//===----------------------------------------------------------------------===//

MutableOperandRange SumSlotsOp::getDpsInitsMutable() {
  return getInitMutable();
}

LogicalResult SumSlotsOp::verify() {
  Checker c(*this);
  Named parts("partials", getPartials()), init("init", getInit());
  if (failed(c.staticSizes()) ||
      failed(c.rank(parts, 4, "[K, tokens, query heads, head_dim]")) ||
      failed(c.rank(init, 3, "[tokens, query heads, head_dim]")) ||
      failed(c.positiveDim("K", parts, 0)) ||
      failed(c.staticDimAtMost("K", parts, 0, kMaxSelectedBlocks)) ||
      failed(c.staticDimAtMost("head_dim", init, 2, kMaxHeadDim)))
    return failure();
  for (int64_t i = 0; i < 3; ++i)
    if (failed(c.sameDim("dim " + std::to_string(i), init, i, parts, i + 1)))
      return failure();
  return success();
}

//===----------------------------------------------------------------------===//
// The paged KV cache (PagedKvAppendOp, PagedDecodeAttentionOp)
//===----------------------------------------------------------------------===//

namespace {

/// Verifies the cache operands shared by the paged ops: k_cache and v_cache
/// `[pages, page_size, Hkv, D]` (page_size static), block_table
/// `[B, max_pages]`, cache_lens `[B]`, block_key_sums `[B, max_blocks, Hkv,
/// D]`, `block_size` a multiple of page_size, and `cu` of `B + 1` offsets
/// ending at `tokens`.
LogicalResult verifyPagedCache(Operation *op, Checker &c, const Named &kc,
                               const Named &vc, const Named &table,
                               const Named &lens, const Named &sums, Value cu,
                               StringRef cuName, int64_t tokens,
                               int64_t blockSize) {
  constexpr StringRef cacheLayout =
      "[pages, page_size, key/value heads, head_dim]";
  if (failed(c.rank(kc, 4, cacheLayout)) ||
      failed(c.rank(vc, 4, cacheLayout)) || failed(c.sameShape(kc, vc)) ||
      failed(c.sameElementType(kc, vc)) ||
      failed(c.rank(table, 2, "[batch, max_pages]")) ||
      failed(c.rank(lens, 1, "[batch]")) ||
      failed(c.rank(sums, 4,
                    "[batch, max_blocks, key/value heads, head_dim]")) ||
      failed(c.positiveDim("number of key/value heads", kc, 2)) ||
      failed(c.staticDimAtMost("head_dim", kc, 3, kMaxHeadDim)) ||
      failed(c.sameDim("number of key/value heads", kc, 2, sums, 2)) ||
      failed(c.sameDim("head_dim", kc, 3, sums, 3)) ||
      failed(c.sameDim("batch", table, 0, lens, 0)) ||
      failed(c.sameDim("batch", table, 0, sums, 0)) ||
      failed(c.atLeastOne("block_size", blockSize)))
    return failure();
  int64_t pageSize = kc.dim(1);
  if (ShapedType::isDynamic(pageSize))
    return op->emitOpError("page_size (dim 1 of k_cache) must be static");
  if (pageSize < 1)
    return op->emitOpError() << "page_size (dim 1 of k_cache) must be at "
                                "least 1, got "
                             << pageSize;
  if (blockSize % pageSize != 0)
    return op->emitOpError()
           << "block_size (" << blockSize
           << ") must be a multiple of page_size (" << pageSize
           << "): a MoBA block is a whole number of pages";
  if (failed(c.cuSeqlens(cu, tokens)))
    return failure();
  int64_t offsets = cast<ShapedType>(cu.getType()).getDimSize(0);
  int64_t batch = table.dim(0);
  if (!ShapedType::isDynamic(offsets) && !ShapedType::isDynamic(batch) &&
      offsets != batch + 1)
    return op->emitOpError()
           << cuName << " holds " << offsets
           << " offsets, but block_table has " << batch
           << " sequences (expected " << batch + 1 << " offsets)";
  return success();
}

} // namespace

MutableOperandRange PagedKvAppendOp::getDpsInitsMutable() {
  return trailingOperands(*this, 3);
}

LogicalResult PagedKvAppendOp::verify() {
  Checker c(*this);
  Named k("k", getK()), v("v", getV()), kc("k_cache", getKCacheInit()),
      vc("v_cache", getVCacheInit()), table("block_table", getBlockTable()),
      lens("cache_lens", getCacheLens()),
      sums("block_key_sums", getBlockKeySumsInit());
  constexpr StringRef kvLayout = "[tokens, key/value heads, head_dim]";
  if (failed(c.staticSizes()) || failed(c.rank(k, 3, kvLayout)) ||
      failed(c.rank(v, 3, kvLayout)) || failed(c.sameShape(k, v)) ||
      failed(c.sameElementType(k, v)) ||
      failed(verifyPagedCache(*this, c, kc, vc, table, lens, sums,
                              getCuSeqlens(), "cu_seqlens", k.dim(0),
                              getBlockSize())) ||
      failed(c.sameElementType(k, kc)) ||
      failed(c.sameDim("number of key/value heads", k, 1, kc, 2)) ||
      failed(c.sameDim("head_dim", k, 2, kc, 3)))
    return failure();
  return success();
}

MutableOperandRange PagedDecodeAttentionOp::getDpsInitsMutable() {
  return trailingOperands(*this, 2);
}

void PagedDecodeAttentionOp::getEffects(
    SmallVectorImpl<SideEffects::EffectInstance<MemoryEffects::Effect>>
        &effects) {
  addBufferFormEffects(*this, effects);
}

double PagedDecodeAttentionOp::getScaleOrDefault() {
  if (std::optional<APFloat> s = getScale())
    return s->convertToDouble();
  return 1.0 /
         std::sqrt(double(cast<ShapedType>(getQ().getType()).getDimSize(2)));
}

bool PagedDecodeAttentionOp::isSplitKCompatible() {
  auto q = cast<ShapedType>(getQ().getType());
  auto kc = cast<ShapedType>(getKCache().getType());
  auto sums = cast<ShapedType>(getBlockKeySums().getType());
  if (q.isDynamicDim(1) || q.isDynamicDim(2) || kc.isDynamicDim(1) ||
      kc.isDynamicDim(2) || kc.isDynamicDim(3) || sums.isDynamicDim(2) ||
      sums.isDynamicDim(3))
    return false;
  // One lane reads 16 bytes of a row: head_dim / (16 bytes) lanes a row, a
  // power of two up to 32, so that lanes of one row are a shuffle group.
  int64_t elementBytes = q.getElementTypeBitWidth() / 8;
  int64_t perLane = 16 / elementBytes;
  int64_t d = q.getDimSize(2);
  if (d % perLane != 0)
    return false;
  int64_t lanes = d / perLane;
  if (lanes > 32 || !llvm::isPowerOf2_64(lanes) || getTopK() > kMaxSplitKTopK)
    return false;
  // One query token's partials (chunks of kSplitKChunkKeys keys) fit the
  // scratch budget.
  std::optional<int64_t> bytes = splitKPartialBytesPerToken(kSplitKChunkKeys);
  return bytes && *bytes <= kMaxSplitKScratchBytes;
}

std::optional<int64_t>
PagedDecodeAttentionOp::splitKPartialBytesPerToken(int64_t chunkKeys) {
  auto q = cast<ShapedType>(getQ().getType());
  int64_t blockSize = getBlockSize();
  if (chunkKeys < 1 || blockSize < 1)
    return std::nullopt;
  int64_t chunks = blockSize / chunkKeys + (blockSize % chunkKeys != 0);
  int64_t bytes = 4;
  for (int64_t factor :
       {q.getDimSize(1), int64_t(getTopK()), chunks, q.getDimSize(2) + 2}) {
    std::optional<int64_t> next = llvm::checkedMul(bytes, factor);
    if (!next)
      return std::nullopt;
    bytes = *next;
  }
  return bytes;
}

LogicalResult PagedDecodeAttentionOp::verify() {
  if (failed(verifyTensorOrBufferForm(*this, "two results of the types of "
                                             "out_init and lse_init")))
    return failure();
  Checker c(*this);
  Named q("q", getQ()), kc("k_cache", getKCache()), vc("v_cache", getVCache()),
      table("block_table", getBlockTable()),
      lens("cache_lens", getCacheLens()),
      sums("block_key_sums", getBlockKeySums()), out("out_init", getOutInit()),
      lse("lse_init", getLseInit());
  if (failed(c.staticSizes()) ||
      failed(c.rank(q, 3, "[tokens, query heads, head_dim]")) ||
      failed(c.rank(out, 3, "[tokens, query heads, head_dim]")) ||
      failed(c.rank(lse, 2, "[tokens, query heads]")) ||
      failed(verifyPagedCache(*this, c, kc, vc, table, lens, sums,
                              getCuSeqlensQ(), "cu_seqlens_q", q.dim(0),
                              getBlockSize())) ||
      failed(c.sameElementType(q, kc)) || failed(c.sameElementType(q, out)) ||
      failed(c.sameShape(q, out)) ||
      failed(c.sameDim("number of tokens", q, 0, lse, 0)) ||
      failed(c.sameDim("number of query heads", q, 1, lse, 1)) ||
      failed(c.positiveDim("number of query heads", q, 1)) ||
      failed(c.headGroups(q, 1, kc, 2)) ||
      failed(c.sameDim("head_dim", q, 2, kc, 3)) ||
      failed(c.atLeastOne("top_k", getTopK())) ||
      failed(c.attrAtMost("top_k", getTopK(), kMaxSelectedBlocks)) ||
      failed(c.scale(getScaleAttr())))
    return failure();
  if (getSelection() != "query_head" && getSelection() != "kv_head")
    return emitOpError() << "selection must be \"query_head\" or "
                            "\"kv_head\", got \""
                         << getSelection() << "\"";
  if (!getScale() && ShapedType::isDynamic(q.dim(2)))
    return emitOpError("needs an explicit scale when head_dim is dynamic "
                       "(the default 1/sqrt(head_dim) must be static)");
  return success();
}

//===----------------------------------------------------------------------===//
// custom<ResultOfInit>: an op on tensors returns one value of its init's
// type, on memrefs none; the assembly spells neither.
//===----------------------------------------------------------------------===//

static ParseResult parseResultOfInit(OpAsmParser &,
                                     SmallVectorImpl<Type> &results,
                                     Type initType) {
  if (isa<RankedTensorType>(initType))
    results.push_back(initType);
  return success();
}

static void printResultOfInit(OpAsmPrinter &, Operation *, TypeRange, Type) {}

/// The same for an op of several inits: one result per init on tensors.
static ParseResult parseResultsOfInits(OpAsmParser &,
                                       SmallVectorImpl<Type> &results,
                                       Type first, Type second, Type third) {
  if (isa<RankedTensorType>(first))
    results.append({first, second, third});
  return success();
}

static void printResultsOfInits(OpAsmPrinter &, Operation *, TypeRange, Type,
                                Type, Type) {}

/// The same for an op of two inits.
static ParseResult parseResultsOfInitPair(OpAsmParser &,
                                          SmallVectorImpl<Type> &results,
                                          Type first, Type second) {
  if (isa<RankedTensorType>(first))
    results.append({first, second});
  return success();
}

static void printResultsOfInitPair(OpAsmPrinter &, Operation *, TypeRange,
                                   Type, Type) {}

#define GET_OP_CLASSES
#include "moba/Dialect/Moba/IR/MobaOps.cpp.inc"
