//===- KernelBuilder.h - Helpers for emitting NVVM kernels ------*- C++ -*-===//
//
// Part of moba-mlir. What the tensor-core lowerings share: a builder of
// scalars, operand registers, ldmatrix and mma.sync fragments and quad
// reductions (the PTX ISA's m16n8k16 layouts), and the gpu.launch wrapper.
// Used by moba-convert-grouped-attention-to-nvvm and
// moba-convert-gate-topk-to-nvvm.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_LIB_CONVERSION_KERNELBUILDER_KERNELBUILDER_H
#define MOBA_LIB_CONVERSION_KERNELBUILDER_KERNELBUILDER_H

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/NVGPU/IR/NVGPUDialect.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"
#include "mlir/IR/ImplicitLocOpBuilder.h"

#include <limits>

namespace mlir::moba::nvvm_kernel {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

/// Scalar and fragment helpers on one builder.
struct KernelBuilder {
  ImplicitLocOpBuilder &b;
  Type element; ///< f16 or bf16

  Value index(int64_t v) { return arith::ConstantIndexOp::create(b, v); }
  Value i32(int64_t v) {
    return arith::ConstantIntOp::create(b, b.getI32Type(), v);
  }
  Value f32(double v) {
    return arith::ConstantOp::create(b, b.getF32FloatAttr(v));
  }
  Value add(Value x, Value y) { return arith::AddIOp::create(b, x, y); }
  Value sub(Value x, Value y) { return arith::SubIOp::create(b, x, y); }
  Value mul(Value x, Value y) { return arith::MulIOp::create(b, x, y); }
  Value div(Value x, Value y) { return arith::DivUIOp::create(b, x, y); }
  Value rem(Value x, Value y) { return arith::RemUIOp::create(b, x, y); }
  Value minU(Value x, Value y) { return arith::MinUIOp::create(b, x, y); }
  Value ult(Value x, Value y) {
    return arith::CmpIOp::create(b, arith::CmpIPredicate::ult, x, y);
  }
  Value ule(Value x, Value y) {
    return arith::CmpIOp::create(b, arith::CmpIPredicate::ule, x, y);
  }
  Value select(Value c, Value x, Value y) {
    return arith::SelectOp::create(b, c, x, y);
  }
  /// max(x, y) as PTX's max.f32: llvm.maxnum, since arith's max ops are
  /// expanded to compares and selects (arith-expand) for their NaN rules. A
  /// NaN score still makes the output NaN, through exp2 and the sums.
  Value fmax(Value x, Value y) { return LLVM::MaxNumOp::create(b, x, y); }
  Value fadd(Value x, Value y) { return arith::AddFOp::create(b, x, y); }
  Value fmul(Value x, Value y) { return arith::MulFOp::create(b, x, y); }
  /// 2^x (f32) as PTX's ex2.approx.ftz.f32: one MUFU.EX2. Results below
  /// 2^-126 flush to zero, which in a softmax (probabilities of at least 1
  /// per row) changes no sum. math.exp2 lowers to libdevice's __nv_exp2f,
  /// whose non-ftz ex2.approx.f32 costs about three more instructions an
  /// exp (range checks and scaling for denormal results; the attention
  /// kernel's SASS shrank by 184 instructions of 2568).
  Value exp2(Value x) {
    return LLVM::CallIntrinsicOp::create(
               b, x.getType(), b.getStringAttr("llvm.nvvm.ex2.approx.ftz.f32"),
               ValueRange{x})
        .getResult(0);
  }
  /// An i32 element of `memref` as an index.
  Value loadIndex(Value memref, ValueRange indices) {
    return arith::IndexCastOp::create(
        b, b.getIndexType(), memref::LoadOp::create(b, memref, indices));
  }

  /// The mma operand register type: two f16 as vector<2xf16>, two bf16 as
  /// an i32.
  Type operandType() {
    return element.isF16() ? Type(VectorType::get({2}, element))
                           : Type(b.getI32Type());
  }
  Value packPair(Value pair) {
    if (element.isF16())
      return pair;
    Value bits = vector::BitCastOp::create(
        b, VectorType::get({1}, b.getI32Type()), pair);
    return vector::ExtractOp::create(b, bits, ArrayRef<int64_t>{0});
  }
  /// Two consecutive elements memref[..., last], memref[..., last + 1].
  Value loadPair(Value memref, SmallVector<Value> indices) {
    auto load = vector::LoadOp::create(b, VectorType::get({2}, element),
                                       memref, indices);
    load.setAlignment(4);
    return packPair(load);
  }
  /// Two scalars (f32 or the element type) as one operand register.
  Value pack(Value lo, Value hi) {
    if (lo.getType() != element) {
      lo = arith::TruncFOp::create(b, element, lo);
      hi = arith::TruncFOp::create(b, element, hi);
    }
    return packPair(vector::FromElementsOp::create(
        b, VectorType::get({2}, element), ValueRange{lo, hi}));
  }

  /// `num` 8x8 matrices from shared memory, one operand register each:
  /// lanes 8j..8j+7 address the rows of matrix j (`transpose`: its
  /// columns land in the registers, as the B operand of P V needs).
  SmallVector<Value> ldmatrix(Value memref, ValueRange indices, int64_t num,
                              bool transpose) {
    auto type = VectorType::get({num, 2}, element);
    Value tiles = nvgpu::LdMatrixOp::create(b, type, memref, indices,
                                            transpose, num);
    SmallVector<Value> registers;
    for (int64_t i = 0; i < num; ++i)
      registers.push_back(
          packPair(vector::ExtractOp::create(b, tiles, ArrayRef<int64_t>{i})));
    return registers;
  }

