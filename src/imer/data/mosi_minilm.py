"""CMU-MOSI with leak-free features: MiniLM sentence embeddings (text) + COVAREP (audio).

Features come from ``cmu-mosi-minilm/features.npz`` (``ids``, ``text``
[N, 384] L2-normalised all-MiniLM-L6-v2 embeddings of the transcripts,
``audio`` [N, 73] COVAREP features of the bc-LSTM release: F0, VUV, NAQ, QOQ, H1H2, PSP, MDQ, peakSlope, Rd, Rd_conf, creak, MCEP, HMPDM, HMPDD), read without pickle. Labels (sentiment
in [-3, 3]), the video of each utterance, its position and the standard split
with its real validation part (52 / 10 / 31 videos) come from the GCNet label
pickle, read with the restricted unpickler. Neither feature extractor was
trained on MOSI, so the standard split and validation-based selection are
honest here (unlike ``cmu-mosi``'s bc-LSTM features).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from imer.data.dataset import MultimodalDataset
from imer.data.registry import register_dataset
from imer.data.safe_pickle import safe_load_pickle
from imer.errors import DataError
from imer.io import read_npz

MODALITIES = ("audio", "text")
FEATURES = Path("cmu-mosi-minilm") / "features.npz"
LABEL_PICKLE = Path("gcnet-meta") / "CMUMOSI_features_raw_2way.pkl"


def _read_meta(path: Path) -> tuple[Mapping, Mapping, dict[str, str]]:
    """videoIDs, videoLabels and video -> split from the GCNet CMU-MOSI pickle."""
    meta = safe_load_pickle(path)
    if not isinstance(meta, (list, tuple)) or len(meta) < 7 or not isinstance(meta[0], Mapping) or not isinstance(meta[1], Mapping):
        raise DataError(f"{path}: not the GCNet CMU-MOSI layout (list of 7: videoIDs, videoLabels, ..., trainVids, valVids, testVids)")
    split_of: dict[str, str] = {}
    for name, vids in zip(("train", "valid", "test"), meta[4:7]):
        for vid in vids:
            if str(vid) in split_of:
                raise DataError(f"{path}: video '{vid}' is in both the {split_of[str(vid)]} and the {name} list")
            split_of[str(vid)] = name
    return meta[0], meta[1], split_of


@register_dataset("cmu-mosi-minilm", needs_data_dir=True, description="CMU-MOSI, leak-free MiniLM text 384 + COVAREP audio 73, regression, standard split 52/10/31 videos (primary benchmark)")
def load_cmu_mosi_minilm(data_dir: Path) -> MultimodalDataset:
    """Load ``data_dir/cmu-mosi-minilm/features.npz`` joined with the labels and split of ``data_dir/gcnet-meta``."""
    feature_path = data_dir / FEATURES
    arrays = read_npz(feature_path, "cmu-mosi-minilm feature file")
    for key in ("ids", *MODALITIES):
        if key not in arrays:
            raise DataError(f"{feature_path}: key '{key}' missing (expected ids, audio, text)")
    row_of = {str(u): i for i, u in enumerate(arrays["ids"])}
    if len(row_of) != len(arrays["ids"]):
        raise DataError(f"{feature_path}: utterance ids are not unique")
    for m in MODALITIES:
        if arrays[m].ndim != 2 or arrays[m].shape[0] != len(row_of):
            raise DataError(f"{feature_path}: '{m}' has shape {arrays[m].shape}, expected [{len(row_of)}, dim]")

    label_path = data_dir / LABEL_PICKLE
    video_ids, video_labels, split_of = _read_meta(label_path)
    ids, groups, order, labels, split = [], [], [], [], []
    for vid, utts in video_ids.items():
        vid = str(vid)
        scores = list(video_labels.get(vid, []))
        if len(scores) != len(utts):
            raise DataError(f"{label_path}: video '{vid}' has {len(utts)} utterances but {len(scores)} labels")
        if vid not in split_of:
            raise DataError(f"{label_path}: video '{vid}' is in no split list")
        for pos, (utt, score) in enumerate(zip(utts, scores)):
            if str(utt) not in row_of:
                raise DataError(f"{feature_path}: no features for utterance '{utt}'")
            ids.append(str(utt))
            groups.append(vid)
            order.append(pos)
            labels.append(float(score))
            split.append(split_of[vid])
    rows = np.array([row_of[u] for u in ids], dtype=np.int64)
    return MultimodalDataset(
        name="cmu-mosi-minilm",
        features={m: arrays[m][rows] for m in MODALITIES},
        labels=np.array(labels, dtype=np.float32),
        task="regression",
        utterance_ids=np.array(ids),
        group_ids=np.array(groups),
        order=np.array(order),
        split=np.array(split),
        source=f"{feature_path} + {label_path}",
        notes=["standard MOSI split (52 train / 10 valid / 31 test videos); features extracted without MOSI labels"],
    )
