//===- QueryGradKernel.cpp - dq per slot on the forward kernel's frame ----===//
//
// Part of moba-mlir. The dq kernel of
// moba-convert-grouped-attention-grad-to-nvvm runs on the forward kernel's
// frame (GroupedAttentionToNVVM/AttentionKernel.h, mma.sync form): the same
// tile list, CTA prologue (a tile of 16 x warps entries of one group, the
// causal key bounds) and cp.async pipeline of K and V through two buffers;
// only the chunk's work and the writes differ (AttentionKernel::ctaWork).
// Per chunk each warp's 16 rows compute
//
//   S  = Q K^T                P  = exp2(S scale log2(e) - lse log2(e))
//   dP = dO V^T               dS = P (dP - delta)
//   dq += dS K
//
// with Q and dO as A fragments held in registers for the whole tile, K and
// V as B fragments by ldmatrix (.trans for dS K, as V in the forward's
// P V), and dS passed from the accumulator layout to the A layout in
// registers. P needs no running max: lse is the forward's. Each row's
// `scale * dq` is its slot's partial: every (slot, token, head) is one
// entry of one group, so no two CTAs write the same row.
//
//===----------------------------------------------------------------------===//

#include "GradKernels.h"

#include "GroupedAttentionToNVVM/AttentionKernel.h"

#include <cmath>

using namespace mlir;
using namespace mlir::moba;
using namespace mlir::moba::grouped_attention;
using namespace mlir::moba::grouped_attention_grad;

