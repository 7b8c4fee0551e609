/*===- moba-c/Moba.h - C API of moba-mlir -------------------------*- C -*-===*\
|*                                                                            *|
|* Part of moba-mlir. Compile a MoBA attention configuration to a kernel,    *|
|* run it, free it. Every call that can fail returns a status and, on       *|
|* failure, an error message the caller frees with mobaFreeString. Python   *|
|* binds it with ctypes.                                                    *|
|*                                                                            *|
\*===----------------------------------------------------------------------===*/

/* No aborts: how the library keeps its caller alive.
 *
 * - Every value is checked against the limits below before it reaches the
 *   compiler or a kernel, and every size derived from them is computed in
 *   checked 64-bit arithmetic; a value beyond a limit gets an error naming
 *   it (mobaCheckConfig checks a configuration without compiling it).
 * - mobaCompile (and mobaCompilePaged) runs the compiler recoverably: an LLVM fatal error or
 *   allocation failure, a C++ exception, or a crash signal (SIGSEGV,
 *   SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP) on the compiling thread
 *   becomes an error return, "internal compiler error: ..." (LLVM's
 *   llvm::CrashRecoveryContext, whose signal handlers are installed while a
 *   compile is in progress and the previous ones restored after). What that
 *   compile had allocated is leaked: it is the last line of defence, and
 *   input that reaches it is a bug to report. Setting MOBA_TEST_CRASH to
 *   fatal-error, bad-alloc, exception or abort makes every mobaCompile fail
 *   that way (a test hook).
 * - mobaRun, mobaRunGrad, mobaRunDevice, mobaRunGradDevice,
 *   mobaPagedAppend and mobaPagedDecode check their counts and
 *   pointers, then run the compiled kernel; exceptions become errors, but a
 *   crash inside a kernel (only possible when the buffers are not as large
 *   as the counts say) is not caught: it would mean memory was already corrupted.
 *
 * Limits (each from what the compiler does with the value;
 * include/moba/Runner/AttentionConfig.h says why):
 *   head_dim, top_k, tile_k        1 .. 1024 (vector widths)
 *   num_heads, num_kv_heads        1 .. 2^20 (num_heads a multiple of
 *                                  num_kv_heads)
 *   block_size, tile_q             1 .. 2^31 - 1
 *   scale                          0 (1/sqrt(head_dim)) or a positive
 *                                  normal float32: finite, >= FLT_MIN
 *   mma_warps, mma_key_chunk       0 (tuned), 1 .. 16, and a multiple of
 *                                  16 in 16 .. 256
 *   mma_stages                     0 (tuned), 2 .. 4
 *   (these three on every target, the CPU's too, which ignores them: a
 *   caller of one configuration on any machine learns of a bad value at
 *   once)
 *   and the kernel plan's rules between them (mma_instruction wgmma needs
 *   sm_90a, mma_warps a multiple of 4 and mma_key_chunk of 64; TMA loads
 *   need wgmma; mma_stages above 2 need TMA loads; MOBA_SCHEDULE_OVERLAPPED
 *   needs wgmma with cp.async loads, MOBA_SCHEDULE_WARP_SPECIALIZED wgmma
 *   with TMA loads), checked once the tuning table has
 *   filled in what is 0: include/moba/Conversion/AttentionKernelPlan.h.
 *   tokens (per call)              0 .. 2^31 - 1 (cu_seqlens are int32)
 *   num_sequences (per call)       1 .. 2^31 - 1
 *
 * Paged KV cache kernels (MobaPagedConfig) take head_dim, num_heads,
 * num_kv_heads, block_size, top_k and scale with the limits above, and
 *   page_size                      1 .. 2^31 - 1, dividing block_size
 *   max_query_tokens               1 .. 16 (decode), 0 (any: chunked prefill)
 *   num_pages, max_pages, max_blocks (per call)  1 .. 2^31 - 1 (page ids
 *                                  and lengths are int32), every buffer at
 *                                  most 2^62 bytes
 */

