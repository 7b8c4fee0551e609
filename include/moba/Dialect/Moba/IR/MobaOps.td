//===- MobaOps.td - moba dialect operations ----------------*- tablegen -*-===//
//
// Part of moba-mlir. The ops of the `moba` dialect. `docs/semantics.md` is the
// contract; every description below states the part of it the op computes.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_DIALECT_MOBA_IR_MOBAOPS_TD
#define MOBA_DIALECT_MOBA_IR_MOBAOPS_TD

include "moba/Dialect/Moba/IR/MobaDialect.td"
include "mlir/IR/OpAsmInterface.td"
include "mlir/Interfaces/DestinationStyleOpInterface.td"
include "mlir/Interfaces/SideEffectInterfaces.td"

//===----------------------------------------------------------------------===//
// moba.attention
//===----------------------------------------------------------------------===//

def Moba_AttentionOp : Moba_Op<"attention", [Pure]> {
  let summary = "MoBA attention: block pooling, gating, top-k and sparse attention";
  let description = [{
    Computes Mixture of Block Attention over `q`, `k` and `v`.

    Keys of each sequence are cut into blocks of `block_size` tokens starting
    at the sequence's first token (the last block may be shorter). For query
    `t` at position `p` of its sequence and query head `h` (reading key/value
    head `g = h / (Hq / Hkv)`):

    ```
    mean_j      = (1 / |B_j|) * sum_{s in B_j} k[s, g, :]
    gate(t, j)  = q[t, h, :] . mean_j                  (f32, no softmax scale)
    S(t)        = causal:     own block of p, plus the top_k - 1 best blocks
                              ending at or before p (ties: the later block)
                  non-causal: the top_k best blocks (ties: the later block)
    K(t)        = keys of the blocks in S(t); causal: only positions <= p
    lse[t, h]   = log(sum_{s in K(t)} exp(scale * q[t,h,:] . k[s,g,:]))
    out[t, h,:] = sum_{s in K(t)} exp(scale * q[t,h,:] . k[s,g,:] - lse) * v[s,g,:]
    ```

    `top_k` at or above the number of blocks of a sequence is dense attention.
    `scale` defaults to `1 / sqrt(head_dim)`.

    Layouts, told apart by the rank of `q`:
    * packed variable length: `q : [T, Hq, D]`, `k, v : [T, Hkv, D]` and
      `cu_seqlens : [B + 1]` (integer offsets of the sequences, starting at 0
      and ending at `T`, as flash-attn's varlen API). `max_seqlen`, when
      given, promises that no sequence is longer; it bounds the number of
      blocks per sequence. `lse : [T, Hq]`.
    * batched: `q : [B, S, Hq, D]`, `k, v : [B, S, Hkv, D]`, no `cu_seqlens`.
      `lse : [B, S, Hq]`.

    The log-sum-exp is token-major (the layout of `q` without its last dim)
    so that reshaping between the two layouts never transposes it.

    Example:

    ```mlir
    %out, %lse = moba.attention q(%q : tensor<4096x32x128xbf16>)
        k(%k : tensor<4096x8x128xbf16>) v(%v : tensor<4096x8x128xbf16>)
        cu_seqlens(%cu : tensor<3xi32>) {block_size = 512, top_k = 3}
        -> tensor<4096x32x128xbf16>, tensor<4096x32xf32>
    ```
  }];

  let arguments = (ins
    Moba_QKVTensor:$q,
    Moba_QKVTensor:$k,
    Moba_QKVTensor:$v,
    Optional<Moba_CuSeqlens>:$cu_seqlens,
    I64Attr:$block_size,
    I64Attr:$top_k,
    DefaultValuedAttr<BoolAttr, "true">:$causal,
    OptionalAttr<F32Attr>:$scale,
    OptionalAttr<I64Attr>:$max_seqlen
  );
  let results = (outs
    Moba_QKVTensor:$output,
    Optional<Moba_F32Tensor>:$lse
  );

  let assemblyFormat = [{
    `q` `(` $q `:` type($q) `)`
    `k` `(` $k `:` type($k) `)`
    `v` `(` $v `:` type($v) `)`
    (`cu_seqlens` `(` $cu_seqlens^ `:` type($cu_seqlens) `)`)?
    attr-dict `->` type($output) (`,` type($lse)^)?
  }];

  let extraClassDeclaration = [{
    /// True for the packed variable-length layout (`q` of rank 3).
    bool isVarlen() { return getQ().getType().getRank() == 3; }
    /// head_dim, if q, k, v or the output has it static.
    std::optional<int64_t> getStaticHeadDim();
    /// The softmax scale: the attribute, or 1/sqrt(head_dim). The verifier
    /// makes sure one of the two is known.
    double getScaleOrDefault();
    /// Upper bound on the number of blocks of one sequence, if static.
    std::optional<int64_t> getStaticMaxBlocksPerSequence();
  }];

  let hasVerifier = 1;
  let hasCanonicalizer = 1;
}

//===----------------------------------------------------------------------===//
// moba.attention_grad
//===----------------------------------------------------------------------===//

def Moba_AttentionGradOp : Moba_Op<"attention_grad",
    [Pure, AttrSizedOperandSegments]> {
  let summary = "Gradients of MoBA attention with respect to q, k and v";
  let description = [{
    The backward of `moba.attention` on the packed variable-length layout:
    given the forward's `out` and `lse` and the upstream gradients
    `grad_out = dL/dout` and, optionally, `grad_lse = dL/dlse` (zero when
    absent), computes `dq`, `dk` and `dv`. No gradient flows through the
    block means, the gate or top-k (the selection is piecewise constant):
    these are the gradients of attention over the fixed key sets `K(t, h)`
    of the forward. With `P(t, h, s) = exp(scale * q[t,h,:] . k[s,g,:] -
    lse[t, h])` and `g = h / (Hq / Hkv)`:

    ```
    delta[t, h]  = sum_d grad_out[t,h,d] * out[t,h,d] - grad_lse[t, h]
    dP(t, h, s)  = sum_d grad_out[t,h,d] * v[s,g,d]
    dS(t, h, s)  = P(t, h, s) * (dP(t, h, s) - delta[t, h])
    dq[t, h, :]  = scale * sum_{s in K(t,h)} dS(t,h,s) * k[s,g,:]
    dk[s, g, :]  = scale * sum_{(t,h): g(h) = g, s in K(t,h)} dS(t,h,s)
                                                                * q[t,h,:]
    dv[s, g, :]  = sum_{(t,h): g(h) = g, s in K(t,h)} P(t,h,s) * grad_out[t,h,:]
    ```

    Every sum is accumulated in f32 and rounded once to the element type of
    `q`. A key no query attends gets `dk = dv = 0`. NaN propagates: a NaN in
    a row's inputs makes its `dq` and the `dk`, `dv` rows of every key it
    attends NaN.

    The selection `K(t, h)` is recomputed from `q` and `k` by the same ops
    and passes as the forward's (`moba-decompose` builds both with one
    helper), so it is bit-identical to the forward's when both are compiled
    with the same options: the forward saves only `out` and the f32 `lse`,
    and the gate costs about 1% of the backward. A caller that saved the
    forward's selection passes it as `selected` `[T, Hq, K]` (local block
    indices, -1 for none) instead. `block_size`, `top_k`, `causal`, `scale`
    and `max_seqlen` mean what they mean for `moba.attention`; `scale`
    defaults to `1 / sqrt(head_dim)`.

    Example:

    ```mlir
    %dq, %dk, %dv = moba.attention_grad q(%q : tensor<?x32x128xbf16>)
        k(%k : tensor<?x8x128xbf16>) v(%v : tensor<?x8x128xbf16>)
        cu_seqlens(%cu : tensor<?xi32>)
        out(%o : tensor<?x32x128xbf16>) lse(%lse : tensor<?x32xf32>)
        grad_out(%do : tensor<?x32x128xbf16>)
        grad_lse(%dlse : tensor<?x32xf32>)
        {block_size = 512, top_k = 3, causal = true, scale = 0.088 : f32,
         max_seqlen = 4096}
        -> tensor<?x32x128xbf16>, tensor<?x8x128xbf16>, tensor<?x8x128xbf16>
    ```
  }];

  let arguments = (ins
    Moba_QKVTensor:$q,
    Moba_QKVTensor:$k,
    Moba_QKVTensor:$v,
    Moba_CuSeqlens:$cu_seqlens,
    Moba_QKVTensor:$out,
    Moba_F32Tensor:$lse,
    Moba_QKVTensor:$grad_out,
    Optional<Moba_F32Tensor>:$grad_lse,
    Optional<Moba_IndexTensor>:$selected,
    I64Attr:$block_size,
    I64Attr:$top_k,
    DefaultValuedAttr<BoolAttr, "true">:$causal,
    OptionalAttr<F32Attr>:$scale,
    OptionalAttr<I64Attr>:$max_seqlen
  );
  let results = (outs
    Moba_QKVTensor:$grad_q,
    Moba_QKVTensor:$grad_k,
    Moba_QKVTensor:$grad_v
  );

  let assemblyFormat = [{
    `q` `(` $q `:` type($q) `)`
    `k` `(` $k `:` type($k) `)`
    `v` `(` $v `:` type($v) `)`
    `cu_seqlens` `(` $cu_seqlens `:` type($cu_seqlens) `)`
    `out` `(` $out `:` type($out) `)`
    `lse` `(` $lse `:` type($lse) `)`
    `grad_out` `(` $grad_out `:` type($grad_out) `)`
    (`grad_lse` `(` $grad_lse^ `:` type($grad_lse) `)`)?
    (`selected` `(` $selected^ `:` type($selected) `)`)?
    attr-dict `->` type($grad_q) `,` type($grad_k) `,` type($grad_v)
  }];

  let extraClassDeclaration = [{
    /// head_dim, if any of q, k, v, out or grad_out has it static.
    std::optional<int64_t> getStaticHeadDim();
    /// The softmax scale: the attribute, or 1/sqrt(head_dim).
    double getScaleOrDefault();
  }];

  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Decomposed ops. All work on the packed variable-length layout and are in
