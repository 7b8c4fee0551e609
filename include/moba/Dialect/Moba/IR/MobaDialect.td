//===- MobaDialect.td - The moba dialect definition --------*- tablegen -*-===//
//
// Part of moba-mlir. The dialect that expresses MoBA (Mixture of Block
// Attention, arXiv 2502.13189) at two levels: one `moba.attention` op, and the
// decomposed pooling / gating / selection / sparse attention / merge ops that
// tiling and GPU lowering work on.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_DIALECT_MOBA_IR_MOBADIALECT_TD
#define MOBA_DIALECT_MOBA_IR_MOBADIALECT_TD

include "mlir/IR/OpBase.td"

def Moba_Dialect : Dialect {
  let name = "moba";
  let cppNamespace = "::mlir::moba";
  let summary = "Mixture of Block Attention (MoBA)";
  let description = [{
    The `moba` dialect expresses MoBA: keys are pooled into blocks of
    `block_size` tokens, every query scores the block means with a dot product
    (the gate), keeps its `top_k` best blocks, and attends to the keys of the
    chosen blocks only. The contract every lowering must match is written in
    `docs/semantics.md`.

    Two levels:

    * `moba.attention` is what a framework emits: q, k, v in, the attention
      output (and optionally the log-sum-exp) out, for a packed
      variable-length layout `[tokens, heads, head_dim]` with `cu_seqlens`, or
      a batched layout `[batch, seq, heads, head_dim]`.
    * `moba-decompose` rewrites it into `moba.block_pool`, `moba.gate`,
      `moba.topk` and `moba.sparse_attention`, all on the packed
      variable-length layout and in destination-passing style, so that tiling
      passes can slice them like linalg ops; `moba.lse_merge` combines
      partial results through their log-sum-exp (the grouped per-block
      attention, split-K decode, context parallelism).

    Head layouts (MHA, GQA, MQA) come from the types: `Hq` query heads share
    `Hkv` key/value heads, query head `h` reading key/value head
    `h / (Hq / Hkv)`. Key/value tensors are never replicated per query head.

    Limits, checked by every op's verifier wherever the size is static (a
    dynamic size is checked by the runtime that supplies it):

    * at least one query head and one key/value head;
    * `head_dim` at most 1024 and `top_k` (the selection width `K`, and the
      number of partials of `moba.lse_merge`) at most 1024: the loop
      lowerings hold a row of `head_dim` values and a query's `K` selected
      blocks in vector registers, and the GPU kernels in register arrays;
    * every tensor whose sizes are all static holds fewer than 2^62 bytes, so
      that no product of its sizes wraps a signed 64-bit index.
  }];
  let hasCanonicalizer = 0;
  let useDefaultAttributePrinterParser = 0;
  let useDefaultTypePrinterParser = 0;
}

//===----------------------------------------------------------------------===//
// Base class and type constraints.
//===----------------------------------------------------------------------===//

class Moba_Op<string mnemonic, list<Trait> traits = []> :
    Op<Moba_Dialect, mnemonic, traits>;

/// Element types that q, k and v may hold. Accumulation is always f32.
def Moba_InputElement : AnyTypeOf<[F16, BF16, F32]>;

/// A ranked tensor of q/k/v/output elements.
def Moba_QKVTensor : RankedTensorOf<[F16, BF16, F32]>;

/// Running statistics, block means and scores are kept in f32.
def Moba_F32Tensor : RankedTensorOf<[F32]>;

/// Cumulative sequence offsets. The element type is checked by the verifiers
/// (rather than by ODS) so that a wrong one gets a message naming the operand.
def Moba_CuSeqlens : TensorOf<[AnyType]>;

/// Selected block indices, local to each query's sequence; -1 pads.
def Moba_IndexTensor : RankedTensorOf<[I32]>;

/// Operands of the ops that also exist on buffers (after bufferization).
def Moba_QKVShaped : AnyTypeOf<[Moba_QKVTensor, MemRefOf<[F16, BF16, F32]>]>;
def Moba_F32Shaped : AnyTypeOf<[Moba_F32Tensor, MemRefOf<[F32]>]>;
def Moba_IndexShaped : AnyTypeOf<[Moba_IndexTensor, MemRefOf<[I32]>]>;
def Moba_CuSeqlensShaped : AnyTypeOf<[Moba_CuSeqlens, MemRefOf<[AnyType]>]>;

#endif // MOBA_DIALECT_MOBA_IR_MOBADIALECT_TD