#ifndef MOBA_C_MOBA_H
#define MOBA_C_MOBA_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 10: decode against a paged KV cache (MobaPagedConfig, mobaCompilePaged,
 * mobaPagedAppend, mobaPagedDecode); every entry point of 9 is unchanged.
 * 11: paged kernels for the GPU targets (mobaPagedAppendDevice,
 * mobaPagedDecodeDevice); every entry point of 10 is unchanged.
 * 12: the caller's scratch allocator (MobaScratchAllocator,
 * mobaSetScratchAllocator); every entry point of 11 is unchanged. */
#define MOBA_C_API_VERSION 12

typedef enum MobaDtype { MOBA_DTYPE_F32 = 0, MOBA_DTYPE_F16 = 1, MOBA_DTYPE_BF16 = 2 } MobaDtype;

/* Where a kernel runs. GPU kernels compile on any machine (PTX, no GPU
 * needed) and load into the calling thread's current CUDA context on their
 * first run; sm_80 code runs on compute capability 8.0 and newer, sm_90a
 * only on 9.0 (Hopper). */
typedef enum MobaTarget {
  MOBA_TARGET_CPU = 0,
  MOBA_TARGET_SM80 = 1,
  MOBA_TARGET_SM90A = 2,
} MobaTarget;

/* How far the CPU pipeline transforms the moba ops (see
 * docs/cpu-backend.md). GPU targets take only MOBA_STAGE_FUSED. */
typedef enum MobaStage { MOBA_STAGE_FUSED = 0, MOBA_STAGE_TILED = 1, MOBA_STAGE_DECOMPOSED = 2 } MobaStage;

/* The GPU attention kernels (docs/gpu-backend.md). */
typedef enum MobaGpuAttention {
  /* The queries grouped by the key block they chose, each group attending
   * to its block in 16-query tiles on tensor cores (mma.sync), partials
   * merged by log-sum-exp; f32 or head_dims the tensor-core kernel does not
   * take fall back to one thread per slot. */
  MOBA_GPU_ATTENTION_MMA = 0,
  /* One thread per (token, head) walking its selected blocks. */
  MOBA_GPU_ATTENTION_SIMT = 1,
} MobaGpuAttention;

typedef enum MobaMmaInstruction {
  /* The tuning table's choice with the table's shape; mma.sync when the
   * caller names mma_warps or mma_key_chunk. */
  MOBA_MMA_INSTRUCTION_TUNED = 0,
  /* mma.sync m16n8k16 (sm_80 and newer). */
  MOBA_MMA_INSTRUCTION_MMA_SYNC = 1,
  /* sm_90a's wgmma: mma_warps a multiple of 4, mma_key_chunk a multiple of
   * 64; head_dims other than 64 and 128 keep mma.sync. */
  MOBA_MMA_INSTRUCTION_WGMMA = 2,
} MobaMmaInstruction;

typedef enum MobaKeyValueLoads {
  /* The tuning table's choice with its shape; else cp.async. */
  MOBA_KEY_VALUE_LOADS_DEFAULT = 0,
  /* Every thread copies 16 bytes at a time (cp.async). */
  MOBA_KEY_VALUE_LOADS_CP_ASYNC = 1,
  /* TMA bulk copies on mbarriers; needs wgmma (sm_90a). */
  MOBA_KEY_VALUE_LOADS_TMA = 2,
  /* TMA shared by clusters of two CTAs that read the same keys (multicast
   * copies, a cluster barrier per chunk); needs wgmma (sm_90a). */
  MOBA_KEY_VALUE_LOADS_TMA_MULTICAST = 3,
} MobaKeyValueLoads;

