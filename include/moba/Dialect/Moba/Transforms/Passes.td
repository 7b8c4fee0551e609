//===- Passes.td - moba dialect passes ---------------------*- tablegen -*-===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_DIALECT_MOBA_TRANSFORMS_PASSES_TD
#define MOBA_DIALECT_MOBA_TRANSFORMS_PASSES_TD

include "mlir/Pass/PassBase.td"

def MobaDecompose : Pass<"moba-decompose"> {
  let summary = "Decompose moba.attention into pooling, gate, top-k and "
                "sparse attention";
  let description = [{
    Rewrites every `moba.attention` into the decomposed moba ops on the
    packed variable-length layout:

    1. `moba.block_pool` — the mean key of every block, per key/value head;
    2. `moba.gate` — every query against the block means of its sequence;
    3. `moba.topk` — the own block plus the `top_k - 1` best past blocks
       (or the `top_k` best blocks when not causal);
    4. `moba.sparse_attention` — attention over the selected blocks, with the
       softmax scale (the attribute, or `1/sqrt(head_dim)`) applied here and
       nowhere else.

    The batched layout `[B, S, H, D]` is collapsed to `[B * S, H, D]` with
    `cu_seqlens = [0, S, 2S, ..., B*S]`, and the results are expanded back, so
    that every later stage has one layout to handle. Sizes that depend on
    dynamic dims are computed with `tensor.dim` and `arith`.

    Special cases (top_k of 1, top_k covering every block) are left to the
    canonicalizer, so that this pass stays a direct statement of the
    semantics.
  }];
  let dependentDialects = [
    "::mlir::arith::ArithDialect",
    "::mlir::tensor::TensorDialect",
  ];
}

#endif // MOBA_DIALECT_MOBA_TRANSFORMS_PASSES_TD
