//===- TmaLoader.cpp - K and V by TMA into the stage ring ----------------===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#include "TmaLoader.h"

using namespace mlir;
using namespace mlir::moba;
using namespace mlir::moba::grouped_attention;
using nvvm_kernel::ifThen;

TmaLoader::TmaLoader(const AttentionKernel &kernel, ImplicitLocOpBuilder &b,
                     const CtaTile &t)
    : kernel(kernel), t(t) {
  KernelBuilder e{b, kernel.element()};
  WgmmaSharedPlan plan(b, kernel, t.sharedMemory);
  barriers = plan.barriers;
  stageAddress = plan.stageAddress;
  Value maps = memref::ExtractAlignedPointerAsIndexOp::create(
      b, kernel.tensorMaps);
  keyMap = pointer(b, maps, /*space=*/0);
  valueMap = pointer(b, e.add(maps, e.index(kMapBytes)), /*space=*/0);
}

void TmaLoader::initialize(ImplicitLocOpBuilder &b) {
  KernelBuilder e{b, kernel.element()};
  for (int64_t operand = 0; operand < 2; ++operand)
    for (int64_t slot = 0; slot < kernel.shape.stages; ++slot)
      NVVM::MBarrierInitOp::create(b,
                                   fullBarrier(b, operand, e.index(slot)),
                                   e.i32(1), /*predicate=*/Value());
  if (kernel.shape.warpSpecialized())
    for (int64_t slot = 0; slot < kernel.shape.stages; ++slot)
      NVVM::MBarrierInitOp::create(
          b, releaseBarrier(b, e.index(slot)),
          e.i32(kernel.shape.consumerThreads()), /*predicate=*/Value());
  if (kernel.shape.persistent())
    for (int64_t buffer = 0; buffer < 2; ++buffer) {
      NVVM::MBarrierInitOp::create(
          b, queryBarrier(b, e.index(buffer), /*released=*/false),
          e.i32(kernel.shape.queryGatherers()), /*predicate=*/Value());
      NVVM::MBarrierInitOp::create(
          b, queryBarrier(b, e.index(buffer), /*released=*/true),
          e.i32(kernel.shape.consumerThreads()), /*predicate=*/Value());
    }
  NVVM::FenceMbarrierInitOp::create(b);
  for (Value map : {keyMap, valueMap})
    NVVM::FenceProxyAcquireOp::create(b, NVVM::MemScopeKind::GPU, map,
                                      e.i32(kMapBytes));
}

