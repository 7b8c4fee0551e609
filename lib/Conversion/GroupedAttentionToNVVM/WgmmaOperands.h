//===- WgmmaOperands.h - Swizzled operands and wgmma on them ----*- C++ -*-===//
//
// Part of moba-mlir. The IR side of hopper::SwizzledPanelLayout for the
// grouped attention kernel's wgmma form: where each operand lies in the
// CTA's shared memory (WgmmaSharedPlan), the swizzled column of a copy, the
// matrix descriptors that name an operand to wgmma, and one wgmma.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_LIB_CONVERSION_GROUPEDATTENTIONTONVVM_WGMMAOPERANDS_H
#define MOBA_LIB_CONVERSION_GROUPEDATTENTIONTONVVM_WGMMAOPERANDS_H

#include "AttentionKernel.h"
#include "moba/Conversion/SwizzledPanelLayout.h"

namespace mlir::moba::grouped_attention {

using Layout = hopper::SwizzledPanelLayout;

/// The element column where 16-byte chunk `chunk` (0..7) of panel row
/// `row` is stored.
Value swizzledColumn(KernelBuilder &e, Value row, Value chunk);

/// A wgmma matrix descriptor of a swizzled operand at shared address
/// `address` (bytes): start address, leading and stride byte offsets, all
/// in 16-byte units, and the swizzle mode. Base offset 0: the panels are
/// aligned to the swizzle's period.
Value matrixDescriptor(KernelBuilder &e, Value address, int64_t leadingBytes,
                       int64_t strideBytes);
/// `descriptor` moved `bytes` further (a multiple of 16; the start address
/// field does not overflow below 256 KiB).
Value advanceDescriptor(KernelBuilder &e, Value descriptor, Value bytes);
Value advanceDescriptor(KernelBuilder &e, Value descriptor, int64_t bytes);

/// An LLVM struct of `n` f32: a thread's part of a wgmma m64 accumulator
/// of 2n columns.
Type accumulatorType(MLIRContext *context, int64_t n);

/// D = A B (+ D when `accumulate`): one wgmma m64 n`n` k16 on descriptors,
/// A K-major, B K-major or (`transposeB`) MN-major.
Value wgmmaAsync(KernelBuilder &e, Value acc, Value descA, Value descB,
                 int64_t n, bool transposeB, bool accumulate);

/// The shared-memory addresses of the wgmma form (bytes, in the shared
/// window): the region's start, the mbarriers after the causal bounds, and
/// the operands -- Q, then the K and V buffers (MmaTileShape::stageSlots),
/// then P -- from the first period boundary after those.
struct WgmmaSharedPlan {
  Value base, barriers, queryAddress, stageAddress, probabilityAddress;

  WgmmaSharedPlan(ImplicitLocOpBuilder &b, const AttentionKernel &kernel,
                  Value raw);
};

} // namespace mlir::moba::grouped_attention

#endif // MOBA_LIB_CONVERSION_GROUPEDATTENTIONTONVVM_WGMMAOPERANDS_H
