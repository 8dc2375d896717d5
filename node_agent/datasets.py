"""The node's dataset registry: which local files researchers may compute on.

The registry lives in ``<data_dir>/datasets.sqlite`` and keeps, for each dataset, the absolute
path of its file and what :class:`~broker_net.messages.DatasetInfo` tells researchers (columns,
dtypes, shape, tags), never the data itself. Three formats are read, chosen by suffix:

- ``.csv``: comma-separated, first row is the header. Cells that are empty or read ``NA``,
  ``N/A``, ``nan`` or ``null`` (any case) are missing. A column whose present cells all parse as
  numbers is numeric (``int64`` or ``float64``); any other column is ``str``.
- ``.npy``: one 2-D numeric array; its columns are named ``c0``, ``c1``, ...
- ``.npz``: ``X``, a 2-D numeric array (required); ``columns``, a 1-D array of ``X``'s column
  names (optional, default ``c0``...); ``y``, a 1-D numeric array of targets (optional), added
  as a last column named ``y`` that becomes the default target.

:meth:`DatasetRegistry.load` returns a :class:`Table` of the numeric columns as ``float64``, with
missing values as NaN; ``str`` columns are listed in the registry but left out of the table.
"""

from __future__ import annotations

import csv
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from broker_net.messages import DatasetInfo
from broker_net.sqlite import SqliteStore

FloatArray = npt.NDArray[np.float64]

SUPPORTED_FORMATS = ("csv", "npy", "npz")
"""File suffixes the registry reads, without the dot."""

MISSING_MARKERS = frozenset({"", "na", "n/a", "nan", "null"})
"""CSV cell texts (stripped, lower-cased) read as missing values."""

