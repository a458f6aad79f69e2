"""Host <-> device copies that keep a GPU busy: inputs staged ahead, results gathered per batch.

On a CUDA device a copy from ordinary (pageable) host memory blocks the
calling thread and cannot overlap anything, and a copy back to the host
waits for all the work queued before it. Here:

* :class:`Staging` sends host batches through pinned (page-locked) buffers
  with non-blocking copies on a stream of their own: :func:`ahead` starts
  the next batch's copy before the current one is handed out, so that it
  runs while the device computes. The images travel as they are (uint8
  stays uint8); conversion, normalization and resizing run on the device.
* :class:`HostSink` copies device results (maps, precision matrices) into
  a preallocated numpy array, in pieces of at most :data:`PIECE_BYTES`,
  through a ring of :data:`SLOTS` pinned buffers, on another stream: a
  piece is copied into the array only when its buffer is needed again or
  at :meth:`HostSink.finish`, so the host waits for work queued a ring
  earlier, never for the batch it has just queued.

Elsewhere (a CPU, MPS) a CPU batch is a view of the input (no copy), an MPS
batch one plain copy, and a result is copied into its array at once. With the
device's type in :data:`STAGED` (tests add ``"cpu"``), the staged logic runs
there too, with ordinary buffers: pinned memory and streams are CUDA's alone.
"""

import contextlib
import threading

import numpy as np
import torch

#: Bytes of one pinned buffer of :class:`HostSink` (the largest piece copied at once).
PIECE_BYTES = 32 << 20
#: Pinned buffers in a :class:`HostSink`'s ring: a put waits for the pieces put this many earlier.
SLOTS = 4

#: Device types whose copies go through the staging buffers of :class:`Staging` and
#: :class:`HostSink`.
STAGED = {"cuda"}

_TORCH_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def uses_streams(device):
    """Whether copies to and from ``device`` use pinned memory and streams (CUDA only)."""
    return torch.device(device).type == "cuda"


def is_staged(device):
    """Whether copies to and from ``device`` go through staging buffers (:data:`STAGED`)."""
    return torch.device(device).type in STAGED


def readable(arr):
    """``arr`` (numpy) with a dtype torch reads: uint8 and native float16/32/64 as they are,
    anything else (long double, big-endian) as float32."""
    if arr.dtype != np.uint8 and (arr.dtype not in _TORCH_FLOATS or not arr.dtype.isnative):
        return arr.astype(np.float32)
    return arr


def host_tensor(arr):
    """A CPU tensor of the numpy array ``arr`` (see :func:`readable`); a view where torch can
    share the memory (contiguous, writeable), else a copy."""
    arr = readable(arr)
    if not arr.flags.writeable:  # decoded files, read-only memory maps
        arr = np.array(arr)
    return torch.from_numpy(np.ascontiguousarray(arr))


def ahead(items, send):
    """Yield ``(item, send(item))`` for each of ``items``, the next one's ``send`` called
    before the current one is handed out (so that its copy overlaps the caller's work on
    the current one). An exception raised by the next item (or its ``send``) is raised
    when that item is asked for, after the current one was handled, as without
    the look-ahead."""
    items = iter(items)

    def step():
        try:
            item = next(items)
        except StopIteration:
            return None
        except Exception as exc:  # raised in its turn
            return exc
        try:
            return item, send(item)
        except Exception as exc:
            return exc

    current = step()
    while current is not None:
        if isinstance(current, Exception):
            raise current
        following = step()
        yield current
        current = following


class Staging:
    """Host images -> tensors of the same dtype on ``device``, copied ahead of compute.

    :meth:`send` starts the copy of one batch (a (B, H, W, C) array, or a list
    of (H, W, C) arrays of any sizes) and returns a ticket; :meth:`receive`
    gives its tensors, ready for the work queued next on the current stream.
    Where :func:`is_staged`, each batch goes through one of two buffers (one copy
    per dtype in the batch; on CUDA pinned, on a stream of its own); elsewhere
    ``receive`` gives the arrays' own memory as tensors (a CPU) or plain
    copies. ``staged`` overrides :func:`is_staged` (tests).
    """

    BUFFERS = 2

    def __init__(self, device, staged=None):
        self.device = torch.device(device)
        self.staged = is_staged(self.device) if staged is None else bool(staged)
        self.pin = uses_streams(self.device)
        self.stream = torch.cuda.Stream(self.device) if self.pin else None
        self._buffers = [None] * self.BUFFERS  # (uint8 storage, event of its last copy)
        self._turn = 0

    def send(self, images):
        """Start copying ``images`` to the device; the ticket for :meth:`receive`."""
        with torch.inference_mode():  # its buffers may be inference tensors, or not
            return self._send(images)

    def _send(self, images):
        single = isinstance(images, np.ndarray)
        arrays = [readable(a) for a in ([images] if single else images)]
        if not self.staged:
            tensors = [host_tensor(a).to(self.device) for a in arrays]
            return single, tensors, None
        groups = {}  # dtype -> indices of the arrays of that dtype
        for i, a in enumerate(arrays):
            groups.setdefault(a.dtype, []).append(i)
        sizes = {dt: sum(arrays[i].size for i in idx) * dt.itemsize for dt, idx in groups.items()}
        storage = self._buffer(sum(_aligned(s) for s in sizes.values()))
        places, start, copies = [None] * len(arrays), 0, []  # (offset, size) in its dtype's block
        for dt, idx in groups.items():
            flat = storage[start : start + sizes[dt]].view(_TORCH_DTYPES[dt])
            start += _aligned(sizes[dt])
            offset = 0
            for i in idx:
                a = arrays[i]
                _host_copy(flat[offset : offset + a.size].view(a.shape), a)
                places[i] = (offset, a.size)
                offset += a.size
            copies.append((flat[:offset], idx))
        out = [None] * len(arrays)
        with _on(self.stream):  # one copy per dtype
            for flat, idx in copies:
                dev = flat.to(self.device, non_blocking=self.pin, copy=True)  # the buffer is reused
                for i in idx:
                    offset, size = places[i]
                    out[i] = dev[offset : offset + size].view(arrays[i].shape)
        event = self.stream.record_event() if self.stream is not None else None
        self._buffers[self._turn] = (storage, event)
        self._turn = (self._turn + 1) % self.BUFFERS
        return single, out, event

    def receive(self, ticket):
        """The batch of a ticket: one tensor (an array was sent) or a list of tensors."""
        single, tensors, event = ticket
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for t in tensors:  # allocated on the copy stream, used on this one
                t.record_stream(current)
        return tensors[0] if single else tensors

    def _buffer(self, nbytes):
        """The next buffer in turn, at least ``nbytes``, once its previous copy is done."""
        held = self._buffers[self._turn]
        if held is not None:
            storage, event = held
            if event is not None:
                event.synchronize()  # the copy that read it (two batches ago) is done
            if storage.numel() >= nbytes:
                return storage
        return torch.empty(_grown(nbytes), dtype=torch.uint8, pin_memory=self.pin)


