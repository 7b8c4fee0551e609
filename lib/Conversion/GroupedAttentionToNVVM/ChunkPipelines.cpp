//===- ChunkPipelines.cpp - The attention kernel's chunk pipelines -------===//
//
// Part of moba-mlir. The software pipelines that drive both chunk loops of
// the grouped attention kernel through the stage ring: the cp.async
// pipeline (one barrier a chunk, the next chunk's copies in flight during
// this one's body), the plain-then-masked split of the chunks, and the TMA
// pipeline's barrier before each chunk.
//
//===----------------------------------------------------------------------===//

#include "AttentionKernel.h"

using namespace mlir;
using namespace mlir::moba;
using namespace mlir::moba::grouped_attention;

SmallVector<Value> AttentionKernel::emitChunkLoops(
    ImplicitLocOpBuilder &b, const CtaTile &t, bool asyncProxyReads,
    ValueStaging values, StageFn stage, ChunkFn body, ValueRange inits) {
  KernelBuilder e{b, element()};
  Value chunkKeys = e.index(shape.keyChunk);
  bool late = values == ValueStaging::OneChunkLate;
  bool afterProducts = values == ValueStaging::AfterProducts;
  // K (and, WithKeys, V) of chunk `chunk` into buffer `buffer`.
  auto stageChunk = [&](ImplicitLocOpBuilder &sb, Value buffer,
                        Value keyBase) {
    stage(sb, /*operand=*/0, buffer, keyBase);
    if (values == ValueStaging::WithKeys)
      stage(sb, /*operand=*/1, buffer, keyBase);
  };
  // `then` when chunk `chunk` exists.
  auto ifAny = [&](ImplicitLocOpBuilder &ib, Value chunk,
                   function_ref<void(ImplicitLocOpBuilder &)> then) {
    KernelBuilder ie{ib, e.element};
    nvvm_kernel::ifThen(ib, ie.ult(chunk, t.chunks), then);
  };
  // Chunk 0's K (and, WithKeys, V): the first group, with whatever the
  // caller started copying before (the queries).
  ifAny(b, e.index(0), [&](ImplicitLocOpBuilder &ib) {
    stageChunk(ib, e.index(0), t.keyFirst);
  });
  NVVM::CpAsyncCommitGroupOp::create(b);
  // One barrier per chunk both publishes the chunk's operands and frees
  // the buffers of the chunk before, so the copies into those start after
  // it: chunk c + 1's copies run during chunk c's body.
  SmallVector<Value> finals = emitSplitChunkLoops(
      b, t,
      [&](ImplicitLocOpBuilder &ib, Value chunk, Value buffer, Value keyBase,
          ValueRange c, bool masked) {
        KernelBuilder ie{ib, e.element};
        Value next = ie.add(chunk, ie.index(1));
        // Chunk c's copies (started at chunk c - 1's top) have landed:
        // every group has.
        NVVM::CpAsyncWaitGroupOp::create(ib, 0);
        if (asyncProxyReads)
          ie.fenceAsyncProxy();
        gpu::BarrierOp::create(ib);
        // Every warp is done with chunk c - 1: its buffers refill.
        if (afterProducts) {
          stage(ib, /*operand=*/1, ie.index(0), keyBase);
          NVVM::CpAsyncCommitGroupOp::create(ib);
        }
        ifAny(ib, next, [&](ImplicitLocOpBuilder &sb) {
          stageChunk(sb, shape.ring().slot(ie, next),
                     ie.add(t.keyFirst, ie.mul(next, chunkKeys)));
        });
        if (late)
          stage(ib, /*operand=*/1, buffer, keyBase);
        NVVM::CpAsyncCommitGroupOp::create(ib);
        return body(ib, chunk, buffer, keyBase, c, masked);
      },
      inits);
  NVVM::CpAsyncWaitGroupOp::create(b, 0);
  if (late) {
    // The last V, and the last P the body wrote, published.
    if (asyncProxyReads)
      e.fenceAsyncProxy();
    gpu::BarrierOp::create(b);
  }
  return finals;
}

SmallVector<Value> AttentionKernel::emitSplitChunkLoops(
    ImplicitLocOpBuilder &b, const CtaTile &t, ChunkFn step,
    ValueRange inits, Value first) {
  KernelBuilder e{b, element()};
  auto chunkLoop = [&](Value from, Value to, ValueRange loopInits,
                       bool masked) {
    return scf::ForOp::create(
        b, from, to, e.index(1), loopInits,
        [&](OpBuilder &fb, Location loc, Value chunk, ValueRange c) {
          ImplicitLocOpBuilder ib(loc, fb);
          KernelBuilder ie{ib, e.element};
          Value buffer = shape.ring().slot(ie, ringChunk(ie, t, chunk));
          Value keyBase =
              ie.add(t.keyFirst, ie.mul(chunk, ie.index(shape.keyChunk)));
          scf::YieldOp::create(ib,
                               step(ib, chunk, buffer, keyBase, c, masked));
        });
  };
  SmallVector<Value> starts(inits.begin(), inits.end());
  if (starts.empty())
    starts = chunkLoopInits(e);
  Value start = first ? first : e.index(0);
  Value masked = first ? arith::MaxUIOp::create(b, first, t.unmasked)
                       : t.unmasked;
  auto plain = chunkLoop(start, masked, starts, /*masked=*/false);
  auto loop =
      chunkLoop(masked, t.chunks, plain.getResults(), /*masked=*/true);
  return SmallVector<Value>(loop.getResults());
}

SmallVector<Value> AttentionKernel::emitBulkChunkLoops(ImplicitLocOpBuilder &b,
                                                       const CtaTile &t,
                                                       ChunkFn body) {
  return emitSplitChunkLoops(
      b, t,
      [&](ImplicitLocOpBuilder &ib, Value chunk, Value buffer, Value keyBase,
          ValueRange c, bool masked) {
        // Every warp (of both CTAs, when paired) is done with chunk c - 1:
        // its buffers may refill, which `body` starts.
        bufferBarrier(ib, t);
        return body(ib, chunk, buffer, keyBase, c, masked);
      });
}
