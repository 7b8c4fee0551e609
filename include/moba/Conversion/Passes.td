//===- Passes.td - moba conversion passes ------------------*- tablegen -*-===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_CONVERSION_PASSES_TD
#define MOBA_CONVERSION_PASSES_TD

include "mlir/Pass/PassBase.td"

def MobaMapForallToGpu : Pass<"moba-map-forall-to-gpu"> {
  let summary = "Map the parallel loops of bufferized moba code onto GPU threads";
  let description = [{
    Turns every outermost `scf.forall` on buffers (as `moba-lower-to-loops`
    and `moba-tile-attention` emit with `parallel`) into one `gpu.launch`:
    the iteration space is linearized, `threads-per-block` threads per block,
    as many blocks as it takes, each thread running one iteration (the ones
    past the end do nothing). Buffers the host function allocates
    (`memref.alloc`, the decomposition's scratch tensors such as block means
    and selections) become device allocations, since only kernels touch them:
    `gpu.alloc async` on a stream of its own that is waited for (the form
    gpu-to-llvm lowers to runtime calls), and likewise `gpu.dealloc`.

    This is the SIMT baseline of the GPU backend: one thread per (token,
    head) row, no tensor cores.
  }];
  let options = [
    Option<"threadsPerBlock", "threads-per-block", "int64_t", /*default=*/"128",
           "Threads of each block">,
  ];
  let dependentDialects = [
    "::mlir::arith::ArithDialect",
    "::mlir::gpu::GPUDialect",
    "::mlir::scf::SCFDialect",
  ];
}

def MobaAlignRowAccesses : Pass<"moba-align-row-accesses"> {
  let summary = "Row-wise vector transfers as aligned loads and stores";
  let description = [{
    Rewrites every 1-D, in-bounds, unmasked `vector.transfer_read` and
    `vector.transfer_write` along a buffer's innermost (unit-stride) dim
    into `vector.load` / `vector.store` stating the largest alignment, up to
    `alignment` bytes, that the pass proves for its start relative to the
    buffer's base, when that is more than one element: the layout's offset,
    the vector's bytes and each index times its dim's stride must be
    multiples of it. Indices are known multiples through constants, sums,
    products, shifts and affine maps (a column `4 * i` of f32 is 16-byte
    aligned); a dynamic stride of an identity layout is a multiple of the
    static sizes inside it. Transfers of `memref.subview`s are first folded
    into transfers of the buffer (upstream's fold-memref-alias-ops
    patterns). The NVPTX backend then moves 8 or 16 bytes per instruction
    instead of one element: the SIMT gate read every block mean, 128 f32,
    with 128 scalar loads; the merge read its f32 partials one by one.

    The buffers' base addresses must be `alignment`-aligned: the GPU
    pipeline runs this pass for kernels whose buffers are the caller's q, k,
    v and out (the runner refuses them unaligned) and device allocations
    (256-byte aligned).

    ```mlir
    %r = vector.transfer_read %m[%i, %c0], %pad {in_bounds = [true]}
        : memref<?x128xf32>, vector<128xf32>
    %d = arith.muli %j, %c4 : index
    %s = vector.transfer_read %m[%i, %d], %pad {in_bounds = [true]}
        : memref<?x128xf32>, vector<4xf32>
    // become
    %r = vector.load %m[%i, %c0] {alignment = 16 : i64}
        : memref<?x128xf32>, vector<128xf32>
    %s = vector.load %m[%i, %d] {alignment = 16 : i64}
        : memref<?x128xf32>, vector<4xf32>
    ```
  }];
  let options = [
    Option<"alignment", "alignment", "int64_t", /*default=*/"16",
           "The bytes every buffer base is aligned to (a power of two)">,
  ];
  let dependentDialects = ["::mlir::affine::AffineDialect",
                           "::mlir::vector::VectorDialect"];
}

