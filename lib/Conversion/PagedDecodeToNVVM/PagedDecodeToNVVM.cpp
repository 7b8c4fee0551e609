//===- PagedDecodeToNVVM.cpp - Split-K decode against a paged KV cache ----===//
//
// Part of moba-mlir. Implements `moba-convert-paged-decode-to-nvvm`:
// moba.paged_decode_attention on buffers becomes a flash-decoding schedule
// of GPU launches (docs/gpu-backend.md, "The paged KV cache").
//
//  * The check: one thread per sequence sets an i32 flag when its lengths
//    and page ids describe the cache and its query tokens lie within the
//    packed ones (the first forall of the loop form, LowerPagedToLoops.cpp).
//  * Then, per slab of query tokens (a host loop, so that the scratch stays
//    bounded for a long chunk of prefill), three launches:
//     - the selection, one warp per (query token, query head): lanes across
//       head_dim compute the gate against each finished block's mean key
//       (f32 sum / block_size, as moba.block_pool), reduce it by xor
//       shuffles (every lane gets the same bits: a + b == b + a), and keep
//       a sorted running top-(top_k - 1) in registers, updated the way
//       LoopEmitter::insertTopK does (NaN ranks as +inf, an entry goes
//       ahead of equal scores, so ties go to the later block). It writes
//       the own block to slot 0, then the chosen ones, -1 for none; -1 in
//       slot 0 marks a row that gets NaN (a failed check, or a token in no
//       sequence). A row of "which sequence" per token (-1: none) lets the
//       attention skip tokens of other sequences.
//     - the attention, one warp per (sequence, key/value head, block,
//       chunk of the block's keys). The warp gathers the rows (query token,
//       query head of the group) of its sequence that chose the block, by
//       a ballot over the candidates, and attends them `rowsPerTile` at a
//       time: every key it loads serves all of them. Lanes split head_dim
//       in 16-byte loads (lanesPerKey lanes a key row; the warp's other
//       lane groups take the next keys), `keySteps` keys a lane group a
//       step, all loads of a step issued before any use. Scores are kept in
//       log2 units (q pre-scaled by scale * log2(e)) for ex2; the online
//       softmax rescales the accumulators once a step. Keys past a row's
//       position are masked (the own block); keys past the sequence's end
//       are never read through the block table. At the end the lane
//       groups merge their states by xor shuffles, and the warp writes one
//       partial (unnormalized out, max, sum) per (row, slot, chunk), an
//       empty one (max -inf, sum 0) when no key of the chunk is attended.
//     - the merge, one thread per (row, 4 elements): the partials of the
//       row's listed slots and all chunks, in slot then chunk order, so
//       the result has the same bits every run.
//
//===----------------------------------------------------------------------===//

#include "KernelBuilder/KernelBuilder.h"
#include "moba/Conversion/Passes.h"
#include "moba/Dialect/Moba/IR/MobaOps.h"
#include "moba/Dialect/Moba/Utils/NumericSemantics.h"

#include "mlir/IR/PatternMatch.h"

#include <cmath>

namespace mlir::moba {
#define GEN_PASS_DEF_MOBACONVERTPAGEDDECODETONVVM
#include "moba/Conversion/Passes.h.inc"
} // namespace mlir::moba

using namespace mlir;
using namespace mlir::moba;
using nvvm_kernel::KernelBuilder;
using nvvm_kernel::kNegInf;
using nvvm_kernel::launch;
using nvvm_kernel::toI32;

namespace {

constexpr int64_t kWarpsPerCta = 4;
constexpr int64_t kThreadsPerCta = 128;
/// The most bytes of partials one slab may need; the slab shrinks below
/// `slabTokens` tokens to stay under it (one token at least, which the op's
/// isSplitKCompatible and the pass make sure fits).
constexpr int64_t kScratchBudgetBytes =
    PagedDecodeAttentionOp::kMaxSplitKScratchBytes;
// The op's isSplitKCompatible budgets the scratch for the default chunk-keys.
static_assert(PagedDecodeAttentionOp::kSplitKChunkKeys == 512,
              "chunk-keys' default in Passes.td");
constexpr double kLog2E = 1.4426950408889634;
constexpr double kLn2 = 0.6931471805599453;

/// One decode op's kernels and their static shape.
struct DecodeKernel {
  Value q, cu, kCache, vCache, table, lens, sums, out, lse;
  int64_t numHeads, kvHeads, headDim, pageSize, blockSize, topK;
  bool perKvHead;
  double scale;
  int64_t chunkKeys, rowsPerTile, keySteps, slabTokens;
  Type element;

  int64_t group() const { return numHeads / kvHeads; }
  /// Elements of one 16-byte load.
  int64_t perLane() const {
    return 16 / (element.getIntOrFloatBitWidth() / 8);
  }
  /// Lanes that read one key row (a power of two up to 32).
  int64_t lanesPerKey() const { return headDim / perLane(); }
  /// Keys a warp reads with one load instruction.
  int64_t keysAtOnce() const { return 32 / lanesPerKey(); }
  int64_t chunks() const { return llvm::divideCeil(blockSize, chunkKeys); }
  int64_t warpsPerCta() const { return std::min(kWarpsPerCta, chunks()); }
  int64_t ctasPerBlock() const {
    return llvm::divideCeil(chunks(), warpsPerCta());
  }
  /// Tokens a slab: slabTokens, fewer where its partials would pass the
  /// scratch budget.
  int64_t slab() const {
    int64_t perToken = numHeads * topK * chunks() * (headDim + 2) * 4;
    return std::max<int64_t>(
        1, std::min(slabTokens, kScratchBudgetBytes / perToken));
  }

