//===- moba-run.cpp - Run MoBA attention on the CPU and check it ----------===//
//
// Part of moba-mlir. Compiles one configuration with the CPU backend, runs it
// on fresh random inputs (outputs poisoned with NaN first), compares output
// and log-sum-exp with the float64 reference, and prints the error and the
// time. With --grad, also runs the backward on a random upstream gradient
// and compares dq, dk and dv with the float64 gradients. Exit code: 0 when
// every compared value is within tolerance, 1 when one is not (NaN never
// is), 2 on a usage or compile error.
//
//===----------------------------------------------------------------------===//

#include "MobaReference.h"

#include "moba/Runner/CpuRunner.h"

#include "llvm/ADT/STLExtras.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/CheckedArithmetic.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/raw_ostream.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <new>
#include <optional>
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
static cl::opt<double> scale("scale", cl::init(0.0), cl::cat(category),
                             cl::desc("Softmax scale (0: 1/sqrt(D)), a "
                                      "normal float32"));
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
                           cl::desc("Timed runs (the median is printed), "
                                    "1 to 1000000"));
static cl::opt<bool> noCheck("no-check", cl::init(false), cl::cat(category),
                             cl::desc("Time only; skip the reference"));
static cl::opt<std::string> mutation(
    "mutate-reference", cl::init("none"), cl::cat(category),
    cl::desc("Break one rule in the reference (future-block, "
             "own-block-not-forced, wrong-kv-head): the check must fail"));
static cl::opt<bool> grad(
    "grad", cl::init(false), cl::cat(category),
    cl::desc("Also run the backward on a random upstream gradient of out "
             "(and of lse) and check dq, dk, dv against the float64 "
             "reference"));
static cl::opt<bool> noGradLse(
    "no-grad-lse", cl::init(false), cl::cat(category),
    cl::desc("With --grad: no gradient of lse (the kernel gets none)"));
static cl::opt<std::string> gradMutation(
    "mutate-grad-check", cl::init("none"), cl::cat(category),
    cl::desc("With --grad, break the check once (drop-grad-lse: the "
             "reference gets no gradient of lse; swap-dk-dv: dk is compared "
             "with the reference's dv): it must fail"));
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

/// The most timed runs: their times are kept.
constexpr int kMaxRepeat = 1000000;

/// The offsets of sequences of `lengths` tokens, checked: each length and
/// the total within the int32 offsets of cu_seqlens.
llvm::Expected<std::vector<int32_t>>
offsetsOf(const std::vector<int64_t> &lengths) {
  std::vector<int32_t> cu = {0};
  int64_t total = 0;
  for (int64_t len : lengths) {
    if (len < 0)
      return llvm::createStringError(
          "--seqlens must not be negative, got %lld", (long long)len);
    if (len > kMaxTokens)
      return llvm::createStringError(
          "--seqlens: a sequence of %lld tokens; the int32 offsets of "
          "cu_seqlens take at most %lld",
          (long long)len, (long long)kMaxTokens);
    if (len > kMaxTokens - total)
      return llvm::createStringError(
          "--seqlens: the sequences hold %lld tokens; the int32 offsets of "
          "cu_seqlens take at most %lld",
          (long long)(total + len), (long long)kMaxTokens);
    total += len;
    cu.push_back(int32_t(total));
  }
  return cu;
}

