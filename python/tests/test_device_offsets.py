"""The GPU call's host copy of cu_seqlens, kept between calls.

Reading device offsets to the host waits for the stream, so a call that
read them every time would wait for the call before it and leave the GPU
idle while Python enqueues the next. These tests run without a GPU or
torch: stand-ins count the host copies.
"""
from types import SimpleNamespace

import numpy as np
import pytest

import moba


class FakeOffsets:
    """A torch tensor's stand-in: its host copies are counted, and writes
    bump the version counter that torch keeps per tensor (and its views)."""

    def __init__(self, values):
        self.values = np.asarray(values, dtype=np.int32)
        self.copies = 0
        self._version = 0

    def write(self, values):
        self.values = np.asarray(values, dtype=np.int32)
        self._version += 1

    def cpu(self):
        self.copies += 1
        return self

    def numpy(self):
        return self.values


class FakeView:
    """What `_as_cuda_tensor` makes of the caller's tensor each call (torch's
    detach()): a new object over the same offsets."""

    def __init__(self, base):
        self.base = base

    def cpu(self):
        return self.base.cpu()


def host_offsets(kernel, given, tokens=96, max_seqlen=None):
    return moba.Kernel._host_offsets(kernel, FakeView(given), given, tokens,
                                     max_seqlen)


def new_kernel():
    return SimpleNamespace(_check_cu_seqlens=moba.Kernel._check_cu_seqlens)


def test_offsets_are_read_once_for_the_same_tensor():
    kernel, cu = new_kernel(), FakeOffsets([0, 40, 96])
    for _ in range(3):
        np.testing.assert_array_equal(host_offsets(kernel, cu), [0, 40, 96])
    assert cu.copies == 1


def test_offsets_are_read_again_after_a_write_or_for_another_tensor():
    kernel, cu = new_kernel(), FakeOffsets([0, 40, 96])
    host_offsets(kernel, cu)
    cu.write([0, 50, 96])
    np.testing.assert_array_equal(host_offsets(kernel, cu), [0, 50, 96])
    assert cu.copies == 2
    other = FakeOffsets([0, 40, 96])
    host_offsets(kernel, other)
    assert other.copies == 1
    # Another token count or max_seqlen checks the offsets anew.
    with pytest.raises(ValueError, match="must end at the token count 97"):
        host_offsets(kernel, other, tokens=97)


def test_arrays_without_a_version_counter_are_read_each_call():
    class Untracked:
        copies = 0

        def cpu(self):
            Untracked.copies += 1
            return self

        def numpy(self):
            return np.array([0, 96], dtype=np.int32)

    kernel, cu = new_kernel(), Untracked()
    for _ in range(2):
        moba.Kernel._host_offsets(kernel, cu, cu, 96, None)
    assert Untracked.copies == 2
