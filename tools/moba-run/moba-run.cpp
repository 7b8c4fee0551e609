//===- moba-run.cpp - Run MoBA attention on the CPU and check it ----------===//
//
// Part of moba-mlir. Compiles one configuration with the CPU backend, runs it
// on fresh random inputs (outputs poisoned with NaN first), compares output
// and log-sum-exp with the float64 reference, and prints the error and the
// time. Exit code: 0 when every compared value is within tolerance, 1 when
// one is not (NaN never is), 2 on a usage or compile error.
//
//===----------------------------------------------------------------------===//

#include "MobaReference.h"

#include "moba/Runner/CpuRunner.h"

#include "llvm/ADT/STLExtras.h"
#include "llvm/Support/CheckedArithmetic.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/raw_ostream.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

using namespace mlir::moba;
namespace cl = llvm::cl;
namespace ref = ::moba::reference;

static cl::OptionCategory category("moba-run options");
static cl::opt<int64_t> headDim("head-dim", cl::init(64), cl::cat(category),
                                cl::desc("Head dimension D"));
static cl::opt<int64_t> numHeads("heads", cl::init(8), cl::cat(category),
                                 cl::desc("Query heads Hq"));
static cl::opt<int64_t> numKvHeads("kv-heads", cl::init(2), cl::cat(category),
                                   cl::desc("Key/value heads Hkv"));
static cl::opt<int64_t> blockSize("block-size", cl::init(64),
                                  cl::cat(category), cl::desc("MoBA block size"));
static cl::opt<int64_t> topK("top-k", cl::init(3), cl::cat(category),
                             cl::desc("Blocks per query"));
static cl::opt<bool> causal("causal", cl::init(true), cl::cat(category),
                            cl::desc("Causal MoBA (--causal=false for full)"));
// Read as a double: a value that rounds to 0 or to infinity in f32 is then
// refused instead of silently meaning the default or overflowing.
static cl::opt<double> scale("scale", cl::init(0.0), cl::cat(category),
                             cl::desc("Softmax scale (0: 1/sqrt(D))"));
static cl::opt<std::string> dtype("dtype", cl::init("f32"), cl::cat(category),
                                  cl::desc("Input element type: f32, f16, bf16"));
static cl::list<int64_t> seqlens("seqlens", cl::CommaSeparated,
                                 cl::cat(category),
                                 cl::desc("Sequence lengths (default 300,17,1,256)"));
static cl::opt<uint64_t> seed("seed", cl::init(0), cl::cat(category),
                              cl::desc("Random seed (0: from the clock)"));
static cl::opt<std::string> stage("stage", cl::init("fused"),
                                  cl::cat(category),
                                  cl::desc("decomposed, tiled or fused"));
static cl::opt<int64_t> tileQ("tile-q", cl::init(32), cl::cat(category),
                              cl::desc("Queries per tile"));
static cl::opt<int64_t> tileK("tile-k", cl::init(16), cl::cat(category),
                              cl::desc("Keys per online-softmax update"));
static cl::opt<bool> parallel(
    "parallel", cl::init(false), cl::cat(category),
    cl::desc("Lower through scf.forall over rows (the GPU form)"));
static cl::opt<bool> densify(
    "densify", cl::init(false), cl::cat(category),
    cl::desc("Attention as per-block pieces grouped by key block, merged by "
             "log-sum-exp (moba-densify-attention)"));
static cl::opt<bool> duplicateBlocks(
    "duplicate-key-blocks", cl::init(false), cl::cat(category),
    cl::desc("Give every odd block of a sequence the keys of the block "
             "before it (values stay random): exact gate ties, which the "
             "kernel must break in favour of the later block"));
static cl::opt<int> repeat("repeat", cl::init(3), cl::cat(category),
                           cl::desc("Timed runs (the median is printed)"));
static cl::opt<bool> noCheck("no-check", cl::init(false), cl::cat(category),
                             cl::desc("Time only; skip the reference"));
static cl::opt<std::string> mutation(
    "mutate-reference", cl::init("none"), cl::cat(category),
    cl::desc("Break one rule in the reference (future-block, "
             "own-block-not-forced, wrong-kv-head): the check must fail"));
static cl::opt<std::string> cacheDir(
    "cache-dir", cl::init(""), cl::cat(category),
    cl::desc("Keep compiled kernels in this directory and reuse them"));
static cl::opt<std::string> dumpStage(
    "dump-ir", cl::init(""), cl::cat(category),
    cl::desc("Print the IR after this stage (moba, loops, llvm) and exit"));

