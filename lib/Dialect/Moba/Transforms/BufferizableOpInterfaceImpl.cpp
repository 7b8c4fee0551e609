//===- BufferizableOpInterfaceImpl.cpp - moba ops on buffers --------------===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#include "moba/Dialect/Moba/Transforms/BufferizableOpInterfaceImpl.h"

#include "moba/Dialect/Moba/IR/MobaDialect.h"
#include "moba/Dialect/Moba/IR/MobaOps.h"

#include "mlir/Dialect/Bufferization/IR/BufferizableOpInterface.h"
#include "mlir/Dialect/Bufferization/IR/DstBufferizableOpInterfaceImpl.h"
#include "mlir/IR/DialectRegistry.h"

using namespace mlir;
using namespace mlir::bufferization;
using namespace mlir::moba;

namespace {

struct GroupedBlockAttentionBufferization
    : DstBufferizableOpInterfaceExternalModel<
          GroupedBlockAttentionBufferization, GroupedBlockAttentionOp> {
  /// Every slot of the partials is written (listed slots with their block's
  /// attention, the others with zeros and -inf): the inits are never read,
  /// so a fresh tensor.empty needs no copy.
  bool bufferizesToMemoryRead(Operation *op, OpOperand &operand,
                              const AnalysisState &) const {
    return !cast<DestinationStyleOpInterface>(op).isDpsInit(&operand);
  }

  LogicalResult bufferize(Operation *op, RewriterBase &rewriter,
                          const BufferizationOptions &options,
                          BufferizationState &state) const {
    auto grouped = cast<GroupedBlockAttentionOp>(op);
    SmallVector<Value> buffers;
    for (Value operand : op->getOperands()) {
      FailureOr<Value> buffer = getBuffer(rewriter, operand, options, state);
      if (failed(buffer))
        return failure();
      buffers.push_back(*buffer);
    }
    rewriter.setInsertionPoint(op);
    GroupedBlockAttentionOp::create(rewriter, op->getLoc(), TypeRange{},
                                    buffers, op->getAttrs());
    replaceOpWithBufferizedValues(
        rewriter, op,
        {buffers[grouped.getPartialOutInitMutable().getOperandNumber()],
         buffers[grouped.getPartialLseInitMutable().getOperandNumber()]});
    return success();
  }
};

/// moba.gate_topk writes every element of its selection (the K slots of
/// every token and head): `init` is never read.
struct GateTopKBufferization
    : DstBufferizableOpInterfaceExternalModel<GateTopKBufferization,
                                              GateTopKOp> {
  bool bufferizesToMemoryRead(Operation *op, OpOperand &operand,
                              const AnalysisState &) const {
    return !cast<DestinationStyleOpInterface>(op).isDpsInit(&operand);
  }

  LogicalResult bufferize(Operation *op, RewriterBase &rewriter,
                          const BufferizationOptions &options,
                          BufferizationState &state) const {
    auto gate = cast<GateTopKOp>(op);
    SmallVector<Value> buffers;
    for (Value operand : op->getOperands()) {
      FailureOr<Value> buffer = getBuffer(rewriter, operand, options, state);
      if (failed(buffer))
        return failure();
      buffers.push_back(*buffer);
    }
    rewriter.setInsertionPoint(op);
    GateTopKOp::create(rewriter, op->getLoc(), TypeRange{}, buffers,
                       op->getAttrs());
    replaceOpWithBufferizedValues(
        rewriter, op, {buffers[gate.getInitMutable().getOperandNumber()]});
    return success();
  }
};

} // namespace

void mlir::moba::registerBufferizableOpInterfaceExternalModels(
    DialectRegistry &registry) {
  registry.addExtension(+[](MLIRContext *context, MobaDialect *) {
    GroupedBlockAttentionOp::attachInterface<
        GroupedBlockAttentionBufferization>(*context);
    GateTopKOp::attachInterface<GateTopKBufferization>(*context);
  });
}
