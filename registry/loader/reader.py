"""Reading a version tensor by tensor (`open`): `ModelReader`, like safetensors.safe_open over
all its shards, and `TensorSlice`, the rows of one tensor read on indexing. Only the chunks
holding what is asked for are read, each authenticated; whole-file digests are not checked."""

from __future__ import annotations

from typing import Any

from registry.errors import InvalidInputError, NotFoundError
from registry.loader.engine import SealedFile
from registry.loader.job import Job, Located
from registry.loader.results import LoadStats
from registry.loader.sources import FileReader


class TensorSlice:
    """`get_slice(name)`: shape and dtype at once, rows read on indexing (`[a:b]`, `[i]`,
    `[a:b, ...]`: only the chunks holding the rows of the first dimension asked for)."""

    def __init__(self, reader: ModelReader, located: Located) -> None:
        self._reader, self._located = reader, located

    def get_shape(self) -> list[int]:
        return list(self._located.tensor.shape)

    def get_dtype(self) -> str:
        return self._located.tensor.dtype

    def __getitem__(self, index: Any) -> Any:
        first, rest = (index[0], index[1:]) if isinstance(index, tuple) else (index, ())
        shape = self._located.tensor.shape
        if not shape or first is Ellipsis:
            return self._reader._rows(self._located, None)[index]
        length = shape[0]
        if isinstance(first, slice):
            rows = range(*first.indices(length))
            if len(rows) == 0:
                return self._reader._rows(self._located, (0, 0))[(slice(None), *rest)]
            low, high = min(rows), max(rows) + 1
            part = self._reader._rows(self._located, (low, high))
            if rows.step > 0:  # the rows read start at the first asked for
                return part[(slice(None, None, rows.step), *rest)]
            return part[[r - low for r in rows]][(slice(None), *rest)]
        if isinstance(first, int):
            row = first + length if first < 0 else first
            if not 0 <= row < length:
                raise IndexError(f"index {first} is out of range for {length} rows")
            part = self._reader._rows(self._located, (row, row + 1))
            return part[(0, *rest)]
        raise InvalidInputError("get_slice takes an int, a slice or a tuple starting with one")


class ModelReader:
    """A version opened for reading tensor by tensor (`open`), like safetensors.safe_open over
    all its shards: `keys()`, `metadata()`, `get_tensor(name)`, `get_slice(name)[rows]`."""

    def __init__(self, job: Job) -> None:
        self._job = job
        self._files: dict[str, tuple[SealedFile, FileReader]] = {}
        self._closed = False
        self.version = job.version

    def __enter__(self) -> ModelReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            for _sealed, reader in self._files.values():
                self._job.finish_reader(reader, None)
            if self._files:  # what was read is audited, like a load
                self._job.record(self._job.stats())
        finally:
            self._files.clear()
            self._job.close()

    @property
    def stats(self) -> LoadStats:
        return self._job.stats()

    def keys(self) -> list[str]:
        return list(self._job.tensors)

    def metadata(self) -> dict[str, str]:
        return self._job.metadata()

    def _located(self, name: str) -> Located:
        located = self._job.tensors.get(name)
        if located is None:
            raise NotFoundError(f"{self.version.ref} has no tensor {name!r}")
        return located

    def _sealed(self, located: Located) -> SealedFile:
        path = located.file.path
        if path not in self._files:
            self._files[path] = self._job.open_file(located.file)
            self._job.authenticated.append(path)
        return self._files[path][0]

    def _rows(self, located: Located, rows: tuple[int, int] | None) -> Any:
        return self._job.one_tensor(located, self._sealed(located), rows)

    def get_tensor(self, name: str) -> Any:
        located = self._located(name)
        return self._rows(located, None)

    def get_slice(self, name: str) -> TensorSlice:
        return TensorSlice(self, self._located(name))


__all__ = ["ModelReader", "TensorSlice"]
