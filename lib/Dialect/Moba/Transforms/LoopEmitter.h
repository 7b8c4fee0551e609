//===- LoopEmitter.h - Building blocks of the moba loop lowerings -*- C++ -*-=//
//
// Part of moba-mlir. The pieces that moba-lower-to-loops and
// moba-tile-attention share: loops over the sequences of a packed batch,
// f32 rows of head_dim elements as vectors, dot products, the attended key
// ranges of a query, and the running top-k. Everything is built on tensors
// (tensor.extract, vector.transfer_read/write, scf.for with iter_args), so
// one-shot bufferization turns the result into in-place buffer code.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_LIB_DIALECT_MOBA_TRANSFORMS_LOOPEMITTER_H
#define MOBA_LIB_DIALECT_MOBA_TRANSFORMS_LOOPEMITTER_H

#include "moba/Dialect/Moba/Utils/NumericSemantics.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/ImplicitLocOpBuilder.h"
#include "mlir/IR/PatternMatch.h"

#include <limits>

namespace mlir::moba {

/// -inf as a double, for f32 constants (empty maxima, unattended scores).
constexpr double kNegInf = -std::numeric_limits<double>::infinity();

/// One sequence of a packed batch, as seen inside the loop over sequences.
struct Sequence {
  Value start;       ///< First token (index).
  Value end;         ///< One past the last token (index).
  Value numBlocks;   ///< ceil((end - start) / block_size) (index).
  Value blockOffset; ///< Index of its first block among all blocks (index).
};

/// The body of a loop: gets the induction variable and the iteration
/// arguments, returns the values to yield.
using LoopBody =
    function_ref<SmallVector<Value>(ImplicitLocOpBuilder &, Value, ValueRange)>;
using SequenceBody = function_ref<SmallVector<Value>(
    ImplicitLocOpBuilder &, const Sequence &, ValueRange)>;
/// Gets a key range [first, last) of a query and the loop-carried state.
using KeyRangeBody = function_ref<SmallVector<Value>(
    ImplicitLocOpBuilder &, Value first, Value last, ValueRange)>;

/// One write of a parallel loop iteration: `slice` goes to
/// `dest[offsets][sizes]` (unit strides) in the loop's terminator.
struct SliceWrite {
  Value slice;
  Value dest;
  SmallVector<OpFoldResult> offsets, sizes;
};
using ParallelBody = function_ref<SmallVector<SliceWrite>(
    ImplicitLocOpBuilder &, ValueRange ivs, ValueRange outs)>;

/// Running top-k state: K scores (best first) and their block indices.
struct TopKState {
  Value scores;  ///< vector<K x f32>, -inf where empty.
  Value indices; ///< vector<K x i32>, -1 where empty.
};

class LoopEmitter {
public:
  LoopEmitter(ImplicitLocOpBuilder &b) : b(b) {}

  Value index(int64_t v);
  Value f32(double v);
  Value i32(int64_t v);

  /// scf.for lb..ub step `step` carrying `inits`; returns the loop results.
  SmallVector<Value> forLoop(Value lb, Value ub, Value step, ValueRange inits,
                             LoopBody body);
  SmallVector<Value> forLoop(Value lb, Value ub, ValueRange inits,
                             LoopBody body) {
    return forLoop(lb, ub, index(1), inits, body);
  }

  /// Loops over the sequences of `cuSeqlens` with blocks of `blockSize`.
  SmallVector<Value> forEachSequence(Value cuSeqlens, int64_t blockSize,
                                     ValueRange inits, SequenceBody body);

  /// Loops over every token of every sequence, then over `numHeads` heads,
  /// carrying `inits`: the serial nest of the per-row lowerings.
  using TokenHeadBody = function_ref<SmallVector<Value>(
      ImplicitLocOpBuilder &, const Sequence &, Value token, Value head,
      ValueRange)>;
  SmallVector<Value> forEachTokenAndHead(Value cuSeqlens, int64_t blockSize,
                                         int64_t numHeads, ValueRange inits,
                                         TokenHeadBody body);

  /// scf.forall over [0, ubs) sharing `outs`: every iteration is
  /// independent and writes the slices `body` returns.
  SmallVector<Value> forall(ArrayRef<OpFoldResult> ubs, ValueRange outs,
                            ParallelBody body);
  /// The sequence that holds packed token `token`, found by a branch-free
  /// scan over `cuSeqlens` (for parallel loops, which have no sequence loop
  /// around them).
  Sequence locateToken(Value cuSeqlens, int64_t blockSize, Value token);
  /// The sequence and local block index of packed block row `row`; `valid`
  /// is false for rows past the batch's last block.
  Sequence locateBlockRow(Value cuSeqlens, int64_t blockSize, Value row,
                          Value &block, Value &valid);

  /// The f32 vector of `tensor[indices..., 0 : n]` (n = the innermost dim,
  /// static), extended from f16/bf16 when needed.
  Value readRow(Value tensor, ValueRange indices);
  /// Writes `row` (f32) into `tensor[indices..., :]`, truncated to the
  /// tensor's element type; returns the new tensor.
  Value writeRow(Value row, Value tensor, ValueRange indices);
  /// Scalar element `tensor[indices]` converted to index.
  Value extractIndex(Value tensor, ValueRange indices);

  /// sum_i a[i] * b[i] in f32, in eight interleaved partial sums.
  Value dot(Value a, Value c);
  /// A vector of `n` copies of `scalar`.
  Value splat(Value scalar, int64_t n);