// destination-passing style: the last operands are the inits, and each result
// has the type of its init.
//===----------------------------------------------------------------------===//

class Moba_DpsOp<string mnemonic, list<Trait> traits = []> :
    Moba_Op<mnemonic, !listconcat(traits, [
      Pure, DeclareOpInterfaceMethods<DestinationStyleOpInterface>])>;

def Moba_BlockPoolOp : Moba_DpsOp<"block_pool",
    [AllTypesMatch<["init", "result"]>]> {
  let summary = "Mean of the keys of each block, per sequence and key/value head";
  let description = [{
    Cuts every sequence of the packed batch into blocks of `block_size` tokens
    (the last one may be shorter) and writes the mean key of each block:

    ```
    len_b     = cu_seqlens[b + 1] - cu_seqlens[b]
    nblk_b    = ceil(len_b / block_size)
    off_b     = sum_{b' < b} nblk_b'          (the block table of the batch)
    result[off_b + i, g, :] = mean_{s in block i of sequence b} keys[s, g, :]
    ```

    for `i < nblk_b`, accumulated in f32. Rows at and beyond the total number
    of blocks keep the values of `init`. `NB`, the leading dim of `init`, must
    be at least the total block count; `B * ceil(max_seqlen / block_size)` and
    `floor(T / block_size) + B` are both enough.

    Example:

    ```mlir
    %means = moba.block_pool keys(%k : tensor<4096x8x128xbf16>)
        cu_seqlens(%cu : tensor<3xi32>)
        outs(%init : tensor<10x8x128xf32>) {block_size = 512}
    ```
  }];

  let arguments = (ins
    Moba_QKVTensor:$keys,
    Moba_CuSeqlens:$cu_seqlens,
    Moba_F32Tensor:$init,
    I64Attr:$block_size
  );
  let results = (outs Moba_F32Tensor:$result);
  let assemblyFormat = [{
    `keys` `(` $keys `:` type($keys) `)`
    `cu_seqlens` `(` $cu_seqlens `:` type($cu_seqlens) `)`
    `outs` `(` $init `:` type($init) `)` attr-dict
  }];
  let hasVerifier = 1;
}

def Moba_GateOp : Moba_DpsOp<"gate", [AllTypesMatch<["init", "result"]>]> {
  let summary = "Gate scores: each query against the block means of its sequence";
  let description = [{
    Scores every query against the mean keys of the blocks of its own
    sequence, with the block means of its key/value head:

    ```
    result[t, h, i] = sum_d queries[t, h, d] * means[off_b + i, h / (Hq / Hkv), d]
                      for i < nblk_b, where b is the sequence of t
    result[t, h, i] = -inf  for nblk_b <= i < MB
    ```

    accumulated in f32, without the softmax scale. `MB`, the last dim of
    `init`, bounds the number of blocks of one sequence; the caller
    guarantees `nblk_b <= MB` (for example `MB = ceil(max_seqlen /
    block_size)`). Block indices are local to the sequence. Causality is not
    applied here: `moba.topk` picks among the candidates.

    Example:

    ```mlir
    %scores = moba.gate queries(%q : tensor<4096x32x128xbf16>)
        means(%means : tensor<10x8x128xf32>) cu_seqlens(%cu : tensor<3xi32>)
        outs(%init : tensor<4096x32x8xf32>) {block_size = 512}
    ```
  }];

  let arguments = (ins
    Moba_QKVTensor:$queries,
    Moba_F32Tensor:$means,
    Moba_CuSeqlens:$cu_seqlens,
    Moba_F32Tensor:$init,
    I64Attr:$block_size
  );
  let results = (outs Moba_F32Tensor:$result);
  let assemblyFormat = [{
    `queries` `(` $queries `:` type($queries) `)`
    `means` `(` $means `:` type($means) `)`
    `cu_seqlens` `(` $cu_seqlens `:` type($cu_seqlens) `)`
    `outs` `(` $init `:` type($init) `)` attr-dict
  }];
  let hasVerifier = 1;
}

