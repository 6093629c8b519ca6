"""Reading a task's local data files with errors that name the file, the line and the cause: UTF-8, the delimiter
and columns of .csv / .tsv tables (`read_table`), and any loader's failure re-raised with its flag and root cause
(`load_data`).  The runner's `validate` checks the same files before a model is loaded."""

from __future__ import annotations

import csv
import os

_DELIMITERS = {",": "commas", "\t": "tabs", ";": "semicolons", "|": "vertical bars"}


def check_utf8(path: str, what: str) -> None:
    """The whole file at `path` decodes as UTF-8 (`what`: the flag or name used in the message).

    Raises:
        ValueError: naming the line and byte that do not decode, and the fix (re-save as UTF-8).
    """
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    line, offset = 1, 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as e:
                bad = chunk[e.start]
                line += chunk[: e.start].count(b"\n")
                raise ValueError(
                    f"{what} {path} is not UTF-8 text: byte 0x{bad:02x} at offset {offset + e.start} (line {line}) "
                    f"cannot be decoded ({e.reason}). Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 "
                    f"{os.path.basename(path)} > fixed{os.path.splitext(path)[1]}`)."
                ) from None
            line += text.count("\n")
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as e:
            raise ValueError(f"{what} {path} is not UTF-8 text: it ends inside a multi-byte character ({e.reason}). "
                             "Re-save the file as UTF-8.") from None


def _delimiter(path: str) -> str:
    return "\t" if path.lower().endswith(".tsv") else ","


def check_table_header(path: str, columns: tuple[str, ...], what: str) -> None:
    """The first line of a .csv / .tsv file names every required column, with the delimiter of its extension.

    Raises:
        ValueError: an empty first line, another delimiter than the extension's (named, with the fix), or missing
            columns (named, with the header found).
    """
    with open(path, encoding="utf-8-sig", newline="") as f:
        first = f.readline()
    if not first.strip():
        raise ValueError(f"{what} {path} is empty or starts with a blank line: its first line must name the columns "
                         f"{list(columns)}.")
    want = _delimiter(path)
    header = [c.strip() for c in next(csv.reader([first], delimiter=want))]
    missing = [c for c in columns if c not in header]
    if not missing:
        return
    for other, name in _DELIMITERS.items():
        if other != want and all(c in [h.strip() for h in first.rstrip("\r\n").split(other)] for c in columns):
            raise ValueError(
                f"{what} {path} separates its columns with {name}, but a {os.path.splitext(path)[1]} file is read with "
                f"{_DELIMITERS[want]}. Save it {'comma' if want == ',' else 'tab'}-separated"
                + (" or as a .tsv file" if other == "\t" else "") + "."
            )
    raise ValueError(f"{what} {path} lacks the columns {missing}: its header has {header}. The task needs "
                     f"{list(columns)}.")



def read_table(path: str, columns: tuple[str, ...], flag: str = "--dataset"):
    """A local .csv (comma-separated) or .tsv (tab-separated) file, any case of extension, UTF-8, as a Dataset of
    `columns` (str cells, in file order; blank lines skipped).

    Raises:
        ValueError: naming the file, the line and the cause: not UTF-8, a missing column, a row with too few fields,
            an empty cell in a required column, a malformed quote, no rows.
    """
    from datasets import Dataset

    check_utf8(path, flag)
    check_table_header(path, columns, flag)
    rows: dict[str, list[str]] = {c: [] for c in columns}
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=_delimiter(path), strict=True)
        try:
            header = [h.strip() for h in next(reader)]
            where = [header.index(c) for c in columns]
            for record in reader:
                if not any(field.strip() for field in record):
                    continue
                line = reader.line_num
                if len(record) < len(header):
                    raise ValueError(f"{flag} {path}, line {line}: {len(record)} fields, the header has "
                                     f"{len(header)} (a missing delimiter, or an unquoted line break in a field?).")
                for c, i in zip(columns, where):
                    if not record[i].strip():
                        raise ValueError(f"{flag} {path}, line {line}: the '{c}' cell is empty; every row needs "
                                         f"{list(columns)}.")
                    rows[c].append(record[i])
        except csv.Error as e:
            raise ValueError(f"{flag} {path}, line {reader.line_num}: not valid CSV ({e}).") from None
    if not rows[columns[0]]:
        raise ValueError(f"{flag} {path} has a header but no rows.")
    return Dataset.from_dict(rows)


def _root_cause(error: BaseException) -> BaseException:
    seen = {id(error)}
    while (error.__cause__ or error.__context__) is not None and id(error.__cause__ or error.__context__) not in seen:
        error = error.__cause__ or error.__context__
        seen.add(id(error))
    return error


def load_data(loader, source: str | None, flag: str = "--dataset", **kwargs):
    """`loader(source, **kwargs)`, with any failure that does not already name `source` re-raised as a ValueError that
    names it and the root cause (e.g. a `DatasetGenerationError` hiding a UnicodeDecodeError).

    Raises:
        ValueError / FileNotFoundError: the loader's own error when it names `source` (or `source` is None and the
            loader raised one of these); else a ValueError "Could not read <flag> <source>: <root cause>".
    """
    try:
        return loader(source, **kwargs)
    except (ValueError, FileNotFoundError) as e:
        if source is None or source in str(e):
            raise
        root = _root_cause(e)
        raise ValueError(f"Could not read {flag} {source}: {type(root).__name__}: {root}") from e
    except Exception as e:  # noqa: BLE001 - any loader failure: name the source and the cause
        root = _root_cause(e)
        what = source if source is not None else "(the embedded data)"
        raise ValueError(f"Could not read {flag} {what}: {type(root).__name__}: {root}") from e


def is_local_file(source: str | None) -> bool:
    """`source` names an existing local file (`~` expanded), so a task reads it itself rather than as a hub id."""
    return source is not None and os.path.isfile(os.path.expanduser(source))