/// Checks that this run's buffers fit in memory: the kernel's q, k, v, out
/// in its element type and lse in f32, the reference's q, k, v, out and lse
/// in double with a flag per row. Checked arithmetic throughout; the
/// allocation may still fail.
llvm::Error checkMemory(const AttentionConfig &config, int64_t tokens,
                        bool withGrad) {
  auto bytes = attentionBufferBytes(config, tokens);
  if (!bytes)
    return bytes.takeError();
  int64_t element = elementTypeBytes(config.dtype);
  int64_t qElements = bytes->q / element, kvElements = bytes->kv / element;
  int64_t rows = bytes->lse / 4;
  // 2 * elements cannot overflow: elements * element (>= 2) did not.
  // With the backward: dout and dq, dk and dv, dlse, in both forms, and
  // the flags of unsure rows and keys.
  const int64_t g = withGrad ? 1 : 0;
  const std::pair<int64_t, int64_t> parts[] = {
      {2 * qElements, element}, {2 * kvElements, element}, {rows, 4},
      {2 * qElements, 8},       {2 * kvElements, 8},       {rows, 8 + 1},
      {g * qElements, 2 * (element + 8)}, {g * kvElements, 2 * (element + 8)},
      {g * rows, 4 + 8 + 1},    {g * kvElements, 1}};
  int64_t total = 0;
  for (auto [count, size] : parts) {
    std::optional<int64_t> part = llvm::checkedMul(count, size);
    std::optional<int64_t> sum =
        part ? llvm::checkedAdd(total, *part) : std::nullopt;
    if (!sum)
      return llvm::createStringError(
          "the buffers of %lld tokens would need more than 2^63 bytes",
          (long long)tokens);
    total = *sum;
  }
  uint64_t memory = hostMemoryBytes();
  if (memory && uint64_t(total) > memory)
    return llvm::createStringError(
        "the buffers of %lld tokens need %lld bytes, more than the %llu bytes "
        "of memory and swap here",
        (long long)tokens, (long long)total, (unsigned long long)memory);
  return llvm::Error::success();
}

/// One backward run: its inputs as the reference sees them and the
/// gradients the kernel wrote.
struct GradRun {
  std::vector<double> dout, dlse;
  bool withDlse = false;
  std::optional<Buffer> dq, dk, dv;
  double seconds = 0;
};

/// Runs the backward of `kernel` `repeat` times on the forward's inputs
/// and results, with a random upstream gradient of out (and of lse unless
/// --no-grad-lse), the gradients poisoned with NaN before each run.
llvm::Expected<GradRun>
runBackward(const CpuAttentionKernel &kernel, const AttentionConfig &config,
            const ref::Problem &problem, const Buffer &q, const Buffer &k,
            const Buffer &v, const Buffer &out, const std::vector<float> &lse,
            const std::vector<int32_t> &cu, int64_t numSequences,
            std::mt19937_64 &rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  GradRun run;
  std::optional<Buffer> dout;
  std::vector<float> dlse;
  try {
    dout.emplace(config.dtype, q.size());
    run.dq.emplace(config.dtype, q.size());
    run.dk.emplace(config.dtype, k.size());
    run.dv.emplace(config.dtype, v.size());
    run.dout.resize(q.size());
    if (!noGradLse) {
      dlse.resize(lse.size());
      run.dlse.resize(lse.size());
    }
  } catch (const std::bad_alloc &) {
    return llvm::createStringError(
        "could not allocate the backward's buffers of %lld tokens",
        (long long)problem.cuSeqlens.back());
  }
  for (size_t i = 0; i < dout->size(); ++i)
    run.dout[i] = dout->set(i, normal(rng));
  for (size_t i = 0; i < dlse.size(); ++i)
    run.dlse[i] = dlse[i] = normal(rng);
  run.withDlse = !noGradLse;

  GradBuffers buffers;
  buffers.q = q.bytes.data();
  buffers.k = k.bytes.data();
  buffers.v = v.bytes.data();
  buffers.cuSeqlens = cu.data();
  buffers.out = out.bytes.data();
  buffers.lse = lse.data();
  buffers.dout = dout->bytes.data();
  buffers.dlse = noGradLse ? nullptr : dlse.data();
  buffers.dq = run.dq->bytes.data();
  buffers.dk = run.dk->bytes.data();
  buffers.dv = run.dv->bytes.data();
  buffers.tokens = cu.back();
  buffers.numSequences = numSequences;
  std::vector<double> times;
  for (int i = 0; i < repeat; ++i) {
    run.dq->poison();
    run.dk->poison();
    run.dv->poison();
    auto t0 = std::chrono::steady_clock::now();
    if (auto e = kernel.runGrad(buffers))
      return std::move(e);
    times.push_back(std::chrono::duration<double>(
                        std::chrono::steady_clock::now() - t0)
                        .count());
  }
  std::sort(times.begin(), times.end());
  run.seconds = times[times.size() / 2];
  return std::move(run);
}