void TmaLoader::issue(ImplicitLocOpBuilder &b, int64_t operand,
                      Value buffer, Value chunk) {
  KernelBuilder e{b, kernel.element()};
  const MmaTileShape &shape = kernel.shape;
  int64_t panels = Layout::panels(kernel.headDim);
  int64_t panelBytes = Layout::panelBytes(shape.keyChunk);
  int64_t bufferBytes = panels * panelBytes;
  auto i32 = [&](Value x) -> Value {
    return arith::IndexCastUIOp::create(b, b.getI32Type(), x);
  };
  Value barrier = fullBarrier(b, operand, buffer);
  NVVM::MBarrierArriveExpectTxOp::create(
      b, Type(), barrier, e.i32(bufferBytes), NVVM::MemScopeKind::CTA,
      /*relaxed=*/false, /*predicate=*/Value());
  Value slot =
      operand == 0 ? buffer : e.add(buffer, e.index(shape.stages));
  Value at = e.add(stageAddress, e.mul(slot, e.index(bufferBytes)));
  Value key =
      i32(e.add(t.keyFirst, e.mul(chunk, e.index(shape.keyChunk))));
  Value head = i32(t.g);
  auto copy = [&](ImplicitLocOpBuilder &cb, int64_t panel,
                  Value multicastMask) {
    KernelBuilder ce{cb, e.element};
    // The destination is in the shared::cluster window (address space
    // 7), where this CTA's shared memory keeps its addresses; a
    // multicast lands at the same offsets in every CTA of the mask, and
    // completes on the barrier at the same offset in each.
    Value destination = LLVM::AddrSpaceCastOp::create(
        cb, LLVM::LLVMPointerType::get(cb.getContext(), 7),
        pointer(cb, ce.add(at, ce.index(panel * panelBytes)),
                /*space=*/3));
    NVVM::CpAsyncBulkTensorGlobalToSharedClusterOp::create(
        cb, destination, operand == 0 ? keyMap : valueMap,
        ValueRange{ce.i32(panel * Layout::kColumns), head, key}, barrier,
        /*im2colOffsets=*/ValueRange{}, multicastMask,
        /*l2CacheHint=*/Value(), NVVM::TMALoadMode::TILE,
        /*isCTAOnly=*/false, /*group=*/nullptr, /*predicate=*/Value());
  };
  auto copyAll = [&](ImplicitLocOpBuilder &cb) {
    for (int64_t panel = 0; panel < panels; ++panel)
      copy(cb, panel, Value());
  };
  if (!t.paired) {
    copyAll(b);
    return;
  }
  auto split = scf::IfOp::create(b, t.paired, /*withElseRegion=*/true);
  OpBuilder::InsertionGuard guard(b);
  b.setInsertionPointToStart(&split.getThenRegion().front());
  // Panel p of operand o is rank (p + o) % 2's: halves at head_dim 128,
  // K and V apart at 64.
  Value both = arith::ConstantIntOp::create(b, b.getI16Type(), 0b11);
  for (int64_t panel = 0; panel < panels; ++panel) {
    Value mine = arith::CmpIOp::create(
        b, arith::CmpIPredicate::eq, t.clusterRank,
        e.i32((panel + operand) % 2));
    ifThen(b, mine, [&](ImplicitLocOpBuilder &cb) {
      copy(cb, panel, both);
    });
  }
  b.setInsertionPointToStart(&split.getElseRegion().front());
  copyAll(b);
}

void TmaLoader::wait(ImplicitLocOpBuilder &b, int64_t operand,
                     Value buffer, Value fill) {
  KernelBuilder e{b, kernel.element()};
  NVVM::MBarrierTryWaitParityOp::create(
      b, fullBarrier(b, operand, buffer), StageRing::parityOfFill(e, fill),
      e.i32(kSuspendHintNs));
}

void TmaLoader::release(ImplicitLocOpBuilder &b, Value buffer) {
  NVVM::MBarrierArriveOp::create(b, Type(), releaseBarrier(b, buffer),
                                 /*count=*/Value(), NVVM::MemScopeKind::CTA,
                                 /*relaxed=*/false);
}

void TmaLoader::waitReleased(ImplicitLocOpBuilder &b, Value buffer,
                             Value fill) {
  KernelBuilder e{b, kernel.element()};
  NVVM::MBarrierTryWaitParityOp::create(b, releaseBarrier(b, buffer),
                                        StageRing::parityOfFill(e, fill),
                                        e.i32(kSuspendHintNs));
}

void TmaLoader::queriesGathered(ImplicitLocOpBuilder &b, Value buffer) {
  NVVM::MBarrierArriveOp::create(b, Type(),
                                 queryBarrier(b, buffer, /*released=*/false),
                                 /*count=*/Value(), NVVM::MemScopeKind::CTA,
                                 /*relaxed=*/false);
}

void TmaLoader::waitQueries(ImplicitLocOpBuilder &b, Value buffer,
                            Value fill) {
  KernelBuilder e{b, kernel.element()};
  NVVM::MBarrierTryWaitParityOp::create(
      b, queryBarrier(b, buffer, /*released=*/false),
      StageRing::parityOfFill(e, fill), e.i32(kSuspendHintNs));
}

void TmaLoader::releaseQueries(ImplicitLocOpBuilder &b, Value buffer) {
  NVVM::MBarrierArriveOp::create(b, Type(),
                                 queryBarrier(b, buffer, /*released=*/true),
                                 /*count=*/Value(), NVVM::MemScopeKind::CTA,
                                 /*relaxed=*/false);
}