namespace {

/// Storage of one element type, with exact conversions to double.
uint16_t toBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits += 0x7FFF + ((bits >> 16) & 1); // round to nearest even
  return uint16_t(bits >> 16);
}
float fromBf16(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
uint16_t toF16(float f) {
  // Round to nearest even through the exponent range of f16; inputs here
  // are finite and far from overflow.
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000;
  int32_t exp = int32_t((x >> 23) & 0xFF) - 127 + 15;
  uint32_t mant = x & 0x7FFFFF;
  if (exp <= 0) { // subnormal or zero
    if (exp < -10)
      return uint16_t(sign);
    mant |= 0x800000;
    uint32_t shift = uint32_t(14 - exp);
    uint32_t half = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1)))
      ++half;
    return uint16_t(sign | half);
  }
  uint32_t half = sign | (uint32_t(exp) << 10) | (mant >> 13);
  uint32_t rem = mant & 0x1FFF;
  if (rem > 0x1000 || (rem == 0x1000 && (half & 1)))
    ++half;
  return uint16_t(half);
}
float fromF16(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16;
  int32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  float f;
  if (exp == 0)
    f = std::ldexp(float(mant), -24);
  else if (exp == 31)
    f = mant ? NAN : INFINITY;
  else
    f = std::ldexp(float(mant | 0x400), exp - 25);
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits |= sign;
  std::memcpy(&f, &bits, 4);
  return f;
}

/// A host tensor in the kernel's element type.
struct Buffer {
  ElementType type;
  std::vector<uint8_t> bytes;
  Buffer(ElementType type, size_t n)
      : type(type), bytes(n * elementTypeBytes(type)) {}
  size_t size() const { return bytes.size() / elementTypeBytes(type); }
  /// Stores `value` rounded to the element type; returns what was stored.
  double set(size_t i, float value) {
    switch (type) {
    case ElementType::F32:
      std::memcpy(&bytes[4 * i], &value, 4);
      return value;
    case ElementType::BF16: {
      uint16_t h = toBf16(value);
      std::memcpy(&bytes[2 * i], &h, 2);
      return fromBf16(h);
    }
    case ElementType::F16: {
      uint16_t h = toF16(value);
      std::memcpy(&bytes[2 * i], &h, 2);
      return fromF16(h);
    }
    }
    return 0;
  }
  double get(size_t i) const {
    if (type == ElementType::F32) {
      float f;
      std::memcpy(&f, &bytes[4 * i], 4);
      return f;
    }
    uint16_t h;
    std::memcpy(&h, &bytes[2 * i], 2);
    return type == ElementType::BF16 ? fromBf16(h) : fromF16(h);
  }
  void poison() {
    for (size_t i = 0; i < size(); ++i)
      set(i, NAN);
  }
};

/// |got - want| <= atol + rtol * |want|, false for NaN.
struct Tolerance {
  double atol, rtol;
  bool holds(double got, double want) const {
    return std::fabs(got - want) <= atol + rtol * std::fabs(want);
  }
};

Tolerance outputTolerance(ElementType type) {
  switch (type) {
  case ElementType::F32:
    return {2e-5, 2e-4};
  case ElementType::F16:
    return {2e-3, 2e-3};
  case ElementType::BF16:
    return {1e-2, 1e-2};
  }
  return {0, 0};
}

int fail(llvm::Error error) {
  llvm::errs() << "moba-run: " << llvm::toString(std::move(error)) << "\n";
  return 2;
}

} // namespace

