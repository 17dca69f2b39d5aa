"""Run folders on any filesystem pyarrow opens: a local path stays a ``pathlib.Path``, a URI
(``s3://bucket/runs``, ``gs://…``, ``hdfs://…``) becomes an ``ObjectPath`` over ``pyarrow.fs``.

``ObjectPath`` has the few ``Path`` methods the run folder uses, so ``RunDir`` and ``ShardSet`` keep
one code path; the Parquet helpers hand pyarrow a path and filesystem either way. Atomic writes differ
by kind: a local file is written to a temporary name and renamed; an object is built in memory and
put in one request, which object stores commit whole or not at all (no rename needed, none exists).
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Union

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


class ObjectPath:
    """A path on a ``pyarrow.fs`` filesystem: ``str()`` gives back the URI (workers rebuild it)."""

    def __init__(self, fs: pafs.FileSystem, scheme: str, key: str):
        self.fs, self.scheme, self.key = fs, scheme, key.rstrip("/")

    def __str__(self) -> str:
        return f"{self.scheme}://{self.key}"

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: ObjectPath) -> bool:
        return str(self) < str(other)

    def __truediv__(self, name: str) -> ObjectPath:
        return ObjectPath(self.fs, self.scheme, f"{self.key}/{name}")

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.fs, self.scheme, self.key.rsplit("/", 1)[0])

    def with_name(self, name: str) -> ObjectPath:
        return self.parent / name

    def _info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.key)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        self.fs.create_dir(self.key, recursive=True)

    def iterdir(self) -> Iterator[ObjectPath]:
        selector = pafs.FileSelector(self.key, allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            yield ObjectPath(self.fs, self.scheme, info.path)

    def glob(self, pattern: str) -> Iterator[ObjectPath]:
        """Only ``*<suffix>`` patterns in this folder (all the run folder needs)."""
        if not pattern.startswith("*") or "/" in pattern or "*" in pattern[1:]:
            raise ValueError(f"{self}: only '*<suffix>' globs are supported on object storage")
        return (p for p in self.iterdir() if p.name.endswith(pattern[1:]))

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.delete_file(self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.key) as fh:
            return fh.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        """One put: the object appears whole (or not at all) to every reader."""
        with self.fs.open_output_stream(self.key) as fh:
            fh.write(data)
        return len(data)

    def write_text(self, data: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(data.encode(encoding))


StoragePath = Union[Path, ObjectPath]  # noqa: UP007 (a runtime alias)
"""Where a run folder (or a file in it) lives."""


def location(path: str | os.PathLike[str] | ObjectPath) -> StoragePath:
    """A local path as ``Path`` (``file://`` stripped), a URI as an ``ObjectPath``.

    A URI that pyarrow cannot open (an unknown scheme, a filesystem not built in) is a one-line
    ``ValueError`` naming it."""
    if isinstance(path, (Path, ObjectPath)):
        return path
    text = os.fspath(path)
    if "://" not in text or text.startswith("file://"):
        return Path(text.removeprefix("file://"))
    try:
        fs, key = pafs.FileSystem.from_uri(text)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"{text}: not a filesystem pyarrow can open ({first}); use a local path, a mount, or a URI "
            "such as s3://bucket/runs, gs://bucket/runs or hdfs://host/runs"
        ) from None
    return ObjectPath(fs, text.split("://", 1)[0], key)


def is_local(path: StoragePath) -> bool:
    return isinstance(path, Path)


def arrow_args(path: StoragePath | str) -> tuple[str, pafs.FileSystem | None]:
    """``(path, filesystem)`` as pyarrow takes them: a local path with no filesystem (pyarrow's
    own fast local reads), an object key with its filesystem."""
    where = location(path)
    return (str(where), None) if isinstance(where, Path) else (where.key, where.fs)


def read_schema(path: StoragePath) -> pa.Schema:
    where, fs = arrow_args(path)
    return pq.read_schema(where, filesystem=fs)


def read_metadata(path: StoragePath) -> pq.FileMetaData:
    where, fs = arrow_args(path)
    return pq.read_metadata(where, filesystem=fs)


def read_table(path: StoragePath, columns: list[str] | None = None) -> pa.Table:
    where, fs = arrow_args(path)
    return pq.read_table(where, columns=columns, filesystem=fs)


def _tmp(path: Path) -> Path:
    """A temporary name beside ``path``, unique per process and thread (actors write from threads)."""
    return path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def write_table(table: pa.Table, path: StoragePath) -> None:
    """Write a Parquet file atomically: a temporary file renamed into place, or one put of the whole
    object (built in memory, so a writer that dies midway leaves no object)."""
    path = location(path)
    if isinstance(path, Path):
        tmp = _tmp(path)
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    path.write_bytes(sink.getvalue().to_pybytes())


@contextlib.contextmanager
def atomic_text(path: StoragePath) -> Iterator[IO[str]]:
    """A text file that appears whole when the block ends, and not at all when it raises."""
    path = location(path)
    if isinstance(path, Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp(path)
        try:
            with tmp.open("w", encoding="utf-8") as fh:
                yield fh
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return
    buffer = io.StringIO()
    yield buffer
    path.write_text(buffer.getvalue())


def write_image(fig: Any, path: StoragePath, **kwargs: Any) -> StoragePath:
    """``fig.savefig`` to a local file or an object."""
    path = location(path)
    if isinstance(path, Path):
        fig.savefig(path, **kwargs)
    else:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", **kwargs)
        path.write_bytes(buffer.getvalue())
    return path
