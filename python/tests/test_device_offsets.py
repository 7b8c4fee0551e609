"""The GPU calls' host copies of cu_seqlens, kept per tensor
(moba/device_offsets.py).

Reading device offsets to the host waits for the stream, so a call that
read them every time would wait for the call before it, and a call being
captured into a CUDA graph must not read them at all. These tests run
without a GPU: stand-ins count the host copies, and the capture state is
the test's.
"""
import numpy as np
import pytest

import moba
from moba import device_offsets


class FakeOffsets:
    """A torch CUDA tensor's stand-in: its host copies are counted, and
    writes bump the version counter that torch keeps per tensor (and its
    views)."""

    def __init__(self, values, address=0x7000):
        self.values = np.asarray(values, dtype=np.int32)
        self.copies = 0
        self._version = 0
        self.address = address
        self.device = "cuda:0"

    def write(self, values):
        self.values = np.asarray(values, dtype=np.int32)
        self._version += 1

    def data_ptr(self):
        return self.address

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


@pytest.fixture
def capturing(monkeypatch):
    """Sets whether the call's stream is capturing; counts the queries."""
    state = {"capturing": False, "queries": 0}

    def query(device):
        state["queries"] += 1
        return state["capturing"]

    monkeypatch.setattr(device_offsets, "stream_is_capturing", query)
    return state


def host_offsets(given, tokens=96, max_seqlen=None):
    return device_offsets.host_offsets(given, FakeView(given), "cuda:0",
                                       tokens, max_seqlen,
                                       moba.Kernel._check_cu_seqlens)


def test_offsets_are_read_once_for_the_same_tensor(capturing):
    cu = FakeOffsets([0, 40, 96])
    for _ in range(3):
        np.testing.assert_array_equal(host_offsets(cu), [0, 40, 96])
    assert cu.copies == 1


def test_offsets_are_read_again_after_a_write_or_for_another_tensor(
        capturing):
    cu = FakeOffsets([0, 40, 96])
    host_offsets(cu)
    cu.write([0, 50, 96])
    np.testing.assert_array_equal(host_offsets(cu), [0, 50, 96])
    assert cu.copies == 2
    other = FakeOffsets([0, 40, 96])
    host_offsets(other)
    assert other.copies == 1
    # Another token count or max_seqlen checks the kept copy anew, without
    # reading the device again.
    with pytest.raises(ValueError, match="must end at the token count 97"):
        host_offsets(other, tokens=97)
    with pytest.raises(ValueError, match="max_seqlen is 40 but the longest "
                       "sequence has 56 tokens"):
        host_offsets(other, max_seqlen=40)
    assert other.copies == 1


def test_offsets_are_read_again_when_the_tensor_moves(capturing):
    cu = FakeOffsets([0, 40, 96])
    host_offsets(cu)
    cu.address += 256  # torch's set_() onto other storage
    cu.values = np.array([0, 90, 96], dtype=np.int32)
    np.testing.assert_array_equal(host_offsets(cu), [0, 90, 96])
    assert cu.copies == 2


def test_bad_offsets_are_not_kept(capturing):
    cu = FakeOffsets([0, 60, 40, 96])
    for _ in range(2):
        with pytest.raises(ValueError, match="not monotonic"):
            host_offsets(cu)
    assert cu.copies == 2


def test_arrays_without_a_version_counter_are_read_each_call(capturing):
    class Untracked:
        copies = 0

        def cpu(self):
            Untracked.copies += 1
            return self

        def numpy(self):
            return np.array([0, 96], dtype=np.int32)

    cu = Untracked()
    for _ in range(2):
        device_offsets.host_offsets(cu, cu, "cuda:0", 96, None,
                                    moba.Kernel._check_cu_seqlens)
    assert Untracked.copies == 2


def test_a_capture_takes_the_kept_copy_and_never_reads(capturing):
    cu = FakeOffsets([0, 40, 96])
    host_offsets(cu)  # the warm-up
    capturing["capturing"] = True
    np.testing.assert_array_equal(host_offsets(cu), [0, 40, 96])
    assert cu.copies == 1
    # A kept copy needs no capture query: the steady state costs nothing.
    assert capturing["queries"] == 1


def test_a_capture_of_offsets_not_seen_raises_saying_what_to_do(capturing):
    capturing["capturing"] = True
    cu = FakeOffsets([0, 40, 96])
    with pytest.raises(device_offsets.OffsetsNotKnownError,
                       match="Call moba once before the capture with this "
                       "same cu_seqlens tensor"):
        host_offsets(cu)
    assert cu.copies == 0
    # Written since the warm-up: not known either.
    capturing["capturing"] = False
    host_offsets(cu)
    cu.write([0, 50, 96])
    capturing["capturing"] = True
    with pytest.raises(device_offsets.OffsetsNotKnownError):
        host_offsets(cu)
    assert cu.copies == 1


def test_offsets_moba_made_are_never_read(capturing):
    cu = FakeOffsets([0, 48, 96])
    device_offsets.remember(cu, [0, 48, 96])
    capturing["capturing"] = True
    np.testing.assert_array_equal(host_offsets(cu), [0, 48, 96])
    assert cu.copies == 0
    # Still checked against the call.
    with pytest.raises(ValueError, match="must end at the token count 95"):
        host_offsets(cu, tokens=95)


def test_a_kept_copy_goes_with_its_tensor(capturing):
    before = device_offsets.kept()
    cu = FakeOffsets([0, 40, 96])
    host_offsets(cu)
    assert device_offsets.kept() == before + 1
    del cu
    assert device_offsets.kept() == before


def test_torch_version_counters_see_writes_through_views(capturing):
    torch = pytest.importorskip("torch")
    cu = torch.tensor([0, 40, 96], dtype=torch.int32)
    reads = []

    class CountingView:
        def cpu(self):
            reads.append(1)
            return cu

    def call():
        return device_offsets.host_offsets(cu, CountingView(), "cpu", 96,
                                           None,
                                           moba.Kernel._check_cu_seqlens)

    call()
    call()
    assert len(reads) == 1
    cu[1:2].add_(10)  # a write through a view
    np.testing.assert_array_equal(call(), [0, 50, 96])
    assert len(reads) == 2
    cu.detach()[1:2].sub_(10)  # detach() shares the counter too
    np.testing.assert_array_equal(call(), [0, 40, 96])
    assert len(reads) == 3


def test_the_capture_question_initializes_no_cuda():
    """Nothing captures where torch has not initialized CUDA (here: a torch
    without CUDA); asking must not initialize it, nor fail."""
    torch = pytest.importorskip("torch")
    assert not torch.cuda.is_initialized()
    assert device_offsets.stream_is_capturing("cuda:0") is False
    assert not torch.cuda.is_initialized()