def Moba_TopKOp : Moba_DpsOp<"topk", [AllTypesMatch<["init", "result"]>]> {
  let summary = "MoBA block selection: the own block plus the best past blocks";
  let description = [{
    Selects, for every query and query head, `K` blocks (the last dim of
    `init`) of the query's sequence, as local block indices:

    * causal: the block holding the query's position `p` is always selected
      and comes first. The candidates are the blocks that end at or before
      `p` (strictly past blocks); the `K - 1` with the highest score follow,
      best first.
    * non-causal: every block of the sequence is a candidate and none is
      forced; the `K` with the highest score, best first.

    Ties between equal scores go to the more recent (higher-index) block.
    Slots left over when there are fewer candidates than `K` hold -1.

    `scores` may be omitted only for causal selection with `K = 1`, where the
    selection is the own block and no gate is needed (the canonical form of
    that case).

    Example:

    ```mlir
    %sel = moba.topk scores(%scores : tensor<4096x32x8xf32>)
        cu_seqlens(%cu : tensor<3xi32>)
        outs(%init : tensor<4096x32x3xi32>) {block_size = 512}
    ```
  }];

  let arguments = (ins
    Optional<Moba_F32Tensor>:$scores,
    Moba_CuSeqlens:$cu_seqlens,
    Moba_IndexTensor:$init,
    I64Attr:$block_size,
    DefaultValuedAttr<BoolAttr, "true">:$causal
  );
  let results = (outs Moba_IndexTensor:$result);
  let assemblyFormat = [{
    (`scores` `(` $scores^ `:` type($scores) `)`)?
    `cu_seqlens` `(` $cu_seqlens `:` type($cu_seqlens) `)`
    `outs` `(` $init `:` type($init) `)` attr-dict
  }];
  let extraClassDeclaration = [{
    /// K, the number of blocks selected per query and head (dynamic if
    /// ShapedType::kDynamic).
    int64_t getK() { return getInit().getType().getShape().back(); }
  }];
  let hasVerifier = 1;
  let hasCanonicalizer = 1;
}

def Moba_GateTopKOp : Moba_Op<"gate_topk",
    [DeclareOpInterfaceMethods<DestinationStyleOpInterface>,
     DeclareOpInterfaceMethods<MemoryEffectsOpInterface>]> {
  let summary = "Fused gate and block selection, streaming over the blocks";
  let description = [{
    The fusion of `moba.gate` and `moba.topk` that `moba-fuse-gate-topk`
    produces: selects, for every query and query head, `K` blocks of its
    sequence (the last dim of `init`) by the gate score

    ```
    s(t, h, j) = sum_d queries[t, h, d] * means[off_b + j, h / (Hq / Hkv), d]
    ```

    with the rules of `moba.topk` (causal: own block first, then the `K - 1`
    best strictly past blocks; non-causal: the `K` best blocks; ties to the
    later block; -1 pads). The scores of a query are never stored: a lowering
    keeps a running top-K as the blocks stream by, so no `[tokens, blocks]`
    tensor exists.

    Like `moba.grouped_block_attention` it exists on tensors (one result, of
    the type of `init`) and, after bufferization, on memrefs (no result,
    `init` written in place): the tensor-core lowering
    (`moba-convert-gate-topk-to-nvvm`) works on buffers.

    Example:

    ```mlir
    %sel = moba.gate_topk queries(%q : tensor<4096x32x128xbf16>)
        means(%means : tensor<10x8x128xf32>) cu_seqlens(%cu : tensor<3xi32>)
        outs(%init : tensor<4096x32x3xi32>) {block_size = 512}
    ```
  }];

  let arguments = (ins
    Moba_QKVShaped:$queries,
    Moba_F32Shaped:$means,
    Moba_CuSeqlensShaped:$cu_seqlens,
    Moba_IndexShaped:$init,
    I64Attr:$block_size,
    DefaultValuedAttr<BoolAttr, "true">:$causal
  );
  // One result on tensors, none on memrefs: its type is `init`'s, so the
  // assembly does not spell it.
  let results = (outs Variadic<Moba_IndexTensor>:$results);
  let assemblyFormat = [{
    `queries` `(` $queries `:` type($queries) `)`
    `means` `(` $means `:` type($means) `)`
    `cu_seqlens` `(` $cu_seqlens `:` type($cu_seqlens) `)`
    `outs` `(` $init `:` type($init) `)`
    custom<ResultOfInit>(type($results), ref(type($init))) attr-dict
  }];
  let extraClassDeclaration = [{
    /// K, the number of blocks selected per query and head.
    int64_t getK() {
      return ::llvm::cast<::mlir::ShapedType>(getInit().getType())
          .getShape().back();
    }
    /// The selection of the tensor form.
    ::mlir::Value getResult() { return getResults()[0]; }
    /// The blocks each query keeps by score: K - 1 when causal (the own
    /// block is forced), else K.
    int64_t getKeptByScore() { return getCausal() ? getK() - 1 : getK(); }
    /// The operands allow the tensor-core lowering: f16 or bf16 queries,
    /// head_dim a static multiple of 16 up to 128, and at most
    /// kMaxMmaKeptBlocks blocks kept by score (they live in registers).
    bool isMmaSyncCompatible();
    static constexpr int64_t kMaxMmaKeptBlocks = 16;
  }];
  let hasVerifier = 1;
}