typedef enum MobaMerge {
  /* Separate (MOBA_MERGE_SEPARATE): it measured faster on the H200. */
  MOBA_MERGE_DEFAULT = 0,
  /* Each row merged inside the attention kernel by the CTA that finishes
   * its last slot. */
  MOBA_MERGE_FUSED = 1,
  /* The partials merged by kernels of their own after the attention. */
  MOBA_MERGE_SEPARATE = 2,
} MobaMerge;

typedef enum MobaSchedule {
  /* The kernel's own rule: the wgmma loop overlaps each chunk's softmax
   * with the previous chunk's P V where one CTA fills an SM and K and V
   * come by cp.async, else runs in order. */
  MOBA_SCHEDULE_AUTO = 0,
  /* Each chunk's products and softmax one after the other. */
  MOBA_SCHEDULE_IN_ORDER = 1,
  /* Each chunk's softmax under the previous chunk's P V; needs wgmma and
   * cp.async loads. */
  MOBA_SCHEDULE_OVERLAPPED = 2,
  /* A producer warpgroup fills the TMA ring and gives its registers to the
   * consumer warpgroups; needs wgmma with TMA loads (not multicast) and
   * mma_warps at most 12. */
  MOBA_SCHEDULE_WARP_SPECIALIZED = 3,
  /* MOBA_SCHEDULE_WARP_SPECIALIZED, each consumer's softmax under the
   * previous chunk's P V; the same rules. */
  MOBA_SCHEDULE_WARP_SPECIALIZED_OVERLAPPED = 4,
  /* MOBA_SCHEDULE_WARP_SPECIALIZED_OVERLAPPED with the consumer warpgroups
   * taking turns on the tensor cores; mma_warps 8 or 12. */
  MOBA_SCHEDULE_PING_PONG = 5,
  /* MOBA_SCHEDULE_WARP_SPECIALIZED on persistent CTAs (one wave, each CTA
   * walking its share of the tiles, its producer copying the next tile's
   * chunks while the consumers finish the current one); the same rules. */
  MOBA_SCHEDULE_PERSISTENT = 6,
} MobaSchedule;

typedef struct MobaConfig {
  int64_t head_dim, num_heads, num_kv_heads, block_size, top_k;
  int32_t causal;     /* non-zero: causal */
  float scale;        /* 0: 1/sqrt(head_dim) */
  MobaDtype dtype;
  MobaTarget target;
  MobaStage stage;
  int64_t tile_q, tile_k; /* 0: defaults; GPU targets use tile_k only */
  /* NULL or "": no disk cache. A directory of the caller's own with mode
   * 0700 (created so when missing; any other is not used), holding one
   * verified file per kernel: the object code of a CPU kernel, or a GPU
   * kernel's host object with its PTX or cubin embedded (docs/python.md).
   * Ignored when dump_dir is set (every stage then runs). */
  const char *cache_dir;
  const char *dump_dir;   /* NULL or "": no IR dumps */
  /* GPU targets: how the attention runs. */
  MobaGpuAttention gpu_attention;
  /* MOBA_GPU_ATTENTION_MMA: warps per CTA (16 queries each) and keys staged
   * in shared memory per step of the tensor-core kernel; 0: the tuning
   * table's choice for the configuration (docs/tuning.md). */
  int64_t mma_warps, mma_key_chunk;
  /* MOBA_GPU_ATTENTION_MMA: the matrix instruction. */
  MobaMmaInstruction mma_instruction;
  /* MOBA_GPU_ATTENTION_MMA: how K and V reach shared memory. */
  MobaKeyValueLoads mma_key_value_loads;
  /* MOBA_GPU_ATTENTION_MMA: where the slots' partials are merged. */
  MobaMerge mma_merge;
  /* MOBA_GPU_ATTENTION_MMA: K/V buffers in the TMA loads' ring, 2 .. 4; 0:
   * the tuning table's with its shape and loads, else 2. */
  int64_t mma_stages;
  /* MOBA_GPU_ATTENTION_MMA: the wgmma chunk loop's order. */
  MobaSchedule mma_schedule;
  /* Non-zero: also compile the gradient entry, which mobaRunGrad (CPU) and
   * mobaRunGradDevice (GPU) run (docs/semantics.md, "Gradients"). Part of
   * the kernel's name and disk cache key. */
  int32_t backward;
} MobaConfig;

