//===- GateTopKToNVVM.cpp - The fused gate + top-k on tensor cores --------===//
//
// Part of moba-mlir. Implements `moba-convert-gate-topk-to-nvvm`:
// moba.gate_topk on buffers becomes two GPU launches.
//
//  * The split: every f32 block mean becomes two halves of the queries'
//    element type, hi = round(mean) and lo = round(mean - hi). A tensor core
//    multiplies f16/bf16 operands only; q . hi + q . lo (exact products, f32
//    accumulation) carries the mean to about 2^-16 of its size, where hi
//    alone would lose 2^-9 and reorder blocks whose scores differ by more
//    than the tests' tie tolerance.
//  * The gate: a CTA of four warps takes 64 consecutive tokens of one query
//    head, 16 a warp. A warp's query rows are the A operand of mma.sync
//    m16n8k16, loaded once into registers. It streams the means of its
//    key/value head eight blocks (one n tile) a step, from the first block
//    any of its rows may choose to the last, computing S = Q hi^T + Q lo^T
//    in four independent accumulator chains. Each lane keeps, per row it
//    holds (quadRow and quadRow + 8), a sorted running top-n of the scores
//    it sees (columns 2c and 2c + 1 of each tile), masked to the row's
//    candidates. A warp-uniform vote skips the insertion when no lane's
//    candidate reaches its current n-th score, the common case once the
//    lists fill. At the end the four lanes of a quad merge their lists, n
//    rounds of an argmax by xor shuffles, and lane 0 of the quad writes the
//    row. No score is stored: the op's contract.
//
// The head_dim axis is read in a permuted order, the same for Q and the
// means, which a dot product does not notice: lane c of a quad loads
// elements 8c .. 8c+7 of each 32-wide slice of a row with one 16-byte load,
// and uses them as its k = 2c, 2c+1 and 2c+8, 2c+9 (the m16n8k16 operand
// layouts, GroupedAttentionToNVVM.cpp) of two consecutive k-steps; a final
// 16-wide slice is loaded 8 bytes a lane, elements 4c .. 4c+3. No shared
// memory is needed: each row of means is read by the CTA's four warps
// through L1.
//
// Ties: within a lane the blocks arrive in increasing order, and an entry
// joins its list ahead of equal scores; the merge prefers the higher block
// among equal scores. So every tie goes to the later block, as moba.topk
// says, without any ordering between lanes.
//
//===----------------------------------------------------------------------===//

#include "KernelBuilder/KernelBuilder.h"
#include "moba/Conversion/Passes.h"
#include "moba/Dialect/Moba/IR/MobaOps.h"
#include "moba/Dialect/Moba/Utils/NumericSemantics.h"

#include "mlir/IR/PatternMatch.h"

namespace mlir::moba {
#define GEN_PASS_DEF_MOBACONVERTGATETOPKTONVVM
#include "moba/Conversion/Passes.h.inc"
} // namespace mlir::moba

using namespace mlir;
using namespace mlir::moba;
using nvvm_kernel::KernelBuilder;
using nvvm_kernel::kNegInf;
using nvvm_kernel::launch;

namespace {

constexpr int64_t kWarps = 4;
constexpr int64_t kRowsPerWarp = 16; // mma M
constexpr int64_t kCtaRows = kWarps * kRowsPerWarp;
constexpr int64_t kBlocksPerStep = 8; // mma N
constexpr int64_t kSplitThreads = 256;

/// Where a token lies: its sequence's first token, the sequence's first row
/// of means, and its block count.
struct TokenSequence {
  Value start, blockOffset, numBlocks;
};

/// One row's sorted running top-n, best first; empty entries score -inf
/// and hold block -1.
struct RunningTopK {
  SmallVector<Value> scores, blocks;
};

struct GateKernel {
  Value queries, means, cu, selection;
  int64_t numHeads, group, headDim, k, blockSize;
  bool causal;

