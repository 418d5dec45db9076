"""Datasets in the GCNet / ComP / MoMKE layout.

A label pickle (``videoIDs``, ``videoLabels``, ``videoSpeakers``, ...,
split lists) plus one feature folder per modality holding
``<utterance-id>.npy`` (``[D]`` or ``[T, D]``, averaged over T) or a folder
``<utterance-id>/`` of such arrays (IEMOCAP faces; averaged). IEMOCAP is
evaluated by 5-fold leave-one-session-out (fold = session number 1..5);
CMU-MOSI and CMU-MOSEI use the pickle's train/valid/test videos.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from imer.data.dataset import MultimodalDataset
from imer.data.registry import register_dataset
from imer.data.safe_pickle import safe_load_pickle
from imer.errors import DataError
from imer.io import check_npy_header

DEFAULT_FEATURES = {"audio": "wav2vec-large-c-UTT", "text": "deberta-large-4-UTT", "video": "manet_UTT"}
IEMOCAP4_CLASSES = ["happy", "sad", "neutral", "angry"]
IEMOCAP6_CLASSES = ["happy", "sad", "neutral", "angry", "excited", "frustrated"]
_SESSION = re.compile(r"^Ses0?(\d)")


def load_feature_file(path: Path) -> np.ndarray:
    """One utterance's feature vector from ``path.npy`` or the folder ``path/`` (mean over time/faces)."""
    npy = path.with_name(path.name + ".npy")
    if npy.is_file():
        arrays = [npy]
    elif path.is_dir():
        arrays = sorted(p for p in path.iterdir() if p.suffix == ".npy")
        if not arrays:
            raise DataError(f"{path}: feature folder holds no .npy file")
    else:
        raise DataError(f"{npy}: no features for this utterance (neither {npy.name} nor folder {path.name}/)")
    vectors = []
    for p in arrays:
        try:
            with p.open("rb") as fh:
                check_npy_header(fh, p.stat().st_size, str(p), "feature file")
            x = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError):
            raise DataError(f"{p}: not a readable .npy array of numbers (damaged, or holds pickled Python objects, which imer does not load)") from None
        if x.dtype.kind not in "fiub":
            raise DataError(f"{p}: holds {x.dtype} values, expected numbers")
        if x.ndim == 1:
            vectors.append(x)
        elif x.ndim == 2:
            if x.shape[0] == 0:
                raise DataError(f"{p}: empty [0, D] feature array")
            vectors.append(x.mean(axis=0))
        else:
            raise DataError(f"{p}: feature array has shape {x.shape}, expected [D] or [T, D]")
    dims = {v.shape[0] for v in vectors}
    if len(dims) != 1:
        raise DataError(f"{path}: arrays of different dims {sorted(dims)}")
    return np.mean(vectors, axis=0).astype(np.float32)


def _read_modality(folder: Path, ids: list[str]) -> np.ndarray:
    if not folder.is_dir():
        raise DataError(f"{folder}: feature folder not found")
    rows = [load_feature_file(folder / utt) for utt in ids]
    dims = {r.shape[0] for r in rows}
    if len(dims) != 1:
        first = next(i for i, r in enumerate(rows) if r.shape[0] != rows[0].shape[0])
        raise DataError(f"{folder}: inconsistent feature dims {sorted(dims)} (utterance '{ids[first]}' has {rows[first].shape[0]}, '{ids[0]}' has {rows[0].shape[0]})")
    return np.stack(rows)


def _shown(value: object) -> str:
    """A value as the file holds it (``1e+20``, ``'NA'``), not as a conversion made it."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _utterance_id(value: object, label_file: Path) -> str:
    """An utterance id from a label file: a plain file name, so its features are read from inside the feature folder."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{label_file}: utterance id {_shown(value)} is a {type(value).__name__}, expected a string")
    uid = str(value)
    if uid in ("", ".", "..") or any(c in uid for c in "/\\\0") or uid.startswith("~"):
        raise DataError(f"{label_file}: utterance id {uid!r} is not a plain file name; ids name files inside the feature folder "
                        "and may not hold path separators or '..'")
    return uid


def _label(value: object, utt: str, task: str, class_names: list[str] | None, label_file: Path) -> int | float:
    """One label checked as the file holds it: a class index ``0..C-1`` or a finite number."""
    number = value.item() if isinstance(value, np.generic) else value
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not np.isfinite(number):
        kind = "a class index" if task == "classification" else "a finite number"
        raise DataError(f"{label_file}: label {_shown(value)} of utterance '{utt}' is not {kind}")
    if task != "classification":
        return float(number)
    if not float(number).is_integer():
        raise DataError(f"{label_file}: classification labels must be integers, got {_shown(value)} for utterance '{utt}'")
    if not 0 <= number < len(class_names or []):
        raise DataError(f"{label_file}: unknown label {_shown(value)} for utterance '{utt}' (expected 0..{len(class_names or []) - 1})")
    return int(number)


