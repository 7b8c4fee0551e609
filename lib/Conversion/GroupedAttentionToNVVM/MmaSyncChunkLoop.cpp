//===- MmaSyncChunkLoop.cpp - The attention chunk loop on mma.sync -------===//
//
// Part of moba-mlir. The mma.sync form of the grouped attention kernel's
// chunk loop (moba-convert-grouped-attention-to-nvvm, sm_80 and newer):
// each warp takes 16 entries of the tile; the block's K and V pass through
// the stage ring's two buffers by cp.async (emitStage, padded rows against
// bank conflicts), are read by ldmatrix (.trans for V), and S = Q K^T and
// P V are nvvm.mma.sync m16n8k16 on fragments, the softmax on the
// accumulators in between (SoftmaxStep.cpp). Fragments follow the PTX ISA's
// layouts for mma.m16n8k16 (GroupedAttentionToNVVM.cpp says which lane
// holds what).
//
//===----------------------------------------------------------------------===//

#include "AttentionKernel.h"

using namespace mlir;
using namespace mlir::moba;
using namespace mlir::moba::grouped_attention;

SmallVector<SmallVector<Value>>
AttentionKernel::rowFragments(ImplicitLocOpBuilder &b, const CtaTile &t,
                              Value source) {
  KernelBuilder e{b, element()};
  SmallVector<SmallVector<Value>> fragments;
  for (int64_t kk = 0; kk < headDim / 16; ++kk) {
    Value col = e.add(e.index(kk * 16), t.pairCol);
    Value col8 = e.add(col, e.index(8));
    fragments.push_back({e.loadPair(source, {t.token[0], t.h, col}),
                         e.loadPair(source, {t.token[1], t.h, col}),
                         e.loadPair(source, {t.token[0], t.h, col8}),
                         e.loadPair(source, {t.token[1], t.h, col8})});
  }
  return fragments;
}

void AttentionKernel::addProductWithStaged(
    ImplicitLocOpBuilder &b, const CtaTile &t,
    ArrayRef<SmallVector<Value>> tiles, Value stageBuffer, Value buffer,
    int64_t operand, MutableArrayRef<Value> accumulators) {
  KernelBuilder e{b, element()};
  // Two n-tiles of `tiles` (the m16n8 accumulator layout of two key tiles
  // is the m16n8k16 A layout) are the A operand of one k-step; the staged
  // rows' B fragments by ldmatrix.trans (x4: two d-tiles).
  Value lane8 = e.rem(t.lane, e.index(8));
  Value laneMatrix = e.div(t.lane, e.index(8));
  Value row = e.add(lane8, e.mul(e.rem(laneMatrix, e.index(2)), e.index(8)));
  Value col = e.mul(e.div(t.lane, e.index(16)), e.index(8));
  for (size_t kv = 0; kv < tiles.size() / 2; ++kv) {
    const SmallVector<Value> &lo = tiles[2 * kv], &hi = tiles[2 * kv + 1];
    SmallVector<Value> a = {e.pack(lo[0], lo[1]), e.pack(lo[2], lo[3]),
                            e.pack(hi[0], hi[1]), e.pack(hi[2], hi[3])};
    Value keyRow = e.add(e.index(static_cast<int64_t>(kv) * 16), row);
    for (int64_t dn = 0; dn < headDim / 8; dn += 2) {
      SmallVector<Value> frag = e.ldmatrix(
          stageBuffer,
          {buffer, e.index(operand), keyRow, e.add(e.index(dn * 8), col)}, 4,
          /*transpose=*/true);
      for (int64_t s = 0; s < 2; ++s) {
        MutableArrayRef<Value> acc = accumulators.slice((dn + s) * 4, 4);
        llvm::copy(e.mma(a, {frag[2 * s], frag[2 * s + 1]},
                         SmallVector<Value>(acc.begin(), acc.end())),
                   acc.begin());
      }
    }
  }
}

