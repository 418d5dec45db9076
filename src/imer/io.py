"""File helpers used by the whole package: ONE atomic writer and ONE strict-JSON encoder.

* :func:`atomic_write` writes beside the target and renames it into place, so a
  reader never sees half a file; the file is created with mode ``0o666``
  filtered by the user's umask, like any other file the user creates
  (:func:`atomic_path` gives the temporary path to writers that need a name).
* :func:`dumps` / :func:`write_json` / :func:`append_jsonl` write strict JSON
  (RFC 8259): NaN and infinities become ``null``, numpy values become plain
  numbers and lists, paths become strings. :func:`read_json` parses strictly.
* :func:`read_npz` opens ``.npz`` files without pickle and says what is wrong
  without ever suggesting unsafe loading.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from imer.errors import ConfigError, DataError

# Tables and lists nested deeper than this in a config, spec or JSON file are refused (imer's own need at most 4).
MAX_NESTING = 16


def check_nesting(value: Any, where: str) -> Any:
    """``value`` unchanged; :class:`ConfigError` when its lists and tables nest deeper than :data:`MAX_NESTING`."""
    level = [value]
    for depth in range(MAX_NESTING + 1):
        level = [v for item in level for v in (item.values() if isinstance(item, dict) else item if isinstance(item, list) else ())]
        if not level:
            return value
    raise ConfigError(f"{where}: lists or tables nested more than {MAX_NESTING} levels deep; imer's settings need at most 4")


def resolved(path: str | Path) -> Path:
    """``path`` made absolute with links followed; :class:`DataError` for a link loop."""
    try:
        return Path(path).expanduser().resolve()
    except (RuntimeError, OSError) as exc:
        raise DataError(f"{path}: cannot resolve the path ({exc}); a symbolic link points to itself or in a loop") from None


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; synced and renamed into place when the block succeeds.

    For writers that need a file name (e.g. ``safetensors``' ``save_file``, which
    streams tensors without first copying them into one buffer); :func:`atomic_write`
    is built on it. On failure the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise DataError(f"{path}: is a folder; give the path of a file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))
    try:
        mode = os.stat(tmp).st_mode & 0o777  # 0o666 filtered by the umask; a writer may replace the file with its own mode
        yield tmp
        os.chmod(tmp, mode)
        fd = os.open(tmp, os.O_RDWR | getattr(os, "O_BINARY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Write to a temporary file beside ``path`` and rename it into place.

    A reader never sees a half-written file, and an interrupted write leaves
    the previous version intact. The file's permissions follow the umask.
    """
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, mode) as fh:
            yield fh


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values: non-finite floats -> None, numpy -> Python, paths -> str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, np.generic)):
        return jsonable(obj.tolist())
    if hasattr(obj, "tolist"):  # torch tensors
        return jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level with dotted keys (``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def dumps(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text of ``obj`` (see :func:`jsonable`); never emits NaN or Infinity."""
    return json.dumps(jsonable(obj), indent=indent, allow_nan=False)


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented strict JSON."""
    text = dumps(obj, indent=2) + "\n"
    with atomic_write(path) as fh:
        fh.write(text)


def append_jsonl(path: str | Path, record: Any) -> None:
    """Append one strict-JSON line to ``path`` (a log: each line is complete or absent)."""
    line = dumps(record) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)  # never through a link
    with os.fdopen(fd, "a") as fh:
        fh.write(line)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(text: str) -> Any:
    """Parse strict JSON (``NaN``/``Infinity`` are refused, as any strict parser does)."""
    return json.loads(text, parse_constant=_no_constants)


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Strictly parsed JSON of ``path``; :class:`DataError` naming the file if missing or damaged."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read {what} ({exc})") from None
    try:
        return loads(text)
    except RecursionError:
        raise DataError(f"{path}: {what} nests lists or objects too deeply to be one imer wrote") from None
    except ValueError as exc:
        raise DataError(f"{path}: {what} is not valid JSON ({exc}); the file is truncated or was edited by hand") from None


def read_npz(path: str | Path, what: str) -> dict[str, np.ndarray]:
    """All arrays of a ``.npz`` read without pickle (opening it can never run code).

    ``what`` names the expected content in the errors raised for a missing
    file, a file that is not a zip archive of ``.npy`` arrays, or an array of
    Python objects.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a .npz archive (expected a {what} written by numpy.savez)")
    _check_declared_sizes(path, what)
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                try:
                    arrays[key] = npz[key]
                except ValueError as exc:
                    if "pickle" not in str(exc):
                        raise
                    raise DataError(
                        f"{path}: array '{key}' holds Python objects (dtype=object), which imer does not load; "
                        "store numbers, booleans or strings (e.g. np.array(ids, dtype=str))"
                    ) from None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise DataError(f"{path}: damaged {what} ({type(exc).__name__})") from None
    return arrays


def _check_declared_sizes(path: Path, what: str) -> None:
    """:class:`DataError` when an array's header declares more data than its member of the archive holds.

    Read before any array is loaded, so a crafted header (shape 10^7 x 10^5 in a few bytes) is named as such
    instead of being allocated.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.filename.endswith(".npy"):
                    with archive.open(info) as fh:
                        check_npy_header(fh, info.file_size, f"{path}: array '{info.filename[:-4]}'", what)
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise DataError(f"{path}: damaged {what} ({type(exc).__name__})") from None


def check_npy_header(fh: IO[bytes], size: int, where: str, what: str) -> None:
    """:class:`DataError` when the ``.npy`` header at the start of ``fh`` declares more bytes than the ``size`` it has."""
    version = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(fh)
    need = math.prod(shape) * dtype.itemsize
    if not dtype.hasobject and need > size:  # object arrays are refused by name when loaded
        raise DataError(f"{where} declares shape {shape} ({need} bytes) but holds {size} bytes; the {what} is damaged or crafted")
