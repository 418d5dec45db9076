"""From recordings to features: text, audio and video extractors, the dataset builder, the manifest.

Sits beside :mod:`imer.data` and knows nothing of models. Each ``extract_*``
writes one modality feature file (see :mod:`imer.features.store`),
resumably; :func:`build_dataset` joins them into a dataset ``.npz`` with its
``features.json`` manifest; :func:`extract_many` makes new utterances' vectors
with the extractor a manifest entry names (used by ``imer predict`` on raw
input).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from imer.errors import DataError
from imer.features.audio import AudioExtractor
from imer.features.build import BuildResult, build_dataset
from imer.features.inputs import find_files, read_segments, unit_ids
from imer.features.manifest import builtin_manifest, check_manifest, check_same_extraction, make_extractor, read_manifest, why_not_reproducible
from imer.features.store import ModalityFeatures, run_extraction
from imer.features.text import TextExtractor, batches, read_transcripts
from imer.features.video import OpenFaceImporter

__all__ = [
    "AudioExtractor",
    "BuildResult",
    "ModalityFeatures",
    "OpenFaceImporter",
    "TextExtractor",
    "build_dataset",
    "builtin_manifest",
    "check_manifest",
    "extract_audio",
    "extract_many",
    "extract_text",
    "extract_video",
    "read_manifest",
    "why_not_reproducible",
]


def extract_text(transcripts: str | Path, out: str | Path, model_dir: str | None = None, lowercase: bool = False, normalize: bool = True,
                 id_column: str = "utterance_id", text_column: str = "text", progress: bool = True, log: Any = None) -> ModalityFeatures:
    """Sentence embeddings of a transcript CSV or plain list into ``out``."""
    items = read_transcripts(transcripts, id_column, text_column)
    make = partial(TextExtractor, model_dir=model_dir, lowercase=lowercase, normalize=normalize)
    return run_extraction("text", make, batches(items), lambda b: [i[0] for i in b], out, workers=1, progress=progress, log=log)


def extract_audio(inputs: list[str], out: str | Path, segments: str | None = None, feature_set: str = "eGeMAPSv02", workers: int = 1,
                  progress: bool = True, log: Any = None) -> ModalityFeatures:
    """openSMILE functionals of audio files (one utterance each) or of the segments of a segment table."""
    from imer.features.audio import SUFFIXES

    units = _units(inputs, segments, SUFFIXES, "audio")
    return run_extraction("audio", partial(AudioExtractor, feature_set=feature_set), units, unit_ids, out, workers=workers, progress=progress, log=log)


def extract_video(inputs: list[str], out: str | Path, segments: str | None = None, min_confidence: float = 0.0, workers: int = 1,
                  progress: bool = True, log: Any = None) -> ModalityFeatures:
    """Per-utterance statistics of OpenFace CSV files (one utterance each) or of the segments of a segment table."""
    from imer.features.video import SUFFIXES

    units = _units(inputs, segments, SUFFIXES, "OpenFace CSV")
    return run_extraction("video", partial(OpenFaceImporter, min_confidence=min_confidence), units, unit_ids, out, workers=workers, progress=progress, log=log)


def _units(inputs: list[str], segments: str | None, suffixes: tuple[str, ...], what: str) -> list:
    if segments and inputs:
        raise DataError(f"give {what} files/folders or --segments, not both")
    if not segments and not inputs:
        raise DataError(f"no {what} input: give files or folders, or --segments TABLE")
    return read_segments(segments) if segments else find_files(inputs, suffixes, what)


def extract_many(entry: dict[str, Any], modality: str, raws: list[str]) -> np.ndarray:
    """``[N, d]`` vectors for ``modality`` from raw inputs (transcripts, audio files or OpenFace CSVs), one per utterance.

    The extractor is rebuilt once from the manifest ``entry`` and must match it
    (transcripts are embedded in one batch); input it cannot use is a
    :class:`DataError` naming the utterance (it is the user's only input).
    """
    reason = why_not_reproducible(entry)
    if reason:
        raise DataError(f"{modality}: {reason}")
    extractor = make_extractor(entry)
    check_same_extraction(entry, extractor.entry(), modality)
    where = (lambda k: "") if len(raws) == 1 else (lambda k: f" (utterance {k + 1})")
    if modality == "text" or entry.get("extractor") == "sentence-transformers":
        for k, raw in enumerate(raws):
            if not raw.strip():
                raise DataError(f"--text: empty transcript{where(k)}")
        results = extractor.extract_unit([(str(k), raw, "") for k, raw in enumerate(raws)])
    else:
        results = []
        for k, raw in enumerate(raws):
            if not Path(raw).is_file():
                raise DataError(f"{raw}: file not found{where(k)}")
            results += extractor.extract_unit((str(Path(raw).resolve()), [(str(k), None, None, "")]))
    for k, (raw, result) in enumerate(zip(raws, results)):
        if result.vector is None or not np.isfinite(result.vector).all():
            raise DataError((result.reason or f"{raw}: {modality} extractor returned NaN/Inf") + where(k))
    return np.stack([np.asarray(r.vector, dtype=np.float32) for r in results])
