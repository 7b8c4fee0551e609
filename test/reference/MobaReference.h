//===- MobaReference.h - float64 reference of MoBA --------------*- C++ -*-===//
//
// Part of moba-mlir's test tree. docs/semantics.md as plain loops in double
// precision: the oracle every lowering is checked against. Deliberately
// simple: no tiling, no online softmax, no vectors.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_TEST_REFERENCE_MOBAREFERENCE_H
#define MOBA_TEST_REFERENCE_MOBAREFERENCE_H

#include <cstdint>
#include <string>
#include <vector>

namespace moba::reference {

/// A deliberate break of one rule, so that a test can show the comparison
/// catches it.
enum class Mutation {
  None,
  /// Causal selection may also pick future blocks, attended in full.
  FutureBlock,
  /// The own block competes like any other past-or-own block.
  OwnBlockNotForced,
  /// Query head h reads key/value head g(h) + 1 (mod Hkv).
  WrongKvHead,
};

/// Parses "none", "future-block", "own-block-not-forced", "wrong-kv-head";
/// returns false on anything else.
bool parseMutation(const std::string &name, Mutation &mutation);

struct Problem {
  int64_t headDim = 0, numHeads = 0, numKvHeads = 0;
  int64_t blockSize = 0, topK = 0;
  bool causal = true;
  double scale = 0;
  std::vector<int32_t> cuSeqlens;
  /// q [T, Hq, D], k and v [T, Hkv, D], as the kernel sees them (already
  /// rounded to the input element type).
  std::vector<double> q, k, v;
};

struct Result {
  std::vector<double> out; ///< [T, Hq, D]
  std::vector<double> lse; ///< [T, Hq]
  /// [T, Hq]: 1 where the k-th and (k+1)-th best candidate scores differ,
  /// but so little that rounding may swap them; the selection there is not
  /// unique. Exactly equal scores are not near-ties: the tie rule applies.
  std::vector<uint8_t> nearTie;
};

/// `tieTolerance` is relative to the largest sum of |q_d * mean_d| of the
/// row's candidates.
Result attention(const Problem &problem, Mutation mutation = Mutation::None,
                 double tieTolerance = 4e-5);

struct GradResult {
  std::vector<double> dq;          ///< [T, Hq, D]
  std::vector<double> dk, dv;      ///< [T, Hkv, D]
  /// [T, Hq]: 1 where the row's selection is a near-tie (as Result::nearTie):
  /// its dq may follow either selection.
  std::vector<uint8_t> dqUnsure;
  /// [T, Hkv]: 1 for keys of a block that a near-tied row of a query head of
  /// this KV head might or might not have chosen (the k-th and (k+1)-th
  /// candidates, and any other within the tolerance of the k-th): their dk,
  /// dv may follow either selection. Also 1 for every other key such a row
  /// attends: a swapped block renormalizes the row's weights P, so the dk,
  /// dv the row gives its own block and its sure choices move as well.
  std::vector<uint8_t> dkvUnsure;
};

/// Gradients of `out` and `lse` of attention(problem) against the upstream
/// gradients `dout` [T, Hq, D] and `dlse` [T, Hq] (nullptr: zero).
/// docs/semantics.md, "Gradients": the selection is that of `attention`,
/// held fixed (no gradient through the gate).
GradResult attentionGrad(const Problem &problem,
                         const std::vector<double> &dout,
                         const std::vector<double> *dlse,
                         double tieTolerance = 4e-5);

} // namespace moba::reference

#endif // MOBA_TEST_REFERENCE_MOBAREFERENCE_H
