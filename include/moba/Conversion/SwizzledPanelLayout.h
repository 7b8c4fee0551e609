//===- SwizzledPanelLayout.h - Hopper operands in shared memory -*- C++ -*-===//
//
// Part of moba-mlir. The one statement of how the sm_90a attention kernels
// lay out a 16-bit operand (Q, K, V, P) in shared memory, which four parties
// must agree on: the copies that fill it (cp.async, or the zero-fill past a
// block's last key), the wgmma matrix descriptors that read it, the TMA box
// that fills it, and the runtime's tensor-map encoder that states the box and
// swizzle to the driver. Each takes its constants from here.
//
// The layout: the operand's columns are cut into panels of kColumns (128
// bytes of f16/bf16); a panel stores its rows kRowBytes apart, and the
// 16-byte chunk c of row r at chunk c ^ (r mod 8) -- the 128-byte swizzle,
// which keeps the eight rows that a tensor core reads at once in distinct
// banks. The pattern repeats every kRowsPerPeriod rows (kPeriodBytes), so
// panels start on kPeriodBytes boundaries. In a wgmma matrix descriptor
// (PTX ISA, "Matrix Descriptor Format") the stride between groups of eight
// rows is kPeriodBytes, the swizzle mode is kDescriptorSwizzle128, and a
// k-step of 16 elements inside a panel advances the start address by
// kKStepBytes (the hardware applies the swizzle to the address bits). TMA
// writes the same pattern when the tensor map asks for the 128-byte
// swizzle with a box kColumns wide.
//
// Pure constants and arithmetic: the runtime, which has no MLIR, includes it.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_CONVERSION_SWIZZLEDPANELLAYOUT_H
#define MOBA_CONVERSION_SWIZZLEDPANELLAYOUT_H

#include <cstdint>

namespace mlir::moba::hopper {

struct SwizzledPanelLayout {
  /// f16 and bf16, the element types of the wgmma kernels.
  static constexpr int64_t kElementBytes = 2;
  /// A panel row: the span of the 128-byte swizzle.
  static constexpr int64_t kRowBytes = 128;
  /// The elements of a panel row.
  static constexpr int64_t kColumns = kRowBytes / kElementBytes;
  /// The unit the swizzle permutes, and the size of one copy.
  static constexpr int64_t kChunkBytes = 16;
  static constexpr int64_t kChunkElements = kChunkBytes / kElementBytes;
  /// The 16-byte chunks of a panel row, which the swizzle permutes.
  static constexpr int64_t kChunksPerRow = kRowBytes / kChunkBytes;
  /// Rows after which the swizzle repeats, and their bytes: the alignment
  /// of every panel and a descriptor's stride between 8-row groups.
  static constexpr int64_t kRowsPerPeriod = kChunksPerRow;
  static constexpr int64_t kPeriodBytes = kRowsPerPeriod * kRowBytes;
  /// The start-address step of one k16 step of wgmma inside a panel.
  static constexpr int64_t kKStepBytes = 16 * kElementBytes;
  /// The swizzle as a wgmma descriptor's bits 62-63 say it (1: 128 bytes).
  static constexpr int64_t kDescriptorSwizzle128 = 1;
  /// The swizzle as cuTensorMapEncodeTiled says it
  /// (CU_TENSOR_MAP_SWIZZLE_128B).
  static constexpr int kTensorMapSwizzle128 = 3;

  /// Panels of an operand `columns` wide (a multiple of kColumns).
  static constexpr int64_t panels(int64_t columns) {
    return columns / kColumns;
  }
  /// Bytes of one panel of `rows` rows.
  static constexpr int64_t panelBytes(int64_t rows) {
    return rows * kRowBytes;
  }
  /// Bytes of an operand of `rows` x `columns`.
  static constexpr int64_t bytes(int64_t rows, int64_t columns) {
    return panels(columns) * panelBytes(rows);
  }
  /// Where 16-byte chunk `chunk` (0..7) of row `row` is stored.
  static constexpr int64_t swizzledChunk(int64_t row, int64_t chunk) {
    return chunk ^ (row % kRowsPerPeriod);
  }
};

} // namespace mlir::moba::hopper

#endif // MOBA_CONVERSION_SWIZZLEDPANELLAYOUT_H
