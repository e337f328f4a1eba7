"""Where the offline store lives: a local directory, or an S3-compatible URI through pyarrow's filesystem layer.

A location is a ``pathlib.Path`` when it is local (every local code path, with its ``flock``, ``fsync`` and
``os.replace``, stays as it is) and a ``StorePath`` when it is an object-store URI (``s3://bucket/prefix``).
``StorePath`` offers the few ``pathlib`` operations the offline code uses (``/``, ``name``, ``parent``,
``exists``, ``iterdir``, ``read_text``, ``unlink`` ...) on a ``pyarrow.fs.FileSystem``, so most code works on
both unchanged; what differs (atomic writes, locks, renames) is decided by ``is_local``.

Object stores have no rename and no locks, but a PUT is atomic: an object appears whole, at its final
name, when its upload completes, or never. Writers here therefore build a file in memory and upload it
in one go (``write_bytes``); a writer killed mid-upload leaves no object behind.

Endpoint and region come from ``configure`` (the CLI's ``--s3-endpoint``/``--s3-region``), else from
``FEATURESTREAM_S3_ENDPOINT``/``AWS_ENDPOINT_URL`` and ``AWS_REGION``/``AWS_DEFAULT_REGION``; credentials
from the AWS SDK's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an instance role).
"""

from __future__ import annotations

import io
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

_SCHEMES = ("s3://",)
_options: dict[str, str | None] = {"endpoint": None, "region": None}


def configure(endpoint: str | None = None, region: str | None = None) -> None:
    """Process-wide object-store options (the CLI's flags); None keeps the environment's value."""
    _options["endpoint"] = endpoint or None
    _options["region"] = region or None


def object_store_options() -> dict[str, str]:
    """The endpoint/region in force (flags, then environment), as ``S3FileSystem`` keyword arguments."""
    endpoint = (
        _options["endpoint"] or os.environ.get("FEATURESTREAM_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
    )
    region = _options["region"] or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    out: dict[str, str] = {}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        if not host:
            scheme, host = "https", endpoint
        out["endpoint_override"] = host.rstrip("/")
        out["scheme"] = scheme
    out["region"] = region or "us-east-1"  # S3-compatible servers ignore it; AWS redirects to the bucket's
    return out


def is_uri(location: object) -> bool:
    return isinstance(location, str) and location.startswith(_SCHEMES)


@dataclass(frozen=True)
class FileStat:
    st_size: int


class StorePath:
    """A file or prefix in an object store: ``pathlib``-like, immutable, picklable (fs + ``bucket/key``)."""

    __slots__ = ("_size", "fs", "path")

    def __init__(self, fs: pafs.FileSystem, path: str, size: int | None = None):
        self.fs = fs
        self.path = path.strip("/")
        self._size = size

    # -- names ---------------------------------------------------------------------------------------
    def __truediv__(self, name: str | os.PathLike) -> StorePath:
        name = str(name).strip("/")
        if not name or ".." in name.split("/"):
            raise ValueError(f"bad path component {name!r}")
        return StorePath(self.fs, f"{self.path}/{name}")

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def parent(self) -> StorePath:
        return StorePath(self.fs, posixpath.dirname(self.path))

    def with_name(self, name: str) -> StorePath:
        return self.parent / name

    def relative_to(self, other: StorePath) -> PurePosixPath:
        prefix = other.path + "/"
        if not self.path.startswith(prefix):
            raise ValueError(f"{self} is not under {other}")
        return PurePosixPath(self.path[len(prefix) :])

    def as_posix(self) -> str:
        return str(self)

    def __str__(self) -> str:
        return f"s3://{self.path}"

    def __repr__(self) -> str:
        return f"StorePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StorePath) and other.path == self.path

    def __lt__(self, other: StorePath) -> bool:
        return self.path < other.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __reduce__(self):
        return (StorePath, (self.fs, self.path, self._size))

    # -- queries -------------------------------------------------------------------------------------
    def _info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def stat(self) -> FileStat:
        if self._size is None:
            info = self._info()
            if info.type != pafs.FileType.File:
                raise FileNotFoundError(str(self))
            return FileStat(int(info.size))
        return FileStat(self._size)

    def iterdir(self):
        """Direct children (one LIST with a delimiter); none if the prefix holds nothing."""
        for info in self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True)):
            yield _from_info(self.fs, info)

    def walk_files(self) -> list[StorePath]:
        """Every object under this prefix (one paginated LIST), each with its size."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True, allow_not_found=True))
        return [_from_info(self.fs, i) for i in infos if i.type == pafs.FileType.File]

    # -- reads and writes ----------------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        try:
            with self.fs.open_input_stream(self.path) as handle:
                return handle.read()
        except FileNotFoundError:
            raise
        except OSError as exc:
            if self._info().type == pafs.FileType.NotFound:
                raise FileNotFoundError(str(self)) from exc
            raise

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """Upload ``data`` as this object: it appears whole when the upload completes, or not at all."""
        with self.fs.open_output_stream(self.path) as handle:
            handle.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Object stores have no directories: a prefix exists once an object is under it."""

    def rmtree(self) -> None:
        self.fs.delete_dir(self.path)


def _from_info(fs: pafs.FileSystem, info: pafs.FileInfo) -> StorePath:
    return StorePath(fs, info.path, int(info.size) if info.type == pafs.FileType.File else None)


Location = Path | StorePath


def open_location(location: str | os.PathLike | StorePath) -> Location:
    """A local ``Path``, or a ``StorePath`` for an ``s3://bucket/prefix`` URI (with the configured options)."""
    if isinstance(location, (Path, StorePath)):
        return location
    text = os.fspath(location)
    if text.startswith("file://"):
        return Path(text[len("file://") :])
    if not is_uri(text):
        if "://" in text:
            raise ValueError(f"unsupported store URI {text!r}: use a local path or s3://bucket/prefix")
        return Path(text)
    bucket_key = text[len("s3://") :].strip("/")
    if not bucket_key:
        raise ValueError(f"store URI {text!r} names no bucket")
    return StorePath(pafs.S3FileSystem(**object_store_options()), bucket_key)


def is_local(location: Location) -> bool:
    return isinstance(location, Path)


def arrow_fs(location: Location) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path in it) of a location, for pyarrow's readers and datasets."""
    if isinstance(location, StorePath):
        return location.fs, location.path
    return pafs.LocalFileSystem(), str(location)


def arrow_files(paths: list[Location]) -> tuple[pafs.FileSystem | None, list[str]]:
    """One filesystem and the path strings of files that all live in it (None: local)."""
    if not paths:
        return None, []
    if isinstance(paths[0], StorePath):
        return paths[0].fs, [p.path for p in paths]
    return None, [str(p) for p in paths]


def read_parquet(path: Location, columns: list[str] | None = None) -> pa.Table:
    fs, where = arrow_fs(path)
    return pq.read_table(where, columns=columns, filesystem=fs)


def parquet_rows(path: Location) -> int:
    """Rows of a Parquet file, from its footer."""
    fs, where = arrow_fs(path)
    with fs.open_input_file(where) as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def parquet_bytes(table: pa.Table, **kwargs) -> bytes:
    """A table serialized as one Parquet file in memory (uploaded whole afterwards)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, **kwargs)
    return sink.getvalue()

