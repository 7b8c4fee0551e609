//===- MobaReference.cpp - float64 reference of MoBA ----------------------===//
//
// Part of moba-mlir's test tree. Each step names the section of
// docs/semantics.md it implements.
//
//===----------------------------------------------------------------------===//

#include "MobaReference.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace moba::reference {

bool parseMutation(const std::string &name, Mutation &mutation) {
  if (name == "none")
    mutation = Mutation::None;
  else if (name == "future-block")
    mutation = Mutation::FutureBlock;
  else if (name == "own-block-not-forced")
    mutation = Mutation::OwnBlockNotForced;
  else if (name == "wrong-kv-head")
    mutation = Mutation::WrongKvHead;
  else
    return false;
  return true;
}

namespace {

/// One row (query t, head h) after the selection: the attended key set
/// K(t, h) and whether the selection is fragile.
struct Row {
  int64_t t = 0, h = 0, g = 0;
  /// K(t, h) as token indices, block by block in the order selected.
  std::vector<int64_t> keys;
  bool nearTie = false;
  /// Near-ties only: the keys of the candidate blocks whose score is within
  /// the tolerance of the k-th best (the k-th and (k+1)-th among them),
  /// chosen or not.
  std::vector<int64_t> unsureKeys;
};

/// Runs the selection of docs/semantics.md ("Blocks", "The gate",
/// "Selection", the attended set of "Attention") and calls `visit(row)` for
/// every row of every sequence, tokens in order, heads in order.
template <typename Visit>
void forEachRow(const Problem &p, Mutation mutation, double tieTolerance,
                Visit visit) {
  const int64_t D = p.headDim, Hq = p.numHeads, Hkv = p.numKvHeads;
  const int64_t bs = p.blockSize;
  const int64_t group = Hq / Hkv;

  auto qAt = [&](int64_t t, int64_t h, int64_t d) {
    return p.q[(t * Hq + h) * D + d];
  };
  auto kAt = [&](int64_t s, int64_t g, int64_t d) {
    return p.k[(s * Hkv + g) * D + d];
  };

  for (size_t b = 0; b + 1 < p.cuSeqlens.size(); ++b) {
    const int64_t start = p.cuSeqlens[b], end = p.cuSeqlens[b + 1];
    const int64_t len = end - start;
    // Without len + bs - 1 or first + bs, which overflow for block sizes
    // near int64's limit.
    const int64_t nblk = len == 0 ? 0 : (len - 1) / bs + 1;
    auto blockFirst = [&](int64_t j) { return start + j * bs; };
    auto blockLast = [&](int64_t j) {
      const int64_t first = blockFirst(j);
      return first + std::min(bs, end - first);
    };

    // Blocks: block j covers positions [j*bs, min((j+1)*bs, len)).
    // The gate: mean[j][g][d].
    std::vector<double> mean(nblk * Hkv * D, 0.0);
    for (int64_t j = 0; j < nblk; ++j) {
      const int64_t first = blockFirst(j), last = blockLast(j);
      for (int64_t g = 0; g < Hkv; ++g)
        for (int64_t d = 0; d < D; ++d) {
          double sum = 0;
          for (int64_t s = first; s < last; ++s)
            sum += kAt(s, g, d);
          mean[(j * Hkv + g) * D + d] = sum / double(last - first);
        }
    }

    for (int64_t t = start; t < end; ++t) {
      const int64_t pos = t - start, own = pos / bs;
      for (int64_t h = 0; h < Hq; ++h) {
        Row row;
        row.t = t;
        row.h = h;
        int64_t g = h / group;
        if (mutation == Mutation::WrongKvHead)
          g = (g + 1) % Hkv;
        row.g = g;

        // Selection: candidates, scores, ties to the later block.
        struct Candidate {
          double score, magnitude;
          int64_t block;
        };
        std::vector<Candidate> candidates;
        std::vector<int64_t> selected;
        bool forceOwn = p.causal && mutation != Mutation::OwnBlockNotForced;
        for (int64_t j = 0; j < nblk; ++j) {
          bool candidate;
          if (!p.causal)
            candidate = true;
          else if (mutation == Mutation::FutureBlock)
            candidate = j != own;
          else if (mutation == Mutation::OwnBlockNotForced)
            candidate = j <= own;
          else
            candidate = j < own;
          if (!candidate)
            continue;
          double s = 0, m = 0;
          for (int64_t d = 0; d < D; ++d) {
            double x = qAt(t, h, d) * mean[(j * Hkv + g) * D + d];
            s += x;
            m += std::fabs(x);
          }
          candidates.push_back({s, m, j});
        }
        // Best first, ties to the later block; NaN ranks as +inf.
        for (Candidate &c : candidates)
          if (std::isnan(c.score))
            c.score = std::numeric_limits<double>::infinity();
        std::sort(candidates.begin(), candidates.end(),
                  [](const Candidate &a, const Candidate &c) {
                    if (a.score != c.score)
                      return a.score > c.score;
                    return a.block > c.block;
                  });
        int64_t take = forceOwn ? p.topK - 1 : p.topK;
        if (forceOwn)
          selected.push_back(own);
        for (int64_t i = 0; i < take && i < int64_t(candidates.size()); ++i)
          selected.push_back(candidates[i].block);
        std::vector<int64_t> unsureBlocks;
        if (take >= 1 && int64_t(candidates.size()) > take) {
          double magnitude = 0;
          for (const Candidate &c : candidates)
            magnitude = std::max(magnitude, c.magnitude);
          // The choice is fragile when a chosen and a passed-over score are
          // different but closer than rounding. An exact tie (identical
          // scores, as from identical blocks) is not fragile by itself: the
          // rule "ties go to the later block" decides it; but then the
          // nearest *different* score on either side of the tied value
          // matters, since rounding could move it across the tie.
          double boundary = candidates[take - 1].score;
          double gap = std::numeric_limits<double>::infinity();
          for (const Candidate &c : candidates)
            if (c.score != boundary)
              gap = std::min(gap, std::fabs(c.score - boundary));
          if (candidates[take].score != boundary)
            gap = boundary - candidates[take].score;
          if (gap <= tieTolerance * magnitude) {
            row.nearTie = true;
            // Every candidate that rounding might move across the boundary.
            for (const Candidate &c : candidates)
              if (std::fabs(c.score - boundary) <= tieTolerance * magnitude)
                unsureBlocks.push_back(c.block);
          }
        }
        for (int64_t j : unsureBlocks)
          for (int64_t s = blockFirst(j); s < blockLast(j); ++s)
            row.unsureKeys.push_back(s);

        // Attention over the selected blocks; causal: positions <= pos,
        // except where the mutation lets a future block through.
        for (int64_t j : selected) {
          for (int64_t s = blockFirst(j); s < blockLast(j); ++s) {
            bool visible = !p.causal || s <= t ||
                           (mutation == Mutation::FutureBlock && j != own);
            if (visible)
              row.keys.push_back(s);
          }
        }
        visit(row);
      }
    }
  }
}

/// The softmax of one row over K(t, h): the weights P(t, h, s), in the
/// order of row.keys, and the log-sum-exp. An empty key set gives no
/// weights and lse = -inf.
void rowSoftmax(const Problem &p, const Row &row, std::vector<double> &weights,
                double &lse) {
  const int64_t D = p.headDim, Hq = p.numHeads, Hkv = p.numKvHeads;
  const double *q = &p.q[(row.t * Hq + row.h) * D];
  double m = -std::numeric_limits<double>::infinity();
  std::vector<double> x(row.keys.size());
  for (size_t i = 0; i < row.keys.size(); ++i) {
    const double *k = &p.k[(row.keys[i] * Hkv + row.g) * D];
    double dot = 0;
    for (int64_t d = 0; d < D; ++d)
      dot += q[d] * k[d];
    x[i] = p.scale * dot;
    // NaN propagates (std::max would drop it).
    m = std::isnan(x[i]) || std::isnan(m) ? NAN : std::max(m, x[i]);
  }
  double l = 0;
  for (size_t i = 0; i < row.keys.size(); ++i)
    l += std::exp(x[i] - m);
  weights.resize(row.keys.size());
  for (size_t i = 0; i < row.keys.size(); ++i)
    weights[i] = std::exp(x[i] - m) / l;
  lse = row.keys.empty() ? -std::numeric_limits<double>::infinity()
                         : m + std::log(l);
}

/// out[t, h, :] = sum_s P(t, h, s) v[s, g, :], into `out` (D values, zero
/// on entry).
void rowOutput(const Problem &p, const Row &row,
               const std::vector<double> &weights, double *out) {
  const int64_t D = p.headDim, Hkv = p.numKvHeads;
  for (size_t i = 0; i < row.keys.size(); ++i) {
    const double *v = &p.v[(row.keys[i] * Hkv + row.g) * D];
    for (int64_t d = 0; d < D; ++d)
      out[d] += weights[i] * v[d];
  }
}

} // namespace

