//===- AttentionKernelPlan.cpp - The tensor-core kernel's plan ------------===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#include "moba/Conversion/AttentionKernelPlan.h"

#include "llvm/ADT/StringExtras.h"
#include "llvm/ADT/Twine.h"

#include <algorithm>
#include <utility>

using namespace mlir::moba;
using llvm::StringRef;

namespace {

/// One value of an enum: its name and what it means (an option's help; the
/// merge mode has no option of its own: moba-gpu-pipeline's
/// mma-fused-merge is a bool).
template <typename Enum> struct EnumName {
  Enum value;
  const char *name;
  const char *help;
};

constexpr EnumName<MatrixInstruction> kMatrixInstructions[] = {
    {MatrixInstruction::MmaSync, "mma.sync",
     "mma.sync m16n8k16 (sm_80 and newer)"},
    {MatrixInstruction::Wgmma, "wgmma",
     "sm_90a's wgmma (head_dim 64 or 128; other ops keep mma.sync)"},
};

constexpr EnumName<KeyValueLoads> kKeyValueLoads[] = {
    {KeyValueLoads::CpAsync, "cp.async",
     "every thread copies 16 bytes at a time"},
    {KeyValueLoads::Tma, "tma",
     "one thread starts TMA bulk copies that complete on mbarriers (wgmma)"},
    {KeyValueLoads::TmaMulticast, "tma-multicast",
     "tma shared by clusters of two CTAs reading the same keys"},
};

constexpr EnumName<KernelSchedule> kKernelSchedules[] = {
    {KernelSchedule::Auto, "auto",
     "overlapped with cp.async where one CTA fills an SM, else in order"},
    {KernelSchedule::InOrder, "in-order",
     "each chunk's products and softmax one after the other"},
    {KernelSchedule::Overlapped, "overlapped",
     "each chunk's softmax under the previous chunk's P V (wgmma, "
     "cp.async)"},
    {KernelSchedule::WarpSpecialized, "warp-specialized",
     "a producer warpgroup fills the TMA ring, consumer warpgroups take "
     "its registers and multiply"},
    {KernelSchedule::WarpSpecializedOverlapped, "warp-specialized-overlapped",
     "warp-specialized, each consumer's softmax under the previous chunk's "
     "P V"},
    {KernelSchedule::PingPong, "ping-pong",
     "warp-specialized-overlapped, the consumers taking turns on the tensor "
     "cores"},
    {KernelSchedule::Persistent, "persistent",
     "warp-specialized on persistent CTAs, the producer running ahead "
     "across tiles"},
};

constexpr EnumName<MergeMode> kMergeModes[] = {
    {MergeMode::Separate, "separate",
     "the partials merged by kernels of their own"},
    {MergeMode::Fused, "fused", "each row merged inside the attention kernel"},
};

template <typename Enum, size_t N>
StringRef nameIn(const EnumName<Enum> (&table)[N], Enum value) {
  for (const EnumName<Enum> &entry : table)
    if (entry.value == value)
      return entry.name;
  return "<unknown>";
}

template <typename Enum, size_t N>
std::optional<Enum> parseIn(const EnumName<Enum> (&table)[N], StringRef name) {
  for (const EnumName<Enum> &entry : table)
    if (name == entry.name)
      return entry.value;
  return std::nullopt;
}

template <typename Enum, size_t N, size_t... I>
llvm::cl::ValuesClass valuesOf(const EnumName<Enum> (&table)[N],
                               std::index_sequence<I...>) {
  return llvm::cl::ValuesClass({llvm::cl::OptionEnumValue{
      table[I].name, static_cast<int>(table[I].value), table[I].help}...});
}

template <typename Enum, size_t N>
llvm::cl::ValuesClass valuesOf(const EnumName<Enum> (&table)[N]) {
  return valuesOf(table, std::make_index_sequence<N>());
}

/// The name of the field that the pass option `passName` holds, as
/// `spelling` spells it.
std::string fieldName(StringRef passName, PlanSpelling spelling) {
  switch (spelling) {
  case PlanSpelling::PassOption:
    return passName.str();
  case PlanSpelling::PipelineOption:
    return "mma-" + passName.str();
  case PlanSpelling::CField: {
    std::string name = "mma_" + passName.str();
    std::replace(name.begin(), name.end(), '-', '_');
    return name;
  }
  }
  return passName.str();
}

} // namespace