_INT_PATTERN = re.compile(r"^[+-]?\d+$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    dataset_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    format TEXT NOT NULL,
    tags TEXT NOT NULL,
    description TEXT NOT NULL,
    target TEXT,
    shape TEXT NOT NULL,
    columns TEXT NOT NULL,
    dtypes TEXT NOT NULL,
    added_at TEXT NOT NULL
)
"""
_PROVENANCE = """
CREATE TABLE IF NOT EXISTS dataset_provenance (
    dataset_id TEXT PRIMARY KEY,
    provenance TEXT NOT NULL
)
"""
_SELECT = (
    "SELECT d.*, p.provenance FROM datasets d LEFT JOIN dataset_provenance p USING (dataset_id)"
)


class DatasetNotFoundError(KeyError):
    """Raised when no dataset has the given id."""

    def __init__(self, dataset_id: str) -> None:
        super().__init__(dataset_id)
        self.dataset_id = dataset_id

    def __str__(self) -> str:
        return f"no dataset with id {self.dataset_id!r}"


class DataLoadingError(ValueError):
    """Raised when a dataset file is missing, unreadable or not in the expected layout."""


@dataclass(frozen=True)
class Table:
    """Numeric columns of a dataset: ``values[:, j]`` holds ``columns[j]``; NaN is missing."""

    columns: list[str]
    values: FloatArray

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[1] != len(self.columns):
            raise ValueError(
                f"a table of {len(self.columns)} columns needs a 2-D array with as many "
                f"columns, not shape {self.values.shape}"
            )

    @property
    def n_rows(self) -> int:
        """Number of rows."""
        return int(self.values.shape[0])

    def column(self, name: str) -> FloatArray:
        """Return the values of column ``name``.

        Raises:
            KeyError: the table has no such column.
        """
        try:
            return self.values[:, self.columns.index(name)]
        except ValueError:
            raise KeyError(name) from None


@dataclass(frozen=True)
class DatasetEntry:
    """One registered dataset."""

    dataset_id: str
    name: str
    path: Path
    format: str
    tags: list[str] = field(default_factory=list)
    description: str = ""
    target: str | None = None
    shape: list[int] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    dtypes: dict[str, str] = field(default_factory=dict)
    added_at: str = ""
    provenance: dict[str, Any] | None = None
    """Where a dataset the node made comes from (predictions: source dataset, job, model,
    plan, request, time); ``None`` for a dataset an operator added."""

    def to_info(self) -> DatasetInfo:
        """What researchers may see of this dataset."""
        return DatasetInfo(
            dataset_id=self.dataset_id,
            name=self.name,
            tags=list(self.tags),
            format=self.format,
            shape=list(self.shape),
            columns=list(self.columns),
            dtypes=dict(self.dtypes),
            description=self.description,
        )


class DatasetRegistry(SqliteStore):
    """The datasets of one node, in ``<data_dir>/datasets.sqlite``.

    Safe to share between threads. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir / "datasets.sqlite", [_SCHEMA, _PROVENANCE])

    def add(
        self,
        path: Path,
        *,
        name: str | None = None,
        tags: Sequence[str] = (),
        description: str = "",
        target: str | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> DatasetEntry:
        """Read the file at ``path`` and register it under a new ``dataset_<hex>`` id.

        Args:
            path: a ``.csv``, ``.npy`` or ``.npz`` file.
            name: display name; the file's stem when omitted.
            tags: labels researchers select datasets by.
            description: free text shown to researchers.
            target: the column training plans predict; ``y`` by default for ``.npz`` files
                holding ``y``.
            provenance: where the node made the dataset from (JSON data), e.g. predictions.

        Raises:
            DataLoadingError: the file is missing, of an unknown format, unreadable, or has no
                column ``target``.
        """
        path = path.expanduser().resolve()
        columns, dtypes, shape = _describe(path)
        if target is None and _format_of(path) == "npz" and "y" in columns:
            target = "y"
        if target is not None and target not in columns:
            raise DataLoadingError(f"target column {target!r} is not among {columns}")
        entry = DatasetEntry(
            dataset_id=f"dataset_{uuid.uuid4().hex}",
            name=name or path.stem,
            path=path,
            format=_format_of(path),
            tags=sorted(set(tags)),
            description=description,
            target=target,
            shape=shape,
            columns=columns,
            dtypes=dtypes,
            added_at=datetime.now(UTC).isoformat(),
            provenance=provenance,
        )
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.dataset_id, entry.name, str(entry.path), entry.format,
                    json.dumps(entry.tags), entry.description, entry.target,
                    json.dumps(entry.shape), json.dumps(entry.columns),
                    json.dumps(entry.dtypes), entry.added_at,
                ),
            )  # fmt: skip
            if provenance is not None:
                conn.execute("INSERT INTO dataset_provenance VALUES (?, ?)",
                             (entry.dataset_id, json.dumps(provenance)))  # fmt: skip
        return entry

    def list(self, tags: Sequence[str] = ()) -> list[DatasetEntry]:
        """Return the datasets carrying every one of ``tags`` (all of them when empty)."""
        with self._transaction() as conn:
            rows = conn.execute(f"{_SELECT} ORDER BY added_at, dataset_id").fetchall()
        wanted = set(tags)
        entries = [_entry_from_row(row) for row in rows]
        return [entry for entry in entries if wanted.issubset(entry.tags)]

    def get(self, dataset_id: str) -> DatasetEntry:
        """Return the dataset ``dataset_id``.

        Raises:
            DatasetNotFoundError: no dataset has that id.
        """
        with self._transaction() as conn:
            row = conn.execute(f"{_SELECT} WHERE dataset_id = ?", (dataset_id,)).fetchone()
        if row is None:
            raise DatasetNotFoundError(dataset_id)
        return _entry_from_row(row)

    def info(self, dataset_id: str) -> DatasetInfo:
        """Return what researchers may see of ``dataset_id``.

        Raises:
            DatasetNotFoundError: no dataset has that id.
        """
        return self.get(dataset_id).to_info()

    def remove(self, dataset_id: str) -> None:
        """Forget the dataset ``dataset_id`` (its file is left alone).

        Raises:
            DatasetNotFoundError: no dataset has that id.
        """
        with self._transaction() as conn:
            cursor = conn.execute("DELETE FROM datasets WHERE dataset_id = ?", (dataset_id,))
            conn.execute("DELETE FROM dataset_provenance WHERE dataset_id = ?", (dataset_id,))
        if cursor.rowcount == 0:
            raise DatasetNotFoundError(dataset_id)

    def load(self, dataset_id: str) -> Table:
        """Read the numeric columns of ``dataset_id`` from its file.

        Raises:
            DatasetNotFoundError: no dataset has that id.
            DataLoadingError: the file is gone or no longer readable.
        """
        return read_table(self.get(dataset_id).path)


def _entry_from_row(row: tuple[Any, ...]) -> DatasetEntry:
    dataset_id, name, path, fmt, tags, description, target, shape, columns, dtypes, added, made = (
        row
    )
    return DatasetEntry(
        dataset_id, name, Path(path), fmt, json.loads(tags), description, target,
        json.loads(shape), json.loads(columns), json.loads(dtypes), added,
        json.loads(made) if made else None,
    )  # fmt: skip


def _format_of(path: Path) -> str:
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in SUPPORTED_FORMATS:
        raise DataLoadingError(
            f"cannot read {path.name!r}: supported suffixes are "
            + ", ".join(f".{name}" for name in SUPPORTED_FORMATS)
        )
    return fmt


def read_table(path: Path) -> Table:
    """Read the numeric columns of a dataset file as a :class:`Table`.

    Raises:
        DataLoadingError: the file is missing, of an unknown format or unreadable.
    """
    columns, arrays, _ = _read(path)
    numeric = [name for name in columns if arrays[name] is not None]
    values = np.empty((_row_count(arrays, columns), len(numeric)), dtype=np.float64)
    for j, name in enumerate(numeric):
        values[:, j] = arrays[name]
    return Table(numeric, values)


