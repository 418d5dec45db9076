"""A restricted unpickler for the label/metadata pickles of the GCNet/ComP layout.

Only plain containers, strings, numbers and numpy arrays/scalars may be
rebuilt; any other global (a function, a class with side effects, ``os.system``
...) is refused before it is called, so a malicious pickle cannot run code.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from pathlib import Path
from typing import Any

from imer.errors import DataError

_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("builtins", "dict"),
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "str"),
        ("builtins", "bytes"),
        ("builtins", "bytearray"),
        ("builtins", "int"),
        ("builtins", "float"),
        ("builtins", "complex"),
        ("builtins", "bool"),
        ("collections", "OrderedDict"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
    }
)


# Label pickles are a few MB; the largest imer reads (CMU-MOSEI with features) is under 1 GB.
MAX_PICKLE_BYTES = 4 * 1024**3


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module.startswith("numpy") and name.endswith("DType"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")


def safe_load_pickle(path: str | Path) -> Any:
    """Load ``path`` with the restricted unpickler (``latin1`` for Python-2 pickles).

    Raises :class:`DataError` naming the file when it is missing, corrupt or
    asks for anything outside the allowed set of types.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    size = path.stat().st_size
    if size > MAX_PICKLE_BYTES:
        raise DataError(f"{path}: {size} bytes, more than the {MAX_PICKLE_BYTES} a label pickle may have; is it the right file?")
    data = path.read_bytes()
    try:
        # Every length the pickle declares is checked against the bytes it holds before anything is allocated:
        # a crafted "1 TB string" is refused here instead of being allocated by the unpickler.
        for _ in pickletools.genops(io.BytesIO(data)):
            pass
    except (ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable pickle ({exc})") from None
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: refused to unpickle: {exc} (only containers, str, numbers and numpy arrays are allowed)") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None