def MobaConvertGroupedAttentionGradToNVVM
    : Pass<"moba-convert-grouped-attention-grad-to-nvvm"> {
  let summary = "The grouped attention backward on tensor cores (mma.sync)";
  let description = [{
    Lowers every `moba.grouped_block_attention_grad` on buffers (after
    bufferization) to four `gpu.launch`es, none of which adds to a float
    in memory that another thread also adds to: every sum is one thread's
    loop, so the same inputs give the same bits on every run.

     * A kernel zeroes the partials of the slots that attend nothing
       (`moba.sum_slots` adds every slot; the dq kernel writes the listed
       ones).
     * The tile list and the dq kernel are the forward kernel's frame
       (moba-convert-grouped-attention-to-nvvm, mma.sync form): a CTA of
       `warps` warps takes 16 x `warps` entries of one group (queries that
       chose one key block), and the block's K and V pass through two
       shared-memory buffers `key-chunk` keys at a time (cp.async). Per
       chunk each warp recomputes `S = Q K^T` and `P = exp(scale S - lse)`
       (the forward's log-sum-exp: no running max), `dP = dO V^T`,
       `dS = P (dP - delta)` and adds `dS K` to the rows' dq accumulators;
       each row's `scale * dq` is its slot's partial.
     * The key/value kernel gives each CTA 16 x `warps` keys of one block
       row and one KV head, each warp 16 keys: it stages their K and V
       once, then walks the queries of every group of the KV head's query
       heads for that block, `query-chunk` at a time (gathered by token
       into two cp.async buffers, with their lse and delta), and keeps the
       transposed products `S^T = K Q^T`, `dP^T = V dO^T` on the tensor
       cores, accumulating `dV += P^T dO` and `dK += dS^T Q` in registers;
       it writes `scale * dK` and `dV`, rounded once. Causally it skips the
       leading queries of each group that lie before its keys (the entries
       are in token order) and masks the rest.

    All products are `nvvm.mma.sync` m16n8k16 (f16 or bf16 operands, f32
    accumulation; `P` and `dS` rounded to the operand type as flash
    attention does), fragments by `ldmatrix`; sm_80 and newer. Needs f16 or
    bf16, head_dim a static multiple of 16 up to 128, static heads.
  }];
  let options = [
    Option<"warps", "warps", "int64_t", /*default=*/"4",
           "Warps per CTA, 1, 2, 4 or 8: the dq kernel's (16 queries "
           "each), and the key/value kernel's (16 keys each) unless "
           "key-value-warps is set">,
    Option<"keyChunk", "key-chunk", "int64_t", /*default=*/"0",
           "Keys of the dq kernel staged per step (a multiple of 16, up "
           "to 128; 0: 64 for head_dim up to 64, else 32, which keeps its "
           "accumulators in registers)">,
    Option<"queryChunk", "query-chunk", "int64_t", /*default=*/"0",
           "Queries of the key/value kernel staged per step (a multiple "
           "of 16, up to 128; 0: 64)">,
    Option<"keyValueWarps", "key-value-warps", "int64_t", /*default=*/"0",
           "Warps per CTA of the key/value kernel (16 keys each), 1, 2, "
           "4 or 8; 0: `warps`">,
  ];
  let dependentDialects = [
    "::mlir::arith::ArithDialect",
    "::mlir::gpu::GPUDialect",
    "::mlir::LLVM::LLVMDialect",
    "::mlir::math::MathDialect",
    "::mlir::memref::MemRefDialect",
    "::mlir::NVVM::NVVMDialect",
    "::mlir::nvgpu::NVGPUDialect",
    "::mlir::scf::SCFDialect",
    "::mlir::vector::VectorDialect",
  ];
}

def MobaConvertGroupedAttentionToNVVM
    : Pass<"moba-convert-grouped-attention-to-nvvm"> {
  let summary = "Grouped block attention on tensor cores (mma.sync or wgmma)";
  let description = [{
    Lowers every `moba.grouped_block_attention` on buffers (after
    bufferization) to two `gpu.launch`es: one that marks every slot's
    partial empty (log-sum-exp -inf; the output rows of empty slots are
    never read), and the attention kernel. There a CTA of `warps` warps
    takes 16 x `warps` consecutive entries of one group (queries that chose
    the same key block), each warp 16 of them. K and V of the block pass
    through shared memory `key-chunk` keys at a time, two buffers filled by
    `cp.async` (`nvgpu.device_async_copy`) so that the next chunk is in
    flight while this one is multiplied; the warps read their operands with
    `ldmatrix` (`.trans` for V), compute `Q K^T` and `P V` with
    `nvvm.mma.sync` m16n8k16 (f16 or bf16 operands, f32 accumulation), keep
    the online softmax (base 2) in the accumulator fragments, and write each
    query's normalized partial and log-sum-exp to its slot. Causally, the
    chunks past a tile's last query are skipped. Needs f16 or bf16,
    head_dim a static multiple of 16 up to 128, static heads and K; runs on
    sm_80 and newer. The shared memory (2 x 2 x key-chunk x (head_dim + 8)
    elements) may exceed 48 KiB: the runtime opts the kernel in.

    `instruction=wgmma` (sm_90a) runs the chunk loop on warpgroups instead:
    each 4 warps own 64 queries, gathered once into shared memory; Q, K, V
    and the probabilities P sit in shared memory in 64-column panels with
    the 128-byte swizzle, and `Q K^T` and `P V` are `nvvm.wgmma.mma_async`
    m64 k16 on matrix descriptors (V read MN-major), the softmax unchanged
    on the accumulators. It needs `warps` a multiple of 4 and `key-chunk` a
    multiple of 64; ops whose head_dim is not 64 or 128 keep mma.sync.

    `key-value-loads=tma` (with wgmma, where the CTA is one warpgroup whose
    softmax is not overlapped: the tuned shapes) loads K and V with TMA:
    the host code encodes their tensor maps (`mobaEncodeTensorMap`
    of the project's runtime) and a one-thread launch puts them in device
    memory; in the kernel one thread starts each chunk's copies
    (`nvvm.cp.async.bulk.tensor`, a 64-column panel each) on an mbarrier
    of its buffer, and the warps wait on the barrier's phase parity instead
    of on cp.async groups. Rows past the block's last key are zeroed in V
    before P V reads them (TMA copies whatever lies there).

    `key-value-loads=tma-multicast` is `tma` with the CTAs launched in
    clusters of two (`nvvm.cluster_dim`, `.reqnctapercluster 2, 1, 1`) over
    adjacent tiles of a head. Where both tiles of a cluster read the same
    chunks (the same block row and, causally, every query past the block),
    each CTA's copying thread starts half of every chunk's panels with a
    multicast mask of both CTAs, so that the pair reads its K and V from L2
    once; the chunk's CTA barrier becomes a cluster barrier
    (`nvvm.cluster.arrive` / `nvvm.cluster.wait`), since a copy refills
    both CTAs' buffers. Other tiles load alone, as with `tma`.

    `stages` is the depth of the TMA loads' ring of K/V buffers (2 to 4;
    the cp.async loops are double-buffered and take 2). `schedule` orders
    the wgmma chunk loop: `auto` (overlapped with cp.async where one CTA's
    warpgroups fill an SM, else in order), `in-order`, or `overlapped`
    (wgmma with cp.async only). The options form one plan
    (`AttentionKernelPlan`), whose rules are checked once, before any op is
    lowered; each broken rule is an error naming the option and its value.
  }];
  let options = [
    Option<"warps", "warps", "int64_t", /*default=*/"4",
           "Warps per CTA (16 queries each)">,
    Option<"keyChunk", "key-chunk", "int64_t", /*default=*/"64",
           "Keys staged in shared memory per step (a multiple of 16)">,
    Option<"instruction", "instruction", "::mlir::moba::MatrixInstruction",
           /*default=*/"::mlir::moba::MatrixInstruction::MmaSync",
           "The matrix instruction: mma.sync (sm_80 and newer) or wgmma "
           "(sm_90a; head_dim 64 or 128, other ops keep mma.sync)",
           [{::mlir::moba::matrixInstructionOptionValues()}]>,
    Option<"keyValueLoads", "key-value-loads", "::mlir::moba::KeyValueLoads",
           /*default=*/"::mlir::moba::KeyValueLoads::CpAsync",
           "How K and V reach shared memory: cp.async (every thread copies "
           "16 bytes at a time), tma (one thread starts TMA bulk copies "
           "that complete on mbarriers; the wgmma form, other shapes keep "
           "cp.async) or tma-multicast (tma shared by clusters of two CTAs "
           "reading the same keys)",
           [{::mlir::moba::keyValueLoadsOptionValues()}]>,
    Option<"stages", "stages", "int64_t", /*default=*/"2",
           "Depth of the K/V ring in shared memory: 2, or with TMA loads "
           "up to 4 (stages - 1 chunks in flight while one is multiplied)">,
    Option<"schedule", "schedule", "::mlir::moba::KernelSchedule",
           /*default=*/"::mlir::moba::KernelSchedule::Auto",
           "The wgmma chunk loop's order: auto (overlapped with cp.async "
           "where one CTA fills an SM, else in order), in-order, or "
           "overlapped (wgmma with cp.async)",
           [{::mlir::moba::kernelScheduleOptionValues()}]>,
  ];
  let dependentDialects = [
    "::mlir::arith::ArithDialect",
    "::mlir::func::FuncDialect",
    "::mlir::gpu::GPUDialect",
    "::mlir::LLVM::LLVMDialect",
    "::mlir::math::MathDialect",
    "::mlir::memref::MemRefDialect",
    "::mlir::nvgpu::NVGPUDialect",
    "::mlir::NVVM::NVVMDialect",
    "::mlir::scf::SCFDialect",
    "::mlir::vector::VectorDialect",
  ];
}

def MobaConvertGateTopKToNVVM : Pass<"moba-convert-gate-topk-to-nvvm"> {
  let summary = "Fused gate + top-k on tensor cores (mma.sync)";
  let description = [{
    Lowers every `moba.gate_topk` on buffers (after bufferization) to two
    `gpu.launch`es. The first splits the f32 block means into two halves of
    the query's element type, `hi = round(mean)` and
    `lo = round(mean - hi)`, so that `q . hi + q . lo` (exact products, f32
    sums) carries the f32 mean to about 2^-16 of its size where one bf16
    operand would lose 2^-9: the selection then agrees with the f32 gate
    except between scores closer than that.

    The second kernel gives each CTA (4 warps) 64 consecutive tokens of one
    query head; each warp's 16 rows are the `A` operand of
    `nvvm.mma.sync` m16n8k16, held in registers for the whole kernel. The
    CTA streams the block means of the key/value head, 8 blocks (one `n`
    tile) a step, from the first block any of its rows may choose to the
    last: `S = Q (hi + lo)^T` in four independent accumulator chains. Each
    lane keeps a sorted running top-k of the scores it holds (two rows,
    two columns of each tile), masked to each row's candidates (strictly
    past blocks of its sequence when causal); a warp-uniform vote skips the
    insertion when no lane's score beats its current k-th. At the end the
    four lanes sharing a row merge their lists (k rounds of a quad argmax by
    shuffles; ties to the later block), and one writes the row: the own
    block first when causal, then the best past blocks, -1 where there are
    fewer candidates than K. No score is ever stored.

    The head_dim dimension is taken in a permuted order, the same for both
    operands (a dot product does not care): lane `c` of a quad loads
    elements `8c .. 8c+7` of each 32-wide slice of a row with one 16-byte
    load and uses them as its `k = 2c, 2c+1, 2c+8, 2c+9` of two k-steps.

    Needs f16 or bf16 queries, head_dim a static multiple of 16 up to 128,
    static heads, and at most 16 blocks kept by score (K - 1 causal, K
    otherwise); runs on sm_80 and newer.
  }];
  let dependentDialects = [
    "::mlir::arith::ArithDialect",
    "::mlir::gpu::GPUDialect",
    "::mlir::LLVM::LLVMDialect",
    "::mlir::memref::MemRefDialect",
    "::mlir::NVVM::NVVMDialect",
    "::mlir::scf::SCFDialect",
    "::mlir::vector::VectorDialect",
  ];
}