void AttentionKernel::emitStage(ImplicitLocOpBuilder &b, Value stageBuffer,
                                int64_t operand, Value buffer, Value base,
                                Value lastKey, Value g, Value tid) {
  KernelBuilder e{b, element()};
  // 16-byte copies: head_dim / 8 per key row, spread over the CTA.
  int64_t perRow = headDim / 8, copies = shape.keyChunk * perRow;
  Value source = operand == 0 ? k : v;
  scf::ForOp::create(
      b, tid, e.index(copies), e.index(threads()), ValueRange{},
      [&](OpBuilder &fb, Location loc, Value j, ValueRange) {
        ImplicitLocOpBuilder ib(loc, fb);
        KernelBuilder ie{ib, e.element};
        Value key = ie.div(j, ie.index(perRow));
        Value col = ie.mul(ie.rem(j, ie.index(perRow)), ie.index(8));
        Value from = ie.minU(ie.add(base, key), lastKey);
        nvgpu::DeviceAsyncCopyOp::create(
            ib, stageBuffer, ValueRange{buffer, ie.index(operand), key, col},
            source, ValueRange{from, g, col}, ib.getIndexAttr(8),
            /*srcElements=*/Value(), ib.getUnitAttr());
        scf::YieldOp::create(ib);
      });
}

SmallVector<Value> AttentionKernel::emitMmaSyncChunks(ImplicitLocOpBuilder &b,
                                                      const CtaTile &t) {
  KernelBuilder e{b, element()};
  auto workgroup = gpu::AddressSpaceAttr::get(b.getContext(),
                                              gpu::AddressSpace::Workgroup);
  // [buffer, K or V, key, dim]: the ring's buffers, so that the copies of
  // the next chunk run while this one is multiplied.
  auto stageType =
      MemRefType::get({shape.stages, 2, shape.keyChunk, pitch()}, element(),
                      MemRefLayoutAttrInterface(), workgroup);
  Value stageBuffer = memref::ViewOp::create(b, stageType, t.sharedMemory,
                                             e.index(0), ValueRange{});

  // Q as A fragments, once per tile.
  int64_t kSteps = headDim / 16;
  int64_t nTiles = shape.keyChunk / 8;
  SmallVector<SmallVector<Value>> qFrag = rowFragments(b, t, q);

  return emitChunkLoops(
      b, t, /*asyncProxyReads=*/false, ValueStaging::WithKeys,
      [&](ImplicitLocOpBuilder &sb, int64_t operand, Value buffer,
          Value keyBase) {
        emitStage(sb, stageBuffer, operand, buffer, keyBase, t.lastKey, t.g,
                  t.tid);
      },
      [&](ImplicitLocOpBuilder &ib, Value /*chunk*/, Value buffer,
          Value keyBase, ValueRange c, bool masked) -> SmallVector<Value> {
        KernelBuilder ie{ib, e.element};
        Value lane8 = ie.rem(t.lane, ie.index(8));
        Value laneMatrix = ie.div(t.lane, ie.index(8));
        // S = Q K^T, 8 keys per n-tile; K fragments by ldmatrix: lanes
        // 8j..8j+7 address the rows of matrix j (x4: two k-steps). The
        // k-steps outside, the n-tiles inside: nTiles independent
        // accumulator chains for the scheduler to interleave.
        SmallVector<SmallVector<Value>> scores(
            nTiles, SmallVector<Value>(4, ie.f32(0.0)));
        for (int64_t kk = 0; kk < kSteps; kk += 2) {
          bool pair = kk + 1 < kSteps;
          Value matrix = pair ? laneMatrix : ie.rem(laneMatrix, ie.index(2));
          Value col = ie.add(ie.index(kk * 16), ie.mul(matrix, ie.index(8)));
          for (int64_t nt = 0; nt < nTiles; ++nt) {
            Value keyRow = ie.add(ie.index(nt * 8), lane8);
            SmallVector<Value> frag = ie.ldmatrix(
                stageBuffer, {buffer, ie.index(0), keyRow, col}, pair ? 4 : 2,
                /*transpose=*/false);
            scores[nt] = ie.mma(qFrag[kk], {frag[0], frag[1]}, scores[nt]);
            if (pair)
              scores[nt] =
                  ie.mma(qFrag[kk + 1], {frag[2], frag[3]}, scores[nt]);
          }
        }
        SmallVector<Value> results =
            softmaxStep(ib, t, scores, c, keyBase, masked);
        // O = O * alpha + P V.
        addProductWithStaged(ib, t, scores, stageBuffer, buffer,
                             /*operand=*/1,
                             MutableArrayRef<Value>(results).drop_front(4));
        return results;
      });
}
