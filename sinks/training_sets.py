"""Versioned training sets: every export is a new version with a manifest of what produced it, rebuildable.

Layout under the data dir::

    <store>/datasets/<name>/v<N>/data.parquet     the training set (the rows' columns, then the features)
    <store>/datasets/<name>/v<N>/manifest.json    what produced it (``build_manifest``)

The manifest records the feature vector, each feature set's definition and fingerprint, the source text of
the definitions, a hash of the input rows, the data snapshot (per feature set: the files, their row counts
and the highest Kafka offset of each partition), as-known-at, the package version and the command. The
data is read through that snapshot (events at or below those offsets), so ``rebuild`` computes the same
values later, even after compaction moved the events into other files; it refuses, naming the reason, when
the snapshot's events changed (pruned, or backfilled below the recorded offsets).

A version directory is written under a hidden temporary name and renamed into place: a reader never sees
half a version, and two exports at once get distinct numbers.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from aggregations import FeatureSet, FeatureVector, Registry
from aggregations.definitions import check_name
from aggregations.loading import FILE_MODULE_PREFIX, load_registry

from .layout import dataset_dir, source_path
from .snapshot import fsync_dir, live_parts, reading
from .storage import arrow_fs, is_local, open_location, parquet_bytes, parquet_rows
from .writer import COMPRESSION, write_parquet_atomic

DATASETS_DIR = "datasets"
MANIFEST_FILE = "manifest.json"
DATA_FILE = "data.parquet"
MANIFEST_FORMAT = 1
_VERSION_DIR = re.compile(r"^v([1-9][0-9]{0,8})$")


class RebuildRefused(ValueError):
    """A version cannot be rebuilt exactly: its definitions or its data snapshot are no longer there."""


# -- where versions live ------------------------------------------------------------------------------------


def datasets_root(store: str | Path) -> Path:
    """``<store>/datasets``: every named training set's versions (a local directory or an ``s3://`` prefix)."""
    return open_location(store) / DATASETS_DIR


def version_dir(store: str | Path, name: str, version: int) -> Path:
    return datasets_root(store) / check_name("training set", name) / f"v{int(version)}"


def versions_of(store: str | Path, name: str) -> list[int]:
    """Version numbers of a named training set, ascending (complete versions only)."""
    root = datasets_root(store) / check_name("training set", name)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _VERSION_DIR.match(entry.name)
        if match and (entry / MANIFEST_FILE).is_file():
            found.append(int(match.group(1)))
    return sorted(found)


def parse_version(text: str | int | None) -> int | None:
    """``3``, ``"3"`` or ``"v3"`` -> 3; None -> None (the latest)."""
    if text is None:
        return None
    raw = str(text).strip()
    raw = raw[1:] if raw[:1] in ("v", "V") else raw
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"version must be a positive number like 3 or v3, got {text!r}")
    return int(raw)


def read_manifest(store: str | Path, name: str, version: int | str | None = None) -> dict:
    """The manifest of a version (default: the latest)."""
    versions = versions_of(store, name)
    if not versions:
        known = ", ".join(list_names(store)) or "none"
        raise KeyError(f"no training set named {name!r} under {datasets_root(store)}; known: {known}")
    wanted = parse_version(version) or versions[-1]
    if wanted not in versions:
        raise KeyError(f"training set {name!r} has no version v{wanted}; versions: {_labels(versions)}")
    return json.loads((version_dir(store, name, wanted) / MANIFEST_FILE).read_text())


def list_names(store: str | Path) -> list[str]:
    root = datasets_root(store)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def list_versions(store: str | Path, name: str | None = None) -> list[dict]:
    """One summary per version (of ``name``, or of every training set): name, version, created, rows, vector."""
    out = []
    for set_name in [name] if name else list_names(store):
        for version in versions_of(store, set_name):
            manifest = read_manifest(store, set_name, version)
            out.append(
                {
                    "name": set_name,
                    "version": version,
                    "created_at": manifest["created_at"],
                    "rows": manifest["output"]["rows"],
                    "columns": len(manifest["output"]["columns"]),
                    "vector": manifest["vector"]["name"],
                    "as_known_at": manifest["as_known_at"],
                    "path": str(version_dir(store, set_name, version)),
                }
            )
    return out