  void emit(ImplicitLocOpBuilder &b);
  void emitCheck(ImplicitLocOpBuilder &b, Value flags, Value tokens);
  void emitSelection(ImplicitLocOpBuilder &b, Value t0, Value n, Value flags,
                     Value selection, Value rowSequence);
  void emitSelectionWarp(ImplicitLocOpBuilder &b, Value t0, Value tl, Value h,
                         Value lane, Value flags, Value selection,
                         Value rowSequence);
  void emitAttention(ImplicitLocOpBuilder &b, Value t0, Value n, Value flags,
                     Value selection, Value rowSequence, Value partOut,
                     Value partStats);
  void emitAttentionWarp(ImplicitLocOpBuilder &b, Value t0, Value n,
                         Value seq, Value g, Value j, Value chunk, Value lane,
                         Value selection, Value rowSequence, Value partOut,
                         Value partStats);
  void emitMerge(ImplicitLocOpBuilder &b, Value t0, Value n, Value selection,
                 Value partOut, Value partStats);
};

/// `x` (i32 or f32) summed over groups of `width` lanes (a power of two),
/// by xor shuffles: every lane of a group gets the same bits.
Value groupSum(ImplicitLocOpBuilder &b, Value x, int64_t width) {
  for (int64_t offset = width / 2; offset >= 1; offset /= 2) {
    Value other = gpu::ShuffleOp::create(b, x, offset, /*width=*/32,
                                         gpu::ShuffleMode::XOR)
                      .getShuffleResult();
    x = arith::AddFOp::create(b, x, other);
  }
  return x;
}

Value xorShuffle(ImplicitLocOpBuilder &b, Value x, int64_t offset) {
  return gpu::ShuffleOp::create(b, x, offset, /*width=*/32,
                                gpu::ShuffleMode::XOR)
      .getShuffleResult();
}

Value fmaF32(ImplicitLocOpBuilder &b, Value x, Value y, Value acc) {
  return math::FmaOp::create(b, x, y, acc);
}

Value isNegInf(KernelBuilder &e, Value x) {
  return arith::CmpFOp::create(e.b, arith::CmpFPredicate::OEQ, x,
                               e.f32(kNegInf));
}

/// The i64 value of an i32 element.
Value loadI64(ImplicitLocOpBuilder &b, Value memref, ValueRange indices) {
  return arith::ExtSIOp::create(b, b.getI64Type(),
                                memref::LoadOp::create(b, memref, indices));
}

/// `count` f32 scalars of `vector`, extended from the element type.
SmallVector<Value> toScalars(ImplicitLocOpBuilder &b, Value vector,
                             int64_t count) {
  auto type = VectorType::get({count}, b.getF32Type());
  if (cast<VectorType>(vector.getType()).getElementType() != b.getF32Type())
    vector = arith::ExtFOp::create(b, type, vector);
  SmallVector<Value> scalars;
  for (int64_t i = 0; i < count; ++i)
    scalars.push_back(vector::ExtractOp::create(b, vector, ArrayRef<int64_t>{i}));
  return scalars;
}

Value loadVector(ImplicitLocOpBuilder &b, Value memref, ValueRange indices,
                 int64_t count, int64_t alignment) {
  auto type = VectorType::get(
      {count}, cast<MemRefType>(memref.getType()).getElementType());
  auto load = vector::LoadOp::create(b, type, memref, indices);
  load.setAlignment(alignment);
  return load;
}

void DecodeKernel::emitCheck(ImplicitLocOpBuilder &b, Value flags,
                             Value tokens) {
  Value numSequences = memref::DimOp::create(b, lens, 0);
  nvvm_kernel::launchPerItem(
      b, numSequences, kThreadsPerCta,
      [&](ImplicitLocOpBuilder &kb, Value s) {
        KernelBuilder e{kb, element};
        auto i64 = [&](Value v) {
          return arith::IndexCastOp::create(kb, kb.getI64Type(), v)
              .getResult();
        };
        auto cmp = [&](arith::CmpIPredicate p, Value x, Value y) {
          return arith::CmpIOp::create(kb, p, x, y).getResult();
        };
        auto both = [&](Value x, Value y) {
          return arith::AndIOp::create(kb, x, y).getResult();
        };
        using P = arith::CmpIPredicate;
        Value first = loadI64(kb, cu, {s});
        Value last = loadI64(kb, cu, {e.add(s, e.index(1))});
        Value length = loadI64(kb, lens, {s});
        Value fresh = arith::SubIOp::create(kb, last, first);
        Value zero = i64(e.index(0));
        Value maxPages = i64(memref::DimOp::create(kb, table, 1));
        Value maxBlocks = i64(memref::DimOp::create(kb, sums, 1));
        Value ok = cmp(P::sge, fresh, zero);
        ok = both(ok, cmp(P::sle, fresh, length));
        ok = both(ok, cmp(P::sle, length,
                          arith::MulIOp::create(kb, maxPages,
                                                i64(e.index(pageSize)))));
        ok = both(ok, cmp(P::sle, length,
                          arith::MulIOp::create(kb, maxBlocks,
                                                i64(e.index(blockSize)))));
        ok = both(ok, cmp(P::sge, first, zero));
        ok = both(ok, cmp(P::sle, last, i64(tokens)));
        // The pages of the sequence (none when the lengths failed).
        Value pages = arith::SelectOp::create(
            kb, ok,
            arith::CeilDivSIOp::create(kb, length, i64(e.index(pageSize))),
            zero);
        Value numPages =
            toI32(kb, memref::DimOp::create(kb, kCache, 0));
        auto walk = scf::ForOp::create(
            kb, e.index(0),
            arith::IndexCastOp::create(kb, kb.getIndexType(), pages),
            e.index(1), ValueRange{ok},
            [&](OpBuilder &fb, Location loc, Value i, ValueRange acc) {
              ImplicitLocOpBuilder pb(loc, fb);
              Value page = memref::LoadOp::create(pb, table, ValueRange{s, i});
              Value inRange = arith::AndIOp::create(
                  pb,
                  arith::CmpIOp::create(pb, P::sge, page,
                                        arith::ConstantIntOp::create(
                                            pb, pb.getI32Type(), 0)),
                  arith::CmpIOp::create(pb, P::slt, page, numPages));
              scf::YieldOp::create(
                  pb, ValueRange{arith::AndIOp::create(pb, acc[0], inRange)
                                     .getResult()});
            });
        memref::StoreOp::create(
            kb,
            arith::ExtUIOp::create(kb, kb.getI32Type(), walk.getResult(0)),
            flags, ValueRange{s});
      });
}

void DecodeKernel::emitSelection(ImplicitLocOpBuilder &b, Value t0, Value n,
                                 Value flags, Value selection,
                                 Value rowSequence) {
  KernelBuilder e{b, element};
  Value warps = e.mul(n, e.index(numHeads));
  Value ctas = arith::MaxUIOp::create(
      b, arith::CeilDivUIOp::create(b, warps, e.index(kWarpsPerCta)),
      e.index(1));
  launch(b, ctas, 32 * kWarpsPerCta, /*sharedBytes=*/nullptr,
         /*workgroup=*/{}, [&](ImplicitLocOpBuilder &kb, gpu::LaunchOp op) {
    KernelBuilder ke{kb, element};
    Value tid = op.getThreadIds().x;
    Value w = ke.add(ke.mul(op.getBlockIds().x, ke.index(kWarpsPerCta)),
                     ke.div(tid, ke.index(32)));
    Value lane = ke.rem(tid, ke.index(32));
    // Warp-uniform.
    nvvm_kernel::ifThen(kb, ke.ult(w, warps), [&](ImplicitLocOpBuilder &ib) {
      KernelBuilder ie{ib, element};
      emitSelectionWarp(ib, t0, ie.div(w, ie.index(numHeads)),
                        ie.rem(w, ie.index(numHeads)), lane, flags, selection,
                        rowSequence);
    });
  });
}

void DecodeKernel::emitSelectionWarp(ImplicitLocOpBuilder &b, Value t0,
                                     Value tl, Value h, Value lane,
                                     Value flags, Value selection,
                                     Value rowSequence) {
  KernelBuilder e{b, element};
  Value t = e.add(t0, tl);
  Value t64 = arith::IndexCastOp::create(b, b.getI64Type(), t);
  // The first sequence holding the token (i64 compares: cu_seqlens are not
  // checked on the host).
  Value numSequences = memref::DimOp::create(b, lens, 0);
  Value no = arith::ConstantIntOp::create(b, 0, 1);
  auto scan = scf::ForOp::create(
      b, e.index(0), numSequences, e.index(1), ValueRange{e.index(0), no},
      [&](OpBuilder &fb, Location loc, Value s, ValueRange acc) {
        ImplicitLocOpBuilder sb(loc, fb);
        KernelBuilder se{sb, element};
        Value first = loadI64(sb, cu, {s});
        Value last = loadI64(sb, cu, {se.add(s, se.index(1))});
        Value inside = arith::AndIOp::create(
            sb, arith::CmpIOp::create(sb, arith::CmpIPredicate::sle, first, t64),
            arith::CmpIOp::create(sb, arith::CmpIPredicate::slt, t64, last));
        Value take = arith::AndIOp::create(
            sb, inside,
            arith::XOrIOp::create(sb, acc[1],
                                  arith::ConstantIntOp::create(sb, 1, 1)));
        scf::YieldOp::create(
            sb, ValueRange{se.select(take, s, acc[0]),
                           arith::OrIOp::create(sb, acc[1], inside)});
      });
  Value seq = scan.getResult(0);
  // flags holds one element at least, so the read is in bounds either way.
  Value flagged = arith::CmpIOp::create(
      b, arith::CmpIPredicate::ne,
      memref::LoadOp::create(b, flags, ValueRange{seq}), e.i32(0));
  Value ok = arith::AndIOp::create(b, scan.getResult(1), flagged);
  Value lane0 =
      arith::CmpIOp::create(b, arith::CmpIPredicate::eq, lane, e.index(0));
  Value head0 =
      arith::CmpIOp::create(b, arith::CmpIPredicate::eq, h, e.index(0));
  nvvm_kernel::ifThen(
      b, arith::AndIOp::create(b, lane0, head0),
      [&](ImplicitLocOpBuilder &ib) {
        memref::StoreOp::create(ib, e.select(ok, toI32(ib, seq), e.i32(-1)),
                                rowSequence, ValueRange{tl});
      });
  auto branch = scf::IfOp::create(b, ok, /*withElseRegion=*/true);
  {
    OpBuilder::InsertionGuard guard(b);
    b.setInsertionPointToStart(&branch.getElseRegion().front());
    nvvm_kernel::ifThen(b, lane0, [&](ImplicitLocOpBuilder &ib) {
      for (int64_t s = 0; s < topK; ++s)
        memref::StoreOp::create(ib, e.i32(-1), selection,
                                ValueRange{tl, h, e.index(s)});
    });
    b.setInsertionPointToStart(&branch.getThenRegion().front());
    Value first = e.loadIndex(cu, {seq});
    Value last = e.loadIndex(cu, {e.add(seq, e.index(1))});
    Value length = e.loadIndex(lens, {seq});
    Value pos = e.add(e.sub(length, e.sub(last, first)), e.sub(t, first));
    Value own = e.div(pos, e.index(blockSize));
    int64_t kept = topK - 1;
    SmallVector<Value> blocks;
    if (kept > 0) {
      Value g = e.div(h, e.index(group()));
      // This lane's elements of head_dim: 4 at 4 * lane + 128 * i.
      int64_t pieces = llvm::divideCeil(headDim, 128);
      SmallVector<Value> dims, dimValid;
      for (int64_t i = 0; i < pieces; ++i) {
        Value d = e.add(e.mul(lane, e.index(4)), e.index(128 * i));
        Value valid = e.ult(d, e.index(headDim));
        dimValid.push_back(valid);
        dims.push_back(e.select(valid, d, e.index(0)));
      }
      SmallVector<Value> heads;
      if (perKvHead)
        for (int64_t i = 0; i < group(); ++i)
          heads.push_back(e.add(e.mul(g, e.index(group())), e.index(i)));
      else
        heads.push_back(h);
      auto f32x4 = VectorType::get({4}, b.getF32Type());
      Value zeros = arith::ConstantOp::create(
          b, DenseElementsAttr::get(f32x4, b.getF32FloatAttr(0.0)));
      SmallVector<SmallVector<Value>> queries; // [head][piece * 4 + e]
      int64_t elementBytes = element.getIntOrFloatBitWidth() / 8;
      for (Value head : heads) {
        SmallVector<Value> row;
        for (int64_t i = 0; i < pieces; ++i) {
          Value v = loadVector(b, q, {t, head, dims[i]}, 4, 4 * elementBytes);
          if (v.getType() != f32x4)
            v = arith::ExtFOp::create(b, f32x4, v);
          v = e.select(dimValid[i], v, zeros);
          llvm::append_range(row, toScalars(b, v, 4));
        }
        queries.push_back(row);
      }
      Value blockLength = arith::ConstantOp::create(
          b, DenseElementsAttr::get(
                 f32x4, b.getF32FloatAttr(static_cast<double>(blockSize))));
      SmallVector<Value> init(kept, e.f32(kNegInf));
      init.append(kept, e.i32(-1));
      auto gate = scf::ForOp::create(
          b, e.index(0), own, e.index(1), init,
          [&](OpBuilder &fb, Location loc, Value jj, ValueRange acc) {
            ImplicitLocOpBuilder jb(loc, fb);
            KernelBuilder je{jb, element};
            // The mean as moba.block_pool computes it: the f32 sum over
            // the block's length.
            SmallVector<Value> mean;
            for (int64_t i = 0; i < pieces; ++i) {
              Value sum = loadVector(jb, sums, {seq, jj, g, dims[i]}, 4, 16);
              llvm::append_range(
                  mean, toScalars(jb, arith::DivFOp::create(jb, sum,
                                                            blockLength),
                                  4));
            }
            Value score;
            for (const SmallVector<Value> &row : queries) {
              Value partial = je.fmul(row[0], mean[0]);
              for (size_t k = 1; k < row.size(); ++k)
                partial = fmaF32(jb, row[k], mean[k], partial);
              Value dot = groupSum(jb, partial, 32);
              score = perKvHead ? je.fadd(score ? score : je.f32(0.0), dot)
                                : dot;
            }
            // NaN ranks as +inf (docs/semantics.md); the list stays sorted
            // best first and an entry goes ahead of equal scores.
            score = rankingScore(jb, loc, score);
            Value block = toI32(jb, jj);
            SmallVector<Value> scores(acc.begin(), acc.begin() + kept);
            SmallVector<Value> ids(acc.begin() + kept, acc.end());
            SmallVector<Value> better;
            for (int64_t m = 0; m < kept; ++m)
              better.push_back(arith::CmpFOp::create(
                  jb, arith::CmpFPredicate::OGT, scores[m], score));
            SmallVector<Value> next;
            SmallVector<Value> nextIds;
            for (int64_t m = 0; m < kept; ++m) {
              Value shiftedScore = m == 0 ? score : je.select(better[m - 1],
                                                              score,
                                                              scores[m - 1]);
              Value shiftedId =
                  m == 0 ? block : je.select(better[m - 1], block, ids[m - 1]);
              next.push_back(je.select(better[m], scores[m], shiftedScore));
              nextIds.push_back(je.select(better[m], ids[m], shiftedId));
            }
            next.append(nextIds);
            scf::YieldOp::create(jb, next);
          });
      for (int64_t m = 0; m < kept; ++m)
        blocks.push_back(gate.getResult(kept + m));
    }
    nvvm_kernel::ifThen(b, lane0, [&](ImplicitLocOpBuilder &ib) {
      memref::StoreOp::create(ib, toI32(ib, own), selection,
                              ValueRange{tl, h, e.index(0)});
      for (auto [m, block] : llvm::enumerate(blocks))
        memref::StoreOp::create(ib, block, selection,
                                ValueRange{tl, h, e.index(1 + m)});
    });
  }
}

void DecodeKernel::emitAttention(ImplicitLocOpBuilder &b, Value t0, Value n,
                                 Value flags, Value selection,
                                 Value rowSequence, Value partOut,
                                 Value partStats) {
  KernelBuilder e{b, element};
  Value numSequences = memref::DimOp::create(b, lens, 0);
  // One block row at least, so that the CTA index splits without a division
  // by zero (with none, every sequence holding a key failed its check).
  Value maxBlocks = arith::MaxUIOp::create(
      b, memref::DimOp::create(b, sums, 1), e.index(1));
  int64_t perBlock = ctasPerBlock();
  Value ctas = e.mul(e.mul(numSequences, e.index(kvHeads)),
                     e.mul(maxBlocks, e.index(perBlock)));
  ctas = arith::MaxUIOp::create(b, ctas, e.index(1));
  launch(b, ctas, 32 * warpsPerCta(), /*sharedBytes=*/nullptr,
         /*workgroup=*/{}, [&](ImplicitLocOpBuilder &kb, gpu::LaunchOp op) {
    KernelBuilder ke{kb, element};
    // Chunks of a block fastest, then blocks, key/value heads, sequences:
    // neighbouring CTAs read neighbouring keys.
    Value cta = op.getBlockIds().x, tid = op.getThreadIds().x;
    Value part = ke.rem(cta, ke.index(perBlock));
    Value rest = ke.div(cta, ke.index(perBlock));
    Value j = ke.rem(rest, maxBlocks);
    rest = ke.div(rest, maxBlocks);
    Value g = ke.rem(rest, ke.index(kvHeads));
    Value seq = ke.div(rest, ke.index(kvHeads));
    Value chunk = ke.add(ke.mul(part, ke.index(warpsPerCta())),
                         ke.div(tid, ke.index(32)));
    Value lane = ke.rem(tid, ke.index(32));
    Value active = arith::AndIOp::create(kb, ke.ult(seq, numSequences),
                                         ke.ult(chunk, ke.index(chunks())));
    // Warp-uniform: a sequence that failed its check has NaN rows, written
    // by the merge.
    nvvm_kernel::ifThen(kb, active, [&](ImplicitLocOpBuilder &ib) {
      KernelBuilder ie{ib, element};
      Value flagged = arith::CmpIOp::create(
          ib, arith::CmpIPredicate::ne,
          memref::LoadOp::create(ib, flags, ValueRange{seq}), ie.i32(0));
      nvvm_kernel::ifThen(ib, flagged, [&](ImplicitLocOpBuilder &wb) {
        emitAttentionWarp(wb, t0, n, seq, g, j, chunk, lane, selection,
                          rowSequence, partOut, partStats);
      });
    });
  });
}

/// The online-softmax state of one row in one lane.
struct RowState {
  Value max, sum;
  SmallVector<Value> acc;
};

void DecodeKernel::emitAttentionWarp(ImplicitLocOpBuilder &b, Value t0,
                                     Value n, Value seq, Value g, Value j,
                                     Value chunk, Value lane, Value selection,
                                     Value rowSequence, Value partOut,
                                     Value partStats) {
  KernelBuilder e{b, element};
  const int64_t E = perLane(), L = lanesPerKey(), KP = keysAtOnce();
  const int64_t R = rowsPerTile, U = keySteps;
  Value first = e.loadIndex(cu, {seq});
  Value last = e.loadIndex(cu, {e.add(seq, e.index(1))});
  Value length = e.loadIndex(lens, {seq});
  // The sequence's query tokens in this slab: [tb, te).
  Value tb = arith::MaxUIOp::create(b, first, t0);
  Value te = e.minU(last, e.add(t0, n));
  Value tokens = e.select(e.ult(tb, te), e.sub(te, tb), e.index(0));
  Value candidates = e.mul(tokens, e.index(group()));
  // The chunk's keys [kb, ke): within the block and the sequence.
  Value kb = e.add(e.mul(j, e.index(blockSize)),
                   e.mul(chunk, e.index(chunkKeys)));
  Value ke = e.minU(e.minU(e.add(kb, e.index(chunkKeys)),
                           e.mul(e.add(j, e.index(1)), e.index(blockSize))),
                    length);
  Value span = e.select(e.ult(kb, ke), e.sub(ke, kb), e.index(0));
  Value steps = arith::CeilDivUIOp::create(b, span, e.index(KP * U));
  Value jI32 = toI32(b, j);
  Value seqI32 = toI32(b, seq);
  Value keyGroup = e.div(lane, e.index(L)); // which key of a load
  Value column = e.mul(e.rem(lane, e.index(L)), e.index(E));
  Value laneI32 = toI32(b, lane);
  Value firstPos = e.sub(length, e.sub(last, first)); // position of `first`
  double qScale = scale * kLog2E;

  scf::ForOp::create(
      b, e.index(0), candidates, e.index(32), ValueRange{},
      [&](OpBuilder &fb, Location loc, Value base, ValueRange) {
        ImplicitLocOpBuilder cb(loc, fb);
        KernelBuilder ce{cb, element};
        Value cand = ce.add(base, lane);
        Value inRange = ce.ult(cand, candidates);
        Value c = ce.select(inRange, cand, ce.index(0));
        Value t = ce.add(tb, ce.div(c, ce.index(group())));
        Value h = ce.add(ce.mul(g, ce.index(group())),
                         ce.rem(c, ce.index(group())));
        Value tl = ce.sub(t, t0);
        Value sameSequence = arith::CmpIOp::create(
            cb, arith::CmpIPredicate::eq,
            memref::LoadOp::create(cb, rowSequence, ValueRange{tl}), seqI32);
        // The slot of block j in the row's selection (-1: not chosen).
        Value slot = ce.i32(-1);
        for (int64_t s = 0; s < topK; ++s) {
          Value listed = memref::LoadOp::create(cb, selection,
                                                ValueRange{tl, h, ce.index(s)});
          Value hit = arith::AndIOp::create(
              cb,
              arith::CmpIOp::create(cb, arith::CmpIPredicate::eq, listed,
                                    jI32),
              arith::CmpIOp::create(cb, arith::CmpIPredicate::slt, slot,
                                    ce.i32(0)));
          slot = ce.select(hit, ce.i32(s), slot);
        }
        Value matched = arith::AndIOp::create(
            cb, arith::AndIOp::create(cb, inRange, sameSequence),
            arith::CmpIOp::create(cb, arith::CmpIPredicate::sge, slot,
                                  ce.i32(0)));
        Value rowId = toI32(cb, ce.add(ce.mul(tl, ce.index(numHeads)), h));
        Value pos = toI32(cb, ce.add(firstPos, ce.sub(t, first)));
        Value mask = NVVM::VoteSyncOp::create(cb, cb.getI32Type(), ce.i32(-1),
                                              matched,
                                              NVVM::VoteSyncKind::ballot);
        Value count = arith::IndexCastOp::create(
            cb, cb.getIndexType(), LLVM::CtPopOp::create(cb, mask));
        Value tiles = arith::CeilDivUIOp::create(cb, count, ce.index(R));
        scf::ForOp::create(
            cb, ce.index(0), tiles, ce.index(1), ValueRange{mask},
            [&](OpBuilder &tfb, Location tloc, Value, ValueRange tileAcc) {
              ImplicitLocOpBuilder tb2(tloc, tfb);
              KernelBuilder te2{tb2, element};
              Value left = tileAcc[0];
              // The tile's rows: the next R set bits of the ballot.
              SmallVector<Value> has, rowIds, slots, positions;
              for (int64_t r = 0; r < R; ++r) {
                Value any = arith::CmpIOp::create(
                    tb2, arith::CmpIPredicate::ne, left, te2.i32(0));
                Value source = te2.select(
                    any, LLVM::CountTrailingZerosOp::create(tb2, left, false),
                    te2.i32(0));
                left = te2.select(
                    any,
                    arith::AndIOp::create(tb2, left,
                                          te2.sub(left, te2.i32(1))),
                    left);
                auto fetch = [&](Value x) {
                  return gpu::ShuffleOp::create(tb2, x, source, te2.i32(32),
                                                gpu::ShuffleMode::IDX)
                      .getShuffleResult();
                };
                has.push_back(any);
                rowIds.push_back(fetch(rowId));
                slots.push_back(fetch(slot));
                positions.push_back(fetch(pos));
              }
              // The rows' queries, pre-scaled into log2 units; a missing
              // row reads row 0 of the slab (masked).
              SmallVector<SmallVector<Value>> queries;
              SmallVector<Value> rowTl, rowH;
              for (int64_t r = 0; r < R; ++r) {
                Value id = arith::IndexCastOp::create(
                    tb2, tb2.getIndexType(),
                    te2.select(has[r], rowIds[r], te2.i32(0)));
                rowTl.push_back(te2.div(id, te2.index(numHeads)));
                rowH.push_back(te2.rem(id, te2.index(numHeads)));
                SmallVector<Value> row = toScalars(
                    tb2,
                    loadVector(tb2, q, {te2.add(t0, rowTl[r]), rowH[r], column},
                               E, 16),
                    E);
                for (Value &x : row)
                  x = te2.fmul(x, te2.f32(qScale));
                queries.push_back(row);
              }
              SmallVector<Value> rowPos;
              for (int64_t r = 0; r < R; ++r)
                rowPos.push_back(arith::IndexCastOp::create(
                    tb2, tb2.getIndexType(), positions[r]));

              // The key loop: per row max, sum and E accumulators.
              auto pack = [&](ArrayRef<RowState> rows) {
                SmallVector<Value> flat;
                for (const RowState &row : rows) {
                  flat.push_back(row.max);
                  flat.push_back(row.sum);
                  llvm::append_range(flat, row.acc);
                }
                return flat;
              };
              auto unpack = [&](ValueRange flat) {
                SmallVector<RowState> rows(R);
                for (int64_t r = 0; r < R; ++r) {
                  ValueRange part = flat.drop_front(r * (E + 2));
                  rows[r].max = part[0];
                  rows[r].sum = part[1];
                  rows[r].acc.assign(part.begin() + 2, part.begin() + 2 + E);
                }
                return rows;
              };
              SmallVector<RowState> init(R);
              for (RowState &row : init) {
                row.max = te2.f32(kNegInf);
                row.sum = te2.f32(0.0);
                row.acc.assign(E, te2.f32(0.0));
              }
              auto loop = scf::ForOp::create(
                  tb2, te2.index(0), steps, te2.index(1), pack(init),
                  [&](OpBuilder &kfb, Location kloc, Value step,
                      ValueRange carried) {
                    ImplicitLocOpBuilder lb(kloc, kfb);
                    KernelBuilder le{lb, element};
                    SmallVector<RowState> rows = unpack(carried);
                    Value stepFirst =
                        le.add(kb, le.mul(step, le.index(KP * U)));
                    // All loads of the step first.
                    SmallVector<Value> keyPos, keyIn;
                    SmallVector<SmallVector<Value>> keys, values;
                    Value lastKey = le.sub(ke, le.index(1));
                    for (int64_t u = 0; u < U; ++u) {
                      Value p = le.add(stepFirst,
                                       le.add(le.index(u * KP), keyGroup));
                      Value in = le.ult(p, ke);
                      // Past the chunk: the chunk's last key (in the
                      // sequence, so its page is checked), masked below.
                      Value pc = le.select(in, p, lastKey);
                      Value page = le.loadIndex(
                          table, {seq, le.div(pc, le.index(pageSize))});
                      Value slotInPage = le.rem(pc, le.index(pageSize));
                      keys.push_back(toScalars(
                          lb,
                          loadVector(lb, kCache, {page, slotInPage, g, column},
                                     E, 16),
                          E));
                      values.push_back(toScalars(
                          lb,
                          loadVector(lb, vCache, {page, slotInPage, g, column},
                                     E, 16),
                          E));
                      keyPos.push_back(p);
                      keyIn.push_back(in);
                    }
                    SmallVector<Value> next;
                    for (int64_t r = 0; r < R; ++r) {
                      RowState &row = rows[r];
                      SmallVector<Value> scores;
                      Value stepMax = le.f32(kNegInf);
                      for (int64_t u = 0; u < U; ++u) {
                        Value dot = le.fmul(queries[r][0], keys[u][0]);
                        for (int64_t x = 1; x < E; ++x)
                          dot = fmaF32(lb, queries[r][x], keys[u][x], dot);
                        dot = groupSum(lb, dot, L);
                        Value attended = arith::AndIOp::create(
                            lb, arith::AndIOp::create(lb, has[r], keyIn[u]),
                            le.ule(keyPos[u], rowPos[r]));
                        Value s = le.select(attended, dot, le.f32(kNegInf));
                        scores.push_back(s);
                        stepMax = le.fmax(stepMax, s);
                      }
                      Value newMax = le.fmax(row.max, stepMax);
                      // All masked so far: exponents against 0 (every term
                      // is exp2(-inf) = 0).
                      Value pivot = le.select(isNegInf(le, newMax),
                                              le.f32(0.0), newMax);
                      Value correction = le.exp2(
                          arith::SubFOp::create(lb, row.max, pivot));
                      Value sum = le.fmul(row.sum, correction);
                      SmallVector<Value> acc;
                      for (Value a : row.acc)
                        acc.push_back(le.fmul(a, correction));
                      for (int64_t u = 0; u < U; ++u) {
                        Value p = le.exp2(
                            arith::SubFOp::create(lb, scores[u], pivot));
                        sum = le.fadd(sum, p);
                        for (int64_t x = 0; x < E; ++x)
                          acc[x] = fmaF32(lb, p, values[u][x], acc[x]);
                      }
                      next.push_back(newMax);
                      next.push_back(sum);
                      llvm::append_range(next, acc);
                    }
                    scf::YieldOp::create(lb, next);
                  });
              SmallVector<RowState> rows = unpack(loop.getResults());
              // The lane groups (keys of the same loads) merge their
              // states; every lane of a row's column gets the same bits.
              for (int64_t offset = L; offset < 32; offset *= 2) {
                for (RowState &row : rows) {
                  Value otherMax = xorShuffle(tb2, row.max, offset);
                  Value otherSum = xorShuffle(tb2, row.sum, offset);
                  Value newMax = te2.fmax(row.max, otherMax);
                  Value pivot = te2.select(isNegInf(te2, newMax),
                                           te2.f32(0.0), newMax);
                  Value mine = te2.exp2(
                      arith::SubFOp::create(tb2, row.max, pivot));
                  Value theirs = te2.exp2(
                      arith::SubFOp::create(tb2, otherMax, pivot));
                  row.sum = te2.fadd(te2.fmul(row.sum, mine),
                                     te2.fmul(otherSum, theirs));
                  for (Value &a : row.acc) {
                    Value other = xorShuffle(tb2, a, offset);
                    a = te2.fadd(te2.fmul(a, mine), te2.fmul(other, theirs));
                  }
                  row.max = newMax;
                }
              }
              // The first lane group writes the partials.
              Value writer = arith::CmpIOp::create(
                  tb2, arith::CmpIPredicate::eq, keyGroup, te2.index(0));
              Value lane0 = arith::CmpIOp::create(
                  tb2, arith::CmpIPredicate::eq, laneI32, te2.i32(0));
              auto f32xE = VectorType::get({E}, tb2.getF32Type());
              for (int64_t r = 0; r < R; ++r) {
                Value s = arith::IndexCastOp::create(tb2, tb2.getIndexType(),
                                                     slots[r]);
                nvvm_kernel::ifThen(
                    tb2, arith::AndIOp::create(tb2, has[r], writer),
                    [&](ImplicitLocOpBuilder &wb) {
                      Value v = vector::FromElementsOp::create(wb, f32xE,
                                                               rows[r].acc);
                      vector::StoreOp::create(
                          wb, v, partOut,
                          ValueRange{rowTl[r], rowH[r], s, chunk, column})
                          .setAlignment(16);
                    });
                nvvm_kernel::ifThen(
                    tb2, arith::AndIOp::create(tb2, has[r], lane0),
                    [&](ImplicitLocOpBuilder &wb) {
                      KernelBuilder we{wb, element};
                      memref::StoreOp::create(
                          wb, rows[r].max, partStats,
                          ValueRange{rowTl[r], rowH[r], s, chunk,
                                     we.index(0)});
                      memref::StoreOp::create(
                          wb, rows[r].sum, partStats,
                          ValueRange{rowTl[r], rowH[r], s, chunk,
                                     we.index(1)});
                    });
              }
              scf::YieldOp::create(tb2, ValueRange{left});
            });
        scf::YieldOp::create(cb);
      });
}

void DecodeKernel::emitMerge(ImplicitLocOpBuilder &b, Value t0, Value n,
                             Value selection, Value partOut,
                             Value partStats) {
  KernelBuilder e{b, element};
  int64_t quadsPerRow = headDim / 4;
  Value items = e.mul(e.mul(n, e.index(numHeads)), e.index(quadsPerRow));
  nvvm_kernel::launchPerItem(
      b, items, kThreadsPerCta, [&](ImplicitLocOpBuilder &kb, Value linear) {
        KernelBuilder ke{kb, element};
        Value row = ke.div(linear, ke.index(quadsPerRow));
        Value d = ke.mul(ke.rem(linear, ke.index(quadsPerRow)), ke.index(4));
        Value tl = ke.div(row, ke.index(numHeads));
        Value h = ke.rem(row, ke.index(numHeads));
        Value t = ke.add(t0, tl);
        auto f32x4 = VectorType::get({4}, kb.getF32Type());
        auto elementx4 = VectorType::get({4}, element);
        // Four elements at a multiple of 4 of a row that starts 16-byte
        // aligned.
        int64_t rowBytes = 4 * element.getIntOrFloatBitWidth() / 8;
        Value own = memref::LoadOp::create(kb, selection,
                                           ValueRange{tl, h, ke.index(0)});
        Value attends = arith::CmpIOp::create(kb, arith::CmpIPredicate::sge,
                                              own, ke.i32(0));
        Value firstQuad =
            arith::CmpIOp::create(kb, arith::CmpIPredicate::eq, d, ke.index(0));
        auto branch = scf::IfOp::create(kb, attends, /*withElseRegion=*/true);
        OpBuilder::InsertionGuard guard(kb);
        // A failed check or a token in no sequence: NaN.
        kb.setInsertionPointToStart(&branch.getElseRegion().front());
        {
          Value nan = ke.f32(std::nan(""));
          Value nans = vector::BroadcastOp::create(kb, f32x4, nan);
          Value row4 = nans;
          if (element != kb.getF32Type())
            row4 = arith::TruncFOp::create(kb, elementx4, nans);
          vector::StoreOp::create(kb, row4, out, ValueRange{t, h, d})
              .setAlignment(rowBytes);
          nvvm_kernel::ifThen(kb, firstQuad, [&](ImplicitLocOpBuilder &ib) {
            memref::StoreOp::create(ib, nan, lse, ValueRange{t, h});
          });
        }
        kb.setInsertionPointToStart(&branch.getThenRegion().front());
        // The listed slots (all chunks of each), in order; reads of an
        // unlisted slot's stale scratch are selected away, never added.
        SmallVector<Value> listed;
        for (int64_t s = 0; s < topK; ++s)
          listed.push_back(arith::CmpIOp::create(
              kb, arith::CmpIPredicate::sge,
              memref::LoadOp::create(kb, selection,
                                     ValueRange{tl, h, ke.index(s)}),
              ke.i32(0)));
        auto forEachPartial =
            [&](ValueRange init,
                function_ref<SmallVector<Value>(ImplicitLocOpBuilder &, Value,
                                                Value, Value, ValueRange)>
                    body) {
              SmallVector<Value> state(init);
              for (int64_t s = 0; s < topK; ++s) {
                Value slotIndex = ke.index(s);
                auto loop = scf::ForOp::create(
                    kb, ke.index(0), ke.index(chunks()), ke.index(1), state,
                    [&](OpBuilder &fb, Location loc, Value c,
                        ValueRange acc) {
                      ImplicitLocOpBuilder lb(loc, fb);
                      scf::YieldOp::create(
                          lb, body(lb, listed[s], slotIndex, c, acc));
                    });
                state.assign(loop.getResults().begin(),
                             loop.getResults().end());
              }
              return state;
            };
        Value best =
            forEachPartial(ValueRange{ke.f32(kNegInf)},
                           [&](ImplicitLocOpBuilder &lb, Value isListed,
                               Value s, Value c, ValueRange acc) {
                             KernelBuilder le{lb, element};
                             Value m = memref::LoadOp::create(
                                 lb, partStats,
                                 ValueRange{tl, h, s, c, le.index(0)});
                             return SmallVector<Value>{le.select(
                                 isListed, le.fmax(acc[0], m), acc[0])};
                           })[0];
        Value pivot =
            ke.select(isNegInf(ke, best), ke.f32(0.0), best);
        Value zeros = arith::ConstantOp::create(
            kb, DenseElementsAttr::get(f32x4, kb.getF32FloatAttr(0.0)));
        SmallVector<Value> totals = forEachPartial(
            ValueRange{ke.f32(0.0), zeros},
            [&](ImplicitLocOpBuilder &lb, Value isListed, Value s, Value c,
                ValueRange acc) {
              KernelBuilder le{lb, element};
              Value m = memref::LoadOp::create(
                  lb, partStats, ValueRange{tl, h, s, c, le.index(0)});
              Value l = memref::LoadOp::create(
                  lb, partStats, ValueRange{tl, h, s, c, le.index(1)});
              Value o = loadVector(lb, partOut, {tl, h, s, c, d}, 4, 16);
              Value w = le.exp2(arith::SubFOp::create(lb, m, pivot));
              Value sum = le.fadd(acc[0], le.fmul(l, w));
              Value weighted = arith::AddFOp::create(
                  lb, acc[1],
                  arith::MulFOp::create(
                      lb, o, vector::BroadcastOp::create(lb, f32x4, w)));
              return SmallVector<Value>{le.select(isListed, sum, acc[0]),
                                        le.select(isListed, weighted, acc[1])};
            });
        Value sum = totals[0];
        Value row4 = arith::DivFOp::create(
            kb, totals[1], vector::BroadcastOp::create(kb, f32x4, sum));
        if (element != kb.getF32Type())
          row4 = arith::TruncFOp::create(kb, elementx4, row4);
        vector::StoreOp::create(kb, row4, out, ValueRange{t, h, d})
            .setAlignment(rowBytes);
        nvvm_kernel::ifThen(kb, firstQuad, [&](ImplicitLocOpBuilder &ib) {
          KernelBuilder le{ib, element};
          // Back from log2 units: lse = ln(2) * (max + log2(sum)).
          Value logSum = math::Log2Op::create(ib, sum);
          memref::StoreOp::create(
              ib, le.fmul(le.f32(kLn2), le.fadd(pivot, logSum)), lse,
              ValueRange{t, h});
        });
      });
}

void DecodeKernel::emit(ImplicitLocOpBuilder &b) {
  KernelBuilder e{b, element};
  Value tokens = memref::DimOp::create(b, q, 0);
  Value numSequences = memref::DimOp::create(b, lens, 0);
  // One element at least: a zero-size allocation is not every allocator's.
  Value flags = memref::AllocOp::create(
      b, MemRefType::get({ShapedType::kDynamic}, b.getI32Type()),
      ValueRange{arith::MaxUIOp::create(b, numSequences, e.index(1))});
  emitCheck(b, flags, tokens);
  int64_t slabSize = slab();
  Value rows = arith::MaxUIOp::create(
      b, e.minU(tokens, e.index(slabSize)), e.index(1));
  int64_t dyn = ShapedType::kDynamic;
  Value selection = memref::AllocOp::create(
      b, MemRefType::get({dyn, numHeads, topK}, b.getI32Type()),
      ValueRange{rows});
  Value rowSequence = memref::AllocOp::create(
      b, MemRefType::get({dyn}, b.getI32Type()), ValueRange{rows});
  Value partOut = memref::AllocOp::create(
      b,
      MemRefType::get({dyn, numHeads, topK, chunks(), headDim},
                      b.getF32Type()),
      ValueRange{rows});
  Value partStats = memref::AllocOp::create(
      b, MemRefType::get({dyn, numHeads, topK, chunks(), 2}, b.getF32Type()),
      ValueRange{rows});
  scf::ForOp::create(
      b, e.index(0), tokens, e.index(slabSize), ValueRange{},
      [&](OpBuilder &fb, Location loc, Value t0, ValueRange) {
        ImplicitLocOpBuilder sb(loc, fb);
        KernelBuilder se{sb, element};
        Value n = se.minU(se.index(slabSize), se.sub(tokens, t0));
        emitSelection(sb, t0, n, flags, selection, rowSequence);
        emitAttention(sb, t0, n, flags, selection, rowSequence, partOut,
                      partStats);
        emitMerge(sb, t0, n, selection, partOut, partStats);
        scf::YieldOp::create(sb);
      });
  for (Value buffer : {flags, selection, rowSequence, partOut, partStats})
    memref::DeallocOp::create(b, buffer);
}

struct MobaConvertPagedDecodeToNVVMPass
    : public moba::impl::MobaConvertPagedDecodeToNVVMBase<
          MobaConvertPagedDecodeToNVVMPass> {
  using MobaConvertPagedDecodeToNVVMBase::MobaConvertPagedDecodeToNVVMBase;

  void runOnOperation() override {
    for (auto [name, value, max] :
         {std::tuple<const char *, int64_t, int64_t>{"chunk-keys", chunkKeys,
                                                     int64_t(1) << 20},
          {"rows-per-tile", rowsPerTile, 32},
          {"key-steps", keySteps, 16},
          {"slab-tokens", slabTokens, int64_t(1) << 20}})
      if (value < 1 || value > max) {
        getOperation()->emitError()
            << "moba-convert-paged-decode-to-nvvm: " << name
            << " must be in [1, " << max << "], got " << value;
        return signalPassFailure();
      }
    SmallVector<PagedDecodeAttentionOp> ops;
    getOperation()->walk([&](PagedDecodeAttentionOp op) {
      if (isa<MemRefType>(op.getQ().getType()))
        ops.push_back(op);
    });
    IRRewriter rewriter(&getContext());
    for (PagedDecodeAttentionOp op : ops) {
      if (!op.isSplitKCompatible()) {
        op.emitOpError()
            << "has no split-K lowering: it needs static heads, head_dim "
               "and page_size, head_dim a power-of-two number (at most 32) "
               "of 16-byte pieces and top_k at most "
            << PagedDecodeAttentionOp::kMaxSplitKTopK;
        return signalPassFailure();
      }
      std::optional<int64_t> perToken =
          op.splitKPartialBytesPerToken(chunkKeys);
      if (!perToken || *perToken > kScratchBudgetBytes) {
        op.emitOpError() << "needs more than " << kScratchBudgetBytes
                         << " bytes of split-K partials a query token with "
                            "chunk-keys = "
                         << int64_t(chunkKeys)
                         << " (a larger chunk-keys needs fewer)";
        return signalPassFailure();
      }
      // Rows are read 16 bytes at a time: the buffers must be row-major.
      for (Value operand : op->getOperands())
        if (!cast<MemRefType>(operand.getType()).getLayout().isIdentity()) {
          op.emitOpError("the split-K decode needs row-major buffers "
                         "(identity layouts)");
          return signalPassFailure();
        }
      auto qType = cast<MemRefType>(op.getQ().getType());
      auto cacheType = cast<MemRefType>(op.getKCache().getType());
      rewriter.setInsertionPoint(op);
      ImplicitLocOpBuilder b(op.getLoc(), rewriter);
      DecodeKernel kernel{op.getQ(),
                          op.getCuSeqlensQ(),
                          op.getKCache(),
                          op.getVCache(),
                          op.getBlockTable(),
                          op.getCacheLens(),
                          op.getBlockKeySums(),
                          op.getOutInit(),
                          op.getLseInit(),
                          qType.getDimSize(1),
                          cacheType.getDimSize(2),
                          qType.getDimSize(2),
                          cacheType.getDimSize(1),
                          static_cast<int64_t>(op.getBlockSize()),
                          static_cast<int64_t>(op.getTopK()),
                          op.isSelectionPerKvHead(),
                          op.getScaleOrDefault(),
                          chunkKeys,
                          rowsPerTile,
                          keySteps,
                          slabTokens,
                          qType.getElementType()};
      kernel.emit(b);
      rewriter.eraseOp(op);
    }
  }
};

} // namespace