  Type element() {
    return cast<MemRefType>(queries.getType()).getElementType();
  }
  /// Blocks chosen by score: K - 1 when causal (the own block is forced).
  int64_t kept() { return causal ? k - 1 : k; }
  int64_t kvHeads() { return numHeads / group; }

  void emit(ImplicitLocOpBuilder &b);
  void emitSplit(ImplicitLocOpBuilder &b, Value hi, Value lo, Value rows);
  void emitGate(ImplicitLocOpBuilder &b, Value hi, Value lo, Value rows,
                Value tokens);
  /// The body of one warp: its 16 tokens from `first` on, query head `h`.
  void emitWarp(ImplicitLocOpBuilder &b, Value hi, Value lo, Value rows,
                Value tokens, Value h, Value first, Value lane);

  /// The sequences of `tokens` (a linear scan of cu_seqlens; tokens outside
  /// every sequence get zeros).
  SmallVector<TokenSequence> locate(ImplicitLocOpBuilder &b,
                                    ArrayRef<Value> tokens);
  /// The end of the candidate blocks (rows of means) of `token`: strictly
  /// past blocks when causal, else all of its sequence's.
  Value candidatesEnd(KernelBuilder &e, const TokenSequence &seq, Value token);
  /// `width` (4 or 8) elements of `memref` at `indices` with one load, as
  /// width / 2 mma operand registers.
  SmallVector<Value> loadOperandPairs(KernelBuilder &e, Value memref,
                                      ValueRange indices, int64_t width);
  /// The lane's operand registers for the whole head_dim, per k-step: the
  /// pairs of one row in the permuted order of the file comment.
  SmallVector<SmallVector<Value>> loadRowOperands(KernelBuilder &e,
                                                  Value memref, Value row,
                                                  Value head, Value c);
  /// `list` with (score, block) inserted where `valid`, ahead of equal
  /// scores.
  RunningTopK insert(KernelBuilder &e, const RunningTopK &list, Value valid,
                     Value score, Value block);
  /// The n best blocks of the row whose lists the four lanes of a quad hold,
  /// identical on the four lanes.
  SmallVector<Value> mergeQuad(KernelBuilder &e, RunningTopK list);
};

Value GateKernel::candidatesEnd(KernelBuilder &e, const TokenSequence &seq,
                                Value token) {
  Value count = causal ? e.div(e.sub(token, seq.start), e.index(blockSize))
                       : seq.numBlocks;
  return e.add(seq.blockOffset, count);
}

SmallVector<TokenSequence> GateKernel::locate(ImplicitLocOpBuilder &b,
                                              ArrayRef<Value> tokens) {
  KernelBuilder e{b, element()};
  Value sequences = e.sub(memref::DimOp::create(b, cu, 0), e.index(1));
  SmallVector<Value> inits(1 + 3 * tokens.size(), e.index(0));
  auto scan = scf::ForOp::create(
      b, e.index(0), sequences, e.index(1), inits,
      [&](OpBuilder &nested, Location loc, Value s, ValueRange carried) {
        ImplicitLocOpBuilder sb(loc, nested);
        KernelBuilder se{sb, e.element};
        Value start = se.loadIndex(cu, s);
        Value end = se.loadIndex(cu, se.add(s, se.index(1)));
        Value blocks = arith::CeilDivUIOp::create(sb, se.sub(end, start),
                                                  se.index(blockSize));
        Value offset = carried[0];
        SmallVector<Value> next = {se.add(offset, blocks)};
        for (auto [i, token] : llvm::enumerate(tokens)) {
          Value inside = arith::AndIOp::create(sb, se.ule(start, token),
                                               se.ult(token, end));
          next.push_back(se.select(inside, start, carried[1 + 3 * i]));
          next.push_back(se.select(inside, offset, carried[2 + 3 * i]));
          next.push_back(se.select(inside, blocks, carried[3 + 3 * i]));
        }
        scf::YieldOp::create(sb, next);
      });
  SmallVector<TokenSequence> found;
  for (size_t i = 0; i < tokens.size(); ++i)
    found.push_back({scan.getResult(1 + 3 * i), scan.getResult(2 + 3 * i),
                     scan.getResult(3 + 3 * i)});
  return found;
}

SmallVector<Value> GateKernel::loadOperandPairs(KernelBuilder &e, Value memref,
                                                ValueRange indices,
                                                int64_t width) {
  auto load = vector::LoadOp::create(
      e.b, VectorType::get({width}, e.element), memref, indices);
  // Rows start 16-byte aligned (head_dim a multiple of 16 elements, the
  // runner's alignment of q, fresh allocations for the means) and the
  // offsets within them are multiples of the width.
  load.setAlignment(width * e.element.getIntOrFloatBitWidth() / 8);
  SmallVector<Value> pairs;
  for (int64_t p = 0; p < width / 2; ++p)
    pairs.push_back(e.packPair(vector::ShuffleOp::create(
        e.b, load, load, ArrayRef<int64_t>{2 * p, 2 * p + 1})));
  return pairs;
}

SmallVector<SmallVector<Value>>
GateKernel::loadRowOperands(KernelBuilder &e, Value memref, Value row,
                            Value head, Value c) {
  SmallVector<SmallVector<Value>> steps;
  for (int64_t slice = 0; slice < headDim; slice += 32) {
    int64_t width = headDim - slice >= 32 ? 8 : 4;
    Value column = e.add(e.index(slice), e.mul(c, e.index(width)));
    SmallVector<Value> pairs =
        loadOperandPairs(e, memref, ValueRange{row, head, column}, width);
    // k-step (2c.., 2c+8..) pairs: {0, 1}, then {2, 3} in a full slice.
    for (int64_t step = 0; step < width / 4; ++step)
      steps.push_back({pairs[2 * step], pairs[2 * step + 1]});
  }
  return steps;
}

RunningTopK GateKernel::insert(KernelBuilder &e, const RunningTopK &list,
                               Value valid, Value score, Value block) {
  // The list is sorted best first, so "the new entry is at least entry m"
  // holds from some position on: entries before it stay, the new one lands
  // there, and the rest shift down by one.
  int64_t n = list.scores.size();
  SmallVector<Value> atLeast;
  for (int64_t m = 0; m < n; ++m)
    atLeast.push_back(arith::AndIOp::create(
        e.b, valid,
        arith::CmpFOp::create(e.b, arith::CmpFPredicate::OGE, score,
                              list.scores[m])));
  RunningTopK next;
  for (int64_t m = 0; m < n; ++m) {
    Value s = score, j = block;
    if (m > 0) {
      s = e.select(atLeast[m - 1], list.scores[m - 1], score);
      j = e.select(atLeast[m - 1], list.blocks[m - 1], block);
    }
    next.scores.push_back(e.select(atLeast[m], s, list.scores[m]));
    next.blocks.push_back(e.select(atLeast[m], j, list.blocks[m]));
  }
  return next;
}

SmallVector<Value> GateKernel::mergeQuad(KernelBuilder &e, RunningTopK list) {
  ImplicitLocOpBuilder &b = e.b;
  int64_t n = list.scores.size();
  Value emptyScore = e.f32(kNegInf), emptyBlock = e.i32(-1);
  SmallVector<Value> best;
  for (int64_t round = 0; round < n; ++round) {
    Value score = list.scores[0], block = list.blocks[0];
    for (int64_t offset : {1, 2}) {
      auto shuffle = [&](Value x) {
        return gpu::ShuffleOp::create(b, x, offset, /*width=*/32,
                                      gpu::ShuffleMode::XOR)
            .getShuffleResult();
      };
      Value otherScore = shuffle(score), otherBlock = shuffle(block);
      Value better = arith::OrIOp::create(
          b,
          arith::CmpFOp::create(b, arith::CmpFPredicate::OGT, otherScore,
                                score),
          arith::AndIOp::create(
              b,
              arith::CmpFOp::create(b, arith::CmpFPredicate::OEQ, otherScore,
                                    score),
              arith::CmpIOp::create(b, arith::CmpIPredicate::sgt, otherBlock,
                                    block)));
      score = e.select(better, otherScore, score);
      block = e.select(better, otherBlock, block);
    }
    best.push_back(block);
    if (round + 1 == n)
      break;
    // The lane whose head won pops it (blocks are distinct across a quad;
    // lanes with empty lists "pop" empties).
    Value pop = arith::CmpIOp::create(b, arith::CmpIPredicate::eq,
                                      list.blocks[0], block);
    for (int64_t m = 0; m < n; ++m) {
      Value nextScore = m + 1 < n ? list.scores[m + 1] : emptyScore;
      Value nextBlock = m + 1 < n ? list.blocks[m + 1] : emptyBlock;
      list.scores[m] = e.select(pop, nextScore, list.scores[m]);
      list.blocks[m] = e.select(pop, nextBlock, list.blocks[m]);
    }
  }
  return best;
}

void GateKernel::emitSplit(ImplicitLocOpBuilder &b, Value hi, Value lo,
                           Value rows) {
  KernelBuilder e{b, element()};
  int64_t quadsPerRow = kvHeads() * headDim / 4;
  Value quads = e.mul(rows, e.index(quadsPerRow));
  nvvm_kernel::launchPerItem(b, quads, kSplitThreads,
                             [&](ImplicitLocOpBuilder &kb, Value linear) {
    KernelBuilder ke{kb, e.element};
    Value row = ke.div(linear, ke.index(quadsPerRow));
    Value rest = ke.rem(linear, ke.index(quadsPerRow));
    Value head = ke.div(rest, ke.index(headDim / 4));
    Value column = ke.mul(ke.rem(rest, ke.index(headDim / 4)), ke.index(4));
    SmallVector<Value> at = {row, head, column};
    auto f32x4 = VectorType::get({4}, kb.getF32Type());
    auto halfx4 = VectorType::get({4}, e.element);
    auto mean = vector::LoadOp::create(kb, f32x4, means, at);
    mean.setAlignment(16);
    Value high = arith::TruncFOp::create(kb, halfx4, mean);
    Value low = arith::TruncFOp::create(
        kb, halfx4,
        arith::SubFOp::create(kb, mean,
                              arith::ExtFOp::create(kb, f32x4, high)));
    vector::StoreOp::create(kb, high, hi, at).setAlignment(8);
    vector::StoreOp::create(kb, low, lo, at).setAlignment(8);
  });
}

void GateKernel::emitGate(ImplicitLocOpBuilder &b, Value hi, Value lo,
                          Value rows, Value tokens) {
  KernelBuilder e{b, element()};
  Value tiles = arith::CeilDivUIOp::create(b, tokens, e.index(kCtaRows));
  Value ctas = arith::MaxUIOp::create(b, e.mul(tiles, e.index(numHeads)),
                                      e.index(1));
  launch(b, ctas, 32 * kWarps, /*sharedBytes=*/nullptr, /*workgroup=*/{},
         [&](ImplicitLocOpBuilder &kb, gpu::LaunchOp op) {
    KernelBuilder ke{kb, e.element};
    // Heads fastest: neighbouring CTAs read the same tokens' query rows and
    // the means of few key/value heads.
    Value cta = op.getBlockIds().x, tid = op.getThreadIds().x;
    Value h = ke.rem(cta, ke.index(numHeads));
    Value tile = ke.div(cta, ke.index(numHeads));
    Value warp = ke.div(tid, ke.index(32));
    Value first = ke.add(ke.mul(tile, ke.index(kCtaRows)),
                         ke.mul(warp, ke.index(kRowsPerWarp)));
    // Warp-uniform: a warp past the last token has nothing to do.
    auto active = scf::IfOp::create(kb, ke.ult(first, tokens), false);
    OpBuilder::InsertionGuard guard(kb);
    kb.setInsertionPointToStart(&active.getThenRegion().front());
    emitWarp(kb, hi, lo, rows, tokens, h, first,
             ke.rem(tid, ke.index(32)));
  });
}

void GateKernel::emitWarp(ImplicitLocOpBuilder &b, Value hi, Value lo,
                          Value rows, Value tokens, Value h, Value first,
                          Value lane) {
  KernelBuilder e{b, element()};
  Value quadRow = e.div(lane, e.index(4)), c = e.rem(lane, e.index(4));
  Value lastToken = e.sub(tokens, e.index(1));
  Value last = e.minU(e.add(first, e.index(kRowsPerWarp - 1)), lastToken);
  SmallVector<Value, 2> row, valid;
  for (int64_t i = 0; i < 2; ++i) {
    row.push_back(e.add(first, e.add(quadRow, e.index(8 * i))));
    valid.push_back(e.ult(row[i], tokens));
  }
  SmallVector<TokenSequence> seq = locate(b, {first, last, row[0], row[1]});
  // The warp streams the means rows [begin, end): from the first candidate
  // of its first token to the last of its last (sequences, and so their
  // rows of means, are in token order).
  Value begin = seq[0].blockOffset;
  Value end = candidatesEnd(e, seq[1], last);
  SmallVector<Value, 2> rowBegin, rowEnd, own;
  for (int64_t i = 0; i < 2; ++i) {
    const TokenSequence &s = seq[2 + i];
    rowBegin.push_back(s.blockOffset);
    rowEnd.push_back(
        e.select(valid[i], candidatesEnd(e, s, row[i]), s.blockOffset));
    own.push_back(e.div(e.sub(row[i], s.start), e.index(blockSize)));
  }

  // The warp's queries, the A operand: per k-step {A0, A1, A2, A3} = (row,
  // k) pairs (quadRow, 2c), (quadRow + 8, 2c), (quadRow, 2c+8),
  // (quadRow + 8, 2c+8). Rows past the last token repeat it (not written).
  Value kvHead = e.div(h, e.index(group));
  SmallVector<SmallVector<Value>> upper = loadRowOperands(
      e, queries, e.minU(row[0], lastToken), h, c);
  SmallVector<SmallVector<Value>> lower = loadRowOperands(
      e, queries, e.minU(row[1], lastToken), h, c);
  SmallVector<SmallVector<Value>> a;
  for (size_t step = 0; step < upper.size(); ++step)
    a.push_back({upper[step][0], lower[step][0], upper[step][1],
                 lower[step][1]});

  int64_t n = kept();
  auto pack = [&](ArrayRef<RunningTopK> lists) {
    SmallVector<Value> flat;
    for (const RunningTopK &list : lists) {
      llvm::append_range(flat, list.scores);
      llvm::append_range(flat, list.blocks);
    }
    return flat;
  };
  auto unpack = [&](ValueRange flat) {
    SmallVector<RunningTopK, 2> lists(2);
    for (int64_t i = 0; i < 2; ++i) {
      ValueRange part = flat.drop_front(2 * n * i);
      lists[i].scores.assign(part.begin(), part.begin() + n);
      lists[i].blocks.assign(part.begin() + n, part.begin() + 2 * n);
    }
    return lists;
  };
  RunningTopK empty;
  empty.scores.assign(n, e.f32(kNegInf));
  empty.blocks.assign(n, e.i32(-1));
  SmallVector<RunningTopK, 2> lists = {empty, empty};

  if (n > 0) {
    Value steps = arith::CeilDivUIOp::create(b, e.sub(end, begin),
                                             e.index(kBlocksPerStep));
    Value lastRow = e.sub(rows, e.index(1));
    auto loop = scf::ForOp::create(
        b, e.index(0), steps, e.index(1), pack(lists),
        [&](OpBuilder &nested, Location loc, Value step, ValueRange carried) {
          ImplicitLocOpBuilder lb(loc, nested);
          KernelBuilder le{lb, e.element};
          SmallVector<RunningTopK, 2> current = unpack(carried);
          Value base = le.add(begin, le.mul(step, le.index(kBlocksPerStep)));
          // This lane's B column: block base + quadRow (past the end: the
          // last row of means, masked below).
          Value meanRow = le.minU(le.add(base, quadRow), lastRow);
          SmallVector<SmallVector<Value>> high =
              loadRowOperands(le, hi, meanRow, kvHead, c);
          SmallVector<SmallVector<Value>> low =
              loadRowOperands(le, lo, meanRow, kvHead, c);
          // Four chains: hi and lo, even and odd k-steps.
          SmallVector<SmallVector<Value>> chains(
              4, SmallVector<Value>(4, le.f32(0.0)));
          for (size_t s = 0; s < a.size(); ++s) {
            chains[s % 2] = le.mma(a[s], high[s], chains[s % 2]);
            chains[2 + s % 2] = le.mma(a[s], low[s], chains[2 + s % 2]);
          }
          // Score of (row i, column j): accumulator element 2i + j, block
          // base + 2c + j.
          SmallVector<Value> scores, blocks, candidate;
          Value anyBeats =
              arith::ConstantOp::create(lb, lb.getBoolAttr(false));
          for (int64_t i = 0; i < 2; ++i)
            for (int64_t j = 0; j < 2; ++j) {
              int64_t at = 2 * i + j;
              // NaN ranks as +inf (docs/semantics.md).
              Value score = rankingScore(
                  lb, lb.getLoc(),
                  le.fadd(le.fadd(chains[0][at], chains[1][at]),
                          le.fadd(chains[2][at], chains[3][at])));
              Value block =
                  le.add(base, le.add(le.mul(c, le.index(2)), le.index(j)));
              Value isCandidate =
                  arith::AndIOp::create(lb, le.ule(rowBegin[i], block),
                                        le.ult(block, rowEnd[i]));
              Value beats = arith::AndIOp::create(
                  lb, isCandidate,
                  arith::CmpFOp::create(lb, arith::CmpFPredicate::OGE, score,
                                        current[i].scores[n - 1]));
              anyBeats = arith::OrIOp::create(lb, anyBeats, beats);
              scores.push_back(score);
              blocks.push_back(arith::IndexCastOp::create(
                  lb, lb.getI32Type(), le.sub(block, rowBegin[i])));
              candidate.push_back(isCandidate);
            }
          // Once the lists hold good scores few candidates beat them: the
          // insertion (about 5n instructions a candidate) runs only when
          // one of the warp's does.
          Value warpBeats = NVVM::VoteSyncOp::create(
              lb, lb.getI1Type(), le.i32(-1), anyBeats,
              NVVM::VoteSyncKind::any);
          SmallVector<Type> types(4 * n, lb.getF32Type());
          for (int64_t i = 0; i < 2; ++i)
            for (int64_t m = 0; m < n; ++m)
              types[2 * n * i + n + m] = lb.getI32Type();
          auto update =
              scf::IfOp::create(lb, types, warpBeats, /*withElseRegion=*/true);
          {
            OpBuilder::InsertionGuard guard(lb);
            lb.setInsertionPointToStart(&update.getThenRegion().front());
            SmallVector<RunningTopK, 2> next = current;
            for (int64_t i = 0; i < 2; ++i)
              for (int64_t j = 0; j < 2; ++j)
                next[i] = insert(le, next[i], candidate[2 * i + j],
                                 scores[2 * i + j], blocks[2 * i + j]);
            scf::YieldOp::create(lb, pack(next));
            lb.setInsertionPointToStart(&update.getElseRegion().front());
            scf::YieldOp::create(lb, carried);
          }
          scf::YieldOp::create(lb, update.getResults());
        });
    lists = unpack(loop.getResults());
  }

  // Merge the quads' lists (all lanes take part in the shuffles), then
  // lane 0 of each quad writes its valid rows.
  SmallVector<SmallVector<Value>> chosen;
  for (int64_t i = 0; i < 2; ++i)
    chosen.push_back(n > 0 ? mergeQuad(e, lists[i]) : SmallVector<Value>{});
  Value writer = arith::CmpIOp::create(b, arith::CmpIPredicate::eq, c,
                                       e.index(0));
  for (int64_t i = 0; i < 2; ++i) {
    auto write = scf::IfOp::create(
        b, arith::AndIOp::create(b, writer, valid[i]), false);
    OpBuilder::InsertionGuard guard(b);
    b.setInsertionPointToStart(&write.getThenRegion().front());
    SmallVector<Value> slots;
    if (causal)
      slots.push_back(arith::IndexCastOp::create(b, b.getI32Type(), own[i]));
    llvm::append_range(slots, chosen[i]);
    for (auto [slot, block] : llvm::enumerate(slots))
      memref::StoreOp::create(b, block, selection,
                              ValueRange{row[i], h, e.index(slot)});
  }
}

void GateKernel::emit(ImplicitLocOpBuilder &b) {
  KernelBuilder e{b, element()};
  Value tokens = memref::DimOp::create(b, queries, 0);
  Value rows = memref::DimOp::create(b, means, 0);
  // One row at least: a zero-size allocation is not every allocator's.
  Value allocated = arith::MaxUIOp::create(b, rows, e.index(1));
  auto halfType = MemRefType::get(
      {ShapedType::kDynamic, kvHeads(), headDim}, element());
  Value hi = memref::AllocOp::create(b, halfType, ValueRange{allocated});
  Value lo = memref::AllocOp::create(b, halfType, ValueRange{allocated});
  emitSplit(b, hi, lo, rows);
  emitGate(b, hi, lo, rows, tokens);
  memref::DeallocOp::create(b, hi);
  memref::DeallocOp::create(b, lo);
}

struct MobaConvertGateTopKToNVVMPass
    : public moba::impl::MobaConvertGateTopKToNVVMBase<
          MobaConvertGateTopKToNVVMPass> {
  void runOnOperation() override {
    SmallVector<GateTopKOp> ops;
    getOperation()->walk([&](GateTopKOp op) {
      if (isa<MemRefType>(op.getQueries().getType()))
        ops.push_back(op);
    });
    IRRewriter rewriter(&getContext());
    for (GateTopKOp op : ops) {
      if (!op.isMmaSyncCompatible()) {
        op.emitOpError()
            << "has no tensor-core lowering: it needs f16 or bf16 queries, "
               "head_dim a static multiple of 16 up to 128 and at most "
            << GateTopKOp::kMaxMmaKeptBlocks
            << " blocks kept by score, got K = " << op.getK();
        return signalPassFailure();
      }
      auto qType = cast<MemRefType>(op.getQueries().getType());
      auto meansType = cast<MemRefType>(op.getMeans().getType());
      if (qType.isDynamicDim(1) || meansType.isDynamicDim(1) ||
          cast<MemRefType>(op.getInit().getType()).isDynamicDim(2)) {
        op.emitOpError("the tensor-core gate needs static heads and K");
        return signalPassFailure();
      }
      // Rows are read 8 or 16 bytes at a time: they must be contiguous.
      for (Value rowsOf : {op.getQueries(), op.getMeans()})
        if (!cast<MemRefType>(rowsOf.getType()).isLastDimUnitStride()) {
          op.emitOpError("the tensor-core gate needs queries and means with "
                         "a unit-stride innermost dim");
          return signalPassFailure();
        }
      rewriter.setInsertionPoint(op);
      ImplicitLocOpBuilder b(op.getLoc(), rewriter);
      GateKernel kernel{op.getQueries(),
                        op.getMeans(),
                        op.getCuSeqlens(),
                        op.getInit(),
                        qType.getDimSize(1),
                        qType.getDimSize(1) / meansType.getDimSize(1),
                        qType.getDimSize(2),
                        op.getK(),
                        static_cast<int64_t>(op.getBlockSize()),
                        op.getCausal()};
      kernel.emit(b);
      rewriter.eraseOp(op);
    }
  }
};

} // namespace