StringRef mlir::moba::nameOf(MatrixInstruction value) {
  return nameIn(kMatrixInstructions, value);
}
StringRef mlir::moba::nameOf(KeyValueLoads value) {
  return nameIn(kKeyValueLoads, value);
}
StringRef mlir::moba::nameOf(KernelSchedule value) {
  return nameIn(kKernelSchedules, value);
}
StringRef mlir::moba::nameOf(MergeMode value) {
  return nameIn(kMergeModes, value);
}

std::optional<MatrixInstruction>
mlir::moba::parseMatrixInstruction(StringRef name) {
  return parseIn(kMatrixInstructions, name);
}
std::optional<KeyValueLoads> mlir::moba::parseKeyValueLoads(StringRef name) {
  return parseIn(kKeyValueLoads, name);
}
std::optional<KernelSchedule> mlir::moba::parseKernelSchedule(StringRef name) {
  return parseIn(kKernelSchedules, name);
}
std::optional<MergeMode> mlir::moba::parseMergeMode(StringRef name) {
  return parseIn(kMergeModes, name);
}

llvm::cl::ValuesClass mlir::moba::matrixInstructionOptionValues() {
  return valuesOf(kMatrixInstructions);
}
llvm::cl::ValuesClass mlir::moba::keyValueLoadsOptionValues() {
  return valuesOf(kKeyValueLoads);
}
llvm::cl::ValuesClass mlir::moba::kernelScheduleOptionValues() {
  return valuesOf(kKernelSchedules);
}

std::string AttentionKernelPlan::print() const {
  return (nameOf(instruction) + "," + nameOf(loads) + "," + nameOf(schedule) +
          "," + nameOf(merge) + ",warps=" + llvm::Twine(warps) + ",key-chunk=" +
          llvm::Twine(keyChunk) + ",stages=" + llvm::Twine(stages))
      .str();
}

llvm::Expected<AttentionKernelPlan> AttentionKernelPlan::parse(StringRef text) {
  AttentionKernelPlan plan;
  // Which fields an item has named: instruction, loads, schedule, merge,
  // warps, key-chunk, stages.
  bool named[7] = {};
  auto once = [&](int field, StringRef item) -> llvm::Error {
    if (named[field])
      return llvm::createStringError(
          "kernel plan '%s': '%s' sets a field named before",
          text.str().c_str(), item.str().c_str());
    named[field] = true;
    return llvm::Error::success();
  };
  llvm::SmallVector<StringRef> items;
  text.split(items, ',');
  for (StringRef item : items) {
    if (auto value = parseMatrixInstruction(item)) {
      if (llvm::Error e = once(0, item))
        return std::move(e);
      plan.instruction = *value;
      continue;
    }
    if (auto value = parseKeyValueLoads(item)) {
      if (llvm::Error e = once(1, item))
        return std::move(e);
      plan.loads = *value;
      continue;
    }
    if (auto value = parseKernelSchedule(item)) {
      if (llvm::Error e = once(2, item))
        return std::move(e);
      plan.schedule = *value;
      continue;
    }
    if (auto value = parseMergeMode(item)) {
      if (llvm::Error e = once(3, item))
        return std::move(e);
      plan.merge = *value;
      continue;
    }
    auto [key, digits] = item.split('=');
    int field = key == "warps"       ? 4
                : key == "key-chunk" ? 5
                : key == "stages"    ? 6
                                     : -1;
    int64_t number = 0;
    if (field < 0 || !item.contains('='))
      return llvm::createStringError(
          "kernel plan '%s': unknown item '%s' (an instruction, loads, "
          "schedule or merge name, or warps=, key-chunk=, stages=)",
          text.str().c_str(), item.str().c_str());
    // Decimal digits only: getAsInteger would take 0x10 and 010 too.
    if (digits.empty() || digits.size() > 18 ||
        !llvm::all_of(digits, llvm::isDigit) || digits.getAsInteger(10, number))
      return llvm::createStringError(
          "kernel plan '%s': '%s' needs a decimal integer", text.str().c_str(),
          item.str().c_str());
    if (llvm::Error e = once(field, item))
      return std::move(e);
    (field == 4   ? plan.warps
     : field == 5 ? plan.keyChunk
                  : plan.stages) = number;
  }
  return plan;
}

