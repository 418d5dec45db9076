"""CMU-MOSI with the bc-LSTM utterance features (Poria et al., ACL 2017).

Features come from ``cmu-mosi-bclstm/`` (audio 73, text 100, video 100 per
utterance); continuous sentiment labels in [-3, 3] come from the GCNet label
pickle, joined by utterance id. The split is the release's own 62 train / 31
test videos: its feature extractors were trained on those 62 videos, so the
standard MOSI split would put label-carrying features in the test set.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from imer.data.dataset import MultimodalDataset
from imer.data.registry import register_dataset
from imer.data.safe_pickle import safe_load_pickle
from imer.errors import DataError

MODALITIES = ("audio", "text", "video")
LABEL_PICKLE = Path("gcnet-meta") / "CMUMOSI_features_raw_2way.pkl"


def _read_rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with path.open(newline="") as fh:
        return [row for row in csv.reader(fh) if row]


def _read_feature_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Features and binary labels of one bc-LSTM CSV (last column = label)."""
    rows = _read_rows(path)
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise DataError(f"{path}: rows have different numbers of columns {sorted(widths)}")
    try:
        table = np.asarray(rows, dtype=np.float64)
    except ValueError as exc:
        raise DataError(f"{path}: non-numeric value ({exc})") from None
    if not np.isfinite(table).all():
        row = int(np.argwhere(~np.isfinite(table))[0][0])
        raise DataError(f"{path}: NaN/Inf value in row {row + 1}")
    return table[:, :-1].astype(np.float32), table[:, -1].astype(np.int64)


@register_dataset("cmu-mosi", needs_data_dir=True, description="CMU-MOSI, bc-LSTM features (a73/t100/v100), regression, release split 62/31 videos",
                  caveat="its text and video features come from extractors trained on its own training videos, so validation "
                  "scores (and validation text ≈ 99 %) are inflated: the leakage probe flags both (docs/data.md)")
def load_cmu_mosi(data_dir: Path) -> MultimodalDataset:
    """Load CMU-MOSI from ``data_dir/cmu-mosi-bclstm`` and ``data_dir/gcnet-meta``."""
    root = data_dir / "cmu-mosi-bclstm"
    if not root.is_dir():
        raise DataError(f"{root}: folder not found (expected the bc-LSTM CMU-MOSI release)")
    transcripts = _read_rows(root / "transcripts.csv")
    all_ids = [r[0] for r in transcripts]

    meta = safe_load_pickle(data_dir / LABEL_PICKLE)
    try:
        video_ids, video_labels = meta[0], meta[1]
    except (TypeError, IndexError, KeyError):
        raise DataError(f"{data_dir / LABEL_PICKLE}: not the GCNet CMU-MOSI layout (list of videoIDs, videoLabels, ...)") from None
    score_of: dict[str, float] = {}
    position_of: dict[str, int] = {}
    for vid, utts in video_ids.items():
        for pos, (utt, score) in enumerate(zip(utts, video_labels[vid])):
            score_of[str(utt)] = float(score)
            position_of[str(utt)] = pos

    features: dict[str, list[np.ndarray]] = {m: [] for m in MODALITIES}
    ids: list[str] = []
    split: list[str] = []
    for part in ("train", "test"):
        index_rows = _read_rows(root / f"text_{part}.csv")
        binary = None
        for m in MODALITIES:
            path = root / m / f"{m}_{part}0.csv"
            x, y = _read_feature_csv(path)
            if x.shape[0] != len(index_rows):
                raise DataError(f"{path}: {x.shape[0]} rows, but {root / f'text_{part}.csv'} has {len(index_rows)}")
            if binary is not None and not np.array_equal(binary, y):
                raise DataError(f"{path}: labels disagree with the other modalities' files row by row")
            binary = y
            features[m].append(x)
        for row, b in zip(index_rows, binary):
            k = int(float(row[0]))
            if not 0 <= k < len(all_ids):
                raise DataError(f"{root / f'text_{part}.csv'}: transcript index {k} out of range")
            utt = all_ids[k]
            if utt not in score_of:
                raise DataError(f"{data_dir / LABEL_PICKLE}: no label for utterance '{utt}'")
            if (score_of[utt] > 0) != bool(b) and score_of[utt] != 0:
                raise DataError(f"{root}: binary label of '{utt}' disagrees with the sign of its score {score_of[utt]}")
            ids.append(utt)
            split.append(part)

    groups = [u.rsplit("_", 1)[0] for u in ids]
    return MultimodalDataset(
        name="cmu-mosi",
        features={m: np.concatenate(parts) for m, parts in features.items()},
        labels=np.array([score_of[u] for u in ids], dtype=np.float32),
        task="regression",
        utterance_ids=np.array(ids),
        group_ids=np.array(groups),
        order=np.array([position_of[u] for u in ids]),
        split=np.array(split),
        source=str(root),
        notes=["release split (62 train / 31 test videos); validation carved from training videos"],
    )
