"""A directory on any pyarrow filesystem: a local path, s3://bucket/..., gs://bucket/...

Writes are atomic where the filesystem allows it: on a local disk a file is written
under a temporary name and renamed; on an object store a single PUT already appears
whole or not at all. Directories cannot be renamed atomically on object stores, which
is why checkpoints commit with a manifest written last (checkpoint.py).
"""

from __future__ import annotations

import os
import uuid

import pyarrow.fs as pafs


class Storage:
    def __init__(self, uri: str, _fs: pafs.FileSystem | None = None) -> None:
        self.uri = uri
        if _fs is not None:
            self.fs, self.root = _fs, uri
        elif "://" not in uri:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(uri)
        else:
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(uri)
            except Exception as err:  # pyarrow raises ArrowInvalid / OSError / ValueError
                raise OSError(f"cannot open storage {uri!r}: {err}") from None
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    def child(self, *parts: str) -> Storage:
        """The storage one or more levels down (same filesystem)."""
        return Storage("/".join([self.root.rstrip("/"), *parts]), _fs=self.fs)

    def path(self, name: str = "") -> str:
        return f"{self.root.rstrip('/')}/{name}" if name else self.root

    def __str__(self) -> str:
        return self.uri if "://" in self.uri else self.root

    def mkdir(self, name: str = "") -> None:
        self.fs.create_dir(self.path(name), recursive=True)

    def exists(self, name: str) -> bool:
        return bool(self.fs.get_file_info(self.path(name)).type != pafs.FileType.NotFound)

    def write_bytes(self, name: str, data: bytes) -> None:
        target = self.path(name)
        if self.is_local:
            tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
            with self.fs.open_output_stream(tmp) as out:
                out.write(data)
            self.fs.move(tmp, target)
        else:
            with self.fs.open_output_stream(target) as out:
                out.write(data)

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(self.path(name)) as f:
            return bytes(f.read())

    def list_dirs(self, name: str = "") -> list[str]:
        """Names of the sub-directories of `name` (empty when it does not exist)."""
        selector = pafs.FileSelector(self.path(name), allow_not_found=True)
        infos = self.fs.get_file_info(selector)
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def delete_dir(self, name: str) -> None:
        if self.exists(name):
            self.fs.delete_dir(self.path(name))

    def move(self, source: str, target: str) -> None:
        self.fs.move(self.path(source), self.path(target))

    def check_writable(self) -> None:
        """Create the directory and write, read and delete a probe file, or raise OSError."""
        probe = f".wv-probe-{uuid.uuid4().hex[:8]}"
        try:
            self.mkdir()
            self.write_bytes(probe, b"ok")
            self.fs.delete_file(self.path(probe))
        except (OSError, ValueError) as err:
            reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
            raise OSError(f"run.storage {str(self)!r} is not writable: {reason}") from None
