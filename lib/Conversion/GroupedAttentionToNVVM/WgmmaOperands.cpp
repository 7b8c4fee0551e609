//===- WgmmaOperands.cpp - Swizzled operands and wgmma on them -----------===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#include "WgmmaOperands.h"

using namespace mlir;
using namespace mlir::moba;
using namespace mlir::moba::grouped_attention;

Value grouped_attention::swizzledColumn(KernelBuilder &e, Value row,
                                        Value chunk) {
  Value swizzled = arith::XOrIOp::create(
      e.b, chunk, e.rem(row, e.index(Layout::kRowsPerPeriod)));
  return e.mul(swizzled, e.index(Layout::kChunkElements));
}

Value grouped_attention::matrixDescriptor(KernelBuilder &e, Value address,
                                          int64_t leadingBytes,
                                          int64_t strideBytes) {
  ImplicitLocOpBuilder &b = e.b;
  auto i64 = [&](int64_t v) -> Value {
    return arith::ConstantIntOp::create(b, b.getI64Type(), v);
  };
  Value bits = arith::IndexCastUIOp::create(b, b.getI64Type(), address);
  Value start = arith::ShRUIOp::create(
      b, arith::AndIOp::create(b, bits, i64(0x3FFFF)), i64(4));
  int64_t fixed = ((leadingBytes >> 4) << 16) | ((strideBytes >> 4) << 32) |
                  (Layout::kDescriptorSwizzle128 << 62);
  return arith::OrIOp::create(b, start, i64(fixed));
}

Value grouped_attention::advanceDescriptor(KernelBuilder &e, Value descriptor,
                                           Value bytes) {
  Value units = arith::IndexCastUIOp::create(
      e.b, e.b.getI64Type(), e.div(bytes, e.index(16)));
  return arith::AddIOp::create(e.b, descriptor, units);
}

Value grouped_attention::advanceDescriptor(KernelBuilder &e, Value descriptor,
                                           int64_t bytes) {
  return advanceDescriptor(e, descriptor, e.index(bytes));
}

Type grouped_attention::accumulatorType(MLIRContext *context, int64_t n) {
  return LLVM::LLVMStructType::getLiteral(
      context, SmallVector<Type>(n, Float32Type::get(context)));
}

Value grouped_attention::wgmmaAsync(KernelBuilder &e, Value acc, Value descA,
                                    Value descB, int64_t n, bool transposeB,
                                    bool accumulate) {
  MLIRContext *context = e.b.getContext();
  NVVM::WGMMATypes type = e.element.isF16() ? NVVM::WGMMATypes::f16
                                            : NVVM::WGMMATypes::bf16;
  return NVVM::WgmmaMmaAsyncOp::create(
      e.b, acc.getType(), acc, descA, descB,
      NVVM::MMAShapeAttr::get(context, 64, n, 16), type, type,
      NVVM::WGMMATypes::f32,
      accumulate ? NVVM::WGMMAScaleOut::one : NVVM::WGMMAScaleOut::zero,
      NVVM::WGMMAScaleIn::one, NVVM::WGMMAScaleIn::one,
      NVVM::MMALayout::row,
      transposeB ? NVVM::MMALayout::row : NVVM::MMALayout::col,
      /*satfinite=*/nullptr);
}

WgmmaSharedPlan::WgmmaSharedPlan(ImplicitLocOpBuilder &b,
                                 const AttentionKernel &kernel, Value raw) {
  const MmaTileShape &shape = kernel.shape;
  Type element = kernel.element();
  KernelBuilder e{b, element};
  base = memref::ExtractAlignedPointerAsIndexOp::create(e.b, raw);
  barriers = e.add(base, e.index(shape.reduceBytes()));
  Value afterBounds = e.add(barriers, e.index(shape.barrierBytes()));
  queryAddress =
      e.mul(arith::CeilDivUIOp::create(e.b, afterBounds,
                                       e.index(Layout::kPeriodBytes)),
            e.index(Layout::kPeriodBytes));
  stageAddress = e.add(queryAddress,
                       e.index(shape.queryBytes(kernel.headDim, element)));
  probabilityAddress = e.add(
      stageAddress, e.index(shape.stageBytes(kernel.headDim, element)));
}