def _check_layout(meta: object, path: Path, expected: int) -> list:
    if not isinstance(meta, (list, tuple)) or len(meta) < expected or not isinstance(meta[0], Mapping):
        raise DataError(f"{path}: not the GCNet label layout (expected a list of {expected}: videoIDs, videoLabels, videoSpeakers, videoSentences, splits)")
    return list(meta)


def load_gcnet(
    name: str,
    label_file: Path,
    feature_dir: Path,
    features: Mapping[str, str],
    task: str,
    class_names: list[str] | None,
) -> MultimodalDataset:
    """Load a GCNet-layout dataset; IEMOCAP-style pickles (6 items) get session folds."""
    meta = safe_load_pickle(label_file)
    meta = _check_layout(meta, label_file, 6)
    video_ids, video_labels, video_speakers = meta[0], meta[1], meta[2]
    if not isinstance(video_labels, Mapping):
        raise DataError(f"{label_file}: videoLabels (item 2) is a {type(video_labels).__name__}, expected a table video -> labels")
    has_valid_split = len(meta) >= 7
    if has_valid_split:
        split_of = {}
        for s, vids in zip(("train", "valid", "test"), meta[4:7]):
            if not isinstance(vids, (list, tuple, set, frozenset, np.ndarray)):
                raise DataError(f"{label_file}: the {s} split (item {('train', 'valid', 'test').index(s) + 5}) is a {type(vids).__name__}, expected a list of video ids")
            split_of.update({str(v): s for v in vids})
    ids, groups, order, labels, speakers = [], [], [], [], []
    for vid in sorted(video_ids, key=str):
        utts, labs = video_ids[vid], video_labels.get(vid)
        if not isinstance(utts, (list, tuple, np.ndarray)) or not isinstance(labs, (list, tuple, np.ndarray)):
            raise DataError(f"{label_file}: video {_shown(vid)} needs a list of utterance ids and a list of labels, "
                            f"got {type(utts).__name__} and {type(labs).__name__}")
        utts, labs = [_utterance_id(u, label_file) for u in utts], list(labs)
        spk = list(video_speakers.get(vid, [""] * len(utts))) if isinstance(video_speakers, Mapping) else [""] * len(utts)
        if len(labs) != len(utts):
            raise DataError(f"{label_file}: video '{vid}' has {len(utts)} utterances but {len(labs)} labels")
        for pos, (utt, lab) in enumerate(zip(utts, labs)):
            ids.append(utt)
            groups.append(str(vid))
            order.append(pos)
            labels.append(_label(lab, utt, task, class_names, label_file))
            speakers.append(str(spk[pos]) if pos < len(spk) else "")
    label_array = np.asarray(labels, dtype=np.int64 if task == "classification" else np.float32)

    split = fold = None
    if has_valid_split:
        split = np.array([split_of.get(g, "") for g in groups])
        unassigned = split == ""
        if unassigned.any():
            raise DataError(f"{label_file}: video '{np.array(groups)[unassigned][0]}' is in no split list")
    else:
        sessions = []
        for g in groups:
            match = _SESSION.match(g)
            if not match:
                raise DataError(f"{label_file}: dialogue id '{g}' does not start with SesN, cannot assign a session fold")
            sessions.append(int(match.group(1)))
        fold = np.array(sessions)

    feats = {m: _read_modality(feature_dir / folder, ids) for m, folder in features.items()}
    has_speakers = any(speakers)
    return MultimodalDataset(
        name=name,
        features=feats,
        labels=label_array,
        task=task,  # type: ignore[arg-type]
        utterance_ids=np.array(ids),
        group_ids=np.array(groups),
        order=np.array(order),
        split=split,
        fold=fold,
        speakers=np.array(speakers) if has_speakers else None,
        class_names=class_names,
        source=f"{label_file} + {feature_dir}",
    )


def _register(name: str, pickle_name: str, task: str, classes: list[str] | None, description: str) -> None:
    def loader(
        data_dir: Path,
        label_file: str | None = None,
        feature_dir: str | None = None,
        features: Mapping[str, str] | None = None,
    ) -> MultimodalDataset:
        return load_gcnet(
            name,
            Path(label_file) if label_file else data_dir / "gcnet-meta" / pickle_name,
            Path(feature_dir) if feature_dir else data_dir / "features",
            dict(features or DEFAULT_FEATURES),
            task,
            classes,
        )

    loader.__doc__ = f"Load {name} in the GCNet layout. {description}"
    register_dataset(name, needs_data_dir=True, description=description)(loader)


_register("iemocap4", "IEMOCAP_features_raw_4way.pkl", "classification", IEMOCAP4_CLASSES, "IEMOCAP four-class, GCNet layout, 5-fold leave-one-session-out")
_register("iemocap6", "IEMOCAP_features_raw_6way.pkl", "classification", IEMOCAP6_CLASSES, "IEMOCAP six-class, GCNet layout, 5-fold leave-one-session-out")
_register("gcnet-mosi", "CMUMOSI_features_raw_2way.pkl", "regression", None, "CMU-MOSI in the GCNet layout (your own features), standard split")
_register("gcnet-mosei", "CMUMOSEI_features_raw_2way.pkl", "regression", None, "CMU-MOSEI in the GCNet layout (your own features), standard split")