class HostSink:
    """Device tensors -> preallocated numpy arrays, piece by piece (see the module docstring).

    :meth:`put` queues the copy of a tensor into a numpy array of as many
    elements and of its dtype; the array holds the values once
    :meth:`finish` has returned. Where not :func:`is_staged` (``staged``
    overrides it) the copy is made at once. Several threads may put at once.
    """

    def __init__(self, device, staged=None, piece_bytes=None, slots=None):
        self.device = torch.device(device)
        self.staged = is_staged(self.device) if staged is None else bool(staged)
        self.pin = uses_streams(self.device)
        self.stream = torch.cuda.Stream(self.device) if self.pin else None
        self.piece_bytes = int(piece_bytes or PIECE_BYTES)
        self._slots = [None] * int(slots or SLOTS)  # [staging uint8 buffer, pending (dst, piece, event)]
        self._turn = 0
        self._lock = threading.Lock()

    def put(self, dst, src):
        """Copy the tensor ``src`` into the numpy array ``dst`` (same number of elements and
        dtype, C-contiguous), by :meth:`finish` at the latest."""
        if not dst.flags.c_contiguous or dst.size != src.numel():
            raise ValueError(f"cannot copy {tuple(src.shape)} into an array of shape {dst.shape}")
        target = torch.from_numpy(dst).view(-1)
        if target.dtype != src.dtype:
            raise ValueError(f"cannot copy {src.dtype} into an array of {dst.dtype}")
        with torch.inference_mode():  # its buffers may be inference tensors, or not
            if not self.staged:
                target.copy_(src.reshape(-1))
                return
            with self._lock:
                self._put(target, src.reshape(-1))

    def _put(self, target, src):
        ready = torch.cuda.current_stream(self.device).record_event() if self.stream is not None else None
        step = max(1, self.piece_bytes // src.element_size())
        for a in range(0, src.numel(), step):
            b = min(a + step, src.numel())
            slot = self._slot()
            piece = slot[0][: (b - a) * src.element_size()].view(src.dtype)
            with _on(self.stream):
                if ready is not None:
                    self.stream.wait_event(ready)
                piece.copy_(src[a:b], non_blocking=self.pin)
            event = self.stream.record_event() if self.stream is not None else None
            slot[1] = (target[a:b], piece, event)
        if self.stream is not None:
            src.record_stream(self.stream)  # not reused before the copies have read it

    def finish(self):
        """Wait for every queued copy and complete the arrays."""
        with self._lock, torch.inference_mode():
            self._finish()

    def _finish(self):
        for _ in range(len(self._slots)):
            self._drain(self._slots[self._turn])
            self._turn = (self._turn + 1) % len(self._slots)

    def _slot(self):
        """The next slot in turn, its previous piece copied out."""
        slot = self._slots[self._turn]
        if slot is None:
            slot = self._slots[self._turn] = [
                torch.empty(self.piece_bytes, dtype=torch.uint8, pin_memory=self.pin), None]
        else:
            self._drain(slot)
        self._turn = (self._turn + 1) % len(self._slots)
        return slot

    @staticmethod
    def _drain(slot):
        if slot is None or slot[1] is None:
            return
        target, piece, event = slot[1]
        if event is not None:
            event.synchronize()
        target.copy_(piece)
        slot[1] = None


_TORCH_DTYPES = {np.dtype(np.uint8): torch.uint8, np.dtype(np.float16): torch.float16,
                 np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def _aligned(nbytes):
    return -(-nbytes // 64) * 64


def _grown(nbytes):
    """A buffer size for ``nbytes``: the next power of two (later batches of similar size fit)."""
    return 1 << max(20, (int(nbytes) - 1).bit_length())


def _host_copy(dst, src):
    """``dst`` (a CPU tensor) = ``src`` (numpy), on torch's threads where torch can read ``src``."""
    if src.flags.writeable and src.flags.c_contiguous:
        dst.copy_(torch.from_numpy(src))
    else:
        np.copyto(dst.numpy(), src, casting="no")


def _on(stream):
    """``torch.cuda.stream(stream)``, or nothing for None."""
    return contextlib.nullcontext() if stream is None else torch.cuda.stream(stream)
