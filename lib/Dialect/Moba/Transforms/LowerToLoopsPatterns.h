//===- LowerToLoopsPatterns.h - Parts of moba-lower-to-loops -*- C++ -*-===//
//
// Part of moba-mlir. What the patterns of `moba-lower-to-loops` share:
// their base, LoweringPattern.
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

} // namespace mlir::moba

#endif // MOBA_LIB_DIALECT_MOBA_TRANSFORMS_LOWERTOLOOPSPATTERNS_H
