//===- MobaDialect.cpp - The moba dialect ---------------------------------===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#include "moba/Dialect/Moba/IR/MobaDialect.h"

#include "moba/Dialect/Moba/IR/MobaOps.h"

using namespace mlir;
using namespace mlir::moba;

#include "moba/Dialect/Moba/IR/MobaDialect.cpp.inc"

void MobaDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "moba/Dialect/Moba/IR/MobaOps.cpp.inc"
      >();
}
