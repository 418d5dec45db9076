"""Audio features: openSMILE functionals, one vector per utterance (``pip install 'imer[audio]'``).

eGeMAPSv02 (88 values, the small standard set for affect) by default,
ComParE_2016 (6373 values) as an option. A file is read once with soundfile
(mixed to mono), cut into its utterances by start/end seconds, and each cut is
summarised by openSMILE. A file that cannot be read, is empty, or an utterance
outside the file makes audio missing for those utterances, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from imer.errors import DataError
from imer.features.inputs import Unit
from imer.features.store import Result

EXTRACTOR = "opensmile"
FEATURE_SETS = ("eGeMAPSv02", "ComParE_2016")
SUFFIXES = (".wav", ".flac")
INSTALL_HINT = "pip install 'imer[audio]'"
MIN_SECONDS = 0.05


def read_audio(path: str) -> tuple[np.ndarray, int]:
    """Mono float32 samples and the sampling rate; :class:`DataError` if unreadable or empty."""
    import soundfile

    try:
        signal, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable audio ({str(exc).splitlines()[0]})") from None
    if signal.shape[0] == 0:
        raise DataError(f"{path}: empty audio (0 samples)")
    return signal.mean(axis=1), int(rate)


@dataclass
class AudioExtractor:
    """openSMILE functionals of a feature set over each utterance's samples."""

    feature_set: str = "eGeMAPSv02"

    def __post_init__(self) -> None:
        if self.feature_set not in FEATURE_SETS:
            raise DataError(f"audio feature set {self.feature_set!r} is not one of {list(FEATURE_SETS)}")

    @cached_property
    def smile(self) -> Any:
        try:
            import opensmile
        except ImportError:
            raise DataError(f"audio features need the opensmile package: {INSTALL_HINT}") from None
        return opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, self.feature_set), feature_level=opensmile.FeatureLevel.Functionals)

    def __getstate__(self) -> dict[str, Any]:
        return {"feature_set": self.feature_set}

    def entry(self) -> dict[str, Any]:
        """Manifest entry: extractor, opensmile version, feature set, dim."""
        import opensmile

        return {
            "extractor": EXTRACTOR,
            "version": opensmile.__version__,
            "model": self.feature_set,
            "settings": {"feature_set": self.feature_set, "feature_level": "functionals", "channels": "mean"},
            "dim": len(self.smile.feature_names),
            "reproducible": True,
        }

    def features(self, signal: np.ndarray, rate: int) -> np.ndarray:
        """The functionals of one mono signal."""
        return self.smile.process_signal(signal, rate).to_numpy(dtype=np.float32).reshape(-1)

    def extract_unit(self, unit: Unit) -> list[Result]:
        """Every utterance of one file; audio is missing (with the reason) where it cannot be had."""
        path, segments = unit
        try:
            signal, rate = read_audio(path)
        except DataError as exc:
            return [Result(uid, None, str(exc), group) for uid, _, _, group in segments]
        duration = len(signal) / rate
        results = []
        for uid, start, end, group in segments:
            s, e = start or 0.0, duration if end is None else end
            if s >= duration or e - s < MIN_SECONDS:
                results.append(Result(uid, None, f"{path}: segment {s:.2f}-{e:.2f} s is outside the audio ({duration:.2f} s) or shorter than {MIN_SECONDS} s", group))
                continue
            cut = signal[int(round(s * rate)) : int(round(min(e, duration) * rate))]
            results.append(Result(uid, self.features(cut, rate), "", group))
        return results