  /// D = A B + C for one m16n8k16 tile; C and D are four f32.
  SmallVector<Value> mma(ValueRange a, ValueRange bOperand, ValueRange c) {
    auto f32Type = b.getF32Type();
    auto resultType = LLVM::LLVMStructType::getLiteral(
        b.getContext(), {f32Type, f32Type, f32Type, f32Type});
    NVVM::MMATypes type =
        element.isF16() ? NVVM::MMATypes::f16 : NVVM::MMATypes::bf16;
    auto op = NVVM::MmaOp::create(
        b, resultType, a, bOperand, c, ArrayRef<int64_t>{16, 8, 16},
        std::nullopt, std::nullopt, std::array<NVVM::MMATypes, 2>{type, type},
        std::array<NVVM::MMALayout, 2>{NVVM::MMALayout::row,
                                       NVVM::MMALayout::col});
    SmallVector<Value> d;
    for (int64_t i = 0; i < 4; ++i)
      d.push_back(LLVM::ExtractValueOp::create(b, op, ArrayRef<int64_t>{i}));
    return d;
  }

  /// This thread's generic-proxy writes to shared memory (st.shared,
  /// cp.async) ordered before async-proxy reads (wgmma); a barrier must
  /// follow to publish them to other threads.
  void fenceAsyncProxy() {
    NVVM::FenceProxyOp::create(
        b, NVVM::ProxyKind::async_shared,
        NVVM::SharedSpaceAttr::get(b.getContext(),
                                   NVVM::SharedSpace::shared_cta));
  }

  /// The inclusive prefix sums of `x` (i32) over the warp's lanes: lane i
  /// gets x of lanes 0..i, by five shuffles up.
  Value warpInclusiveSum(Value x) {
    for (int64_t offset = 1; offset < 32; offset *= 2) {
      auto up = gpu::ShuffleOp::create(b, x, offset, /*width=*/32,
                                       gpu::ShuffleMode::UP);
      x = add(x, select(up.getValid(), up.getShuffleResult(), i32(0)));
    }
    return x;
  }

  /// `x` reduced over the four lanes of a quad (the lanes sharing a row).
  Value quadReduce(Value x, bool isMax) {
    for (int64_t offset : {1, 2}) {
      Value other = gpu::ShuffleOp::create(b, x, offset, /*width=*/32,
                                           gpu::ShuffleMode::XOR)
                        .getShuffleResult();
      x = isMax ? fmax(x, other) : fadd(x, other);
    }
    return x;
  }
};

/// `index` as an i32 (lane numbers, shuffle operands, i32 buffers).
inline Value toI32(ImplicitLocOpBuilder &b, Value index) {
  return arith::IndexCastOp::create(b, b.getI32Type(), index);
}

/// `then` emitted in an scf.if without else, taken where `condition` holds;
/// the builder's insertion point is restored after it.
inline void ifThen(ImplicitLocOpBuilder &b, Value condition,
                   function_ref<void(ImplicitLocOpBuilder &)> then) {
  auto branch = scf::IfOp::create(b, condition, /*withElseRegion=*/false);
  OpBuilder::InsertionGuard guard(b);
  b.setInsertionPointToStart(&branch.getThenRegion().front());
  then(b);
}

/// The sequence a token lies in: [start, end) and the block row of its first
/// block (the blocks of all sequences in order, as moba.block_pool numbers
/// them); all zero when it lies in none.
struct TokenSequence {
  Value start, end, blockOffset;
};

/// The sequence of token `t` (index), by a scan of `cu` (cu_seqlens, i32)
/// with blocks of `blockSize` tokens.
TokenSequence locateSequence(ImplicitLocOpBuilder &b, Value cu, Value t,
                             int64_t blockSize);

/// Whether slot `s` of (`t`, `h`) in `selected` ([T, Hq, K] i32) is listed
/// by moba.group_queries, i.e. attends a block (i1): its block lies in the
/// token's sequence of `blocks` blocks (i32) and no lower slot holds it.
Value slotIsListed(ImplicitLocOpBuilder &b, Value selected, Value t, Value h,
                   Value s, Value blocks);

/// The keys [first, end) of block row `row` (index; the blocks of all
/// sequences in order, as moba.block_pool numbers them): the row's block
/// of its sequence, cut at the sequence's end; both zero past the last row.
struct BlockRow {
  Value first, end;
};

/// Block row `row`'s keys, by a scan of `cu` (cu_seqlens, i32) with blocks
/// of `blockSize` tokens.
BlockRow locateBlockRow(ImplicitLocOpBuilder &b, Value cu, Value row,
                        int64_t blockSize);

/// One gpu.launch of `blocks` x `threads` whose body `build` fills (the
/// terminator is added after it), with `sharedBytes` (i32) of dynamic
/// shared memory and static shared buffers of `workgroup` types.
void launch(ImplicitLocOpBuilder &b, Value blocks, int64_t threads,
            Value sharedBytes, TypeRange workgroup,
            function_ref<void(ImplicitLocOpBuilder &, gpu::LaunchOp)> build);

/// One gpu.launch with a thread per item of `count` (index), `threads` a
/// CTA (at least one CTA, so that the launch is valid when `count` is 0):
/// `build` emits item `linear`'s work, under a check that it is in range.
void launchPerItem(ImplicitLocOpBuilder &b, Value count, int64_t threads,
                   function_ref<void(ImplicitLocOpBuilder &, Value linear)>
                       build);

} // namespace mlir::moba::nvvm_kernel

#endif // MOBA_LIB_CONVERSION_KERNELBUILDER_KERNELBUILDER_H