typedef struct MobaKernel MobaKernel;

/* The library's version; part of the disk cache key. */
const char *mobaVersion(void);

/* Fills `config` with the defaults. */
void mobaConfigInit(MobaConfig *config);

/* Checks `config` as mobaCompile does (every limit, every enum, the GPU
 * options with the tuning table's choices filled in) without compiling it.
 * Returns 0, or non-zero and sets *error naming the first bad value. */
int32_t mobaCheckConfig(const MobaConfig *config, char **error);

/* Compiles `config`. Returns NULL and sets *error on failure. *from_cache,
 * when not NULL, is set to 1 when the kernel came from the disk cache. */
MobaKernel *mobaCompile(const MobaConfig *config, int32_t *from_cache,
                        char **error);

/* What went wrong with the disk cache while compiling `kernel`, one
 * sentence a line: its directory was refused (the kernel was compiled
 * without the cache), a cached file failed verification (it was compiled
 * again and the file replaced), or the file could not be written. NULL when
 * nothing did. The string belongs to the kernel. */
const char *mobaKernelCacheWarning(const MobaKernel *kernel);

/* The plan of a kernel's tensor-core attention (MOBA_GPU_ATTENTION_MMA), the
 * tuning table's choices filled in, in its printed form, e.g.
 * "wgmma,tma,auto,separate,warps=4,key-chunk=64,stages=2"; NULL for other
 * kernels. The string belongs to the kernel. */
const char *mobaKernelPlan(const MobaKernel *kernel);

/* sizeof(MobaConfig) in this library: a binding that lays the struct out
 * itself (Python's ctypes) checks its own size against it. */
int64_t mobaConfigSize(void);

/* The number of kernels compiled and not yet destroyed in this process: a
 * leak check. */
int64_t mobaLiveKernels(void);

/* The target a kernel was compiled for. */
MobaTarget mobaKernelTarget(const MobaKernel *kernel);

/* The compute capability of the GPU the calling thread would run on (its
 * current CUDA context's device, else device 0), e.g. 90 for 9.0; 0 and
 * *error set when there is no driver or no GPU. */
int32_t mobaGpuComputeCapability(char **error);

/* Runs a CPU kernel on contiguous host buffers: q [tokens, Hq, D]; k, v [tokens, Hkv, D];
 * cu_seqlens [num_sequences + 1]; out [tokens, Hq, D]; lse [tokens, Hq]
 * (f32). The caller promises those lengths: nothing can check that a
 * pointer holds as many elements as the counts say. With tokens = 0 (only
 * empty sequences) nothing is read or written, and q, k, v, out and lse may
 * be NULL. Returns 0, or non-zero and sets *error. */
int32_t mobaRun(const MobaKernel *kernel, const void *q, const void *k,
                const void *v, const int32_t *cu_seqlens,
                int64_t num_sequences, int64_t tokens, void *out, float *lse,
                char **error);

/* Runs the backward of a CPU kernel compiled with `backward` set, on
 * contiguous host buffers: q, k, v, cu_seqlens as for mobaRun; out
 * [tokens, Hq, D] and lse [tokens, Hq] (f32) the forward's results on those
 * inputs; dout [tokens, Hq, D] the gradient of the loss with respect to
 * out, dlse [tokens, Hq] (f32) with respect to lse, NULL when the loss does
 * not use lse (a zero gradient). Writes dq [tokens, Hq, D] and dk, dv
 * [tokens, Hkv, D] in the kernel's element type, dk and dv summed over the
 * query heads that share a key/value head. The selection is recomputed
 * from q and k as the forward made it. The buffers the gradients go to
 * must not overlap each other or any input (checked from the counts). The
 * caller promises the lengths as for mobaRun; with tokens = 0 every data
 * pointer may be NULL. Returns 0, or non-zero and sets *error (a kernel
 * compiled without the backward is an error, as is a GPU kernel: see
 * mobaRunGradDevice). */
