"""A local filesystem that fails on purpose, for tests of full disks and lost permissions.

CI cannot mount a small tmpfs, and root ignores file permissions, so the faults are
injected here: foundation.storage.local_filesystem is patched to return
pyarrow.fs.PyFileSystem(FaultyHandler(...)).
"""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs


class _FillsUp(io.RawIOBase):
    """A file that takes `room` bytes, then fails every write as a full disk does."""

    def __init__(self, path: str, room: int, code: int) -> None:
        self.file = open(path, "wb")  # noqa: SIM115 (closed by close())
        self.room, self.code = room, code

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if len(data) > self.room:
            self.file.write(bytes(data)[: self.room])
            self.room = 0
            raise OSError(self.code, os.strerror(self.code))
        self.room -= len(data)
        return self.file.write(data)

    def close(self) -> None:
        self.file.close()
        super().close()


class FaultyHandler(pafs.FileSystemHandler):
    """pyarrow's LocalFileSystem, except for the paths where `fails(path)` is true: with
    `room` None, opening them for writing (or moving onto them) raises OSError(code); with
    a `room` of bytes, the file is created and a write past `room` bytes raises (the disk
    fills up in the middle of the file)."""

    def __init__(
        self, fails: Callable[[str], bool], code: int = errno.ENOSPC, room: int | None = None
    ) -> None:
        self.inner = pafs.LocalFileSystem()
        self.fails, self.code, self.room = fails, code, room

    def _check(self, path: str) -> None:
        if self.fails(path):
            raise OSError(self.code, os.strerror(self.code), path)

    def get_type_name(self) -> str:
        return "faulty-local"

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.inner.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.inner.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.inner.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.inner.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.inner.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError(errno.EPERM, "refusing to delete the root")

    def delete_file(self, path: str) -> None:
        self.inner.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self._check(dest)
        self.inner.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self._check(dest)
        self.inner.copy_file(src, dest)

    def open_input_stream(self, path: str) -> Any:
        return self.inner.open_input_stream(path)

    def open_input_file(self, path: str) -> Any:
        return self.inner.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        if self.room is not None and self.fails(path):
            return pa.PythonFile(_FillsUp(path, self.room, self.code), mode="w")
        self._check(path)
        return self.inner.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        self._check(path)
        return self.inner.open_append_stream(path, metadata=metadata)

    def normalize_path(self, path: str) -> str:
        return self.inner.normalize_path(path)