llvm::SmallVector<std::string>
AttentionKernelPlan::fieldProblems(PlanSpelling spelling) const {
  llvm::SmallVector<std::string> found;
  if (warps < 1 || warps > 16)
    found.push_back(fieldName("warps", spelling) + " must be in [1, 16], got " +
                    std::to_string(warps));
  if (keyChunk < 16 || keyChunk > 256 || keyChunk % 16 != 0)
    found.push_back(fieldName("key-chunk", spelling) +
                    " must be a multiple of 16 in [16, 256], got " +
                    std::to_string(keyChunk));
  if (stages < 2 || stages > 4)
    found.push_back(fieldName("stages", spelling) +
                    " must be in [2, 4], got " + std::to_string(stages));
  return found;
}

llvm::SmallVector<std::string>
AttentionKernelPlan::problems(std::optional<StringRef> chip,
                              PlanSpelling spelling) const {
  std::string instructionField = fieldName("instruction", spelling);
  std::string loadsField = fieldName("key-value-loads", spelling);
  std::string scheduleField = fieldName("schedule", spelling);
  std::string warpsField = fieldName("warps", spelling);
  std::string chunkField = fieldName("key-chunk", spelling);
  std::string stagesField = fieldName("stages", spelling);
  bool wgmma = instruction == MatrixInstruction::Wgmma;
  llvm::SmallVector<std::string> found = fieldProblems(spelling);
  auto problem = [&](const llvm::Twine &message) {
    found.push_back(message.str());
  };
  // wgmma is sm_90a's alone: later chips have other matrix instructions.
  if (wgmma && chip && *chip != "sm_90a")
    problem(instructionField + "=wgmma needs chip sm_90a, got '" + *chip + "'");
  if (wgmma && warps % 4 != 0)
    problem(instructionField + "=wgmma needs " + warpsField +
            " a multiple of 4 (whole warpgroups), got " + llvm::Twine(warps));
  if (wgmma && keyChunk % 64 != 0)
    problem(instructionField + "=wgmma needs " + chunkField +
            " a multiple of 64 (whole 64-column panels), got " +
            llvm::Twine(keyChunk));
  if (usesTma() && !wgmma)
    problem(loadsField + "=" + nameOf(loads) + " needs " + instructionField +
            "=wgmma (TMA is sm_90's), got '" + nameOf(instruction) + "'");
  if (stages > 2 && !usesTma())
    problem(stagesField + "=" + llvm::Twine(stages) + " needs " + loadsField +
            " tma or tma-multicast (the cp.async loops are double-buffered), "
            "got '" +
            nameOf(loads) + "'");
  if (schedule == KernelSchedule::Overlapped && !wgmma)
    problem(scheduleField + "=overlapped needs " + instructionField +
            "=wgmma, got '" + nameOf(instruction) + "'");
  if (schedule == KernelSchedule::Overlapped && usesTma())
    problem(scheduleField + "=overlapped needs " + loadsField +
            "=cp.async (the TMA loop runs in order), got '" + nameOf(loads) +
            "'");
  if (warpSpecialized() && !wgmma)
    problem(scheduleField + "=" + nameOf(schedule) + " needs " +
            instructionField + "=wgmma, got '" + nameOf(instruction) + "'");
  if (warpSpecialized() && loads != KeyValueLoads::Tma)
    problem(scheduleField + "=" + nameOf(schedule) + " needs " + loadsField +
            "=tma (its producer owns one CTA's ring), got '" + nameOf(loads) +
            "'");
  if (schedule == KernelSchedule::PingPong && (warps < 8 || warps % 4 != 0))
    problem(scheduleField + "=ping-pong needs " + warpsField +
            " 8 or 12 (two or three consumer warpgroups to take turns), got " +
            llvm::Twine(warps));
  if (warpSpecialized() && warps > 12)
    problem(scheduleField + "=" + nameOf(schedule) + " needs " + warpsField +
            " at most 12 (three consumer warpgroups beside the producer's), "
            "got " + llvm::Twine(warps));
  return found;
}