Result attention(const Problem &p, Mutation mutation, double tieTolerance) {
  const int64_t D = p.headDim, Hq = p.numHeads, T = p.cuSeqlens.back();
  Result r;
  r.out.assign(T * Hq * D, 0.0);
  r.lse.assign(T * Hq, 0.0);
  r.nearTie.assign(T * Hq, 0);
  std::vector<double> weights;
  forEachRow(p, mutation, tieTolerance, [&](const Row &row) {
    const int64_t index = row.t * Hq + row.h;
    r.nearTie[index] = row.nearTie;
    rowSoftmax(p, row, weights, r.lse[index]);
    rowOutput(p, row, weights, &r.out[index * D]);
  });
  return r;
}

GradResult attentionGrad(const Problem &p, const std::vector<double> &dout,
                         const std::vector<double> *dlse,
                         double tieTolerance) {
  const int64_t D = p.headDim, Hq = p.numHeads, Hkv = p.numKvHeads;
  const int64_t T = p.cuSeqlens.back();
  GradResult r;
  r.dq.assign(T * Hq * D, 0.0);
  r.dk.assign(T * Hkv * D, 0.0);
  r.dv.assign(T * Hkv * D, 0.0);
  r.dqUnsure.assign(T * Hq, 0);
  r.dkvUnsure.assign(T * Hkv, 0);
  std::vector<double> weights, out(D);
  forEachRow(p, Mutation::None, tieTolerance, [&](const Row &row) {
    const int64_t index = row.t * Hq + row.h;
    if (row.nearTie) {
      r.dqUnsure[index] = 1;
      for (int64_t s : row.keys)
        r.dkvUnsure[s * Hkv + row.g] = 1;
      for (int64_t s : row.unsureKeys)
        r.dkvUnsure[s * Hkv + row.g] = 1;
    }
    double lse;
    rowSoftmax(p, row, weights, lse);
    std::fill(out.begin(), out.end(), 0.0);
    rowOutput(p, row, weights, out.data());

    // delta = dO . out - dlse: the row term.
    const double *dO = &dout[index * D];
    double delta = 0;
    for (int64_t d = 0; d < D; ++d)
      delta += dO[d] * out[d];
    if (dlse)
      delta -= (*dlse)[index];

    const double *q = &p.q[index * D];
    double *dq = &r.dq[index * D];
    for (size_t i = 0; i < row.keys.size(); ++i) {
      const int64_t kv = row.keys[i] * Hkv + row.g;
      const double *k = &p.k[kv * D], *v = &p.v[kv * D];
      double dP = 0;
      for (int64_t d = 0; d < D; ++d)
        dP += dO[d] * v[d];
      const double dS = weights[i] * (dP - delta);
      // dK and dV sum over every query head of the KV head (GQA, MQA).
      double *dk = &r.dk[kv * D], *dv = &r.dv[kv * D];
      for (int64_t d = 0; d < D; ++d) {
        dq[d] += p.scale * dS * k[d];
        dk[d] += p.scale * dS * q[d];
        dv[d] += weights[i] * dO[d];
      }
    }
  });
  return r;
}

} // namespace moba::reference
