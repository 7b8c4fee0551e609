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

    Every `moba.attention_grad` (packed layout) becomes:

    1. the selection, built by the same code as the forward's (steps 1 to 3
       above, with the same operands and attributes), unless the op carries
       a caller's `selected`: the later passes then treat the backward's gate
       exactly as the forward's, and the selection is bit-identical;
    2. `moba.attention_row_term` — `delta = rowsum(grad_out * out) -
       grad_lse`;
    3. `moba.group_queries` — the slots of each key block;
    4. `moba.grouped_block_attention_grad` — per key block, its `dk` and `dv`
       rows (in the element type of `k`) and one f32 `dq` partial per slot;
    5. `moba.sum_slots` — `dq` as the sum of its slots' partials.
  }];
  let dependentDialects = [
    "::mlir::arith::ArithDialect",
    "::mlir::tensor::TensorDialect",
  ];
}

def MobaFuseGateTopK : Pass<"moba-fuse-gate-topk"> {
  let summary = "Fuse moba.gate into the moba.topk that consumes it";
  let description = [{
    Replaces `moba.topk(moba.gate(q, means))` by one `moba.gate_topk(q,
    means)` when the scores have no other user. The fused op is lowered to a
    running top-k per query that consumes each block's score as it is
    computed, so the `[tokens, heads, blocks]` score tensor is never built.

    Pooling is not fused into it: every block mean is read by every query of
    the sequence that comes after the block, for each of the `Hq / Hkv`
    query heads that share the key/value head, so computing it once per
    block (`moba.block_pool`, O(T * D) work) and reading it back is cheaper
    than recomputing it per query tile.
  }];
}

def MobaDensifyAttention : Pass<"moba-densify-attention"> {
  let summary = "Split block-sparse attention into dense per-block pieces";
  let description = [{
    Rewrites every `moba.sparse_attention` that has a selection (with a
    static `K`) into the "collect and densify" form that tensor cores can
    tile:
    1. `moba.group_queries` — per query head and key block, the list of the
       (query, slot) pairs that chose the block;
    2. `moba.grouped_block_attention` — attention of every slot to its one
       block, an f32 partial (output and log-sum-exp) per slot; a kernel can
       walk the lists, so that the queries that chose one block attend to it
       as one dense tile, whatever the routing;
    3. `moba.lse_merge` — the `K` partials of each query combined through
       their log-sum-exp into the output and its log-sum-exp.
    The own block of causal MoBA is one of the slots: it is the same dense
    tile with the causal cut. Block rows are bounded by
    `tokens floordiv block_size + sequences`, the most a batch can have.
    Dense attention (no selection) is left alone.
  }];
  let dependentDialects = [
    "::mlir::arith::ArithDialect",
    "::mlir::tensor::TensorDialect",
  ];
}

