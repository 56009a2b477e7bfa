"""Read a user-supplied table of rows: JSONL, JSON, Parquet, CSV, or a Hugging Face `datasets`
export (a `save_to_disk` folder of .arrow files, or a hub snapshot folder of parquet files).

Rows come back as plain dicts; the benchmark loaders decide what the columns mean."""

from __future__ import annotations

import ast
import csv
import json
from pathlib import Path
from typing import Any

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
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if not isinstance(data, list):
                raise DataError(f"{path}: expected a JSON list of rows (or JSONL)")
            return data
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path, columns=columns).to_pylist()
        if suffix == ".arrow":
            return _read_arrow(path)
        if suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as f:
                return [_decode_csv_row(row) for row in csv.DictReader(f)]
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise DataError(f"{path}: cannot read ({e}); check the file is complete") from e
    raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}")


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
