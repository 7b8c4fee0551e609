"""The checked host copies of GPU calls' cu_seqlens, kept per tensor.

A GPU call checks its offsets on the host (starts at 0, never decreases,
ends at the token count, within max_seqlen): unchecked, a bad offset would
make the kernels read and write out of bounds. Reading a device tensor to
the host waits for its stream, which costs twice: every call would wait for
the work queued before it (the GPU idles while Python queues the next),
and during CUDA-graph capture the read is illegal (it would invalidate the
capture). So the host copy is kept for the caller's tensor, and a call
reads the device only when the tensor is one it has not seen, or changed:

  key    the tensor object itself (held weakly: the entry goes when the
         tensor does, so an address reused by a new tensor is a new entry),
         with its data pointer, device, and version counter, which torch
         bumps on every in-place write through the tensor or any of its
         views. Writes that bypass torch (a raw kernel on its pointer,
         another library through DLPack) are not seen: such offsets must be
         passed as a new tensor, or the old one touched by torch
         (cu_seqlens.add_(0) bumps the counter).
  value  the int32 host copy of the offsets as read, and the (tokens,
         max_seqlen) pairs it has passed the check for.

Arrays with no version counter (cupy, DLPack capsules) are read every call.

During capture (torch.cuda.is_current_stream_capturing() on the call's
device) a call never reads: it takes the kept copy, or raises
OffsetsNotKnownError saying what to do (one eager call with the same tensor
before the capture -- the warm-up torch.cuda.graph needs anyway). Offsets
moba makes itself from host values (the batched layout, the transformers
integration) are recorded with remember() when made, so they are never
read back at all.

The kernels read the offsets from the device. A graph captured with them
replays with whatever the tensor holds at replay time: keep the values the
capture was made with (they were checked then; new values written between
replays are not checked, as a flash-attn graph's are not).
"""
import threading
import weakref

import numpy as np


class OffsetsNotKnownError(RuntimeError):
    """A GPU call during CUDA-graph capture got offsets whose host copy is
    not known: reading them would synchronize the capturing stream."""


# Reentrant: a tensor's weakref callback (_forget) takes it, and the
# collector may free a tensor while this thread holds it.
_lock = threading.RLock()
# id(tensor) -> _Entry; an entry is removed when its tensor is collected.
_entries = {}


class _Entry:
    __slots__ = ("ref", "version", "data_ptr", "device", "host", "checked")

    def __init__(self, ref, version, data_ptr, device, host):
        self.ref, self.version = ref, version
        self.data_ptr, self.device, self.host = data_ptr, device, host
        self.checked = set()


def stream_is_capturing(device):
    """Whether torch's current stream on `device` is capturing a CUDA
    graph. Where torch has not initialized CUDA nothing can be, and the
    question initializes nothing."""
    import torch
    if not torch.cuda.is_initialized():
        return False
    with torch.cuda.device(device):
        return torch.cuda.is_current_stream_capturing()


def refuse_first_call_in_capture(owner, loaded_on, device):
    """Raises when a call of `owner` (a kernel, whose modules are loaded on
    the devices in `loaded_on`) on torch device `device` is being captured
    into a CUDA graph before any call has run there: the first call loads
    the kernel's modules into the device's context, which capture does not
    allow (it would invalidate the capture)."""
    if device in loaded_on:
        return
    if stream_is_capturing(device):
        raise RuntimeError(
            f"{owner!r} has not run on {device} yet and this call is "
            "being captured into a CUDA graph: its first call loads the "
            "kernel's modules into the device's context, which capture "
            "does not allow. Call it once before the capture (the "
            "warm-up torch.cuda.graph needs anyway)")


def _identity(tensor):
    """(data pointer, device) of a torch tensor, or None for other
    arrays."""
    data_ptr = getattr(tensor, "data_ptr", None)
    if data_ptr is None:
        return None
    return data_ptr(), str(getattr(tensor, "device", ""))


def _forget(key):
    def callback(_ref):
        with _lock:
            entry = _entries.get(key)
            if entry is not None and entry.ref is _ref:
                del _entries[key]
    return callback


def _lookup(given):
    """The entry of `given` while it still describes it, else None."""
    version = getattr(given, "_version", None)
    if version is None:
        return None
    with _lock:
        entry = _entries.get(id(given))
    if entry is None or entry.ref() is not given:
        return None
    if entry.version != version or (entry.data_ptr, entry.device) != \
            _identity(given):
        return None
    return entry


def _store(given, host):
    """Keeps `host` (int32, 1-D) as the copy of tracked tensor `given`;
    returns the entry, or None when `given` cannot be tracked."""
    version = getattr(given, "_version", None)
    identity = _identity(given)
    if version is None or identity is None:
        return None
    key = id(given)
    try:
        ref = weakref.ref(given, _forget(key))
    except TypeError:
        return None
    entry = _Entry(ref, version, identity[0], identity[1], host)
    with _lock:
        _entries[key] = entry
    return entry


def remember(tensor, host_values):
    """Records `host_values` as what torch tensor `tensor` holds (moba made
    it from them), so that no call reads it back."""
    host = np.ascontiguousarray(host_values, dtype=np.int32)
    host.setflags(write=False)
    _store(tensor, host)


def host_offsets(given, view, device, tokens, max_seqlen, check):
    """The checked int32 host copy of the device offsets of `given` (the
    caller's object; `view` a torch tensor over it), for a call of `tokens`
    tokens and `max_seqlen`. `check(host, tokens, max_seqlen)` raises for
    bad offsets and returns them.

    Read from the device only when no kept copy describes `given`; never
    during capture, which raises OffsetsNotKnownError instead."""
    entry = _lookup(given)
    if entry is None:
        if stream_is_capturing(device):
            raise OffsetsNotKnownError(
                "cu_seqlens is not known on the host and this call is being "
                "captured into a CUDA graph, where reading it back "
                "(a device-to-host copy, which waits for the stream) is not "
                "allowed. Call moba once before the capture with this same "
                "cu_seqlens tensor (the warm-up torch.cuda.graph needs "
                "anyway: it checks the offsets and keeps their host copy), "
                "and do not write to it in between, or pass a new tensor "
                "that an eager call has seen")
        host = check(view.cpu().numpy(), tokens, max_seqlen)
        host = np.ascontiguousarray(host, dtype=np.int32)
        host.setflags(write=False)
        entry = _store(given, host)
        if entry is None:  # untracked (no version counter): not kept
            return host
        entry.checked.add((tokens, max_seqlen))
        return host
    key = (tokens, max_seqlen)
    if key not in entry.checked:  # host work only: the copy is kept
        check(entry.host, tokens, max_seqlen)
        entry.checked.add(key)
    return entry.host


def kept():
    """How many tensors have a kept host copy (for tests)."""
    with _lock:
        return len(_entries)