def MobaFuseLseMerge : Pass<"moba-fuse-lse-merge"> {
  let summary = "Fuse moba.lse_merge into the grouped attention it merges";
  let description = [{
    Replaces `moba.lse_merge` of the two partial results of a
    `moba.grouped_block_attention` (which nothing else reads) by that op
    with `merge(out_init, lse_init)`. The tensor-core lowering then merges
    each (token, head) inside the attention kernel: the CTA that finishes
    the row's last slot reads the row's partials back and writes the
    output, while other CTAs keep the tensor cores busy. The separate merge
    kernel reads every partial row from device memory once more after the
    attention (at 128K tokens, top-8: 8.6 GB, 2.2 ms of 123 on an H200),
    time in which no tensor core works.

    Lowerings that have no fused merge (`moba-lower-to-loops`) split it
    back, so the fused form is always legal. The merged output must have
    the element type of q. `moba-gpu-pipeline` runs it only with
    `mma-fused-merge=true`: on the H200 the fused epilogue (fences, the
    rows' reads while the CTA holds its slot) cost the attention kernel
    more than the separate merge takes (docs/PERFORMANCE.md).
  }];
}

def MobaTileAttention : Pass<"moba-tile-attention"> {
  let summary = "Tile moba.sparse_attention into an online-softmax loop nest";
  let description = [{
    Lowers every `moba.sparse_attention` to loops on tensors, tiled as flash
    attention: query tiles of `tile-q` tokens within each sequence; per query
    head and query, the selected blocks in order (duplicates skipped, the own
    block masked causally); within a block, key tiles of `tile-k` keys. Each
    key tile updates the online-softmax state (running max `m`, running sum
    `l`, unnormalized accumulator `acc`) once:

    ```
    m'  = max(m, max_k s_k);  alpha = exp(m - m')
    l   = l * alpha + sum_k exp(s_k - m')
    acc = acc * alpha + sum_k exp(s_k - m') * v_k
    ```

    and the query finishes with `out = acc / l`, `lse = m + log(l)`. Rows and
    vectors of `head_dim` elements are vector values; the heads and head_dim
    must be static.
  }];
  let options = [
    Option<"tileQ", "tile-q", "int64_t", /*default=*/"32",
           "Queries per tile (the outer tiling of each sequence)">,
    Option<"tileK", "tile-k", "int64_t", /*default=*/"16",
           "Keys scored before each online-softmax update">,
    Option<"parallel", "parallel", "bool", /*default=*/"false",
           "One scf.forall over (token, head) instead of the serial nest "
           "(tile-q then does not apply)">,
  ];
  let dependentDialects = [
    "::mlir::arith::ArithDialect",
    "::mlir::math::MathDialect",
    "::mlir::scf::SCFDialect",
    "::mlir::tensor::TensorDialect",
    "::mlir::vector::VectorDialect",
  ];
}

def MobaLowerToLoops : Pass<"moba-lower-to-loops"> {
  let summary = "Lower the remaining decomposed moba ops to loops on tensors";
  let description = [{
    Lowers `moba.block_pool`, `moba.gate`, `moba.topk`, `moba.gate_topk`,
    `moba.sparse_attention` (untiled: an exact two-pass softmax, a different
    algorithm from the online one of `moba-tile-attention`, which makes the
    two check each other) and `moba.lse_merge` to `scf` loops over tensors
    with `vector` rows of `head_dim` elements, ready for one-shot
    bufferization. The running top-k of `moba.topk` and `moba.gate_topk` is a
    pair of `K`-wide vectors (scores, block indices) updated with a compare,
    a shift and a select per block, with no data-dependent branches.

    With `parallel`, every op becomes one `scf.forall` over independent rows
    ((token, head) for selection and attention, (block row, key/value head)
    for pooling), each iteration finding its sequence by a scan of
    `cu_seqlens`: the form a GPU maps onto threads. `moba.gate` (which would
    store a score tensor) has no parallel form.
    The densified ops: `moba.group_queries` counts, places and fills the
    groups (serially with one cursor per group; in parallel with three
    passes over (head, block row)); `moba.grouped_block_attention` walks the
    groups serially, or runs one iteration per (slot, token, head) reading
    the selection in parallel; `moba.lse_merge` merges per (token, head).
    The backward's ops: `moba.attention_row_term` and `moba.sum_slots` per
    (token, head) (with `parallel`, one `scf.forall` over them), and
    `moba.grouped_block_attention_grad` per (key/value head, block row), over
    the entries of the groups of the block, summing the block's `dk` and `dv`
    rows in an f32 scratch of one block (with `parallel`, one `scf.forall`
    over (key/value head, block row), each iteration with its own scratch:
    it alone writes its block's `dk` and `dv` rows and its entries' `dq`
    partials, so the result is the serial form's, bit for bit).
  }];
  let options = [
    Option<"parallel", "parallel", "bool", /*default=*/"false",
           "Emit scf.forall over independent rows instead of serial loops">,
    Option<"keepMmaCompatibleAttention", "keep-mma-compatible-attention",
           "bool", /*default=*/"false",
           "Leave moba.grouped_block_attention (f16/bf16, head_dim a "
           "multiple of 16 up to 128) and moba.grouped_block_attention_grad "
           "(the same, with static head counts) for the tensor-core "
           "lowerings, which run after bufferization">,
    Option<"keepMmaCompatibleGate", "keep-mma-compatible-gate",
           "bool", /*default=*/"false",
           "Leave moba.gate_topk (f16/bf16 queries, head_dim a multiple of "
           "16 up to 128, at most 16 blocks kept by score) for the "
           "tensor-core lowering, which runs after bufferization">,
    Option<"keepWarpCompatibleGrouping", "keep-warp-compatible-grouping",
           "bool", /*default=*/"false",
           "Leave moba.group_queries (a static K of at most 32) for the GPU "
           "lowering, which runs after bufferization">,
    Option<"keepSplitKDecode", "keep-split-k-decode", "bool",
           /*default=*/"false",
           "Leave moba.paged_decode_attention (static heads, head_dim and "
           "page_size, head_dim a power-of-two count of 16-byte chunks up "
           "to 32, top_k at most 32) for the split-K GPU lowering "
           "(moba-convert-paged-decode-to-nvvm), which runs after "
           "bufferization">,
  ];
  let dependentDialects = [
    "::mlir::arith::ArithDialect",
    "::mlir::linalg::LinalgDialect",
    "::mlir::math::MathDialect",
    "::mlir::scf::SCFDialect",
    "::mlir::tensor::TensorDialect",
    "::mlir::vector::VectorDialect",
  ];
}

#endif // MOBA_DIALECT_MOBA_TRANSFORMS_PASSES_TD