int32_t mobaRunGrad(const MobaKernel *kernel, const void *q, const void *k,
                    const void *v, const int32_t *cu_seqlens,
                    int64_t num_sequences, int64_t tokens, const void *out,
                    const float *lse, const void *dout, const float *dlse,
                    void *dq, void *dk, void *dv, char **error);

/* Runs a GPU kernel on contiguous device buffers (same shapes as mobaRun),
 * ordered on `stream` (a CUstream; NULL: the legacy default stream). When
 * `host_cu_seqlens` is not NULL it holds the same offsets in host memory and
 * they are checked first; device offsets are never read back. Returns once
 * the work is queued on `stream`, like any CUDA library call: synchronize
 * the stream before reading the results on the host. Scratch memory comes
 * from the calling thread's scratch allocator (mobaSetScratchAllocator)
 * when it has one, else from a stream-ordered pool that moba keeps between
 * calls. Returns 0, or
 * non-zero and sets *error (an error of a kernel itself shows at the next
 * synchronizing call). */
int32_t mobaRunDevice(const MobaKernel *kernel, const void *q, const void *k,
                      const void *v, const int32_t *cu_seqlens,
                      int64_t num_sequences, int64_t tokens, void *out,
                      float *lse, void *stream,
                      const int32_t *host_cu_seqlens, char **error);

/* Runs the backward of a GPU kernel compiled with `backward` set, on
 * contiguous device buffers (same shapes and rules as mobaRunGrad), ordered
 * on `stream` like mobaRunDevice, `host_cu_seqlens` likewise checked first
 * when given. Unlike mobaRunGrad, dlse must not be NULL when there are
 * tokens: pass a device buffer of zeros when the loss does not use lse (the
 * library makes no device memory of its own outside a kernel's scratch).
 * q, k, v, out, dout, dq, dk and dv must be 16-byte aligned. Returns once
 * the work is queued on `stream`; returns 0, or non-zero and sets *error. */
int32_t mobaRunGradDevice(const MobaKernel *kernel, const void *q,
                          const void *k, const void *v,
                          const int32_t *cu_seqlens, int64_t num_sequences,
                          int64_t tokens, const void *out, const float *lse,
                          const void *dout, const float *dlse, void *dq,
                          void *dk, void *dv, void *stream,
                          const int32_t *host_cu_seqlens, char **error);

/* Where a GPU call's scratch comes from, in place of moba's pool: the
 * caller's allocator (torch's caching allocator, so that torch's memory
 * statistics, empty_cache and memory-fraction limits see it).
 *
 * `allocate` returns device memory of the calling thread's current CUDA
 * context, at least `bytes` bytes, 256-byte aligned, usable by work queued
 * on `stream` after the call (stream-ordered, as cuMemAllocAsync); NULL when
 * it cannot, which fails the GPU call with an error naming the size (a
 * misaligned pointer fails it too, after being given back). `deallocate`
 * takes back a pointer `allocate` returned, with its size, in order on
 * `stream`: work queued on that stream before it may still use the memory,
 * work queued after it may reuse it. Every pointer is given back before the
 * GPU call returns, on every path, its errors' included. Both run on the
 * thread of the GPU call, inside it, and must not call into moba. A
 * `deallocate` cannot fail: an allocator that must report one records it
 * itself. */
typedef struct MobaScratchAllocator {
  void *(*allocate)(void *user_data, int64_t bytes, void *stream);
  void (*deallocate)(void *user_data, void *pointer, int64_t bytes,
                     void *stream);
  void *user_data;
} MobaScratchAllocator;

