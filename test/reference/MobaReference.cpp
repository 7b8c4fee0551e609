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

Result attention(const Problem &p, Mutation mutation, double tieTolerance) {
  const int64_t D = p.headDim, Hq = p.numHeads, Hkv = p.numKvHeads;
  const int64_t bs = p.blockSize, T = p.cuSeqlens.back();
  const int64_t group = Hq / Hkv;
  Result r;
  r.out.assign(T * Hq * D, 0.0);
  r.lse.assign(T * Hq, 0.0);
  r.nearTie.assign(T * Hq, 0);

  auto qAt = [&](int64_t t, int64_t h, int64_t d) {
    return p.q[(t * Hq + h) * D + d];
  };
  auto kAt = [&](int64_t s, int64_t g, int64_t d) {
    return p.k[(s * Hkv + g) * D + d];
  };
  auto vAt = [&](int64_t s, int64_t g, int64_t d) {
    return p.v[(s * Hkv + g) * D + d];
  };

  for (size_t b = 0; b + 1 < p.cuSeqlens.size(); ++b) {
    const int64_t start = p.cuSeqlens[b], end = p.cuSeqlens[b + 1];
    const int64_t len = end - start;
    // Without len + bs - 1 or first + bs, which overflow for block sizes
    // near int64's limit.
    const int64_t nblk = len == 0 ? 0 : (len - 1) / bs + 1;

    // Blocks: block j covers positions [j*bs, min((j+1)*bs, len)).
    // The gate: mean[j][g][d].
    std::vector<double> mean(nblk * Hkv * D, 0.0);
    for (int64_t j = 0; j < nblk; ++j) {
      const int64_t first = start + j * bs;
      const int64_t last = first + std::min(bs, end - first);
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
        int64_t g = h / group;
        if (mutation == Mutation::WrongKvHead)
          g = (g + 1) % Hkv;

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
          if (gap <= tieTolerance * magnitude)
            r.nearTie[t * Hq + h] = 1;
        }

        // Attention over the selected blocks; causal: positions <= pos,
        // except where the mutation lets a future block through.
        std::vector<int64_t> keys;
        for (int64_t j : selected) {
          const int64_t first = start + j * bs;
          const int64_t last = first + std::min(bs, end - first);
          for (int64_t s = first; s < last; ++s) {
            bool visible = !p.causal || s <= t ||
                           (mutation == Mutation::FutureBlock && j != own);
            if (visible)
              keys.push_back(s);
          }
        }
        double m = -std::numeric_limits<double>::infinity();
        std::vector<double> x(keys.size());
        for (size_t i = 0; i < keys.size(); ++i) {
          double dot = 0;
          for (int64_t d = 0; d < D; ++d)
            dot += qAt(t, h, d) * kAt(keys[i], g, d);
          x[i] = p.scale * dot;
          // NaN propagates (std::max would drop it).
          m = std::isnan(x[i]) || std::isnan(m) ? NAN : std::max(m, x[i]);
        }
        double l = 0;
        for (size_t i = 0; i < keys.size(); ++i)
          l += std::exp(x[i] - m);
        double *out = &r.out[(t * Hq + h) * D];
        if (keys.empty()) {
          r.lse[t * Hq + h] = -std::numeric_limits<double>::infinity();
          continue;
        }
        for (size_t i = 0; i < keys.size(); ++i) {
          double w = std::exp(x[i] - m) / l;
          for (int64_t d = 0; d < D; ++d)
            out[d] += w * vAt(keys[i], g, d);
        }
        r.lse[t * Hq + h] = m + std::log(l);
      }
    }
  }
  return r;
}

} // namespace moba::reference
