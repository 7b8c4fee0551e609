// The kernel plan's rules (AttentionKernelPlan::problems), one RUN each, as
// the pass's options spell them; every broken rule is its own error.
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="warps=17" 2>&1 | FileCheck %s --check-prefix=WARPS
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="key-chunk=272" 2>&1 | FileCheck %s --check-prefix=CHUNK
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="stages=1" 2>&1 | FileCheck %s --check-prefix=STAGES-LOW
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="stages=5 instruction=wgmma key-value-loads=tma" 2>&1 | FileCheck %s --check-prefix=STAGES-HIGH
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="instruction=wgmma warps=6" 2>&1 | FileCheck %s --check-prefix=WG-WARPS
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="instruction=wgmma key-chunk=32" 2>&1 | FileCheck %s --check-prefix=WG-CHUNK
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="key-value-loads=tma" 2>&1 | FileCheck %s --check-prefix=TMA
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="key-value-loads=tma-multicast" 2>&1 | FileCheck %s --check-prefix=MULTICAST
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="instruction=wgmma stages=3" 2>&1 | FileCheck %s --check-prefix=RING
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="schedule=overlapped" 2>&1 | FileCheck %s --check-prefix=OVERLAP-MMA
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="instruction=wgmma key-value-loads=tma schedule=overlapped" 2>&1 | FileCheck %s --check-prefix=OVERLAP-TMA
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="instruction=wgmma warps=2 key-chunk=48" 2>&1 | FileCheck %s --check-prefix=TWO
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="instruction=hgmma" 2>&1 | FileCheck %s --check-prefix=NAME
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="schedule=round-robin" 2>&1 | FileCheck %s --check-prefix=SCHEDULE-NAME
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="key-value-loads=tma schedule=warp-specialized" 2>&1 | FileCheck %s --check-prefix=WS-MMA
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="instruction=wgmma schedule=warp-specialized-overlapped" 2>&1 | FileCheck %s --check-prefix=WS-LOADS
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="instruction=wgmma key-value-loads=tma warps=16 schedule=warp-specialized" 2>&1 | FileCheck %s --check-prefix=WS-WARPS
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="instruction=wgmma key-value-loads=tma warps=4 schedule=ping-pong" 2>&1 | FileCheck %s --check-prefix=PING-PONG

// WARPS: error: moba-convert-grouped-attention-to-nvvm: warps must be in [1, 16], got 17
// CHUNK: error: moba-convert-grouped-attention-to-nvvm: key-chunk must be a multiple of 16 in [16, 256], got 272
// STAGES-LOW: error: moba-convert-grouped-attention-to-nvvm: stages must be in [2, 4], got 1
// STAGES-HIGH: error: moba-convert-grouped-attention-to-nvvm: stages must be in [2, 4], got 5
// WG-WARPS: error: moba-convert-grouped-attention-to-nvvm: instruction=wgmma needs warps a multiple of 4 (whole warpgroups), got 6
// WG-CHUNK: error: moba-convert-grouped-attention-to-nvvm: instruction=wgmma needs key-chunk a multiple of 64 (whole 64-column panels), got 32
// TMA: error: moba-convert-grouped-attention-to-nvvm: key-value-loads=tma needs instruction=wgmma (TMA is sm_90's), got 'mma.sync'
// MULTICAST: error: moba-convert-grouped-attention-to-nvvm: key-value-loads=tma-multicast needs instruction=wgmma (TMA is sm_90's), got 'mma.sync'
// RING: error: moba-convert-grouped-attention-to-nvvm: stages=3 needs key-value-loads tma or tma-multicast (the cp.async loops are double-buffered), got 'cp.async'
// OVERLAP-MMA: error: moba-convert-grouped-attention-to-nvvm: schedule=overlapped needs instruction=wgmma, got 'mma.sync'
// OVERLAP-TMA: error: moba-convert-grouped-attention-to-nvvm: schedule=overlapped needs key-value-loads=cp.async (the TMA loop runs in order), got 'tma'
// TWO: error: moba-convert-grouped-attention-to-nvvm: instruction=wgmma needs warps a multiple of 4 (whole warpgroups), got 2
// TWO: error: moba-convert-grouped-attention-to-nvvm: instruction=wgmma needs key-chunk a multiple of 64 (whole 64-column panels), got 48
// NAME: for the --instruction option: Cannot find option named 'hgmma'!
// SCHEDULE-NAME: for the --schedule option: Cannot find option named 'round-robin'!
// WS-MMA: error: moba-convert-grouped-attention-to-nvvm: schedule=warp-specialized needs instruction=wgmma, got 'mma.sync'
// WS-LOADS: error: moba-convert-grouped-attention-to-nvvm: schedule=warp-specialized-overlapped needs key-value-loads=tma (its producer owns one CTA's ring), got 'cp.async'
// WS-WARPS: error: moba-convert-grouped-attention-to-nvvm: schedule=warp-specialized needs warps at most 12 (three consumer warpgroups beside the producer's), got 16
// PING-PONG: error: moba-convert-grouped-attention-to-nvvm: schedule=ping-pong needs warps 8 or 12 (two or three consumer warpgroups to take turns), got 4

module {
}