def MobaConvertGroupQueriesToNVVM
    : Pass<"moba-convert-group-queries-to-nvvm"> {
  let summary = "The query grouping as a stable counting sort on warps";
  let description = [{
    Lowers every `moba.group_queries` on buffers (after bufferization) to
    three `gpu.launch`es, a stable counting sort of the selection slots by
    (query head, block row), linked by a scratch buffer of cursors
    `[heads, block rows, chunks]`:

    * count: one warp per (head, chunk of consecutive tokens) walks the
      chunk's tokens in order, 32 / K a step, lane `l` holding slot `l % K`
      of token `l / K`; a slot attends when its block exists in the token's
      sequence and no lower slot of its token holds it; the attending slots
      add to their (head, row, chunk) cursors, one atomic per row and step
      (`nvvm.match.sync` groups the lanes of a row);
    * scan: one CTA per head replaces its cursors, taken row by row and
      chunk by chunk, by their exclusive prefix sums, which makes each the
      place in `entries` where that chunk's part of the row begins; then it
      writes `starts`, `counts` and -1 into the entries past the last;
    * place: the warps walk their chunks again; each attending slot
      `t * K + s` goes to its row's old cursor plus its rank among the
      row's lanes of the step (distinct tokens, in token order). A warp
      barrier after every step orders the steps' atomics, so every group is
      ordered by token, then slot, as the op says.

    A chunk is 64 tokens per 128 block rows (at least 64), which keeps the
    cursors about as large as the entries. Needs static query heads and a
    static K of at most 32 (one lane a slot); `moba-lower-to-loops`
    (`keep-warp-compatible-grouping`) leaves exactly those ops for it. Runs
    on sm_70 and newer (`match.sync`).
  }];
  let dependentDialects = [
    "::mlir::arith::ArithDialect",
    "::mlir::gpu::GPUDialect",
    "::mlir::memref::MemRefDialect",
    "::mlir::NVVM::NVVMDialect",
    "::mlir::scf::SCFDialect",
  ];
}