  /// Runs `body` over the key ranges a query attends, in order, carrying
  /// `inits`: for each entry of the selection row `selectedRow` (vector of
  /// local block indices; null for dense attention) that is >= 0, below
  /// `seq.numBlocks` and not listed earlier in the row, the keys of that
  /// block; in causal mode cut at `queryToken` inclusive. Ranges that come
  /// out empty are skipped.
  SmallVector<Value> forEachAttendedRange(const Sequence &seq,
                                          int64_t blockSize, bool causal,
                                          Value queryToken, Value selectedRow,
                                          ValueRange inits, KeyRangeBody body);

  /// Whether slot `slot` (index) of the selection row `selectedRow` names a
  /// block the query attends: 0 <= block < seq.numBlocks, and no lower slot
  /// of the row names the same block (a block listed twice counts once).
  Value slotAttends(const Sequence &seq, Value selectedRow, Value slot);

  /// The keys [first, last) of local block `j` (index) of `seq`: blocks of
  /// `blockSize` from the sequence's start, the last one cut at its end.
  std::pair<Value, Value> blockKeys(const Sequence &seq, Value j,
                                    int64_t blockSize);

  /// Runs `then` when `condition` holds, else passes `carried` through;
  /// returns what was yielded (an scf.if with results).
  SmallVector<Value>
  ifThen(Value condition, ValueRange carried,
         function_ref<SmallVector<Value>(ImplicitLocOpBuilder &)> then);

  /// Runs `body` on each slot of the selection row `selectedRow` that
  /// attends (slotAttends) and, when `block` (i32) is given, names that
  /// block; slots in order, carrying `inits`.
  using SlotBody = function_ref<SmallVector<Value>(ImplicitLocOpBuilder &,
                                                  Value slot, ValueRange)>;
  SmallVector<Value> forEachAttendingSlot(const Sequence &seq,
                                          Value selectedRow, Value block,
                                          ValueRange inits, SlotBody body);

  /// The selection row `selected[t, h, :]` as a vector<K x i32>.
  Value readSelectionRow(Value selected, Value t, Value h);

  /// One write of a parallel iteration: the scalar `value` into `dest` at
  /// `indices` (one per dim of dest).
  SliceWrite scalarWrite(Value value, Value dest, ValueRange indices);
  /// One write of a parallel iteration: the 1-D `vector` (f32, truncated
  /// to dest's element type) into `dest` from `indices` on, along its
  /// innermost dim.
  SliceWrite vectorWrite(Value vector, Value dest, ValueRange indices);

  /// Two writes of a parallel iteration: the f32 `row` into `rows` at
  /// `indices` (the row being the innermost dim), and the scalar `scalar`
  /// into `scalars` at `indices`.
  SmallVector<SliceWrite> rowAndScalarWrites(Value rows, Value scalars,
                                             ValueRange indices, Value row,
                                             Value scalar);

  /// An empty running top-k of `k` entries.
  TopKState emptyTopK(int64_t k);
  /// Inserts block `blockIndex` (i32) with `score` into `state`. Blocks
  /// arrive in increasing index order, so a tie goes to the newcomer: it is
  /// placed before every entry whose score is not strictly greater.
  TopKState insertTopK(TopKState state, Value score, Value blockIndex);

private:
  /// Says whether a sequence (its start, end, first block row and block
  /// count) is the one sought.
  using SequenceMatch = function_ref<Value(
      ImplicitLocOpBuilder &, Value start, Value end, Value blockOffset,
      Value numBlocks)>;
  /// The sequence `matches` picks, by a branch-free scan of `cuSeqlens`;
  /// `*found`, when asked for, says whether one did.
  Sequence findSequence(Value cuSeqlens, int64_t blockSize,
                        SequenceMatch matches, Value *found);

  ImplicitLocOpBuilder &b;
};

class SparseAttentionOp;

/// What one query computes for one query head: the f32 output row and the
/// log-sum-exp. Gets the query's sequence, token, key/value head, its f32 row
/// and its selection row (null when dense).
struct QueryResult {
  Value row;
  Value lse;
};
using QueryBody = function_ref<QueryResult(
    ImplicitLocOpBuilder &, const Sequence &, Value token, Value kvHead,
    Value queryRow, Value selectedRow)>;

/// Emits the loops of `op` and returns its two results. `tileQ` = 0 gives
/// sequence -> query -> head; `tileQ` > 0 gives sequence -> query tile of
/// `tileQ` tokens -> head -> query, so that the queries of a tile reuse the
/// key rows they share while they are in cache.
std::pair<Value, Value> emitAttentionLoops(ImplicitLocOpBuilder &b,
                                           SparseAttentionOp op, int64_t tileQ,
                                           QueryBody body);

/// The same computation as one scf.forall over (token, query head), for
/// targets that run the iterations in parallel (GPU threads).
std::pair<Value, Value> emitParallelAttention(ImplicitLocOpBuilder &b,
                                              SparseAttentionOp op,
                                              QueryBody body);

/// Finishes an online-softmax state: out = acc / l and lse = m + log(l), or
/// out = 0 and lse = -inf when no key was attended (l = 0). NaN in l, m or
/// acc propagates.
QueryResult finishSoftmax(ImplicitLocOpBuilder &b, Value m, Value l,
                          Value acc);

/// checkStaticHeadsAndHeadDim on the q, k, v and selection of `op`.
LogicalResult checkLowerable(RewriterBase &rewriter, SparseAttentionOp op);

/// Static sizes the loop lowerings need; a failure names the op and the
/// dim. (The innermost dims, head_dim and K, become vectors: the verifiers
/// bound them by kMaxHeadDim and kMaxSelectedBlocks.)
LogicalResult checkStaticHeadsAndHeadDim(RewriterBase &rewriter,
                                         Operation *op, ValueRange tensors);

} // namespace mlir::moba

#endif // MOBA_LIB_DIALECT_MOBA_TRANSFORMS_LOOPEMITTER_H