def _labels(versions: Iterable[int]) -> str:
    return ", ".join(f"v{v}" for v in versions) or "none"


# -- what a manifest records ---------------------------------------------------------------------------------


def capture_snapshot(sets: Iterable[FeatureSet], store: str | Path) -> dict[str, dict]:
    """Per feature set, the data as it is now: its files (name, rows, bytes, Kafka partition and offsets),
    the highest offset of each partition (``offsets``) and the number of events."""
    out = {}
    for fs in sets:
        root = dataset_dir(store, fs.name)
        files = []
        with reading(root):
            for part in live_parts(root):
                files.append(
                    {
                        "path": part.path.relative_to(root).as_posix(),
                        "partition": part.partition,
                        "first_offset": part.first,
                        "last_offset": part.last,
                        "rows": parquet_rows(part.path),
                        "bytes": part.path.stat().st_size,
                    }
                )
        offsets: dict[str, int] = {}
        for f in files:
            key = str(f["partition"])
            offsets[key] = max(offsets.get(key, -1), f["last_offset"])
        topic = None
        if source_path(root).is_file():
            topic = json.loads(source_path(root).read_text()).get("topic")
        out[fs.name] = {
            "dataset": str(root),
            "topic": topic,
            "events": sum(f["rows"] for f in files),
            "offsets": dict(sorted(offsets.items(), key=lambda kv: int(kv[0]))),
            "files": files,
        }
    return out


def snapshot_offsets(snapshot: Mapping[str, Mapping]) -> dict[str, dict[int, int]]:
    """``capture_snapshot`` (or a manifest's ``snapshot``) -> set -> {partition: highest offset}."""
    return {name: {int(p): int(o) for p, o in s["offsets"].items()} for name, s in snapshot.items()}


def rows_digest(rows: pd.DataFrame) -> str:
    """A SHA-256 of the rows' columns and values, the same after a round trip through Parquet.

    Strings hash alike whatever their pandas dtype, timestamps at millisecond precision (the kernel's).
    """
    table = pa.Table.from_pandas(rows, preserve_index=False)
    columns = []
    for column in table.columns:
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            column = column.cast(pa.large_string())
        elif pa.types.is_timestamp(column.type):
            column = column.cast(pa.timestamp("ms", tz=column.type.tz), safe=False)
        columns.append(column)
    sink = io.BytesIO()
    pacsv.write_csv(pa.Table.from_arrays(columns, names=table.column_names), sink)
    return hashlib.sha256(sink.getvalue()).hexdigest()