namespace {

/// The partials of the slots that attend nothing set to 0, one thread per
/// (token, head): moba.sum_slots adds every slot, and the dq kernel writes
/// only the listed ones (moba.group_queries' rule, slotIsListed). Top-k
/// lists every slot but where a sequence has fewer blocks than slots (or
/// a caller's selection repeats one), so this writes almost nothing, where
/// zeroing all partials would cost a pass over K x T x Hq x D floats.
void emitZeroUnlistedPartials(ImplicitLocOpBuilder &b,
                              const GradOperands &ops) {
  KernelBuilder e{b, b.getF32Type()};
  Value tokens = memref::DimOp::create(b, ops.q, 0);
  Value items = e.mul(tokens, e.index(ops.numHeads));
  nvvm_kernel::launchPerItem(
      b, items, /*threads=*/128, [&](ImplicitLocOpBuilder &kb, Value linear) {
        KernelBuilder ke{kb, kb.getF32Type()};
        Value h = ke.rem(linear, ke.index(ops.numHeads));
        Value t = ke.div(linear, ke.index(ops.numHeads));
        nvvm_kernel::TokenSequence sequence =
            nvvm_kernel::locateSequence(kb, ops.cu, t, ops.blockSize);
        Value blocks = nvvm_kernel::toI32(
            kb, arith::CeilDivUIOp::create(
                    kb, ke.sub(sequence.end, sequence.start),
                    ke.index(ops.blockSize)));
        auto type = VectorType::get({4}, kb.getF32Type());
        Value zeros = arith::ConstantOp::create(
            kb, type, DenseElementsAttr::get(type, kb.getF32FloatAttr(0.0)));
        for (int64_t s = 0; s < ops.slotsPerToken; ++s) {
          Value listed = nvvm_kernel::slotIsListed(kb, ops.selected, t, h,
                                                   ke.index(s), blocks);
          Value unlisted = arith::XOrIOp::create(
              kb, listed, arith::ConstantIntOp::create(kb, 1, 1));
          nvvm_kernel::ifThen(kb, unlisted, [&](ImplicitLocOpBuilder &zb) {
            KernelBuilder ze{zb, zb.getF32Type()};
            for (int64_t col = 0; col < ops.headDim; col += 4)
              vector::StoreOp::create(
                  zb, zeros, ops.dqPartials,
                  ValueRange{ze.index(s), t, h, ze.index(col)})
                  .setAlignment(16);
          });
        }
      });
}

/// The dq work of one CTA of the forward's frame.
void emitQueryGradCta(ImplicitLocOpBuilder &b, AttentionKernel &kernel,
                      const GradOperands &ops, const CtaTile &t) {
  KernelBuilder e{b, ops.element()};
  auto workgroup = gpu::AddressSpaceAttr::get(b.getContext(),
                                              gpu::AddressSpace::Workgroup);
  const MmaTileShape &shape = kernel.shape;
  auto stageType =
      MemRefType::get({shape.stages, 2, shape.keyChunk, kernel.pitch()},
                      ops.element(), MemRefLayoutAttrInterface(), workgroup);
  Value stageBuffer = memref::ViewOp::create(b, stageType, t.sharedMemory,
                                             e.index(0), ValueRange{});
  int64_t kSteps = ops.headDim / 16, dTiles = ops.headDim / 8;
  int64_t nTiles = shape.keyChunk / 8;

  // Q and dO of the lane's two rows as A fragments, once per tile; the
  // rows' lse (base 2) and delta.
  SmallVector<SmallVector<Value>> qFrag = kernel.rowFragments(b, t, ops.q);
  SmallVector<SmallVector<Value>> gradFrag =
      kernel.rowFragments(b, t, ops.gradOut);
  double log2e = 1.0 / std::log(2.0);
  SmallVector<Value, 2> negLse, delta;
  for (int64_t r = 0; r < 2; ++r) {
    Value lse = memref::LoadOp::create(b, ops.lse, ValueRange{t.token[r], t.h});
    negLse.push_back(arith::NegFOp::create(b, e.fmul(lse, e.f32(log2e))));
    delta.push_back(
        memref::LoadOp::create(b, ops.rowTerm, ValueRange{t.token[r], t.h}));
  }
  double scaleLog2 = ops.scale / std::log(2.0);

  SmallVector<Value> inits(dTiles * 4, e.f32(0.0));
  SmallVector<Value> dq = kernel.emitChunkLoops(
      b, t, /*asyncProxyReads=*/false, AttentionKernel::ValueStaging::WithKeys,
      [&](ImplicitLocOpBuilder &sb, int64_t operand, Value buffer,
          Value keyBase) {
        kernel.emitStage(sb, stageBuffer, operand, buffer, keyBase, t.lastKey,
                         t.g, t.tid);
      },
      [&](ImplicitLocOpBuilder &ib, Value /*chunk*/, Value buffer,
          Value keyBase, ValueRange c, bool masked) -> SmallVector<Value> {
        KernelBuilder ie{ib, e.element};
        Value lane8 = ie.rem(t.lane, ie.index(8));
        Value laneMatrix = ie.div(t.lane, ie.index(8));
        // A (16 rows) times the staged K (operand 0) or V (1) transposed.
        auto product = [&](const SmallVector<SmallVector<Value>> &a,
                           int64_t operand) {
          SmallVector<SmallVector<Value>> tiles(
              nTiles, SmallVector<Value>(4, ie.f32(0.0)));
          for (int64_t kk = 0; kk < kSteps; kk += 2) {
            bool pair = kk + 1 < kSteps;
            Value matrix =
                pair ? laneMatrix : ie.rem(laneMatrix, ie.index(2));
            Value col =
                ie.add(ie.index(kk * 16), ie.mul(matrix, ie.index(8)));
            for (int64_t nt = 0; nt < nTiles; ++nt) {
              Value keyRow = ie.add(ie.index(nt * 8), lane8);
              SmallVector<Value> frag = ie.ldmatrix(
                  stageBuffer, {buffer, ie.index(operand), keyRow, col},
                  pair ? 4 : 2, /*transpose=*/false);
              tiles[nt] = ie.mma(a[kk], {frag[0], frag[1]}, tiles[nt]);
              if (pair)
                tiles[nt] =
                    ie.mma(a[kk + 1], {frag[2], frag[3]}, tiles[nt]);
            }
          }
          return tiles;
        };
        SmallVector<SmallVector<Value>> scores = product(qFrag, 0);
        SmallVector<SmallVector<Value>> grads = product(gradFrag, 1);
        if (masked)
          kernel.maskScores(ib, t, scores, keyBase);
        // P and dS in place; value i of a tile is row i / 2. A masked score
        // (-inf) gives P = 0 and dS = 0, whatever dP holds.
        for (int64_t nt = 0; nt < nTiles; ++nt)
          for (int64_t i = 0; i < 4; ++i) {
            Value p = ie.exp2(math::FmaOp::create(
                ib, scores[nt][i], ie.f32(scaleLog2), negLse[i / 2]));
            Value ds = ie.fmul(
                p, arith::SubFOp::create(ib, grads[nt][i], delta[i / 2]));
            if (masked) {
              Value attended = arith::CmpFOp::create(
                  ib, arith::CmpFPredicate::ONE, scores[nt][i],
                  ie.f32(nvvm_kernel::kNegInf));
              ds = ie.select(attended, ds, ie.f32(0.0));
            }
            grads[nt][i] = ds;
          }
        // dq += dS K.
        SmallVector<Value> results(c.begin(), c.end());
        kernel.addProductWithStaged(ib, t, grads, stageBuffer, buffer,
                                    /*operand=*/0, results);
        return results;
      },
      inits);

  // Each valid row's scale * dq into its slot's partial.
  for (int64_t r = 0; r < 2; ++r)
    nvvm_kernel::ifThen(b, t.rowValid[r], [&](ImplicitLocOpBuilder &ib) {
      KernelBuilder ie{ib, e.element};
      for (int64_t dn = 0; dn < dTiles; ++dn) {
        Value col = ie.add(ie.index(dn * 8), t.pairCol);
        Value pair = vector::FromElementsOp::create(
            ib, VectorType::get({2}, ib.getF32Type()),
            ValueRange{ie.fmul(dq[dn * 4 + 2 * r], ie.f32(ops.scale)),
                       ie.fmul(dq[dn * 4 + 2 * r + 1], ie.f32(ops.scale))});
        vector::StoreOp::create(ib, pair, ops.dqPartials,
                                ValueRange{t.slot[r], t.token[r], t.h, col})
            .setAlignment(8);
      }
    });
}

} // namespace

void mlir::moba::grouped_attention_grad::emitQueryGrad(
    ImplicitLocOpBuilder &b, const GradOperands &ops, int64_t warps,
    int64_t keyChunk) {
  emitZeroUnlistedPartials(b, ops);
  AttentionKernelPlan plan;
  plan.instruction = MatrixInstruction::MmaSync;
  plan.warps = warps;
  plan.keyChunk = keyChunk;
  MmaTileShape shape =
      MmaTileShape::forPlan(plan, ops.headDim, ops.element());
  AttentionKernel kernel{GroupedBlockAttentionOp(),
                         ops.q,
                         ops.k,
                         ops.v,
                         ops.cu,
                         ops.starts,
                         ops.counts,
                         ops.entries,
                         ops.dqPartials,
                         /*partialLse=*/Value(),
                         ops.numHeads,
                         ops.group,
                         ops.headDim,
                         ops.slotsPerToken,
                         ops.blockSize,
                         ops.causal,
                         ops.scale,
                         shape};
  kernel.ctaWork = [&](ImplicitLocOpBuilder &cb, const CtaTile &t) {
    emitQueryGradCta(cb, kernel, ops, t);
  };
  kernel.emit(b);
}