def Moba_SparseAttentionOp : Moba_DpsOp<"sparse_attention",
    [AllTypesMatch<["out_init", "output"]>,
     AllTypesMatch<["lse_init", "lse"]>]> {
  let summary = "Block-sparse attention over the selected key blocks";
  let description = [{
    Attends every query to the keys of the blocks `selected` for it, and
    returns the normalized output and the natural log-sum-exp of the scaled
    scores:

    ```
    K(t)        = keys of the blocks selected[t, h, :] (entries >= 0) of the
                  sequence of t; causal: only positions <= p(t)
    lse[t, h]   = log(sum_{s in K(t)} exp(scale * q[t,h,:] . k[s,g,:]))
    out[t, h,:] = sum_{s in K(t)} exp(scale * q[t,h,:] . k[s,g,:] - lse) * v[s,g,:]
    ```

    with `g = h / (Hq / Hkv)`. Without `selected` every block of the
    sequence is attended: dense (causal) attention. A block listed twice
    counts once. Accumulation is f32; `out` has the element type of `q`.

    Example:

    ```mlir
    %out, %lse = moba.sparse_attention q(%q : tensor<4096x32x128xbf16>)
        k(%k : tensor<4096x8x128xbf16>) v(%v : tensor<4096x8x128xbf16>)
        cu_seqlens(%cu : tensor<3xi32>)
        selected(%sel : tensor<4096x32x3xi32>)
        outs(%o : tensor<4096x32x128xbf16>, %l : tensor<4096x32xf32>)
        {block_size = 512, scale = 0.0883883461 : f32}
    ```
  }];

  let arguments = (ins
    Moba_QKVTensor:$q,
    Moba_QKVTensor:$k,
    Moba_QKVTensor:$v,
    Moba_CuSeqlens:$cu_seqlens,
    Optional<Moba_IndexTensor>:$selected,
    Moba_QKVTensor:$out_init,
    Moba_F32Tensor:$lse_init,
    I64Attr:$block_size,
    F32Attr:$scale,
    DefaultValuedAttr<BoolAttr, "true">:$causal
  );
  let results = (outs Moba_QKVTensor:$output, Moba_F32Tensor:$lse);
  let assemblyFormat = [{
    `q` `(` $q `:` type($q) `)`
    `k` `(` $k `:` type($k) `)`
    `v` `(` $v `:` type($v) `)`
    `cu_seqlens` `(` $cu_seqlens `:` type($cu_seqlens) `)`
    (`selected` `(` $selected^ `:` type($selected) `)`)?
    `outs` `(` $out_init `:` type($out_init) `,`
               $lse_init `:` type($lse_init) `)` attr-dict
  }];
  let hasVerifier = 1;
  let hasCanonicalizer = 1;
}

def Moba_LseMergeOp : Moba_DpsOp<"lse_merge",
    [AllTypesMatch<["out_init", "output"]>,
     AllTypesMatch<["lse_init", "lse"]>]> {
  let summary = "Merge partial attention results through their log-sum-exp";
  let description = [{
    Combines `P` partial attention results over disjoint key sets (stacked
    along the leading dim) into the result over their union:

    ```
    lse[t, h]    = log(sum_p exp(partial_lse[p, t, h]))
    out[t, h, :] = sum_p exp(partial_lse[p, t, h] - lse[t, h]) * partial_out[p, t, h, :]
    ```

    A partial with `partial_lse = -inf` (no key attended) contributes
    nothing, and its `partial_out` row is not read (it may hold anything,
    NaN included); when every partial is `-inf` the merged `lse` is `-inf`
    and the output 0. This is how the own-block and chosen-block parts of MoBA, the
    splits of a split-K decode, and the shards of context parallelism come
    together.

    Example:

    ```mlir
    %out, %lse = moba.lse_merge partials(%po : tensor<2x4096x32x128xf32>)
        partial_lse(%pl : tensor<2x4096x32xf32>)
        outs(%o : tensor<4096x32x128xbf16>, %l : tensor<4096x32xf32>)
    ```
  }];

  let arguments = (ins
    RankedTensorOf<[F16, BF16, F32]>:$partials,
    Moba_F32Tensor:$partial_lse,
    Moba_QKVTensor:$out_init,
    Moba_F32Tensor:$lse_init
  );
  let results = (outs Moba_QKVTensor:$output, Moba_F32Tensor:$lse);
  let assemblyFormat = [{
    `partials` `(` $partials `:` type($partials) `)`
    `partial_lse` `(` $partial_lse `:` type($partial_lse) `)`
    `outs` `(` $out_init `:` type($out_init) `,`
               $lse_init `:` type($lse_init) `)` attr-dict
  }];
  let hasVerifier = 1;
}

