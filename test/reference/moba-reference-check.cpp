//===- moba-reference-check.cpp - checks the reference's gradients --------===//
//
// Part of moba-mlir's test tree. attentionGrad is the oracle of the
// backward, so it gets an oracle of its own: central differences of
//
//   L(q, k, v) = sum dout * out + sum dlse * lse
//
// with out and lse from `attention`. Both sides hold the selection fixed
// only if no perturbation moves a gate score across the top-k boundary: a
// problem is used only if no row is near-tied at a tolerance of 1e-3 of the
// row's magnitude, far above what a perturbation of 1e-6 moves a score by
// (at most 1e-6 * max |q|, a few 1e-6). Problems with near-ties are
// replaced by the next seed, and the program says how many.
//
// Prints one line per problem and the max error; exits 1 past tolerance.
//
//===----------------------------------------------------------------------===//

#include "MobaReference.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

using namespace moba::reference;

namespace {

struct Case {
  const char *name;
  int64_t numHeads, numKvHeads, headDim, blockSize, topK;
  bool causal, withDlse;
  std::vector<int32_t> seqlens;
};

constexpr double kEps = 1e-6;
/// Relative to max(1, |analytic|). Central differences of a smooth L with
/// eps = 1e-6 leave about 1e-10 * |L| of rounding and eps^2 of truncation.
constexpr double kTolerance = 1e-6;
/// Near-tie tolerance that keeps the selection fixed under perturbation.
constexpr double kSelectionMargin = 1e-3;

Problem randomProblem(const Case &c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  Problem p;
  p.headDim = c.headDim;
  p.numHeads = c.numHeads;
  p.numKvHeads = c.numKvHeads;
  p.blockSize = c.blockSize;
  p.topK = c.topK;
  p.causal = c.causal;
  p.scale = 1.0 / std::sqrt(double(c.headDim));
  p.cuSeqlens.push_back(0);
  for (int32_t len : c.seqlens)
    p.cuSeqlens.push_back(p.cuSeqlens.back() + len);
  const int64_t T = p.cuSeqlens.back();
  for (auto *x : {&p.q, &p.k, &p.v}) {
    int64_t heads = x == &p.q ? c.numHeads : c.numKvHeads;
    x->resize(T * heads * c.headDim);
    for (double &value : *x)
      value = normal(rng);
  }
  return p;
}

bool selectionIsStable(const Problem &p) {
  Result r = attention(p, Mutation::None, kSelectionMargin);
  return std::none_of(r.nearTie.begin(), r.nearTie.end(),
                      [](uint8_t tie) { return tie != 0; });
}

double loss(const Problem &p, const std::vector<double> &dout,
            const std::vector<double> *dlse) {
  Result r = attention(p);
  double sum = 0;
  for (size_t i = 0; i < r.out.size(); ++i)
    sum += dout[i] * r.out[i];
  if (dlse)
    for (size_t i = 0; i < r.lse.size(); ++i)
      sum += (*dlse)[i] * r.lse[i];
  return sum;
}

/// Max over the elements of `x` of |fd - analytic| / max(1, |analytic|).
double compare(Problem &p, std::vector<double> &x,
               const std::vector<double> &analytic,
               const std::vector<double> &dout,
               const std::vector<double> *dlse) {
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + kEps;
    const double up = loss(p, dout, dlse);
    x[i] = saved - kEps;
    const double down = loss(p, dout, dlse);
    x[i] = saved;
    const double fd = (up - down) / (2 * kEps);
    const double err =
        std::fabs(fd - analytic[i]) / std::max(1.0, std::fabs(analytic[i]));
    // NaN counts as the worst error.
    worst = std::isnan(err) || std::isnan(worst) ? NAN : std::max(worst, err);
  }
  return worst;
}

/// A NaN in one query row reaches that row's dq and the dk, dv of the keys
/// it attends (docs/semantics.md, "Gradients", NaN).
bool nanPropagates() {
  Case c{"nan", 2, 1, 3, 2, 2, true, false, {5}};
  Problem p = randomProblem(c, 7);
  const int64_t t = 4, h = 1, D = 3;
  p.q[(t * 2 + h) * D + 1] = NAN;
  std::vector<double> dout(p.q.size(), 1.0);
  GradResult g = attentionGrad(p, dout, nullptr);
  // Token 4 is alone in its own block (2), and picks one of blocks 0, 1.
  bool ok = true;
  for (int64_t d = 0; d < D; ++d)
    ok &= std::isnan(g.dq[(t * 2 + h) * D + d]);
  ok &= std::isnan(g.dk[t * D]) && std::isnan(g.dv[t * D]);
  // The other head's row of the same token is untouched.
  ok &= !std::isnan(g.dq[(t * 2) * D]);
  return ok;
}

