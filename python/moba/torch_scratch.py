"""moba's scratch from torch's caching allocator.

A GPU call needs temporary buffers (the selection, the query groups, the
per-slot partials: up to 8.6 GB at 128K tokens). From moba's own pool they
are invisible to torch: torch.cuda.memory_allocated misses them,
torch.cuda.empty_cache cannot release them, and a memory fraction set with
torch.cuda.set_per_process_memory_fraction does not bound them. When a call
has torch CUDA tensors, its scratch comes from torch's caching allocator on
the call's stream instead (the C API's MobaScratchAllocator), so torch sees,
caches, releases and limits it like its own tensors.

Stream order: torch's caching allocator keeps a block for the stream it was
allocated on and reuses a freed block only for work queued on that stream
after the free, which is what moba's runtime needs (it frees each buffer
right after queuing the last kernel that reads it).
"""
from . import _capi


def scratch_allocator(device):
    """A _capi.ScratchAllocator for a call on torch CUDA device `device`
    (a torch.device): each buffer from torch.cuda.caching_allocator_alloc
    on the call's stream, given back with caching_allocator_delete. An
    allocation torch refuses (torch.OutOfMemoryError, e.g. past the memory
    fraction) fails the call with torch's message."""
    import torch
    index = device.index if device.index is not None else \
        torch.cuda.current_device()

    def allocate(nbytes, stream):
        return torch.cuda.caching_allocator_alloc(nbytes, device=index,
                                                  stream=stream)

    def deallocate(address, nbytes, stream):
        torch.cuda.caching_allocator_delete(address)

    return _capi.ScratchAllocator(allocate, deallocate)
