"""A GPU call whose scratch allocator raises (torch's OutOfMemoryError past
a memory fraction) must not keep the caller's tensors alive.

The allocator's exception is raised inside a ctypes callback, so its
traceback's frames link back (f_back) through the library call to the frame
of the Python call that made it, and to its callers, which hold the call's
output tensors. If anything on that chain refers back to the exception, the
frames form a reference cycle: the outputs stay allocated until the garbage
collector happens to run (torch.cuda.memory_allocated then stays above what
it was before the failed call). These tests run with the collector off, so
that only reference counts free things, as they do right after a failed
call on the device.

No GPU is needed: the library's entry is replaced by a Python function
that asks the thread's scratch allocator for memory through the C callback,
as the GPU runtime does, and fails.
"""
import ctypes
import gc
import weakref

import pytest

from moba import _capi


class Outputs:
    """Stands for the output tensors a failed call had allocated."""


class AllocatorError(RuntimeError):
    """Stands for torch.OutOfMemoryError."""


def refusing_allocator():
    def allocate(nbytes, stream):
        raise AllocatorError(f"out of memory: tried to allocate {nbytes} "
                             "bytes")

    def deallocate(address, nbytes, stream):
        pass

    return _capi.ScratchAllocator(allocate, deallocate)


def failing_entry(allocator):
    """A library entry point's stand-in: takes scratch through the C
    callback the library would call, and fails when it gets none."""
    def entry(error):
        address = allocator.struct.allocate(None, 4096, None)
        return 0 if address else 1
    return entry


def call_holding(outputs, allocator):
    """A GPU call's Python frame: it holds the outputs it made."""
    _capi._run_with_scratch(allocator, failing_entry(allocator))
    return outputs


@pytest.fixture
def no_collector():
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    yield
    if enabled:
        gc.enable()


def test_a_failed_call_keeps_none_of_its_callers_frames(no_collector):
    outputs = Outputs()
    alive = weakref.ref(outputs)
    allocator = refusing_allocator()
    with pytest.raises(RuntimeError) as info:
        call_holding(outputs, allocator)
    # The error chains the allocator's exception.
    assert isinstance(info.value.__cause__, AllocatorError)
    del info, outputs
    assert alive() is None, (
        "the outputs of the failed call are still referenced after its "
        "error was dropped (a reference cycle through the allocator's "
        "exception): " + repr(gc.get_referrers(alive())))


def test_the_error_keeps_the_allocators_exception_while_it_lives(
        no_collector):
    outputs = Outputs()
    allocator = refusing_allocator()
    try:
        call_holding(outputs, allocator)
    except RuntimeError as e:
        error = e
    cause = weakref.ref(error.__cause__)
    assert "out of memory: tried to allocate 4096 bytes" in str(error)
    del error
    assert cause() is None