int main(int argc, char **argv) {
  llvm::InitLLVM init(argc, argv);
  cl::HideUnrelatedOptions(category);
  cl::ParseCommandLineOptions(
      argc, argv,
      "moba-run: compile MoBA attention for the CPU, run it on random data, "
      "and check it against the float64 reference\n");

  AttentionConfig config;
  config.headDim = headDim;
  config.numHeads = numHeads;
  config.numKvHeads = numKvHeads;
  config.blockSize = blockSize;
  config.topK = topK;
  config.causal = causal;
  if (scale != 0.0) {
    float narrowed = float(scale);
    if (std::isfinite(scale) && scale > 0 &&
        (narrowed == 0.0f || !std::isfinite(narrowed)))
      return fail(llvm::createStringError(
          "--scale=%g is not a positive finite f32 (it rounds to %g)",
          double(scale), double(narrowed)));
    config.scale = narrowed;
  }
  auto type = parseElementType(dtype);
  if (!type)
    return fail(type.takeError());
  config.dtype = *type;
  if (auto e = config.validate())
    return fail(std::move(e));

  CpuCompileOptions options;
  std::optional<CpuStage> parsedStage = parseCpuStage(stage);
  if (!parsedStage)
    return fail(llvm::createStringError(
        "--stage must be decomposed, tiled or fused; got '%s'", stage.c_str()));
  options.stage = *parsedStage;
  options.tileQ = tileQ;
  options.tileK = tileK;
  options.cacheDir = cacheDir;
  options.parallel = parallel;
  options.densify = densify;
  ref::Mutation mutate;
  if (!ref::parseMutation(mutation, mutate))
    return fail(llvm::createStringError(
        "--mutate-reference must be none, future-block, "
        "own-block-not-forced or wrong-kv-head; got '%s'",
        mutation.c_str()));
  if (!dumpStage.empty()) {
    if (dumpStage != "moba" && dumpStage != "loops" && dumpStage != "llvm")
      return fail(llvm::createStringError(
          "--dump-ir must be moba, loops or llvm; got '%s'",
          dumpStage.c_str()));
    options.dumpIR = [&](llvm::StringRef name, llvm::StringRef ir) {
      if (name == dumpStage)
        llvm::outs() << ir;
    };
  }

  if (repeat < 1)
    return fail(llvm::createStringError("--repeat must be at least 1, got %d",
                                        int(repeat)));

  std::vector<int64_t> lengths(seqlens.begin(), seqlens.end());
  if (lengths.empty())
    lengths = {300, 17, 1, 256};
  // Offsets are int32 (cu_seqlens): the lengths and their running total are
  // checked before they are narrowed.
  constexpr int64_t kMaxTokens = std::numeric_limits<int32_t>::max();
  std::vector<int32_t> cu = {0};
  for (int64_t len : lengths) {
    if (len < 0)
      return fail(llvm::createStringError(
          "--seqlens must not be negative, got %lld", (long long)len));
    if (len > kMaxTokens - cu.back())
      return fail(llvm::createStringError(
          "--seqlens add up to more than %lld tokens, the most int32 "
          "offsets hold (at the length %lld)",
          (long long)kMaxTokens, (long long)len));
    cu.push_back(cu.back() + int32_t(len));
  }
  const int64_t tokens = cu.back();
  if (tokens == 0)
    return fail(llvm::createStringError(
        "--seqlens must hold at least one token: there is nothing to check"));
  // The inputs, the output and the float64 reference's copies are held in
  // memory: each tensor's element count is checked and bounded.
  constexpr int64_t kMaxElements = int64_t(1) << 25;
  std::optional<int64_t> elements =
      llvm::checkedMul(tokens, std::max(config.numHeads, config.numKvHeads));
  if (elements)
    elements = llvm::checkedMul(*elements, config.headDim);
  if (!elements || *elements > kMaxElements)
    return fail(llvm::createStringError(
        "--seqlens (%lld tokens), --heads/--kv-heads (%lld) and --head-dim "
        "(%lld) give more than %lld elements per tensor, the most moba-run "
        "checks",
        (long long)tokens,
        (long long)std::max(config.numHeads, config.numKvHeads),
        (long long)config.headDim, (long long)kMaxElements));

  auto start = std::chrono::steady_clock::now();
  auto kernel = CpuAttentionKernel::compile(config, options);
  if (!kernel)
    return fail(kernel.takeError());
  double compileSeconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  if (!dumpStage.empty())
    return 0;

  uint64_t usedSeed = seed ? uint64_t(seed)
                           : uint64_t(std::chrono::steady_clock::now()
                                          .time_since_epoch()
                                          .count());
  std::mt19937_64 rng(usedSeed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  ref::Problem problem;
  problem.headDim = config.headDim;
  problem.numHeads = config.numHeads;
  problem.numKvHeads = config.numKvHeads;
  problem.blockSize = config.blockSize;
  problem.topK = config.topK;
  problem.causal = config.causal;
  problem.scale = config.scale ? double(*config.scale)
                               : double(float(1.0 / std::sqrt(double(config.headDim))));
  problem.cuSeqlens = cu;
  Buffer q(config.dtype, tokens * config.numHeads * config.headDim);
  Buffer k(config.dtype, tokens * config.numKvHeads * config.headDim);
  Buffer v(config.dtype, tokens * config.numKvHeads * config.headDim);
  std::pair<Buffer *, std::vector<double> *> inputs[] = {
      {&q, &problem.q}, {&k, &problem.k}, {&v, &problem.v}};
  for (auto [buffer, values] : inputs) {
    values->resize(buffer->size());
    for (size_t i = 0; i < buffer->size(); ++i)
      (*values)[i] = buffer->set(i, normal(rng));
  }
  if (duplicateBlocks) {
    // Copy the keys of block 2i over block 2i+1 (full blocks only), in the
    // kernel's buffer and in the reference's view of it.
    // Pairs are counted from the sequence's length, so a block size near
    // int64's limit neither overflows nor loops.
    const int64_t row = config.numKvHeads * config.headDim;
    for (size_t b = 0; b + 1 < cu.size(); ++b) {
      int64_t pairs = (cu[b + 1] - cu[b]) / config.blockSize / 2;
      for (int64_t pair = 0; pair < pairs; ++pair) {
        int64_t first = cu[b] + (2 * pair + 1) * config.blockSize;
        for (int64_t i = 0; i < config.blockSize * row; ++i) {
          int64_t from = (first - config.blockSize) * row + i;
          problem.k[first * row + i] = k.set(first * row + i,
                                             float(problem.k[from]));
        }
      }
    }
  }
  Buffer out(config.dtype, q.size());
  std::vector<float> lse(tokens * config.numHeads);

  AttentionBuffers buffers;
  buffers.q = q.bytes.data();
  buffers.k = k.bytes.data();
  buffers.v = v.bytes.data();
  buffers.cuSeqlens = cu.data();
  buffers.out = out.bytes.data();
  buffers.lse = lse.data();
  buffers.tokens = tokens;
  buffers.numSequences = int64_t(lengths.size());

  std::vector<double> times;
  for (int i = 0; i < repeat; ++i) {
    out.poison();
    std::fill(lse.begin(), lse.end(), NAN);
    auto t0 = std::chrono::steady_clock::now();
    if (auto e = (*kernel)->run(buffers))
      return fail(std::move(e));
    times.push_back(std::chrono::duration<double>(
                        std::chrono::steady_clock::now() - t0)
                        .count());
  }
  std::sort(times.begin(), times.end());

  llvm::outs() << "config: " << config.key() << " stage=" << stage
               << (parallel ? " parallel" : "")
               << (densify ? " densify" : "")
               << " tile-q=" << tileQ << " tile-k=" << tileK << "\n";
  llvm::outs() << "sequences: " << lengths.size() << " (";
  llvm::interleaveComma(lengths, llvm::outs());
  llvm::outs() << "), tokens " << tokens << ", seed " << usedSeed << "\n";
  llvm::outs() << llvm::format("compile: %.3f s%s, run: %.3f ms (median of %zu)\n",
                               compileSeconds,
                               (*kernel)->fromCache() ? " (from the cache)" : "",
                               1e3 * times[times.size() / 2], times.size());
  if (noCheck)
    return 0;

  ref::Result want = ref::attention(problem, mutate);
  Tolerance outTol = outputTolerance(config.dtype);
  Tolerance lseTol{2e-4, 2e-5};
  double maxOutErr = 0, maxLseErr = 0;
  int64_t bad = 0, compared = 0, skipped = 0;
  const int64_t D = config.headDim;
  for (int64_t row = 0; row < tokens * config.numHeads; ++row) {
    if (want.nearTie[row]) {
      ++skipped;
      continue;
    }
    ++compared;
    bool rowOk = lseTol.holds(lse[row], want.lse[row]);
    double lseErr = std::fabs(lse[row] - want.lse[row]);
    maxLseErr = std::isnan(lseErr) ? lseErr : std::max(maxLseErr, lseErr);
    for (int64_t d = 0; d < D; ++d) {
      double got = out.get(row * D + d), expect = want.out[row * D + d];
      double err = std::fabs(got - expect);
      maxOutErr = std::isnan(err) ? err : std::max(maxOutErr, err);
      rowOk &= outTol.holds(got, expect);
    }
    if (!rowOk) {
      if (bad < 3)
        llvm::outs() << "  mismatch at token " << row / config.numHeads
                     << " head " << row % config.numHeads << ": lse "
                     << lse[row] << " vs " << want.lse[row] << ", out[0] "
                     << out.get(row * D) << " vs " << want.out[row * D] << "\n";
      ++bad;
    }
  }
  llvm::outs() << llvm::format(
      "error: out max abs %.3g (atol %.1g rtol %.1g), lse max abs %.3g\n",
      maxOutErr, outTol.atol, outTol.rtol, maxLseErr);
  llvm::outs() << "rows: " << compared << " compared, " << skipped
               << " skipped as near-ties, " << bad << " wrong\n";
  llvm::outs() << (bad == 0 && compared > 0 ? "PASS" : "FAIL") << "\n";
  return bad == 0 && compared > 0 ? 0 : 1;
}
