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

/// The ops that exist on tensors and, after bufferization, on buffers, and
/// that write every element of their inits, so never read them (a fresh
/// tensor.empty needs no copy):
///  * moba.grouped_block_attention writes every slot of the partials
///    (listed slots with their block's attention, the others -inf);
///  * moba.gate_topk writes the K slots of every token and head;
///  * moba.group_queries writes every start and count, and every entry
///    (listed, or -1 past the last);
///  * moba.grouped_block_attention_grad writes every dq partial (0 for a
///    slot that attends nothing) and every dk and dv row (0 for a key no
///    query attends);
///  * moba.paged_decode_attention writes every output row and log-sum-exp
///    (NaN for a token in no sequence or one of a sequence that failed its
///    cache check).
/// The op is re-created on its operands' buffers, with no results; its
/// results become the init buffers.
template <typename OpTy>
struct WriteOnlyInitsBufferization
    : DstBufferizableOpInterfaceExternalModel<WriteOnlyInitsBufferization<OpTy>,
                                              OpTy> {
  bool bufferizesToMemoryRead(Operation *op, OpOperand &operand,
                              const AnalysisState &) const {
    return !cast<DestinationStyleOpInterface>(op).isDpsInit(&operand);
  }

  LogicalResult bufferize(Operation *op, RewriterBase &rewriter,
                          const BufferizationOptions &options,
                          BufferizationState &state) const {
    SmallVector<Value> buffers;
    for (Value operand : op->getOperands()) {
      FailureOr<Value> buffer = getBuffer(rewriter, operand, options, state);
      if (failed(buffer))
        return failure();
      buffers.push_back(*buffer);
    }
    rewriter.setInsertionPoint(op);
    OpTy::create(rewriter, op->getLoc(), TypeRange{}, buffers,
                 op->getAttrs());
    SmallVector<Value> inits;
    for (OpOperand &init :
         cast<DestinationStyleOpInterface>(op).getDpsInitsMutable())
      inits.push_back(buffers[init.getOperandNumber()]);
    replaceOpWithBufferizedValues(rewriter, op, inits);
    return success();
  }
};

} // namespace

void mlir::moba::registerBufferizableOpInterfaceExternalModels(
    DialectRegistry &registry) {
  registry.addExtension(+[](MLIRContext *context, MobaDialect *) {
    GroupedBlockAttentionOp::attachInterface<
        WriteOnlyInitsBufferization<GroupedBlockAttentionOp>>(*context);
    GateTopKOp::attachInterface<WriteOnlyInitsBufferization<GateTopKOp>>(
        *context);
    GroupQueriesOp::attachInterface<
        WriteOnlyInitsBufferization<GroupQueriesOp>>(*context);
    GroupedBlockAttentionGradOp::attachInterface<
        WriteOnlyInitsBufferization<GroupedBlockAttentionGradOp>>(*context);
    PagedDecodeAttentionOp::attachInterface<
        WriteOnlyInitsBufferization<PagedDecodeAttentionOp>>(*context);
  });
}
