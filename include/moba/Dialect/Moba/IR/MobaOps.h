//===- MobaOps.h - moba dialect operations ----------------------*- C++ -*-===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_DIALECT_MOBA_IR_MOBAOPS_H
#define MOBA_DIALECT_MOBA_IR_MOBAOPS_H

#include "mlir/Bytecode/BytecodeOpInterface.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/IR/OpImplementation.h"
#include "mlir/Interfaces/DestinationStyleOpInterface.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

#include "moba/Dialect/Moba/IR/MobaDialect.h"

#define GET_OP_CLASSES
#include "moba/Dialect/Moba/IR/MobaOps.h.inc"

namespace mlir::moba {

/// ceil(a / b) for positive b.
inline int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

} // namespace mlir::moba

#endif // MOBA_DIALECT_MOBA_IR_MOBAOPS_H
