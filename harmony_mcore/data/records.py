"""Read a user-supplied table of rows: JSONL, JSON, Parquet, CSV, or a Hugging Face `datasets`
export (a `save_to_disk` folder of .arrow files, or a hub snapshot folder of parquet files).

Rows come back as plain dicts; the benchmark loaders decide what the columns mean."""

from __future__ import annotations

import ast
import csv
from pathlib import Path
from typing import Any

from harmony_mcore.loading import parse_json

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow")


class DataError(ValueError):
    """A data file problem, with the fix in its message."""


def read_records(path: str | Path, split: str = "test", columns: list[str] | None = None) -> list[dict[str, Any]]:
    """All rows of `path` (only `columns` of a parquet file, when given). A folder is read as the concatenation of its data files; when some of
    their names contain `split` (e.g. `test-00000-of-00001.parquet` next to `validation-...`), only
    those are read."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; pass the path of your downloaded copy")
    if path.is_dir():
        return [row for f in _data_files(path, split) for row in _read_file(f, columns)]
    return _read_file(path, columns)


def _data_files(folder: Path, split: str) -> list[Path]:
    files = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix in SUFFIXES
                   and f.name not in ("dataset_info.json", "state.json", "dataset_dict.json"))
    if not files:
        raise DataError(f"{folder}: no data files ({', '.join(SUFFIXES)}) inside; pass a file or a "
                        "`datasets` export folder")
    in_split = [f for f in files if split in f.relative_to(folder).as_posix()]
    return in_split or files


def _read_file(path: Path, columns: list[str] | None = None) -> list[dict[str, Any]]:
    import pyarrow as pa

    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}")
    try:
        if suffix == ".jsonl":
            with path.open("rb") as f:
                rows = [parse_json(line, f"{path} line {n}", DataError) for n, line in enumerate(f, 1) if line.strip()]
        elif suffix == ".json":
            rows = parse_json(path.read_bytes(), str(path), DataError)
            if isinstance(rows, dict) and isinstance(rows.get("data"), list):
                rows = rows["data"]
            if not isinstance(rows, list):
                raise DataError(f"{path}: expected a JSON list of rows (or JSONL)")
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path, columns=columns).to_pylist()
        elif suffix == ".arrow":
            rows = _read_arrow(path)
        else:
            with path.open(encoding="utf-8", newline="") as f:
                rows = [_decode_csv_row(row) for row in csv.DictReader(f)]
    except (UnicodeDecodeError, OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {' '.join(str(e).split())[:200]}); check the "
                        "file is complete and of its suffix's format") from None
    except csv.Error as e:  # e.g. a cell over the csv module's field size limit
        raise DataError(f"{path}: not a readable CSV file ({e})") from None
    bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
    if bad is not None:
        raise DataError(f"{path}: row {bad} is a {type(rows[bad]).__name__}, not an object of named columns")
    return rows


def _read_arrow(path: Path) -> list[dict[str, Any]]:
    import pyarrow as pa

    # `datasets.save_to_disk` writes the IPC stream format; other tools write the file format.
    try:
        with pa.memory_map(str(path)) as src:
            return pa.ipc.open_stream(src).read_all().to_pylist()
    except pa.ArrowInvalid:
        with pa.memory_map(str(path)) as src:
            return pa.ipc.open_file(src).read_all().to_pylist()


def _decode_csv_row(row: dict[str, str]) -> dict[str, Any]:
    # A list column (MMLU-Pro `options`) exported to CSV arrives as its Python/JSON repr.
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                pass
        out[key] = value
    return out
