//===- Passes.h - moba dialect passes ---------------------------*- C++ -*-===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_DIALECT_MOBA_TRANSFORMS_PASSES_H
#define MOBA_DIALECT_MOBA_TRANSFORMS_PASSES_H

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Pass/Pass.h"

namespace mlir {
class RewritePatternSet;
namespace moba {

#define GEN_PASS_DECL
#include "moba/Dialect/Moba/Transforms/Passes.h.inc"

/// Patterns that rewrite moba.attention into the decomposed moba ops.
void populateMobaDecomposePatterns(RewritePatternSet &patterns);

#define GEN_PASS_REGISTRATION
#include "moba/Dialect/Moba/Transforms/Passes.h.inc"

} // namespace moba
} // namespace mlir

#endif // MOBA_DIALECT_MOBA_TRANSFORMS_PASSES_H