/* Sets the calling thread's scratch allocator, used by the GPU calls
 * (mobaRunDevice, mobaRunGradDevice) that this thread makes from now on;
 * NULL: moba's pool again. The struct is copied; its functions and
 * user_data must stay valid while it is set. Other threads keep theirs (a
 * thread starts with none), so concurrent callers each scope their own.
 * When `previous` is not NULL it receives the allocator that was set (all
 * NULL for none), so that a caller can restore it. Returns 0, or non-zero
 * and sets *error (allocate or deallocate NULL; nothing is changed). */
int32_t mobaSetScratchAllocator(const MobaScratchAllocator *allocator,
                                MobaScratchAllocator *previous, char **error);

/*===--------------------------------------------------------------------===*
 * Decode against a paged KV cache (docs/semantics.md, "Decode and chunked
 * prefill"), on the CPU or, with a GPU target, on device buffers.
 *
 * A paged kernel has two entry points: mobaPagedAppend writes new keys and
 * values into the cache's pages and keeps the f32 key sums of their MoBA
 * blocks; mobaPagedDecode computes causal MoBA for the last few tokens of
 * every sequence (decode, speculative decoding) or a longer chunk (chunked
 * prefill), each query row equal to the row at its position of the full
 * causal forward. The cache is vLLM's: k_cache and v_cache [num_pages,
 * page_size, Hkv, D] in the kernel's element type, block_table
 * [num_sequences, max_pages] (int32 page ids), cache_lens [num_sequences]
 * (int32), block_key_sums [num_sequences, max_blocks, Hkv, D] (f32).
 * Paged kernels are destroyed with mobaDestroy and counted by
 * mobaLiveKernels; mobaRun and its kin refuse them, as mobaPagedAppend and
 * mobaPagedDecode refuse attention kernels.
 *===--------------------------------------------------------------------===*/

/* Which query heads share a top-k. */
typedef enum MobaSelection {
  /* Every query head chooses its blocks (MoBA's own rule). */
  MOBA_SELECTION_QUERY_HEAD = 0,
  /* The query heads of a key/value group share one top-k, ranked by the
   * sum of their gate scores: a different model semantics, opt-in. */
  MOBA_SELECTION_KV_HEAD = 1,
} MobaSelection;

typedef struct MobaPagedConfig {
  int64_t head_dim, num_heads, num_kv_heads;
  int64_t page_size;  /* tokens a page */
  int64_t block_size; /* a multiple of page_size */
  int64_t top_k;
  /* The most queries a sequence may have in one mobaPagedDecode, 1 .. 16;
   * 0: any number (chunked prefill). Checked per call. */
  int64_t max_query_tokens;
  float scale; /* 0: 1/sqrt(head_dim) */
  MobaDtype dtype;
  MobaSelection selection;
  /* MOBA_TARGET_CPU (mobaPagedAppend, mobaPagedDecode on host buffers) or
   * a GPU target (mobaPagedAppendDevice, mobaPagedDecodeDevice on device
   * buffers; cache_dir is not used for them). */
  MobaTarget target;
  /* As MobaConfig's: a disk cache directory (NULL or "": none) and an IR
   * dump directory (NULL or "": none). */
  const char *cache_dir;
  const char *dump_dir;
} MobaPagedConfig;

/* One call's cache, contiguous: host memory for a CPU kernel, device memory
 * for a GPU one. cache_lens are the lengths
 * before the append for mobaPagedAppend and after it for mobaPagedDecode;
 * neither call changes them (the caller adds the appended counts). */
typedef struct MobaPagedCache {
  void *k_cache, *v_cache;
  float *block_key_sums;
  const int32_t *block_table;
  const int32_t *cache_lens;
  int64_t num_pages, max_pages, max_blocks, num_sequences;
} MobaPagedCache;