def definitions_sources(sets: Iterable[FeatureSet]) -> list[dict]:
    """Source text of the project files that define ``sets`` (definition files loaded by path, ``__main__``,
    or modules outside the Python installation), found by the objects they hold."""
    wanted = {id(fs) for fs in sets}
    installed = tuple(str(Path(p).resolve()) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
    out, seen = [], set()
    for module_name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not path or not path.endswith(".py"):
            continue
        resolved = str(Path(path).resolve())
        user_module = module_name.startswith(FILE_MODULE_PREFIX) or module_name == "__main__"
        if not user_module and resolved.startswith(installed):
            continue
        try:
            holds = any(id(v) in wanted for v in list(vars(module).values()))
        except TypeError:
            continue
        if not holds or resolved in seen:
            continue
        seen.add(resolved)
        text = Path(resolved).read_text(encoding="utf-8", errors="replace")
        out.append({"path": resolved, "sha256": hashlib.sha256(text.encode()).hexdigest(), "text": text})
    return out


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("featurestream")
    except Exception:  # not installed (a checkout on PYTHONPATH)
        return "unknown"


def build_manifest(
    *,
    name: str | None,
    vector: FeatureVector,
    sets: Mapping[str, FeatureSet],
    rows: pd.DataFrame,
    rows_source: str,
    timestamp_column: str,
    as_known_at: bool,
    snapshot: Mapping[str, dict],
    result: pd.DataFrame,
    engine: str = "local",
    command: list[str] | None = None,
) -> dict:
    """The manifest of one training set (plain JSON data); any engine that computes one calls this.

    ``snapshot``: ``capture_snapshot`` of the vector's sets, taken before reading them and read through
    (``snapshot_offsets``). ``rows_source``: where the rows came from, for people (e.g. a file name).
    """
    used = sorted(vector.resolve(sets))
    created = int(time.time() * 1000)
    return {
        "format": MANIFEST_FORMAT,
        "name": name,
        "created_at": datetime.fromtimestamp(created / 1000, UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z"),
        "created_at_ms": created,
        "featurestream_version": package_version(),
        "engine": engine,
        "command": list(sys.argv if command is None else command),
        "vector": {"name": vector.name, "features": list(vector.features)},
        "feature_sets": {
            n: {"fingerprint": sets[n].fingerprint(), "definition": sets[n].definition()} for n in used
        },
        "definitions": definitions_sources(sets[n] for n in used),
        "rows": {
            "source": rows_source,
            "count": len(rows),
            "columns": [str(c) for c in rows.columns],
            "timestamp_column": timestamp_column,
            "sha256": rows_digest(rows),
        },
        "as_known_at": bool(as_known_at),
        "snapshot": {n: dict(snapshot[n]) for n in used},
        "output": {"file": DATA_FILE, "rows": len(result), "columns": [str(c) for c in result.columns]},
    }


# -- writing a version -------------------------------------------------------------------------------------


def write_version(store: str | Path, name: str, frame: pd.DataFrame, manifest: dict) -> tuple[int, Path]:
    """Write ``frame`` and ``manifest`` as the next version of ``name``; returns (version, its directory)."""
    root = datasets_root(store) / check_name("training set", name)
    if not is_local(root):
        return _write_version_to_store(store, root, name, frame, manifest)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        write_parquet_atomic(pa.Table.from_pandas(frame, preserve_index=False), staging / DATA_FILE)
        for _ in range(1000):
            version = (max(versions_of(store, name), default=0)) + 1
            for entry in root.iterdir():  # a version another writer is renaming into place right now
                match = _VERSION_DIR.match(entry.name)
                if match:
                    version = max(version, int(match.group(1)) + 1)
            body = {**manifest, "name": name, "version": version}
            body["output"] = {**manifest["output"], "sha256": _file_digest(staging / DATA_FILE)}
            (staging / MANIFEST_FILE).write_text(json.dumps(body, indent=2, default=str) + "\n")
            _fsync_file(staging / MANIFEST_FILE)
            fsync_dir(staging)
            try:
                os.rename(staging, root / f"v{version}")  # atomic; fails if another writer took the number
            except OSError:
                continue
            fsync_dir(root)
            manifest.update(name=name, version=version, output=body["output"])
            return version, root / f"v{version}"
        raise RuntimeError(f"could not find a free version number under {root}")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_version_to_store(store, root, name: str, frame: pd.DataFrame, manifest: dict) -> tuple[int, Path]:
    """Object stores (no rename): the data, then the manifest as the commit point of ``v<N>/`` (a version
    counts once its manifest exists). Two writers of one name at the same instant are not excluded (no
    conditional PUT through pyarrow): the later manifest is detected and that writer retries with N + 1."""
    data = parquet_bytes(pa.Table.from_pandas(frame, preserve_index=False), compression=COMPRESSION)
    token = uuid.uuid4().hex
    for _ in range(100):
        version = max(versions_of(store, name), default=0) + 1
        target = root / f"v{version}"
        if list(target.iterdir()):  # another writer is filling this number right now
            continue
        (target / DATA_FILE).write_bytes(data)
        body = {**manifest, "name": name, "version": version, "writer": token}
        body["output"] = {**manifest["output"], "sha256": hashlib.sha256(data).hexdigest()}
        (target / MANIFEST_FILE).write_text(json.dumps(body, indent=2, default=str) + "\n")
        if json.loads((target / MANIFEST_FILE).read_text()).get("writer") != token:
            continue
        manifest.update(name=name, version=version, output=body["output"])
        return version, target
    raise RuntimeError(f"could not find a free version number under {root}")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versioned_training_set(
    vector,
    rows: pd.DataFrame,
    store: str | Path,
    *,
    name: str | None,
    return_manifest: bool,
    registry=None,
    snapshot: Mapping[str, Mapping[int, int]] | None = None,
    rows_source: str = "DataFrame",
    command: list[str] | None = None,
    **options,
):
    """``get_offline_features`` through a data snapshot, plus the manifest (and, with ``name``, a new version).

    Returns the frame, or ``(frame, manifest)`` with ``return_manifest``; the frame's ``attrs["manifest"]``
    holds the manifest either way.
    """
    from .offline import _resolve, get_offline_features

    if name is not None:
        check_name("training set", name)
    sets, vector = _resolve(vector, registry)
    used = [sets[n] for n in vector.resolve(sets)]
    taken = capture_snapshot(used, store)
    offsets = snapshot_offsets(taken) if snapshot is None else {k: dict(v) for k, v in snapshot.items()}
    if snapshot is not None:  # reading a given snapshot: record its offsets, count its events
        taken = _restricted(used, store, taken, offsets)
    result = get_offline_features(vector, rows, store, registry=sets, snapshot=offsets, **options)
    manifest = build_manifest(
        name=name,
        vector=vector,
        sets=sets,
        rows=rows,
        rows_source=rows_source,
        timestamp_column=options.get("timestamp_column", "ts"),
        as_known_at=options.get("as_known_at", False),
        snapshot=taken,
        result=result,
        engine="spark" if options.get("engine") == "spark" or options.get("spark") is not None else "local",
        command=command,
    )
    if name is not None:
        write_version(store, name, result, manifest)
    result.attrs["manifest"] = manifest
    return (result, manifest) if return_manifest else result


def _restricted(sets: list[FeatureSet], store, taken: dict, offsets: Mapping[str, Mapping[int, int]]) -> dict:
    """A captured snapshot narrowed to given offsets: those offsets, the events under them, the files holding them."""
    from .dataset import count_events

    out = {}
    for fs in sets:
        cut = {int(p): int(o) for p, o in offsets[fs.name].items()}
        files = [
            f
            for f in taken[fs.name]["files"]
            if f["partition"] in cut and f["first_offset"] <= cut[f["partition"]]
        ]
        out[fs.name] = {
            **taken[fs.name],
            "events": count_events(fs, store, offsets_upto=cut),
            "offsets": {str(p): o for p, o in sorted(cut.items())},
            "files": files,
        }
    return out


# -- rebuilding a version ----------------------------------------------------------------------------------


def _comparable(definition: dict) -> str:
    """A set's definition with transforms named by their source hash only (module names vary by load)."""
    body = dict(definition)
    body["transforms"] = [str(t).rsplit(":", 1)[-1] for t in body.get("transforms", [])]
    return json.dumps(body, sort_keys=True, default=str)


def _sets_for(manifest: dict, registry: Registry | None) -> dict[str, FeatureSet]:
    """The feature sets the manifest was built with: from the definitions' recorded text, or ``registry``
    when its definitions are the same; refuses when neither matches."""
    wanted = manifest["feature_sets"]
    candidates: list[tuple[str, dict[str, FeatureSet]]] = []
    for source in manifest.get("definitions", []):
        try:
            with tempfile.TemporaryDirectory(prefix="featurestream-rebuild-") as tmp:
                path = Path(tmp) / Path(source["path"]).name
                path.write_text(source["text"], encoding="utf-8")
                sys.path.insert(0, str(Path(source["path"]).parent))
                try:
                    loaded = load_registry(str(path))
                finally:
                    sys.path.remove(str(Path(source["path"]).parent))
            candidates.append((f"the recorded text of {source['path']}", dict(loaded.feature_sets)))
        except Exception:  # recorded text that no longer runs here (e.g. an import that moved)
            continue
    if registry is not None:
        candidates.append(("the given definitions", dict(registry.feature_sets)))
    differing: set[str] = set()
    for _label, sets in candidates:
        chosen = {}
        for set_name, recorded in wanted.items():
            fs = sets.get(set_name)
            if fs is not None and _comparable(fs.definition()) == _comparable(recorded["definition"]):
                chosen[set_name] = fs
            else:
                differing.add(set_name)
        if len(chosen) == len(wanted):
            return chosen
    raise RebuildRefused(
        f"the definitions of {sorted(differing)} changed since this version was built and its recorded "
        "definitions could not be loaded; pass --definitions with the ones it was built with"
    )


def rebuild(
    store: str | Path,
    name: str,
    version: int | str | None = None,
    *,
    registry: Registry | None = None,
    workers: int = 1,
    progress: bool = False,
) -> tuple[pd.DataFrame, dict]:
    """Recompute a version from its manifest: the same definitions, rows, data snapshot and options.

    Returns ``(frame, manifest)``; compare with ``stored(...)`` (``identical``). Raises ``RebuildRefused``
    when the definitions or the snapshot's events are no longer there.
    """
    from .dataset import count_events
    from .offline import get_offline_features

    manifest = read_manifest(store, name, version)
    sets = _sets_for(manifest, registry)
    offsets = snapshot_offsets(manifest["snapshot"])
    for set_name, recorded in manifest["snapshot"].items():
        now = count_events(sets[set_name], store, offsets_upto=offsets[set_name])
        if now != recorded["events"]:
            raise RebuildRefused(
                f"feature set {set_name!r} now holds {now} events within this version's snapshot, "
                f"{recorded['events']} when it was built (days pruned, or history backfilled below the "
                "recorded offsets): its values cannot be reproduced exactly"
            )
    stored_frame = stored(store, name, manifest["version"])
    row_columns = manifest["rows"]["columns"]
    rows = stored_frame[row_columns]
    if rows_digest(rows) != manifest["rows"]["sha256"]:
        raise RebuildRefused(
            f"the rows stored in {name} v{manifest['version']} do not match the manifest's hash"
        )
    vector = FeatureVector(manifest["vector"]["name"], manifest["vector"]["features"])
    frame = get_offline_features(
        vector,
        rows,
        store,
        registry=sets,
        timestamp_column=manifest["rows"]["timestamp_column"],
        as_known_at=manifest["as_known_at"],
        snapshot=offsets,
        workers=workers,
        progress=progress,
    )
    return frame, manifest


def stored(store: str | Path, name: str, version: int | str | None = None) -> pd.DataFrame:
    """The data of a version, as written."""
    manifest = read_manifest(store, name, version)
    filesystem, where = arrow_fs(version_dir(store, name, manifest["version"]) / DATA_FILE)
    return pd.read_parquet(where, filesystem=filesystem)


def _listed(value):
    """A list feature's value as plain Python (Parquet reads lists back as numpy arrays)."""
    if isinstance(value, np.ndarray | list):
        return [_listed(v) for v in value]
    if isinstance(value, dict):
        return {k: _listed(v) for k, v in value.items()}
    return value


def differences(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """Columns whose values differ between two training sets (exactly; null equals null); [] if identical."""
    if list(a.columns) != list(b.columns):
        return [f"columns differ: {list(a.columns)} vs {list(b.columns)}"]
    if len(a) != len(b):
        return [f"{len(a)} rows vs {len(b)}"]
    out = []
    for column in a.columns:
        x, y = a[column].reset_index(drop=True), b[column].reset_index(drop=True)
        both_null = x.isna().to_numpy() & y.isna().to_numpy()
        xs, ys = x.astype(object).to_numpy(), y.astype(object).to_numpy()
        if any(isinstance(v, np.ndarray | list) for v in (*xs, *ys)):  # list features (top_k, last_k)
            same = both_null | np.array([_listed(a) == _listed(b) for a, b in zip(xs, ys, strict=True)], dtype=bool)
        else:
            same = both_null | (xs == ys)
        if pd.api.types.is_datetime64_any_dtype(x) or pd.api.types.is_datetime64_any_dtype(y):
            same = both_null | (pd.to_datetime(x, utc=True) == pd.to_datetime(y, utc=True)).to_numpy()
        bad = np.flatnonzero(~same)
        if len(bad):
            i = int(bad[0])
            out.append(f"{column}: {len(bad)} rows differ (row {i}: {x.iloc[i]!r} vs {y.iloc[i]!r})")
    return out
