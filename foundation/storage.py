"""A directory on any pyarrow filesystem: a local path, s3://bucket/..., gs://bucket/...

Writes are atomic where the filesystem allows it: on a local disk a file is written
under a temporary name and renamed; on an object store a single PUT already appears
whole or not at all. Directories cannot be renamed atomically on object stores, which
is why checkpoints commit with a manifest written last (checkpoint.py).
"""

from __future__ import annotations

import contextlib
import os
import uuid

import pyarrow.fs as pafs

from foundation.errors import WideValleyError

MAX_NAME_BYTES = 200  # under every filesystem's 255-byte limit, with room for suffixes


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a run name (one folder inside run.storage), or None.

    A run name is a name, not a path: `--fresh` deletes inside <storage>/<name>, so a
    name that leaves the storage (`..`, an absolute path, a separator) could delete
    another run's files. Characters such as `=`, `,` and `:` are fine (the sweep and
    the comparison build names from `key=value` pairs and import paths).
    """
    if not name or name in (".", ".."):
        return "is empty or a dot" if not name else f"is {name!r}"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "contains a control character"
    if len(name.encode()) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    return None


class StorageError(WideValleyError, OSError):
    """A write, move or delete in run storage failed (disk full, permission lost, an
    object store that refuses); the message is one line naming the path and the cause."""


def _cause(err: BaseException) -> str:
    """The reason of an OSError in one line: its strerror, else its first line."""
    lines = str(err).splitlines()
    return str(getattr(err, "strerror", None) or (lines[0] if lines else type(err).__name__))


def local_filesystem() -> pafs.FileSystem:
    """The filesystem of local paths (a seam: tests wrap it to inject ENOSPC or EACCES)."""
    return pafs.LocalFileSystem()


TMP_MARK = ".tmp-"  # temporary names: a file's `<name>.tmp-<id>`, a checkpoint's `.tmp-round-…`


class Storage:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        # file:///path is a local path too: folders must be made, renames are atomic.
        self.is_local = "://" not in uri or uri.startswith("file://")
        if self.is_local:
            path = uri.removeprefix("file://")
            self.fs, self.root = local_filesystem(), os.path.abspath(path)
        else:
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(uri)
            except Exception as err:  # pyarrow raises ArrowInvalid / OSError / ValueError
                raise OSError(f"cannot open storage {uri!r}: {err}") from None

    def child(self, *parts: str) -> Storage:
        """The storage one or more levels down (same filesystem)."""
        child = object.__new__(Storage)  # same filesystem object: no second connection
        child.fs, child.is_local = self.fs, self.is_local
        child.root = "/".join([self.root.rstrip("/"), *parts])
        child.uri = self.uri
        return child

    def path(self, name: str = "") -> str:
        return f"{self.root.rstrip('/')}/{name}" if name else self.root

    def shown(self, name: str = "") -> str:
        """A path as the user wrote the storage (s3://bucket/…, or the absolute local path)."""
        base = self.root if self.is_local else f"{self.uri.split('://')[0]}://{self.root}"
        return f"{base.rstrip('/')}/{name}" if name else base

    def __str__(self) -> str:
        return self.shown()

    def _failed(self, action: str, name: str, err: BaseException) -> StorageError:
        return StorageError(f"cannot {action} {self.shown(name)}: {_cause(err)}")

    def mkdir(self, name: str = "") -> None:
        try:
            self.fs.create_dir(self.path(name), recursive=True)
        except OSError as err:
            raise self._failed("create", name, err) from None

    def exists(self, name: str) -> bool:
        return bool(self.fs.get_file_info(self.path(name)).type != pafs.FileType.NotFound)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Replace `name` whole: on a local disk through a temporary file and a rename; on
        an object store a single PUT is already all-or-nothing."""
        target = self.path(name)
        tmp = f"{target}{TMP_MARK}{uuid.uuid4().hex[:8]}" if self.is_local else target
        try:
            if self.is_local and "/" in name:  # a local disk needs the folder; a store not
                self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            with self.fs.open_output_stream(tmp) as out:
                out.write(data)
            if tmp != target:
                self.fs.move(tmp, target)
        except OSError as err:
            if tmp != target:
                self._discard(tmp)
            raise self._failed("write", name, err) from None

    def _discard(self, path: str) -> None:
        """Best effort: a half-written temporary file goes (the next resume sweeps the rest)."""
        with contextlib.suppress(OSError):
            self.fs.delete_file(path)

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(self.path(name)) as f:
            return bytes(f.read())

    def _entries(self, name: str) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(self.path(name), allow_not_found=True)
        return list(self.fs.get_file_info(selector))

    def list_dirs(self, name: str = "") -> list[str]:
        """Names of the sub-directories of `name` (empty when it does not exist)."""
        return sorted(i.base_name for i in self._entries(name) if i.type == pafs.FileType.Directory)

    def list_files(self, name: str = "") -> list[str]:
        """Names of the files directly in `name` (empty when it does not exist)."""
        return sorted(i.base_name for i in self._entries(name) if i.type == pafs.FileType.File)

    def delete_dir(self, name: str) -> None:
        try:
            if self.exists(name):
                self.fs.delete_dir(self.path(name))
        except OSError as err:
            raise self._failed("delete", name, err) from None

    def delete_file(self, name: str) -> None:
        try:
            if self.exists(name):
                self.fs.delete_file(self.path(name))
        except OSError as err:
            raise self._failed("delete", name, err) from None

    def move(self, source: str, target: str) -> None:
        try:
            self.fs.move(self.path(source), self.path(target))
        except OSError as err:
            raise self._failed("move", f"{source} to {self.shown(target)}", err) from None

    def check_writable(self) -> None:
        """Create the directory and write, read and delete a probe file, or raise OSError."""
        probe = f".wv-probe-{uuid.uuid4().hex[:8]}"
        try:
            self.fs.create_dir(self.path(), recursive=True)
            with self.fs.open_output_stream(self.path(probe)) as out:
                out.write(b"ok")
            self.fs.delete_file(self.path(probe))
        except (OSError, ValueError) as err:
            reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
            raise OSError(f"run.storage {str(self)!r} is not writable: {reason}") from None