/* Fills `config` with the defaults. */
void mobaPagedConfigInit(MobaPagedConfig *config);

/* sizeof(MobaPagedConfig) and sizeof(MobaPagedCache) in this library, for
 * bindings that lay the structs out themselves. */
int64_t mobaPagedConfigSize(void);
int64_t mobaPagedCacheSize(void);

/* Checks `config` as mobaCompilePaged does. Returns 0, or non-zero and sets
 * *error naming the first bad value. */
int32_t mobaCheckPagedConfig(const MobaPagedConfig *config, char **error);

/* Compiles `config` (runs recoverably, as mobaCompile). Returns NULL and
 * sets *error on failure; *from_cache as for mobaCompile. */
MobaKernel *mobaCompilePaged(const MobaPagedConfig *config,
                             int32_t *from_cache, char **error);

/* Appends tokens to the cache: k, v [tokens, Hkv, D] packed by cu_seqlens
 * [num_sequences + 1]; new token i of sequence b goes to position
 * cache_lens[b] + i. Writes k_cache, v_cache and block_key_sums in place.
 * Checked first, on the host (an error names the first bad value and
 * nothing is written): the counts, cu_seqlens, every sequence's grown
 * length within its max_pages pages, its max_blocks blocks and int32, the
 * page ids of its positions in [0, num_pages), and that the written buffers
 * overlap neither each other nor an input. With tokens = 0, k and v may be
 * NULL. Returns 0, or non-zero and sets *error. */
int32_t mobaPagedAppend(const MobaKernel *kernel, const MobaPagedCache *cache,
                        const void *k, const void *v,
                        const int32_t *cu_seqlens, int64_t tokens,
                        char **error);

/* Decode (or chunked prefill) against the cache: q [tokens, Hq, D] packed
 * by cu_seqlens_q [num_sequences + 1], the queries of sequence b being its
 * last n_b tokens (already appended: cache_lens are the lengths after the
 * append). Writes out [tokens, Hq, D] and lse [tokens, Hq] (f32). Checked
 * as mobaPagedAppend (n_b <= cache_lens[b], n_b <= max_query_tokens when
 * that is not 0; out and lse overlap nothing else). Returns 0, or non-zero
 * and sets *error. */
int32_t mobaPagedDecode(const MobaKernel *kernel, const MobaPagedCache *cache,
                        const void *q, const int32_t *cu_seqlens_q,
                        int64_t tokens, void *out, float *lse, char **error);

/* mobaPagedAppend and mobaPagedDecode of a GPU paged kernel: every pointer
 * (of `cache` too) is device memory of the calling thread's current CUDA
 * context, the work ordered on `stream` (a CUstream; NULL: the legacy
 * default stream), done when the call returns. The host reads none of the
 * buffers, so it checks the counts, the pointers (non-NULL, rows 16-byte
 * aligned) and that the written ranges overlap nothing else; the kernels
 * check every sequence's offsets (within the tokens), lengths (within its
 * pages and blocks, queries within the cache) and page ids (within the
 * pool) before they touch the cache: a sequence that fails has nothing
 * appended, and NaN rows (out and lse) in a decode. Bad values are never an
 * out-of-bounds access. Returns 0, or non-zero and sets *error. */
int32_t mobaPagedAppendDevice(const MobaKernel *kernel,
                              const MobaPagedCache *cache, const void *k,
                              const void *v, const int32_t *cu_seqlens,
                              int64_t tokens, void *stream, char **error);
int32_t mobaPagedDecodeDevice(const MobaKernel *kernel,
                              const MobaPagedCache *cache, const void *q,
                              const int32_t *cu_seqlens_q, int64_t tokens,
                              void *out, float *lse, void *stream,
                              char **error);

void mobaDestroy(MobaKernel *kernel);
void mobaFreeString(char *string);

#ifdef __cplusplus
}
#endif

#endif /* MOBA_C_MOBA_H */
