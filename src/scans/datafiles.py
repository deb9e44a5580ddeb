"""Read prompt lists (and optional labels) from user files.

Supported formats, chosen by extension:

- ``.txt``: one prompt per non-empty line (no labels);
- ``.csv`` / ``.tsv``: a table with a header row (a UTF-8 BOM is fine);
- ``.json``: a list of strings, a list of objects, an object with a single list value such
  as ``{"prompts": [...]}``, or an object of equally long column lists;
- ``.jsonl``: one string or object per line;
- ``.parquet``: a table.

When rows are objects or tables the text column is ``text_column`` if given, else the first
of :data:`TEXT_COLUMN_CANDIDATES` that exists, else the only string column. Prompts are
stripped; rows whose text is empty or missing are dropped and counted. Every problem is a
:class:`~scans.errors.ScansError` whose message is one line naming the file and the fix.
Nothing is ever unpickled or evaluated.

One module (about 480 lines) because the six format readers, the column choice and the row
extraction form one pipeline behind :func:`read_prompts` and share its private table type and
error wording; the shipped anchor pairs at the end are read with the same helpers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from .errors import ScansError

SUPPORTED_EXTENSIONS = (".txt", ".csv", ".tsv", ".json", ".jsonl", ".parquet")
TEXT_COLUMN_CANDIDATES = ("prompt", "text", "question", "instruction", "goal", "Question", "query", "content")


@dataclass
class PromptFile:
    """Prompts read from one file; ``labels`` is parallel to ``prompts`` when a label column was asked for.

    ``dropped`` counts rows skipped because their text was empty or missing.
    """

    prompts: list[str]
    labels: list[str] | None
    path: str
    dropped: int = 0


@dataclass
class _Table:
    """Rows read from a file before the text column is chosen.

    ``rows`` holds either plain strings (``columns is None``) or dicts keyed by column name.
    ``where`` names each row for messages ("line 3", "row 2", "item 5").
    """

    rows: list[Any]
    where: list[str]
    columns: list[str] | None


def _one_line(text: object) -> str:
    """Collapse a message (e.g. a library's exception text) onto one line."""
    return " ".join(str(text).split())


def _error(message: str) -> ScansError:
    return ScansError(_one_line(message))


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    try:
        import pandas as pd

        return value is pd.NA or value is pd.NaT
    except ImportError:  # pragma: no cover - pandas is a dependency
        return False


def _kind(value: Any) -> str:
    """A short human name for a JSON/table cell type."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    name = type(value).__name__
    return "a list" if name == "ndarray" else f"a {name}"


def _check_file(path: Path, name: str) -> None:
    if not path.exists():
        raise _error(f"file {name} does not exist; fix: check the path")
    if path.is_dir():
        raise _error(f"{name} is a directory, not a file; fix: pass the path of a prompt file inside it")
    if not path.is_file():
        raise _error(f"{name} is not a regular file; fix: pass the path of a prompt file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise _error(f"cannot read {name}: {_first_line(exc)}; fix: check the file's permissions") from exc
    if size == 0:
        raise _error(f"{name} is empty; fix: put prompts in it or pass another file")


def _unreadable(exc: Exception, name: str) -> Exception:
    """The one-line error for a file that is not UTF-8 or cannot be read."""
    if isinstance(exc, UnicodeDecodeError):
        return _error(f"{name} is not UTF-8 text ({_first_line(exc)}); fix: re-save the file as UTF-8")
    return _error(f"cannot read {name}: {_first_line(exc)}; fix: check the file's permissions")


def _read_text(path: Path, name: str) -> str:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError) as exc:
        raise _unreadable(exc, name) from exc
    if not text.strip():
        raise _error(f"{name} is empty; fix: put prompts in it or pass another file")
    return text


# ---------------------------------------------------------------------------------------
# Format readers: each returns a _Table.


def _read_txt(path: Path, name: str) -> _Table:
    text = _read_text(path, name)
    rows: list[Any] = []
    where: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            rows.append(line)
            where.append(f"line {number}")
    return _Table(rows=rows, where=where, columns=None)


def _records_table(items: list[Any], where: list[str], name: str, fix: str) -> _Table:
    """Build a table from JSON values that must all be strings or all be objects (null = empty row)."""
    for item, place in zip(items, where):
        if not (item is None or isinstance(item, (str, dict))):
            raise _error(f"{place} of {name} is {_kind(item)}, not a string or an object; fix: {fix}")
    first_str = next((w for i, w in zip(items, where) if isinstance(i, str)), None)
    first_obj = next((w for i, w in zip(items, where) if isinstance(i, dict)), None)
    if first_str is not None and first_obj is not None:
        raise _error(
            f"{name} mixes strings ({first_str}) and objects ({first_obj}); "
            f"fix: make every entry a string, or every entry an object"
        )
    objects = first_obj is not None
    if not objects:
        return _Table(rows=list(items), where=list(where), columns=None)
    columns: list[str] = []
    seen: set[str] = set()
    for item in items:
        if isinstance(item, dict):
            for key in item:
                if key not in seen:
                    seen.add(key)
                    columns.append(key)
    rows = [item if isinstance(item, dict) else {} for item in items]
    return _Table(rows=rows, where=list(where), columns=columns)


def _read_json(path: Path, name: str) -> _Table:
    text = _read_text(path, name)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            fix = "if it holds one JSON value per line, rename it to .jsonl"
        else:
            fix = "correct the JSON syntax there"
        raise _error(
            f"{name} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}; fix: {fix}"
        ) from exc
    shape_fix = 'make it a list of strings or objects, or an object with one list such as {"prompts": [...]}'
    if isinstance(data, dict):
        lists = {key: value for key, value in data.items() if isinstance(value, list)}
        if len(lists) == 1:
            key, data = next(iter(lists.items()))
            where_prefix = f"item {{}} of '{key}'"
        elif lists and len(lists) == len(data) and len({len(v) for v in lists.values()}) == 1:
            # An object of equally long columns: {"prompt": [...], "label": [...]}.
            columns = list(lists)
            length = len(next(iter(lists.values())))
            rows = [{column: lists[column][i] for column in columns} for i in range(length)]
            return _Table(rows=rows, where=[f"row {i + 1}" for i in range(length)], columns=columns)
        else:
            keys = ", ".join(str(k) for k in data) or "none"
            found = "no list value" if not lists else f"{len(lists)} list values of different lengths"
            raise _error(f"{name} is a JSON object with {found} (keys: {keys}); fix: {shape_fix}")
    elif isinstance(data, list):
        where_prefix = "item {}"
    else:
        raise _error(f"{name} holds {_kind(data)} at the top level, not a list; fix: {shape_fix}")
    where = [where_prefix.format(i + 1) for i in range(len(data))]
    return _records_table(data, where, name, shape_fix)


def _read_jsonl(path: Path, name: str) -> _Table:
    text = _read_text(path, name)
    items: list[Any] = []
    where: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise _error(
                f"line {number} of {name} is not valid JSON: {exc.msg} at column {exc.colno}; "
                f"fix: correct that line (each line must be one JSON string or object)"
            ) from exc
        where.append(f"line {number}")
    return _records_table(items, where, name, "make each line one JSON string or object")


def _frame_table(frame: Any) -> _Table:
    frame = frame.copy()
    frame.columns = [str(column) for column in frame.columns]
    rows = frame.to_dict("records")
    return _Table(rows=rows, where=[f"row {i + 1}" for i in range(len(rows))], columns=list(frame.columns))


def _read_delimited(path: Path, name: str, sep: str) -> _Table:
    import pandas as pd

    kind = "TSV" if sep == "\t" else "CSV"
    try:
        frame = pd.read_csv(path, sep=sep, encoding="utf-8-sig", keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError as exc:
        raise _error(f"{name} is empty; fix: put a header row and prompts in it") from exc
    except pd.errors.ParserError as exc:
        raise _error(
            f"{name} is not valid {kind}: {_first_line(exc)}; "
            f"fix: quote fields that contain the separator or newlines, and give every row the same "
            f"number of fields"
        ) from exc
    except (UnicodeDecodeError, OSError) as exc:
        raise _unreadable(exc, name) from exc
    return _frame_table(frame)


def _read_parquet(path: Path, name: str) -> _Table:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except ImportError as exc:
        raise _error(
            f"cannot read {name}: parquet support is missing ({_first_line(exc)}); fix: pip install pyarrow"
        ) from exc
    except Exception as exc:  # pyarrow raises several types (ArrowInvalid, OSError, ...)
        raise _error(
            f"cannot read parquet file {name}: {_first_line(exc)}; "
            f"fix: check that it is a complete, valid parquet file (or convert it to .csv or .jsonl)"
        ) from exc
    return _frame_table(frame)


# ---------------------------------------------------------------------------------------
# Column choice and row extraction.


def _column_list(columns: list[str]) -> str:
    return ", ".join(columns) if columns else "none"


def _string_columns(table: _Table) -> list[str]:
    """Columns whose present values are all strings (and that have at least one)."""
    assert table.columns is not None
    found = []
    for column in table.columns:
        values = [row.get(column) for row in table.rows]
        present = [value for value in values if not _is_missing(value)]
        if present and all(isinstance(value, str) for value in present):
            found.append(column)
    return found


def _choose_text_column(table: _Table, text_column: str | None, name: str) -> str:
    assert table.columns is not None
    columns = table.columns
    if text_column is not None:
        if text_column not in columns:
            raise _error(
                f"{name} has no column '{text_column}' (columns: {_column_list(columns)}); "
                f"fix: pass --text-column NAME with one of those columns"
            )
        return text_column
    for candidate in TEXT_COLUMN_CANDIDATES:
        if candidate in columns:
            return candidate
    strings = _string_columns(table)
    if len(strings) == 1:
        return strings[0]
    what = (
        "no text column"
        if not strings
        else f"{len(strings)} text columns, none with a known name such as prompt or text"
    )
    raise _error(f"{name} has {what} (columns: {_column_list(columns)}); fix: pass --text-column NAME")


def _label_text(value: Any, place: str, name: str, label_column: str) -> str:
    fix = f"fix: give every row with a prompt a label in column '{label_column}', or drop that row"
    if _is_missing(value):
        raise _error(f"{place} of {name} has no label in column '{label_column}'; {fix}")
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    elif isinstance(value, (int, float)) or type(value).__module__ == "numpy":
        text = str(value)
    else:
        raise _error(
            f"{place} of {name} has {_kind(value)} as its label in column '{label_column}'; "
            f"fix: make labels plain strings or numbers"
        )
    if not text:
        raise _error(f"{place} of {name} has an empty label in column '{label_column}'; {fix}")
    return text


def read_prompts(
    path: str | Path, text_column: str | None = None, label_column: str | None = None
) -> PromptFile:
    """Read prompts (and labels, when ``label_column`` is given) from a .txt/.csv/.tsv/.json/.jsonl/.parquet file."""
    file = Path(path)
    name = str(path)
    _check_file(file, name)
    suffix = file.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        shown = f"'{file.suffix}'" if file.suffix else "no extension"
        raise _error(
            f"{name} has {shown}, which is not a supported prompt file type; "
            f"fix: use one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    if suffix == ".txt" and label_column is not None:
        raise _error(
            f"{name} is a .txt file, which cannot hold labels; "
            f"fix: drop --label-column, or use a .csv/.jsonl file with a label column"
        )
    if suffix == ".txt":
        table = _read_txt(file, name)
    elif suffix == ".csv":
        table = _read_delimited(file, name, ",")
    elif suffix == ".tsv":
        table = _read_delimited(file, name, "\t")
    elif suffix == ".json":
        table = _read_json(file, name)
    elif suffix == ".jsonl":
        table = _read_jsonl(file, name)
    else:
        table = _read_parquet(file, name)

    if table.columns is None:
        if label_column is not None:
            raise _error(
                f"{name} holds plain strings, which cannot carry labels; "
                f"fix: drop --label-column, or store objects with a text and a label field"
            )
        column = None
    else:
        column = _choose_text_column(table, text_column, name)
        if label_column is not None and label_column not in table.columns:
            raise _error(
                f"{name} has no label column '{label_column}' (columns: {_column_list(table.columns)}); "
                f"fix: pass --label-column NAME with one of those columns"
            )

    prompts: list[str] = []
    labels: list[str] | None = [] if label_column is not None else None
    dropped = 0
    for row, place in zip(table.rows, table.where):
        value = row if column is None else row.get(column)
        if _is_missing(value):
            dropped += 1
            continue
        if not isinstance(value, str):
            where_col = "" if column is None else f" in column '{column}'"
            raise _error(
                f"{place} of {name} has {_kind(value)} ({_one_line(repr(value))[:40]}){where_col}, "
                f"not text; fix: make every prompt a string, or pass --text-column NAME for the text column"
            )
        text = value.strip()
        if not text:
            dropped += 1
            continue
        prompts.append(text)
        if labels is not None:
            assert label_column is not None
            labels.append(_label_text(row.get(label_column), place, name, label_column))

    if not prompts:
        where_col = "" if column is None else f" in column '{column}'"
        detail = f"all {dropped} rows are empty" if dropped else "there are no rows"
        raise _error(
            f"{name} has no prompts{where_col} ({detail}); "
            f"fix: put prompts in it, or pass --text-column NAME for the right column"
        )
    return PromptFile(prompts=prompts, labels=labels, path=name, dropped=dropped)


# ---------------------------------------------------------------------------------------
# Contrastive pairs.


def _parse_pairs(text: str, name: str) -> tuple[list[str], list[str]]:
    harmful: list[str] = []
    harmless: list[str] = []
    fix_line = 'fix: make each line an object like {"harmful": "...", "harmless": "..."}'
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _error(
                f"line {number} of {name} is not valid JSON: {exc.msg} at column {exc.colno}; {fix_line}"
            ) from exc
        if not isinstance(item, dict):
            raise _error(f"line {number} of {name} is {_kind(item)}, not an object; {fix_line}")
        missing = [key for key in ("harmful", "harmless") if key not in item]
        if missing:
            keys = ", ".join(str(k) for k in item) or "none"
            raise _error(
                f"line {number} of {name} has no key {' or '.join(repr(k) for k in missing)} "
                f"(keys: {keys}); {fix_line}"
            )
        pair = []
        for key in ("harmful", "harmless"):
            value = item[key]
            if not isinstance(value, str) or not value.strip():
                got = "an empty string" if isinstance(value, str) else _kind(value)
                raise _error(
                    f"line {number} of {name} has {got} for '{key}'; fix: make '{key}' a non-empty string"
                )
            pair.append(value.strip())
        harmful.append(pair[0])
        harmless.append(pair[1])
    if not harmful:
        raise _error(f"{name} has no pairs; {fix_line}")
    return harmful, harmless


def read_pairs(path: str | Path) -> tuple[list[str], list[str]]:
    """Read a JSONL file of ``{"harmful": ..., "harmless": ...}`` objects -> (harmful, harmless)."""
    file = Path(path)
    name = str(path)
    _check_file(file, name)
    return _parse_pairs(_read_text(file, name), name)


def shipped_anchors() -> tuple[list[str], list[str]]:
    """The packaged anchor pairs (``scans/anchors/anchors.jsonl``) -> (harmful, harmless)."""
    resource = files("scans") / "anchors" / "anchors.jsonl"
    name = "packaged anchors/anchors.jsonl"
    try:
        text = resource.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise _error(f"cannot read {name}: {_first_line(exc)}; fix: reinstall the scans package") from exc
    return _parse_pairs(text, name)


def shipped_borderline() -> list[str]:
    """The packaged borderline prompts (benign but scary-sounding, ``anchors/borderline.jsonl``)."""
    path = files("scans") / "anchors" / "borderline.jsonl"
    with as_file(path) as real:
        return read_prompts(real).prompts
