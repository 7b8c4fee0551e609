//===- MobaDialect.h - The moba dialect -------------------------*- C++ -*-===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_DIALECT_MOBA_IR_MOBADIALECT_H
#define MOBA_DIALECT_MOBA_IR_MOBADIALECT_H

#include "mlir/IR/Dialect.h"

#include "moba/Dialect/Moba/IR/MobaDialect.h.inc"

#include "moba/Dialect/Moba/IR/MobaLimits.h"

#endif // MOBA_DIALECT_MOBA_IR_MOBADIALECT_H