def Moba_GroupQueriesOp : Moba_Op<"group_queries",
    [DeclareOpInterfaceMethods<DestinationStyleOpInterface>,
     DeclareOpInterfaceMethods<MemoryEffectsOpInterface>,
     DeclareOpInterfaceMethods<OpAsmOpInterface, ["getAsmResultNames"]>]> {
  let summary = "Group the selection slots of the queries by the block they chose";
  let description = [{
    Inverts a selection: for every query head `h` and block row `r` (the
    blocks of all sequences in order, as `moba.block_pool` numbers them),
    lists the (query, slot) pairs whose selection chose block `r`:

    ```
    G(h, r)      = [(t, s) : t in the sequence of r, r is its block j,
                              selected[t, h, s] = j, and no slot s' < s of t
                              holds j], ordered by t, then s
    counts[h, r] = |G(h, r)|
    starts[h, r] = sum_{r' < r} counts[h, r']
    entries[h, starts[h, r] + i] = t * K + s    (the i-th pair of G(h, r))
    entries[h, e] = -1                          (e >= sum_r counts[h, r])
    ```

    `NB`, the block-row dim of `starts` and `counts`, may exceed the batch's
    block count (it is an upper bound); rows past the last block are empty.
    `E`, the last dim of `entries`, must be `T * K`: room for every slot.
    The groups are what tensor-core attention tiles: the queries that chose
    one key block, side by side, attend to it as one dense tile ("collect
    and densify").

    Like `moba.grouped_block_attention` it exists on tensors (three
    results, of the types of the inits) and, after bufferization, on memrefs
    (no results, the inits written in place): the GPU lowering
    (`moba-convert-group-queries-to-nvvm`) works on buffers, since its warps
    place entries through atomic cursors that no tensor value describes.

    Example:

    ```mlir
    %starts, %counts, %entries = moba.group_queries
        selected(%sel : tensor<4096x32x3xi32>) cu_seqlens(%cu : tensor<3xi32>)
        outs(%s : tensor<32x10xi32>, %c : tensor<32x10xi32>,
             %e : tensor<32x12288xi32>) {block_size = 512}
    ```
  }];

  let arguments = (ins
    Moba_IndexShaped:$selected,
    Moba_CuSeqlensShaped:$cu_seqlens,
    Moba_IndexShaped:$starts_init,
    Moba_IndexShaped:$counts_init,
    Moba_IndexShaped:$entries_init,
    I64Attr:$block_size
  );
  // Three results on tensors, none on memrefs: their types are the inits',
  // so the assembly does not spell them.
  let results = (outs Variadic<Moba_IndexTensor>:$results);
  let assemblyFormat = [{
    `selected` `(` $selected `:` type($selected) `)`
    `cu_seqlens` `(` $cu_seqlens `:` type($cu_seqlens) `)`
    `outs` `(` $starts_init `:` type($starts_init) `,`
               $counts_init `:` type($counts_init) `,`
               $entries_init `:` type($entries_init) `)`
    custom<ResultsOfInits>(type($results), ref(type($starts_init)),
                           ref(type($counts_init)), ref(type($entries_init)))
    attr-dict
  }];
  let extraClassDeclaration = [{
    /// The results of the tensor form.
    ::mlir::Value getStarts() { return getResults()[0]; }
    ::mlir::Value getCounts() { return getResults()[1]; }
    ::mlir::Value getEntries() { return getResults()[2]; }
    /// K, the selection slots per token and head, when static.
    int64_t getK() {
      return ::llvm::cast<::mlir::ShapedType>(getSelected().getType())
          .getShape().back();
    }
    /// The operands allow the GPU lowering: a static K of at most
    /// kMaxWarpSlots, one lane a slot.
    bool isWarpCompatible() {
      return !::mlir::ShapedType::isDynamic(getK()) &&
             getK() <= kMaxWarpSlots;
    }
    static constexpr int64_t kMaxWarpSlots = 32;
  }];
  let hasVerifier = 1;
}

def Moba_GroupedBlockAttentionOp : Moba_Op<"grouped_block_attention",
    [AttrSizedOperandSegments,
     DeclareOpInterfaceMethods<DestinationStyleOpInterface>,
     DeclareOpInterfaceMethods<MemoryEffectsOpInterface>]> {
  let summary = "Attention of each selection slot to its one block";
  let description = [{
    The per-(query, block) pieces of `moba.sparse_attention`: for every
    token `t`, query head `h` and selection slot `s`, attention of the query
    to the keys of the one block `j = selected[t, h, s]`, as an unnormalized
    partial that `moba.lse_merge` combines over `s`:

    ```
    K(t, s)              = keys of block j of the sequence of t (causal:
                           positions <= p(t)), when 0 <= j < its block count
                           and no slot s' < s of t holds j; else empty
    partial_lse[s, t, h] = log(sum_{x in K(t,s)} exp(scale * q[t,h,:] . k[x,g,:]))
    partial_out[s,t,h,:] = sum_{x in K(t,s)} exp(scale * q[t,h,:] . k[x,g,:]
                                                 - partial_lse[s,t,h]) * v[x,g,:]
    ```

    with `g = h / (Hq / Hkv)`; an empty `K(t, s)` gives `partial_lse = -inf`
    and leaves its `partial_out` row unspecified (a lowering may skip
    writing it): `moba.lse_merge` never reads the output of a `-inf`
    partial.
    `starts`, `counts` and `entries` must be `moba.group_queries` of the same
    `selected` and `cu_seqlens`: the same function indexed by key block,
    which lowerings that tile queries densely per block iterate over (the
    result is undefined if they disagree). `partial_lse` is f32;
    `partial_out` is f32 or the element type of `q`, each row rounded once
    to it after normalization (`moba-densify-attention` picks `q`'s: the
    merge reads every partial row once, and half the bytes halve that read
    and the attention's writes; the output is rounded to that type anyway).

    With `merge(%out_init, %lse_init)` the op also merges the partials of
    each (token, head) as `moba.lse_merge` does, into `out [T, Hq, D]` (the
    element type of q) and `lse [T, Hq]`:

    ```
    lse[t, h]    = log(sum_s exp(partial_lse[s, t, h]))
    out[t, h, :] = sum_s exp(partial_lse[s, t, h] - lse[t, h])
                   * partial_out[s, t, h, :]
    ```

    (`-inf` and 0 where no slot attends). The partials are then scratch
    that the lowering may use or not; `moba-fuse-lse-merge` forms this from
    a `moba.lse_merge` of the op's partials, so that the tensor-core
    lowering merges each row inside the attention kernel, as its last slot
    finishes, instead of reading every partial back in a kernel of its own.
    Lowerings without a fused merge split it back into the op and a
    `moba.lse_merge`.

    Like linalg ops, it exists on tensors (two results, or four with
    `merge`, tied to the inits) and, after bufferization, on memrefs (no
    results, the inits written in place): the tensor-core lowering
    (`moba-convert-grouped-attention-to-nvvm`) works on buffers, since its
    warps share fragments that no tensor value describes.

    Example:

    ```mlir
    %po, %pl = moba.grouped_block_attention q(%q : tensor<4096x32x128xbf16>)
        k(%k : tensor<4096x8x128xbf16>) v(%v : tensor<4096x8x128xbf16>)
        cu_seqlens(%cu : tensor<3xi32>) selected(%sel : tensor<4096x32x3xi32>)
        groups(%starts : tensor<32x10xi32>, %counts : tensor<32x10xi32>,
               %entries : tensor<32x12288xi32>)
        outs(%o : tensor<3x4096x32x128xf32>, %l : tensor<3x4096x32xf32>)
        {block_size = 512, scale = 0.0883883461 : f32}
    ```

    Merged:

    ```mlir
    %po, %pl, %out, %lse = moba.grouped_block_attention
        q(%q : tensor<4096x32x128xbf16>) k(%k : tensor<4096x8x128xbf16>)
        v(%v : tensor<4096x8x128xbf16>) cu_seqlens(%cu : tensor<3xi32>)
        selected(%sel : tensor<4096x32x3xi32>)
        groups(%starts : tensor<32x10xi32>, %counts : tensor<32x10xi32>,
               %entries : tensor<32x12288xi32>)
        outs(%o : tensor<3x4096x32x128xbf16>, %l : tensor<3x4096x32xf32>)
        merge(%out0 : tensor<4096x32x128xbf16>, %lse0 : tensor<4096x32xf32>)
        {block_size = 512, scale = 0.0883883461 : f32}
        -> tensor<3x4096x32x128xbf16>, tensor<3x4096x32xf32>,
           tensor<4096x32x128xbf16>, tensor<4096x32xf32>
    ```
  }];

  let arguments = (ins
    Moba_QKVShaped:$q,
    Moba_QKVShaped:$k,
    Moba_QKVShaped:$v,
    Moba_CuSeqlensShaped:$cu_seqlens,
    Moba_IndexShaped:$selected,
    Moba_IndexShaped:$starts,
    Moba_IndexShaped:$counts,
    Moba_IndexShaped:$entries,
    Moba_QKVShaped:$partial_out_init,
    Moba_F32Shaped:$partial_lse_init,
    Optional<Moba_QKVShaped>:$out_init,
    Optional<Moba_F32Shaped>:$lse_init,
    I64Attr:$block_size,
    F32Attr:$scale,
    DefaultValuedAttr<BoolAttr, "true">:$causal
  );
  let results = (outs Variadic<Moba_QKVTensor>:$results);
  let assemblyFormat = [{
    `q` `(` $q `:` type($q) `)`
    `k` `(` $k `:` type($k) `)`
    `v` `(` $v `:` type($v) `)`
    `cu_seqlens` `(` $cu_seqlens `:` type($cu_seqlens) `)`
    `selected` `(` $selected `:` type($selected) `)`
    `groups` `(` $starts `:` type($starts) `,` $counts `:` type($counts) `,`
                 $entries `:` type($entries) `)`
    `outs` `(` $partial_out_init `:` type($partial_out_init) `,`
               $partial_lse_init `:` type($partial_lse_init) `)`
    (`merge` `(` $out_init^ `:` type($out_init) `,`
                 $lse_init `:` type($lse_init) `)`)?
    attr-dict (`->` type($results)^)?
  }];
  let extraClassDeclaration = [{
    /// The results of the tensor form.
    ::mlir::Value getPartialOut() { return getResults()[0]; }
    ::mlir::Value getPartialLse() { return getResults()[1]; }
    /// With `merge`, on tensors: the merged output and log-sum-exp.
    ::mlir::Value getMergedOut() { return getResults()[2]; }
    ::mlir::Value getMergedLse() { return getResults()[3]; }
    /// Whether the op also merges its partials (`merge(...)`).
    bool isMerged() { return static_cast<bool>(getOutInit()); }
    /// head_dim and the element type allow the mma.sync lowering: f16 or
    /// bf16, head_dim a static multiple of 16 up to 128.
    bool isMmaSyncCompatible();
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Decomposed ops of the backward
//===----------------------------------------------------------------------===//

def Moba_AttentionRowTermOp : Moba_DpsOp<"attention_row_term",
    [AllTypesMatch<["init", "result"]>]> {
  let summary = "The row term delta of the attention backward";
  let description = [{
    Per token and query head, the dot product of the output gradient with
    the forward's output, less the gradient of the log-sum-exp:

    ```
    result[t, h] = sum_d grad_out[t, h, d] * out[t, h, d] - grad_lse[t, h]
    ```

    accumulated in f32 (`grad_lse` is 0 when absent). It is the `delta` of
    `dS = P * (dP - delta)`: since `d lse / d x(s) = P(s)`, the gradient of
    the log-sum-exp enters the backward only as this shift. A NaN in either
    row makes the result NaN.

    Example:

    ```mlir
    %delta = moba.attention_row_term grad_out(%do : tensor<4096x32x128xbf16>)
        out(%o : tensor<4096x32x128xbf16>)
        grad_lse(%dlse : tensor<4096x32xf32>)
        outs(%init : tensor<4096x32xf32>)
    ```
  }];

  let arguments = (ins
    Moba_QKVTensor:$grad_out,
    Moba_QKVTensor:$out,
    Optional<Moba_F32Tensor>:$grad_lse,
    Moba_F32Tensor:$init
  );
  let results = (outs Moba_F32Tensor:$result);
  let assemblyFormat = [{
    `grad_out` `(` $grad_out `:` type($grad_out) `)`
    `out` `(` $out `:` type($out) `)`
    (`grad_lse` `(` $grad_lse^ `:` type($grad_lse) `)`)?
    `outs` `(` $init `:` type($init) `)` attr-dict
  }];
  let hasVerifier = 1;
}

def Moba_GroupedBlockAttentionGradOp : Moba_Op<
    "grouped_block_attention_grad",
    [DeclareOpInterfaceMethods<DestinationStyleOpInterface>,
     DeclareOpInterfaceMethods<MemoryEffectsOpInterface>,
     DeclareOpInterfaceMethods<OpAsmOpInterface, ["getAsmResultNames"]>]> {
  let summary = "Attention backward per key block, over the queries that "
                "chose it";
  let description = [{
    The backward of `moba.grouped_block_attention` with the slots merged:
    for every key/value head `g` and block row `r` (block `j` of sequence
    `b`), the queries of the groups `G(h, r)` of the heads `h` with
    `h / (Hq / Hkv) = g` attend the block's keys `B_r` (causal: only keys at
    or before the query's position). With `P = exp(scale * q . k - lse)`:

    ```
    dP(t, h, s)  = sum_d grad_out[t,h,d] * v[s,g,d]
    dS(t, h, s)  = P(t, h, s) * (dP(t, h, s) - row_term[t, h])
    dq_partials[slot, t, h, :] = scale * sum_{s in B_r} dS(t,h,s) * k[s,g,:]
                                 for the entry (t, slot) of G(h, r)
    dk[s, g, :]  = scale * sum_{h of g, (t, slot) in G(h, r)} dS(t,h,s)
                                                                * q[t,h,:]
    dv[s, g, :]  = sum_{h of g, (t, slot) in G(h, r)} P(t,h,s) * grad_out[t,h,:]
                   for s in B_r
    ```

    `dq_partials` `[K, T, Hq, D]` is f32 and holds one partial per selection
    slot; slots that attend nothing (-1, out of range, or a block listed by
    an earlier slot) are 0, so that `moba.sum_slots` sums every slot. `dk`
    and `dv` `[T, Hkv, D]` are f32 or the element type of `k`, each row
    accumulated in f32 over the whole group and rounded once; keys no query
    attends are 0. `starts`, `counts` and `entries` must be
    `moba.group_queries` of the same `selected` and `cu_seqlens` (the result
    is undefined if they disagree); `row_term` is `moba.attention_row_term`
    and `lse` the forward's. Grouping by key block makes every sum a loop
    within one block's work: no atomics, and the same bits on every run.

    Like `moba.grouped_block_attention` it exists on tensors (three results,
    of the types of the inits) and, after bufferization, on memrefs (no
    results, the inits written in place): the GPU pipeline keeps the ops its
    tensor-core lowering takes (`isMmaSyncCompatible`) through
    bufferization, since that kernel's warps share fragments that no tensor
    value describes.

    Example:

    ```mlir
    %dqp, %dk, %dv = moba.grouped_block_attention_grad
        q(%q : tensor<4096x32x128xbf16>) k(%k : tensor<4096x8x128xbf16>)
        v(%v : tensor<4096x8x128xbf16>) cu_seqlens(%cu : tensor<3xi32>)
        selected(%sel : tensor<4096x32x3xi32>)
        groups(%starts : tensor<32x10xi32>, %counts : tensor<32x10xi32>,
               %entries : tensor<32x12288xi32>)
        grad_out(%do : tensor<4096x32x128xbf16>)
        lse(%lse : tensor<4096x32xf32>) row_term(%delta : tensor<4096x32xf32>)
        outs(%dqp0 : tensor<3x4096x32x128xf32>,
             %dk0 : tensor<4096x8x128xbf16>, %dv0 : tensor<4096x8x128xbf16>)
        {block_size = 512, scale = 0.0883883461 : f32}
    ```
  }];

  let arguments = (ins
    Moba_QKVShaped:$q,
    Moba_QKVShaped:$k,
    Moba_QKVShaped:$v,
    Moba_CuSeqlensShaped:$cu_seqlens,
    Moba_IndexShaped:$selected,
    Moba_IndexShaped:$starts,
    Moba_IndexShaped:$counts,
    Moba_IndexShaped:$entries,
    Moba_QKVShaped:$grad_out,
    Moba_F32Shaped:$lse,
    Moba_F32Shaped:$row_term,
    Moba_F32Shaped:$dq_partials_init,
    Moba_QKVShaped:$dk_init,
    Moba_QKVShaped:$dv_init,
    I64Attr:$block_size,
    F32Attr:$scale,
    DefaultValuedAttr<BoolAttr, "true">:$causal
  );
  // Three results on tensors (dq_partials, dk, dv), none on memrefs: their
  // types are the inits', so the assembly does not spell them.
  let results = (outs Variadic<Moba_QKVTensor>:$results);
  let assemblyFormat = [{
    `q` `(` $q `:` type($q) `)`
    `k` `(` $k `:` type($k) `)`
    `v` `(` $v `:` type($v) `)`
    `cu_seqlens` `(` $cu_seqlens `:` type($cu_seqlens) `)`
    `selected` `(` $selected `:` type($selected) `)`
    `groups` `(` $starts `:` type($starts) `,` $counts `:` type($counts) `,`
                 $entries `:` type($entries) `)`
    `grad_out` `(` $grad_out `:` type($grad_out) `)`
    `lse` `(` $lse `:` type($lse) `)`
    `row_term` `(` $row_term `:` type($row_term) `)`
    `outs` `(` $dq_partials_init `:` type($dq_partials_init) `,`
               $dk_init `:` type($dk_init) `,`
               $dv_init `:` type($dv_init) `)`
    custom<ResultsOfInits>(type($results), ref(type($dq_partials_init)),
                           ref(type($dk_init)), ref(type($dv_init)))
    attr-dict
  }];
  let extraClassDeclaration = [{
    /// The results of the tensor form.
    ::mlir::Value getDqPartials() { return getResults()[0]; }
    ::mlir::Value getDk() { return getResults()[1]; }
    ::mlir::Value getDv() { return getResults()[2]; }
    /// The operands allow the tensor-core lowering
    /// (moba-convert-grouped-attention-grad-to-nvvm): f16 or bf16 q,
    /// head_dim a static multiple of 16 up to 128 (the rule of
    /// moba.grouped_block_attention), and static query and key/value head
    /// counts (the kernel's grid and its GQA grouping are built from them).
    bool isMmaSyncCompatible();
    /// The same rule on the types of q and k, for moba.attention_grad,
    /// whose decomposition hands its q and k to this op.
    static bool isMmaSyncCompatible(::mlir::Type q, ::mlir::Type k);
  }];
  let hasVerifier = 1;
}

def Moba_SumSlotsOp : Moba_DpsOp<"sum_slots",
    [AllTypesMatch<["init", "result"]>]> {
  let summary = "Sum the per-slot partials of the query gradient";
  let description = [{
    Sums the `K` per-slot partials of `moba.grouped_block_attention_grad`:

    ```
    result[t, h, :] = sum_{s < K} partials[s, t, h, :]
    ```

    in f32, in slot order, rounded once to the element type of `init`
    (f16, bf16 or f32). Empty slots hold 0 and add nothing; a NaN partial
    makes the row NaN.

    Example:

    ```mlir
    %dq = moba.sum_slots partials(%dqp : tensor<3x4096x32x128xf32>)
        outs(%init : tensor<4096x32x128xbf16>)
    ```
  }];

  let arguments = (ins
    Moba_F32Tensor:$partials,
    Moba_QKVTensor:$init
  );
  let results = (outs Moba_QKVTensor:$result);
  let assemblyFormat = [{
    `partials` `(` $partials `:` type($partials) `)`
    `outs` `(` $init `:` type($init) `)` attr-dict
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Decode against a paged KV cache (docs/semantics.md, "Decode and chunked
// prefill"). Destination-passing style like the decomposed ops: the cache
// tensors are the inits of the append, the output and lse those of decode.
//===----------------------------------------------------------------------===//

def Moba_PagedKvAppendOp : Moba_DpsOp<"paged_kv_append",
    [AllTypesMatch<["k_cache_init", "k_cache"]>,
     AllTypesMatch<["v_cache_init", "v_cache"]>,
     AllTypesMatch<["block_key_sums_init", "block_key_sums"]>]> {
  let summary = "Write new keys and values into a paged KV cache and keep "
                "the f32 key sums of its MoBA blocks";
  let description = [{
    Appends `n_b = cu_seqlens[b + 1] - cu_seqlens[b]` new tokens to every
    sequence `b` of a paged KV cache (the layout of vLLM and FlashInfer):
    new token `i` of sequence `b` goes to position `p = cache_lens[b] + i`
    (`cache_lens` are the lengths before the append), and

    ```
    page       = block_table[b, p / page_size]
    k_cache[page, p % page_size, :, :] = k[cu_seqlens[b] + i, :, :]
    v_cache[page, p % page_size, :, :] = v[cu_seqlens[b] + i, :, :]
    j          = p / block_size
    block_key_sums[b, j, :, :] = (p % block_size == 0 ? 0 : block_key_sums[b, j])
                                 + f32(k[cu_seqlens[b] + i])
    ```

    in position order, so a finished block holds the f32 sum of its keys
    added from its first key on: `moba.block_pool`'s mean is that sum over
    `block_size`. The gate of `moba.paged_decode_attention` reads the sums
    of finished blocks and never the keys. `block_size` must be a multiple
    of `page_size` (dim 1 of the caches).

    A sequence whose append does not fit (`cache_lens[b] < 0`, more
    positions than `max_pages * page_size` or blocks than `max_blocks`, or
    a page id outside `[0, pages)`) is left as it is: nothing of it is
    written, nothing is read or written out of bounds, and the decode that
    follows with the grown lengths reports NaN for it.

    Example:

    ```mlir
    %kc, %vc, %sums = moba.paged_kv_append
        k(%k : tensor<8x8x128xbf16>) v(%v : tensor<8x8x128xbf16>)
        cu_seqlens(%cu : tensor<9xi32>)
        block_table(%table : tensor<8x256xi32>)
        cache_lens(%lens : tensor<8xi32>)
        outs(%kc0 : tensor<2048x16x8x128xbf16>,
             %vc0 : tensor<2048x16x8x128xbf16>,
             %sums0 : tensor<8x64x8x128xf32>) {block_size = 64}
    ```
  }];

  let arguments = (ins
    Moba_QKVTensor:$k,
    Moba_QKVTensor:$v,
    Moba_CuSeqlens:$cu_seqlens,
    Moba_IndexTensor:$block_table,
    Moba_IndexTensor:$cache_lens,
    Moba_QKVTensor:$k_cache_init,
    Moba_QKVTensor:$v_cache_init,
    Moba_F32Tensor:$block_key_sums_init,
    I64Attr:$block_size
  );
  let results = (outs
    Moba_QKVTensor:$k_cache,
    Moba_QKVTensor:$v_cache,
    Moba_F32Tensor:$block_key_sums
  );
  let assemblyFormat = [{
    `k` `(` $k `:` type($k) `)`
    `v` `(` $v `:` type($v) `)`
    `cu_seqlens` `(` $cu_seqlens `:` type($cu_seqlens) `)`
    `block_table` `(` $block_table `:` type($block_table) `)`
    `cache_lens` `(` $cache_lens `:` type($cache_lens) `)`
    `outs` `(` $k_cache_init `:` type($k_cache_init) `,`
               $v_cache_init `:` type($v_cache_init) `,`
               $block_key_sums_init `:` type($block_key_sums_init) `)`
    attr-dict
  }];
  let hasVerifier = 1;
}

def Moba_PagedDecodeAttentionOp : Moba_Op<"paged_decode_attention",
    [DeclareOpInterfaceMethods<DestinationStyleOpInterface>,
     DeclareOpInterfaceMethods<MemoryEffectsOpInterface>]> {
  let summary = "Causal MoBA of a few new queries per sequence against a "
                "paged KV cache (decode and chunked prefill)";
  let description = [{
    The queries of sequence `b` (`q[cu_seqlens_q[b] .. cu_seqlens_q[b+1]]`,
    `n_b` of them: 1 to 16 for decode and speculative decoding, more for
    chunked prefill) are its last `n_b` tokens, whose keys and values are
    already in the cache (`cache_lens` are the lengths after the append).
    Query `i` sits at position `p = cache_lens[b] - n_b + i` and computes
    row `p` of causal `moba.attention` over the sequence, with the cache
    read through `block_table` and the block means taken from the f32
    `block_key_sums` that `moba.paged_kv_append` keeps. With
    `own = p / block_size`, `g = h / (Hq / Hkv)` and `page(s)` the slot of
    position `s`:

    ```
    mean_j      = block_key_sums[b, j, g, :] / block_size       (j < own)
    gate(t, j)  = q[t, h, :] . mean_j                     (f32, no scale)
                  selection = "kv_head": summed over the heads of g's group
    S(t)        = own, plus the top_k - 1 best j < own (ties: the later j)
    K(t)        = positions of the blocks in S(t) that are <= p
    lse[t, h]   = log(sum_{s in K(t)} exp(scale * q[t,h,:] . k_cache[page(s), g, :]))
    out[t, h,:] = sum_{s in K(t)} exp(scale * q[t,h,:] . k_cache[page(s), g, :] - lse)
                                  * v_cache[page(s), g, :]
    ```

    The gate reads the sums of finished blocks only (the own block is
    forced), and the attention reads only the chosen blocks' keys and
    values. `selection = "kv_head"` is an opt-in, different model
    semantics: the query heads of a key/value group share one top-k,
    ranked by the sum of their gate scores. `block_size` must be a
    multiple of `page_size`; `scale` defaults to `1 / sqrt(head_dim)`.

    A sequence whose lengths or pages do not describe a cache
    (`n_b > cache_lens[b]`, more positions than `max_pages * page_size` or
    blocks than `max_blocks`, or a page id outside `[0, pages)`) gets NaN
    in its rows of `output` and `lse`; nothing is read out of bounds.

    Example:

    ```mlir
    %out, %lse = moba.paged_decode_attention q(%q : tensor<8x32x128xbf16>)
        cu_seqlens_q(%cuq : tensor<9xi32>)
        k_cache(%kc : tensor<2048x16x8x128xbf16>)
        v_cache(%vc : tensor<2048x16x8x128xbf16>)
        block_table(%table : tensor<8x256xi32>)
        cache_lens(%lens : tensor<8xi32>)
        block_key_sums(%sums : tensor<8x64x8x128xf32>)
        outs(%o : tensor<8x32x128xbf16>, %l : tensor<8x32xf32>)
        {block_size = 64, top_k = 3, selection = "kv_head"}
    ```
  }];

  let arguments = (ins
    Moba_QKVShaped:$q,
    Moba_CuSeqlensShaped:$cu_seqlens_q,
    Moba_QKVShaped:$k_cache,
    Moba_QKVShaped:$v_cache,
    Moba_IndexShaped:$block_table,
    Moba_IndexShaped:$cache_lens,
    Moba_F32Shaped:$block_key_sums,
    Moba_QKVShaped:$out_init,
    Moba_F32Shaped:$lse_init,
    I64Attr:$block_size,
    I64Attr:$top_k,
    DefaultValuedAttr<StrAttr, "\"query_head\"">:$selection,
    OptionalAttr<F32Attr>:$scale
  );
  // Two results on tensors (output, lse), none on memrefs (after
  // bufferization, for moba-convert-paged-decode-to-nvvm): their types are
  // the inits', so the assembly does not spell them.
  let results = (outs Variadic<Moba_QKVTensor>:$results);
  let assemblyFormat = [{
    `q` `(` $q `:` type($q) `)`
    `cu_seqlens_q` `(` $cu_seqlens_q `:` type($cu_seqlens_q) `)`
    `k_cache` `(` $k_cache `:` type($k_cache) `)`
    `v_cache` `(` $v_cache `:` type($v_cache) `)`
    `block_table` `(` $block_table `:` type($block_table) `)`
    `cache_lens` `(` $cache_lens `:` type($cache_lens) `)`
    `block_key_sums` `(` $block_key_sums `:` type($block_key_sums) `)`
    `outs` `(` $out_init `:` type($out_init) `,`
               $lse_init `:` type($lse_init) `)`
    custom<ResultsOfInitPair>(type($results), ref(type($out_init)),
                              ref(type($lse_init)))
    attr-dict
  }];
  let extraClassDeclaration = [{
    /// The results of the tensor form.
    ::mlir::Value getOutput() { return getResults()[0]; }
    ::mlir::Value getLse() { return getResults()[1]; }
    /// The operands allow the split-K lowering
    /// (moba-convert-paged-decode-to-nvvm): static heads, head_dim and
    /// page_size, head_dim rows of 16-byte chunks read by a power-of-two
    /// number of lanes (at most 32), top_k at most kMaxSplitKTopK (the
    /// running top-k lives in registers), and one token's partials within
    /// kMaxSplitKScratchBytes.
    bool isSplitKCompatible();
    static constexpr int64_t kMaxSplitKTopK = 32;
    /// The split-K lowering's keys a partial (its default chunk-keys) and
    /// the most bytes of partials one query token may need (a slab holds
    /// at least one token).
    static constexpr int64_t kSplitKChunkKeys = 512;
    static constexpr int64_t kMaxSplitKScratchBytes = int64_t(256) << 20;
    /// The f32 partials (out, max, sum) of one query token with chunks of
    /// `chunkKeys` keys: heads * top_k * chunks * (head_dim + 2) * 4 bytes
    /// (static heads and head_dim); nullopt past int64.
    std::optional<int64_t> splitKPartialBytesPerToken(int64_t chunkKeys);
    /// True for selection = "kv_head": one top-k per key/value group.
    bool isSelectionPerKvHead() { return getSelection() == "kv_head"; }
    /// The softmax scale: the attribute, or 1/sqrt(head_dim) (static, as
    /// the verifier makes sure).
    double getScaleOrDefault();
  }];
  let hasVerifier = 1;
}

#endif // MOBA_DIALECT_MOBA_IR_MOBAOPS_TD