void TmaLoader::waitQueriesReleased(ImplicitLocOpBuilder &b, Value buffer,
                                    Value fill) {
  KernelBuilder e{b, kernel.element()};
  NVVM::MBarrierTryWaitParityOp::create(
      b, queryBarrier(b, buffer, /*released=*/true),
      StageRing::parityOfFill(e, fill), e.i32(kSuspendHintNs));
}

Value TmaLoader::queryBarrier(ImplicitLocOpBuilder &b, Value buffer,
                              bool released) {
  KernelBuilder e{b, kernel.element()};
  return barrierAt(
      b, e.add(e.index(3 * kernel.shape.stages + (released ? 2 : 0)), buffer));
}

Value TmaLoader::pointer(ImplicitLocOpBuilder &b, Value address,
                         unsigned space) {
  return LLVM::IntToPtrOp::create(
      b, LLVM::LLVMPointerType::get(b.getContext(), space),
      arith::IndexCastUIOp::create(b, b.getI64Type(), address),
      /*dereferenceable=*/nullptr);
}

Value TmaLoader::fullBarrier(ImplicitLocOpBuilder &b, int64_t operand,
                             Value buffer) {
  KernelBuilder e{b, kernel.element()};
  return barrierAt(b, e.add(e.index(operand * kernel.shape.stages), buffer));
}

Value TmaLoader::releaseBarrier(ImplicitLocOpBuilder &b, Value buffer) {
  KernelBuilder e{b, kernel.element()};
  return barrierAt(b, e.add(e.index(2 * kernel.shape.stages), buffer));
}

Value TmaLoader::barrierAt(ImplicitLocOpBuilder &b, Value index) {
  KernelBuilder e{b, kernel.element()};
  return pointer(b, e.add(barriers, e.mul(index, e.index(8))),
                 /*space=*/3);
}

void grouped_attention::clusterBarrier(ImplicitLocOpBuilder &b,
                                       bool relaxed) {
  if (relaxed)
    NVVM::ClusterArriveRelaxedOp::create(b, b.getUnitAttr());
  else
    NVVM::ClusterArriveOp::create(b, b.getUnitAttr());
  NVVM::ClusterWaitOp::create(b, b.getUnitAttr());
}

void grouped_attention::bufferBarrier(ImplicitLocOpBuilder &b,
                                      const CtaTile &t) {
  if (!t.paired) {
    gpu::BarrierOp::create(b);
    return;
  }
  auto pairs = scf::IfOp::create(b, t.paired, /*withElseRegion=*/true);
  OpBuilder::InsertionGuard guard(b);
  b.setInsertionPointToStart(&pairs.getThenRegion().front());
  // Relaxed: it orders the CTAs' finished reads of the buffers (their
  // wgmma waited for) before the copies that refill them; no write of one
  // CTA is for the other to read.
  clusterBarrier(b, /*relaxed=*/true);
  b.setInsertionPointToStart(&pairs.getElseRegion().front());
  gpu::BarrierOp::create(b);
}

void AttentionKernel::startBulkLoads(ImplicitLocOpBuilder &b,
                                     const CtaTile &t) {
  KernelBuilder e{b, element()};
  TmaLoader loader(*this, b, t);
  Value isIssuer =
      arith::CmpIOp::create(b, arith::CmpIPredicate::eq, t.tid, e.index(0));
  auto issueFirst = [&](ImplicitLocOpBuilder &ib) {
    KernelBuilder ie{ib, e.element};
    loader.issue(ib, 0, ie.index(0), ie.index(0));
    loader.issue(ib, 1, ie.index(0), ie.index(0));
  };
  ifThen(b, isIssuer, [&](ImplicitLocOpBuilder &ib) {
    loader.initialize(ib);
    if (!t.paired)
      issueFirst(ib);
  });
  if (!t.paired)
    return;
  // A paired CTA's copies complete on the other CTA's barriers too: they
  // must be initialized (fence.mbarrier_init releases to the cluster)
  // before either CTA starts one.
  ifThen(b, t.paired, [&](ImplicitLocOpBuilder &ib) { clusterBarrier(ib); });
  ifThen(b, isIssuer, issueFirst);
}