def MobaGpuKernelOutlining : Pass<"moba-gpu-kernel-outlining", "ModuleOp"> {
  let summary = "Outline gpu.launch bodies, keeping their nvvm.* attributes";
  let description = [{
    Upstream's `gpu-kernel-outlining` (each `gpu.launch` becomes a
    `gpu.func` in a `gpu.module` of its own and a `gpu.launch_func`), plus
    one thing it does not do: the launch's discardable attributes of the
    NVVM dialect (`nvvm.minctasm`, `nvvm.maxnreg`, ...) move onto the
    outlined kernel, where `convert-gpu-to-nvvm` and the NVVM translation
    turn them into PTX directives (`.minnctapersm`, `.maxnreg`).

    The pass that builds a kernel knows its occupancy: the grouped
    attention kernel states how many CTAs must share an SM
    (`nvvm.minctasm`), which caps ptxas's register allocation so that the
    shared memory it sized for that many CTAs is not wasted. Outlining is
    what separates that pass from the `gpu.func`, so the attributes ride on
    the `gpu.launch` across it.

    Example: `gpu.launch ... { ... } {nvvm.minctasm = 3 : i32}` outlines to
    `gpu.func @f_kernel(...) kernel attributes {nvvm.minctasm = 3 : i32,
    ...}`.
  }];
  let dependentDialects = [
    "::mlir::gpu::GPUDialect",
    "::mlir::NVVM::NVVMDialect",
  ];
}

