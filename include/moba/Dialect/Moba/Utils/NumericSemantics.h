//===- NumericSemantics.h - NaN rules every lowering shares -----*- C++ -*-===//
//
// Part of moba-mlir. The two places where docs/semantics.md ("NaN and
// infinity") needs more than IEEE arithmetic on the formulas, as builders
// that the loop lowerings and the GPU kernels share, so that every backend
// ranks and finishes a NaN the same way.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_DIALECT_MOBA_UTILS_NUMERICSEMANTICS_H
#define MOBA_DIALECT_MOBA_UTILS_NUMERICSEMANTICS_H

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/IR/Builders.h"

#include <limits>

namespace mlir::moba {

/// A gate score (f32) as the top-k ranks it: NaN counts as +inf, so the
/// ranking stays a total order on floats and a block whose keys hold a NaN
/// is selected, its NaN reaching the rows that chose it.
inline Value rankingScore(OpBuilder &b, Location loc, Value score) {
  Value isNan =
      arith::CmpFOp::create(b, loc, arith::CmpFPredicate::UNO, score, score);
  Value inf = arith::ConstantOp::create(
      b, loc, b.getF32FloatAttr(std::numeric_limits<float>::infinity()));
  return arith::SelectOp::create(b, loc, isNan, inf, score);
}

/// Whether a softmax denominator `l` (f32) comes from attended keys: l != 0,
/// true for NaN too, so that a NaN in the scores, the values or the partials
/// reaches the output rather than reading as "nothing attended" (which is
/// out = 0, lse = -inf, for l = 0 only).
inline Value attendedAny(OpBuilder &b, Location loc, Value l) {
  Value zero = arith::ConstantOp::create(b, loc, b.getF32FloatAttr(0.0f));
  return arith::CmpFOp::create(b, loc, arith::CmpFPredicate::UNE, l, zero);
}

} // namespace mlir::moba

#endif // MOBA_DIALECT_MOBA_UTILS_NUMERICSEMANTICS_H
