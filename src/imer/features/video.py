"""Video features: OpenFace 2.x ``FeatureExtraction`` CSV output summarised per utterance.

OpenFace writes one row per frame (``frame``, ``timestamp``, ``confidence``,
``success`` and the tracked values; older versions put a space before every
column name, which is ignored). Per utterance imer keeps the frames with
``success == 1`` and ``confidence >= min_confidence`` inside its start/end
seconds and writes the mean, then the standard deviation, of each column.
Default columns: 17 action-unit intensities (``AU*_r``), 18 action-unit
presences (``AU*_c``), 8 gaze values and 6 head-pose values = 49 columns, 98
features. A file without some of these columns, or an utterance without one
successful frame, makes video missing for that utterance (with the reason).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imer.errors import DataError
from imer.features.inputs import Unit
from imer.features.store import Result

EXTRACTOR = "openface-csv"
SUFFIXES = (".csv",)
AU_INTENSITY = [f"AU{n:02d}_r" for n in (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)]
AU_PRESENCE = [f"AU{n:02d}_c" for n in (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 28, 45)]
GAZE = ["gaze_0_x", "gaze_0_y", "gaze_0_z", "gaze_1_x", "gaze_1_y", "gaze_1_z", "gaze_angle_x", "gaze_angle_y"]
POSE = ["pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz"]
DEFAULT_COLUMNS = AU_INTENSITY + AU_PRESENCE + GAZE + POSE


def read_openface(path: str | Path, columns: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(timestamp, success, confidence, values [frames, len(columns)])`` of one OpenFace CSV.

    Raises :class:`DataError` naming the file and the problem (missing columns,
    non-numeric values, no frames).
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: unreadable OpenFace CSV ({exc})") from None
    if len(rows) < 2:
        raise DataError(f"{path}: OpenFace CSV has no frames")
    header = [h.strip() for h in rows[0]]
    needed = ["timestamp", "success", "confidence", *columns]
    absent = [c for c in needed if c not in header]
    if absent:
        raise DataError(f"{path}: OpenFace CSV lacks column(s) {absent[:6]}{' ...' if len(absent) > 6 else ''} ({len(absent)} of {len(needed)} needed)")
    idx = [header.index(c) for c in needed]
    try:
        table = np.array([[float(r[i]) for i in idx] for r in rows[1:]], dtype=np.float64)
    except (ValueError, IndexError):
        raise DataError(f"{path}: OpenFace CSV has a short row or a non-numeric value") from None
    return table[:, 0], table[:, 1], table[:, 2], table[:, 3:]


def utterance_stats(values: np.ndarray) -> np.ndarray:
    """Mean then population std of each column over the frames given."""
    return np.concatenate([values.mean(axis=0), values.std(axis=0)]).astype(np.float32)


@dataclass
class OpenFaceImporter:
    """Per-utterance mean and std of OpenFace columns over successful frames."""

    columns: list[str] = field(default_factory=lambda: list(DEFAULT_COLUMNS))
    min_confidence: float = 0.0

    def entry(self) -> dict[str, Any]:
        """Manifest entry: the columns and the frame filter define the features."""
        return {
            "extractor": EXTRACTOR,
            "version": "OpenFace 2.x CSV",
            "model": "openface",
            "settings": {"columns": self.columns, "stats": ["mean", "std"], "min_confidence": self.min_confidence},
            "dim": 2 * len(self.columns),
            "reproducible": True,
        }

    def extract_unit(self, unit: Unit) -> list[Result]:
        """Every utterance of one CSV; video is missing (with the reason) where it cannot be had."""
        path, segments = unit
        try:
            stamp, success, confidence, values = read_openface(path, self.columns)
        except DataError as exc:
            return [Result(uid, None, str(exc), group) for uid, _, _, group in segments]
        good = (success >= 0.5) & (confidence >= self.min_confidence) & np.isfinite(values).all(axis=1)
        results = []
        for uid, start, end, group in segments:
            inside = good.copy()
            if start is not None:
                inside &= stamp >= start
            if end is not None:
                inside &= stamp < end
            if not inside.any():
                where = "" if start is None and end is None else f" between {start or 0:.2f} and " + ("the end" if end is None else f"{end:.2f} s")
                results.append(Result(uid, None, f"{path}: no successful face frame{where}", group))
                continue
            results.append(Result(uid, utterance_stats(values[inside]), "", group))
        return results