def MobaConvertPagedDecodeToNVVM
    : Pass<"moba-convert-paged-decode-to-nvvm"> {
  let summary = "Split-K (flash-decoding) kernels for the paged decode";
  let description = [{
    Lowers every `moba.paged_decode_attention` on buffers (after
    bufferization) to four kinds of `gpu.launch`, with device scratch
    allocated in the host function:

     1. the cache check: one thread per sequence, an i32 flag each (its
        lengths and pages describe the cache; its query tokens lie within
        the packed ones);
     2. the selection: one warp per (query token, query head), lanes across
        head_dim: the gate over the finished blocks' mean keys (shuffle
        reduction), a running top-(top_k - 1) in registers (ties to the
        later block, NaN ranked as +inf), written as the own block then the
        chosen ones (-1 pads; -1 in slot 0 marks a row that gets NaN);
     3. the attention: one warp per (sequence, key/value head, block,
        chunk of `chunk-keys` keys); the warp takes every row of its
        sequence and key/value head that chose the block, `rows-per-tile`
        at a time, so that one read of a key serves all query heads of the
        group and all query tokens of the sequence that chose it. Lanes
        split head_dim in 16-byte loads (head_dim / 16 bytes lanes a key,
        the other lanes on the next keys), `key-steps` keys a lane group a
        step; online softmax in f32 on exp2, then the lane groups merge and
        the warp writes a partial (out, max, sum) per (row, slot, chunk);
     4. the merge: per (row, 4 elements), the partials of the row's slots
        and chunks in a fixed order (so the same bits every run), the
        output and the log-sum-exp.

    Tokens run in slabs of `slab-tokens` (a host loop over launches 2 to
    4), which bounds the scratch for long chunks of prefill.
  }];
  let options = [
    Option<"chunkKeys", "chunk-keys", "int64_t", /*default=*/"512",
           "Keys of a block one warp attends (a partial each)">,
    Option<"rowsPerTile", "rows-per-tile", "int64_t", /*default=*/"4",
           "Query rows a warp attends at once (registers per lane grow "
           "with it)">,
    Option<"keySteps", "key-steps", "int64_t", /*default=*/"4",
           "Keys each lane group loads per step before the softmax update">,
    Option<"slabTokens", "slab-tokens", "int64_t", /*default=*/"64",
           "Query tokens per round of launches (bounds the scratch)">,
  ];
  let dependentDialects = [
    "::mlir::arith::ArithDialect",
    "::mlir::gpu::GPUDialect",
    "::mlir::LLVM::LLVMDialect",
    "::mlir::math::MathDialect",
    "::mlir::memref::MemRefDialect",
    "::mlir::NVVM::NVVMDialect",
    "::mlir::scf::SCFDialect",
    "::mlir::vector::VectorDialect",
  ];
}

#endif // MOBA_CONVERSION_PASSES_TD