/// The largest relative error of a gradient's tensor the check accepts:
/// ||got - want|| / ||want|| over the compared rows. The gradient is
/// computed from the kernel's own `out` (rounded to the element type) and
/// rounded once more, so the low-precision types are looser. The grid's
/// largest errors: f32 4e-7, f16 3e-4, bf16 2.6e-3; the tolerances leave
/// room for longer sums without letting a wrong term through.
double gradTolerance(ElementType type) {
  switch (type) {
  case ElementType::F32:
    return 2e-5;
  case ElementType::F16:
    return 2e-3;
  case ElementType::BF16:
    return 1e-2;
  }
  return 0;
}

/// Compares the kernel's dq, dk and dv with the reference's, rows of
/// `width` values at a time, skipping the rows `unsure` flags; prints one
/// line per tensor and returns whether every one is within tolerance (a NaN
/// never is, and neither is a tensor whose every row was skipped while
/// there were rows).
bool checkBackward(const AttentionConfig &config, const ref::Problem &problem,
                   const GradRun &run) {
  std::vector<double> dlse = run.dlse;
  bool dropDlse = gradMutation == "drop-grad-lse";
  ref::GradResult want = ref::attentionGrad(
      problem, run.dout, run.withDlse && !dropDlse ? &dlse : nullptr);
  const double tolerance = gradTolerance(config.dtype);
  const int64_t D = config.headDim;
  struct Tensor {
    const char *name;
    const Buffer &got;
    const std::vector<double> &want;
    const std::vector<uint8_t> &unsure;
    const char *rows;
  };
  bool swap = gradMutation == "swap-dk-dv";
  const Tensor tensors[] = {
      {"dq", *run.dq, want.dq, want.dqUnsure, "rows"},
      {"dk", *run.dk, swap ? want.dv : want.dk, want.dkvUnsure, "keys"},
      {"dv", *run.dv, swap ? want.dk : want.dv, want.dkvUnsure, "keys"}};
  bool pass = true;
  for (const Tensor &t : tensors) {
    double errSquares = 0, wantSquares = 0, maxAbs = 0;
    int64_t compared = 0, skipped = 0;
    for (size_t row = 0; row < t.unsure.size(); ++row) {
      if (t.unsure[row]) {
        ++skipped;
        continue;
      }
      ++compared;
      for (int64_t d = 0; d < D; ++d) {
        double got = t.got.get(row * D + d), expect = t.want[row * D + d];
        double err = std::fabs(got - expect);
        // NaN sticks: every later comparison with it is false.
        maxAbs = std::isnan(err) || std::isnan(maxAbs)
                     ? NAN
                     : std::max(maxAbs, err);
        errSquares += err * err;
        wantSquares += expect * expect;
      }
    }
    double relative =
        wantSquares > 0 ? std::sqrt(errSquares / wantSquares)
                        : (errSquares > 0 ? INFINITY : 0.0);
    if (std::isnan(errSquares))
      relative = NAN;
    bool ok = relative <= tolerance &&
              (compared > 0 || t.unsure.empty());
    llvm::outs() << llvm::format(
        "%s: relative error %.3g (tolerance %.1g), max abs %.3g; %lld %s "
        "compared, %lld skipped as unsure: %s\n",
        t.name, relative, tolerance, maxAbs, (long long)compared, t.rows,
        (long long)skipped, ok ? "ok" : "WRONG");
    pass &= ok;
  }
  return pass;
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
    // Checked as given: a value that rounds to 0 would mean the default.
    if (auto e = checkScale(scale))
      return fail(std::move(e));
    config.scale = float(scale);
  }
  auto type = parseElementType(dtype);
  if (!type)
    return fail(type.takeError());
  config.dtype = *type;
  config.backward = grad;
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
  if (gradMutation != "none" && gradMutation != "drop-grad-lse" &&
      gradMutation != "swap-dk-dv")
    return fail(llvm::createStringError(
        "--mutate-grad-check must be none, drop-grad-lse or swap-dk-dv; got "
        "'%s'",
        gradMutation.c_str()));
  if (!grad && (noGradLse || gradMutation != "none"))
    return fail(llvm::createStringError(
        "--no-grad-lse and --mutate-grad-check need --grad"));
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

  if (repeat < 1 || repeat > kMaxRepeat)
    return fail(llvm::createStringError("--repeat must be in [1, %d], got %d",
                                        kMaxRepeat, int(repeat)));
  std::vector<int64_t> lengths =
      seqlens.empty() ? std::vector<int64_t>{300, 17, 1, 256}
                      : std::vector<int64_t>(seqlens.begin(), seqlens.end());
  auto offsets = offsetsOf(lengths);
  if (!offsets)
    return fail(offsets.takeError());
  std::vector<int32_t> cu = std::move(*offsets);
  const int64_t tokens = cu.back();
  if (auto e = checkMemory(config, tokens, grad))
    return fail(std::move(e));
  if (auto e = CpuAttentionKernel::check(config, options))
    return fail(std::move(e));

  auto start = std::chrono::steady_clock::now();
  auto kernel = CpuAttentionKernel::compile(config, options);
  if (!kernel)
    return fail(kernel.takeError());
  for (llvm::StringRef line :
       llvm::split(llvm::StringRef((*kernel)->cacheWarning()).rtrim(), '\n'))
    if (!line.empty())
      llvm::errs() << "moba-run: warning: " << line << "\n";
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
  // checkMemory bounds these sizes, but the memory may still be taken.
  std::optional<Buffer> qBuffer, kBuffer, vBuffer, outBuffer;
  std::vector<float> lse;
  try {
    qBuffer.emplace(config.dtype, tokens * config.numHeads * config.headDim);
    kBuffer.emplace(config.dtype, tokens * config.numKvHeads * config.headDim);
    vBuffer.emplace(config.dtype, tokens * config.numKvHeads * config.headDim);
    outBuffer.emplace(config.dtype, qBuffer->size());
    lse.resize(tokens * config.numHeads);
    for (auto [buffer, values] :
         {std::pair{&*qBuffer, &problem.q}, std::pair{&*kBuffer, &problem.k},
          std::pair{&*vBuffer, &problem.v}})
      values->resize(buffer->size());
  } catch (const std::bad_alloc &) {
    return fail(llvm::createStringError(
        "could not allocate the buffers of %lld tokens", (long long)tokens));
  }
  Buffer &q = *qBuffer, &k = *kBuffer, &v = *vBuffer, &out = *outBuffer;
  std::pair<Buffer *, std::vector<double> *> inputs[] = {
      {&q, &problem.q}, {&k, &problem.k}, {&v, &problem.v}};
  for (auto [buffer, values] : inputs) {
    for (size_t i = 0; i < buffer->size(); ++i)
      (*values)[i] = buffer->set(i, normal(rng));
  }
  if (duplicateBlocks) {
    // Copy the keys of block 2i over block 2i+1 (full blocks only), in the
    // kernel's buffer and in the reference's view of it.
    // `end - first >= block`, not `first + block <= end`: the sum of a
    // block_size beyond the int32 range (before it was limited) and a token
    // index overflowed and wrapped, and the copy ran on without end.
    const int64_t row = config.numKvHeads * config.headDim;
    const int64_t block = config.blockSize;
    for (size_t b = 0; b + 1 < cu.size(); ++b)
      for (int64_t first = cu[b] + block; int64_t(cu[b + 1]) - first >= block;
           first += 2 * block)
        for (int64_t i = 0; i < config.blockSize * row; ++i) {
          int64_t from = (first - config.blockSize) * row + i;
          problem.k[first * row + i] = k.set(first * row + i,
                                             float(problem.k[from]));
        }
  }

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
  for (int i = 0; i < std::max(1, int(repeat)); ++i) {
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
  std::optional<GradRun> gradRun;
  if (grad) {
    auto ran = runBackward(**kernel, config, problem, q, k, v, out, lse, cu,
                           int64_t(lengths.size()), rng);
    if (!ran)
      return fail(ran.takeError());
    gradRun = std::move(*ran);
    llvm::outs() << llvm::format("backward: %.3f ms (median of %zu)%s\n",
                                 1e3 * gradRun->seconds, size_t(repeat),
                                 noGradLse ? ", no gradient of lse" : "");
  }
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
  // An empty batch has no row to compare: the kernel ran on it and wrote
  // nothing, which is all it can be checked for. Otherwise a run where
  // every row was skipped proves nothing.
  bool pass = bad == 0 && (compared > 0 || tokens == 0);
  if (gradRun) {
    llvm::outs() << "forward: " << (pass ? "PASS" : "FAIL") << "\n";
    pass &= checkBackward(config, problem, *gradRun);
  }
  llvm::outs() << (pass ? "PASS" : "FAIL") << "\n";
  return pass ? 0 : 1;
}
