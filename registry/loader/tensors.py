"""From plaintext bytes to tensors: safetensors dtypes in torch and numpy, tensors as views of a
file's buffer (no copy), and the device side of a GPU load (a pinned staging ring and
asynchronous copies on a stream of their own). torch and numpy are imported only when used."""

from __future__ import annotations

import math
import sys
from collections import deque
from typing import TYPE_CHECKING, Any, cast

from registry.errors import InvalidInputError
from registry.safetensors_header import SafetensorsHeader, TensorEntry

if TYPE_CHECKING:
    import torch

FRAMEWORKS = ("pt", "numpy")

# safetensors dtype -> torch dtype attribute (what safetensors.torch maps, plus F8_E8M0).
_TORCH = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "U16": "uint16",
    "F16": "float16",
    "BF16": "bfloat16",
    "I32": "int32",
    "U32": "uint32",
    "F32": "float32",
    "C64": "complex64",
    "F64": "float64",
    "I64": "int64",
    "U64": "uint64",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
}
# numpy has neither bfloat16 nor the float8 types.
_NUMPY = {
    name: kind for name, kind in _TORCH.items() if name != "BF16" and not name.startswith("F8")
}


def check_framework(framework: str) -> None:
    if framework not in FRAMEWORKS:
        raise InvalidInputError(f"unknown framework {framework!r}", hint="pt (torch) or numpy")


def torch_dtype(entry: TensorEntry) -> torch.dtype:
    import torch

    name = _TORCH.get(entry.dtype)
    dtype = getattr(torch, name, None) if name else None
    if dtype is None:
        raise InvalidInputError(
            f"tensor {entry.name!r} has dtype {entry.dtype}, which this torch cannot represent",
            hint="packed F4/F6 types have no torch dtype here: pull the files "
            "(`model-registry pull`) and read them with a library that supports them",
        )
    return cast("torch.dtype", dtype)


def numpy_dtype(entry: TensorEntry) -> Any:
    import numpy

    name = _NUMPY.get(entry.dtype)
    if name is None:
        raise InvalidInputError(
            f"tensor {entry.name!r} has dtype {entry.dtype}, which numpy cannot represent",
            hint="load it with framework='pt' (torch)",
        )
    return numpy.dtype(name).newbyteorder("<")


def empty_bytes(size: int, *, device: str = "cpu") -> torch.Tensor:
    """An uninitialised byte tensor (no zero fill by us: every byte is about to be written), on a
    GPU; host memory for CPU loads comes from registry.loader.memory."""
    import torch

    return torch.empty(size, dtype=torch.uint8, device=device)


def tensor_from(
    buffer: Any, header: SafetensorsHeader, entry: TensorEntry, *, framework: str
) -> Any:
    """The tensor `entry` of a file whose plaintext is `buffer` (a 1-D uint8 torch tensor or
    numpy array of the whole file): a view when the alignment allows, else a copy."""
    start, end = header.data_offset + entry.begin, header.data_offset + entry.end
    if framework == "numpy":
        import numpy

        dtype = numpy_dtype(entry)
        raw = buffer[start:end]
        if entry.nbytes == 0:
            return numpy.empty(entry.shape, dtype=dtype)
        if start % dtype.itemsize:
            raw = raw.copy()
        return raw.view(dtype).reshape(entry.shape)
    dtype = torch_dtype(entry)
    import torch

    if entry.nbytes == 0:
        return torch.empty(entry.shape, dtype=dtype, device=buffer.device)
    raw = buffer[start:end]
    itemsize = torch.empty((), dtype=dtype).element_size()
    if start % itemsize:
        raw = raw.clone()  # a view needs an aligned offset; safetensors' writers align anyway
    tensor = raw.view(dtype).reshape(entry.shape)
    if sys.byteorder == "big":  # pragma: no cover - safetensors is little-endian
        tensor = torch.from_numpy(tensor.numpy().byteswap()).reshape(entry.shape)
    return tensor


def tensor_from_span(
    buffer: bytearray, offset: int, entry: TensorEntry, shape: tuple[int, ...], *, framework: str
) -> Any:
    """A tensor of `shape` (the tensor's, or whole rows of it) over the bytes of `buffer` from
    `offset`; it shares the buffer's memory (no copy)."""
    if framework == "numpy":
        import numpy

        dtype = numpy_dtype(entry)
        count = math.prod(shape)
        if count == 0:
            return numpy.empty(shape, dtype=dtype)
        return numpy.frombuffer(buffer, dtype=dtype, count=count, offset=offset).reshape(shape)
    import torch

    torch_type = torch_dtype(entry)
    count = math.prod(shape)
    if count == 0:
        return torch.empty(shape, dtype=torch_type)
    return torch.frombuffer(buffer, dtype=torch_type, count=count, offset=offset).reshape(shape)


def _row_bytes(entry: TensorEntry) -> int:
    """Bytes of one index along the first dimension."""
    if not entry.shape or entry.shape[0] == 0:
        return 0
    return entry.nbytes // entry.shape[0]


def row_span(entry: TensorEntry, first: int, stop: int) -> tuple[int, int]:
    """Byte range, within the tensor's data, of rows first..stop-1 of the first dimension."""
    size = _row_bytes(entry)
    return entry.begin + first * size, entry.begin + stop * size


class CudaTarget:
    """The device side of a GPU load: a byte buffer per file on the device, filled by
    asynchronous copies from pinned staging slots on a stream of its own; a slot is reclaimed
    once the copy that read it has finished (events, oldest first)."""

    def __init__(self, device: str, *, staging_bytes: int, slot_size: int) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise InvalidInputError(f"{device!r} is not a CUDA device")
        if not torch.cuda.is_available():
            raise InvalidInputError(
                f"device {device!r} asked for, but torch sees no CUDA device",
                hint="install a CUDA build of torch on a machine with a GPU, or load on cpu",
            )
        count = max(2, staging_bytes // slot_size)
        self.slot_size = slot_size
        self.staging_bytes = count * slot_size
        # One pinned allocation, cut into slots: page-locked memory is slow to allocate.
        self.pinned = torch.empty(count * slot_size, dtype=torch.uint8, pin_memory=True)
        self.slots = [self.pinned[i * slot_size : (i + 1) * slot_size] for i in range(count)]
        self.views = [slot.numpy().data for slot in self.slots]
        self.stream = torch.cuda.Stream(device=self.device)  # type: ignore[no-untyped-call]
        self.in_flight: deque[tuple[Any, int]] = deque()
        self.release: Any = None  # set by the caller: the ring's release

    def allocate(self, size: int) -> torch.Tensor:
        destination = empty_bytes(size, device=str(self.device))
        # The caching allocator may hand back memory that work queued on the current stream
        # still uses: the copy stream must not write it before that work is done.
        self.stream.wait_stream(self.torch.cuda.current_stream(self.device))
        return destination

    def deliver(self, destination: torch.Tensor, offset: int, length: int, slot: int) -> None:
        torch = self.torch
        with torch.cuda.stream(self.stream):
            destination[offset : offset + length].copy_(
                self.slots[slot][:length], non_blocking=True
            )
            event = torch.cuda.Event()
            event.record(self.stream)
        self.in_flight.append((event, slot))

    def reclaim(self) -> None:
        """Wait for the oldest copy in flight and give its slot back."""
        event, slot = self.in_flight.popleft()
        event.synchronize()
        self.release(slot)

    def finish(self) -> None:
        self.stream.synchronize()
        while self.in_flight:
            _event, slot = self.in_flight.popleft()
            self.release(slot)