/// The unsure masks on a near-tie: two sequences of 6 tokens, blocks of 2,
/// top_k 2, D 1, q = 1. In the first sequence, head 0's blocks 0 and 1
/// have means 1 and 1 + 1e-6: rows 4 and 5 (own block 2) are near-tied
/// and attend tokens 0..5 under either choice. Every other mean gap is 2.
bool unsureMasksHold() {
  Problem p;
  p.headDim = 1;
  p.numHeads = p.numKvHeads = 2;
  p.blockSize = 2;
  p.topK = 2;
  p.scale = 1;
  p.cuSeqlens = {0, 6, 12};
  p.q.assign(24, 1.0);
  p.v.assign(24, 1.0);
  // k[s][g]: blocks of head 0 of the first sequence 1, 1 + 1e-6, 0; all
  // others 1, 3, 0.
  p.k.assign(24, 0.0);
  for (int64_t s = 0; s < 12; ++s)
    for (int64_t g = 0; g < 2; ++g) {
      int64_t block = (s % 6) / 2;
      bool tied = s < 6 && g == 0;
      double value = block == 0 ? 1 : block == 1 ? (tied ? 1 + 1e-6 : 3) : 0;
      p.k[s * 2 + g] = value;
    }
  std::vector<double> dout(24, 1.0);
  GradResult g = attentionGrad(p, dout, nullptr);
  Result r = attention(p);
  bool ok = true;
  for (int64_t t = 0; t < 12; ++t)
    for (int64_t h = 0; h < 2; ++h) {
      ok &= g.dqUnsure[t * 2 + h] == (h == 0 && (t == 4 || t == 5));
      ok &= g.dqUnsure[t * 2 + h] == r.nearTie[t * 2 + h];
      ok &= g.dkvUnsure[t * 2 + h] == (h == 0 && t < 6);
    }
  return ok;
}

} // namespace

int main() {
  // Varlen batches hold an empty and a one-token sequence.
  const std::vector<Case> cases = {
      {"mha-causal-dlse", 2, 2, 4, 3, 2, true, true, {11, 0, 1, 7}},
      {"mha-noncausal", 2, 2, 3, 4, 2, false, false, {9, 1, 0, 6}},
      {"gqa-causal", 4, 2, 3, 2, 3, true, false, {0, 12, 1, 5}},
      {"gqa-noncausal-dlse", 4, 2, 4, 3, 2, false, true, {10, 1, 0, 4}},
      {"mqa-causal-dlse", 3, 1, 3, 2, 2, true, true, {1, 9, 0, 6}},
      {"mqa-noncausal", 3, 1, 4, 3, 3, false, false, {8, 0, 1, 7}},
  };
  double worst = 0;
  int skipped = 0;
  for (const Case &c : cases) {
    uint64_t seed = 1;
    Problem p = randomProblem(c, seed);
    while (!selectionIsStable(p)) {
      ++skipped;
      p = randomProblem(c, ++seed);
    }
    std::mt19937_64 rng(seed + 1000);
    std::normal_distribution<double> normal;
    std::vector<double> dout(p.q.size()), dlse(p.q.size() / c.headDim);
    for (double &x : dout)
      x = normal(rng);
    for (double &x : dlse)
      x = normal(rng);
    const std::vector<double> *dlsePtr = c.withDlse ? &dlse : nullptr;
    GradResult g = attentionGrad(p, dout, dlsePtr);
    double eq = compare(p, p.q, g.dq, dout, dlsePtr);
    double ek = compare(p, p.k, g.dk, dout, dlsePtr);
    double ev = compare(p, p.v, g.dv, dout, dlsePtr);
    std::printf("%-20s seed %2llu: dq %.2e dk %.2e dv %.2e\n", c.name,
                (unsigned long long)seed, eq, ek, ev);
    for (double e : {eq, ek, ev})
      worst = std::isnan(e) || std::isnan(worst) ? NAN : std::max(worst, e);
  }
  bool nanOk = nanPropagates();
  bool unsureOk = unsureMasksHold();
  std::printf("problems: %zu checked, %d skipped for near-ties at %.0e "
              "(eps %.0e)\n",
              cases.size(), skipped, kSelectionMargin, kEps);
  std::printf("nan: %s\n", nanOk ? "propagates" : "LOST");
  std::printf("unsure masks: %s\n", unsureOk ? "hold" : "WRONG");
  std::printf("max error: %.2e (tolerance %.0e)\n", worst, kTolerance);
  bool pass = nanOk && unsureOk && worst <= kTolerance;
  std::printf("%s\n", pass ? "PASS" : "FAIL");
  return pass ? 0 : 1;
}