def _describe(path: Path) -> tuple[list[str], dict[str, str], list[int]]:
    columns, arrays, dtypes = _read(path)
    return columns, dtypes, [_row_count(arrays, columns), len(columns)]


def _row_count(arrays: dict[str, Any], columns: list[str]) -> int:
    return len(arrays[columns[0]]) if columns else 0


_Columns = tuple[list[str], dict[str, FloatArray | None], dict[str, str]]


def _read(path: Path) -> _Columns:
    """Return column names, each column as float64 (None when not numeric), and raw dtypes."""
    fmt = _format_of(path)
    try:
        if fmt == "csv":
            return _read_csv(path)
        return _read_npy(path) if fmt == "npy" else _read_npz(path)
    except DataLoadingError:
        raise
    except (OSError, ValueError, csv.Error, UnicodeDecodeError) as exc:
        raise DataLoadingError(f"cannot read {path.name!r}: {exc}") from exc


def _read_csv(path: Path) -> _Columns:
    with path.open(newline="", encoding="utf-8-sig") as stream:
        rows = list(csv.reader(stream))
    if not rows:
        raise DataLoadingError(f"{path.name!r} is empty; a header row is required")
    header = [name.strip() for name in rows[0]]
    _check_names(header, path)
    body = [row for row in rows[1:] if row]
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataLoadingError(
                f"{path.name!r} line {number} has {len(row)} cells, the header {len(header)}"
            )
    arrays: dict[str, FloatArray | None] = {}
    dtypes: dict[str, str] = {}
    for j, name in enumerate(header):
        arrays[name], dtypes[name] = _parse_column([row[j].strip() for row in body])
    return header, arrays, dtypes


def _parse_column(cells: list[str]) -> tuple[FloatArray | None, str]:
    values = np.empty(len(cells), dtype=np.float64)
    integral, present = True, 0
    for i, cell in enumerate(cells):
        if cell.lower() in MISSING_MARKERS:
            values[i] = np.nan
            continue
        try:
            values[i] = float(cell)
        except ValueError:
            return None, "str"
        present += 1
        integral = integral and bool(_INT_PATTERN.match(cell))
    return values, "int64" if integral and present else "float64"


def _read_npy(path: Path) -> _Columns:
    array = np.load(path, allow_pickle=False)
    _check_matrix(array, "the array", path)
    columns = [f"c{j}" for j in range(array.shape[1])]
    return _split_columns(array, columns)


def _read_npz(path: Path) -> _Columns:
    with np.load(path, allow_pickle=False) as archive:
        if "X" not in archive.files:
            raise DataLoadingError(f"{path.name!r} has no array 'X' (found {archive.files})")
        x = archive["X"]
        _check_matrix(x, "'X'", path)
        columns = [f"c{j}" for j in range(x.shape[1])]
        if "columns" in archive.files:
            columns = [str(name) for name in archive["columns"].tolist()]
            if len(columns) != x.shape[1]:
                raise DataLoadingError(
                    f"{path.name!r}: 'columns' names {len(columns)} columns, 'X' has {x.shape[1]}"
                )
        names, arrays, dtypes = _split_columns(x, columns)
        if "y" in archive.files:
            y = archive["y"]
            if y.ndim != 1 or len(y) != x.shape[0] or y.dtype.kind not in "biuf":
                raise DataLoadingError(f"{path.name!r}: 'y' must be 1-D, numeric, one per row")
            if "y" in arrays:
                raise DataLoadingError(f"{path.name!r}: a column of 'X' is already named 'y'")
            names.append("y")
            arrays["y"], dtypes["y"] = y.astype(np.float64), str(y.dtype)
    _check_names(names, path)
    return names, arrays, dtypes


def _check_matrix(array: npt.NDArray[Any], what: str, path: Path) -> None:
    if array.ndim != 2 or array.dtype.kind not in "biuf":
        raise DataLoadingError(
            f"{path.name!r}: {what} must be a 2-D numeric array, not {array.ndim}-D {array.dtype}"
        )


def _split_columns(array: npt.NDArray[Any], columns: list[str]) -> _Columns:
    arrays: dict[str, FloatArray | None] = {}
    dtypes: dict[str, str] = {}
    for j, name in enumerate(columns):
        arrays[name] = array[:, j].astype(np.float64)
        dtypes[name] = str(array.dtype)
    return list(columns), arrays, dtypes


def _check_names(names: list[str], path: Path) -> None:
    if any(not name for name in names):
        raise DataLoadingError(f"{path.name!r} has a column without a name")
    if len(set(names)) != len(names):
        raise DataLoadingError(f"{path.name!r} has duplicate column names")
