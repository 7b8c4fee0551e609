//===- Passes.h - moba conversion passes ------------------------*- C++ -*-===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_CONVERSION_PASSES_H
#define MOBA_CONVERSION_PASSES_H

#include "moba/Conversion/AttentionKernelPlan.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/NVGPU/IR/NVGPUDialect.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Pass/Pass.h"

namespace mlir::moba {

#define GEN_PASS_DECL
#include "moba/Conversion/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "moba/Conversion/Passes.h.inc"

} // namespace mlir::moba

#endif // MOBA_CONVERSION_PASSES_H
