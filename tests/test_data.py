"""Loaders on real data, the custom format, the restricted unpickler, and bad input."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from imer.data import MultimodalDataset, load_custom, load_dataset, make_synthetic, safe_load_pickle, save_custom
from imer.data.gcnet_layout import load_gcnet
from imer.errors import ConfigError, DataError


# ----------------------------------------------------------------------------- CMU-MOSI
@pytest.fixture(scope="module")
def mosi(data_dir):
    return load_dataset("cmu-mosi", data_dir)


def test_mosi_sizes_dims_and_labels(mosi):
    assert len(mosi) == 2199
    assert mosi.dims == {"audio": 73, "text": 100, "video": 100}
    assert mosi.task == "regression"
    assert mosi.labels.min() >= -3 and mosi.labels.max() <= 3
    assert len(np.unique(mosi.group_ids)) == 93


def test_mosi_uses_release_split_not_standard(mosi, data_dir):
    parts = mosi.split_indices()
    groups = {s: set(mosi.group_ids[idx]) for s, idx in parts.items()}
    assert len(groups["train"] | groups["valid"]) == 62 and len(groups["test"]) == 31
    assert len(parts["train"]) + len(parts["valid"]) == 1447 and len(parts["test"]) == 752
    assert not (groups["test"] & (groups["train"] | groups["valid"]))
    standard = safe_load_pickle(data_dir / "gcnet-meta" / "CMUMOSI_features_raw_2way.pkl")
    standard_test = {str(v) for v in standard[6]}
    # the standard test split shares videos with the release's training part: using it would leak labels
    assert groups["test"] != standard_test
    assert standard_test & (groups["train"] | groups["valid"])


def test_mosi_validation_is_carved_by_video_and_seeded(mosi):
    a = mosi.split_indices(split_seed=0)
    b = mosi.split_indices(split_seed=0)
    c = mosi.split_indices(split_seed=1)
    assert np.array_equal(a["valid"], b["valid"]) and not np.array_equal(a["valid"], c["valid"])
    assert not set(mosi.group_ids[a["valid"]]) & set(mosi.group_ids[a["train"]])


def test_mosi_order_follows_segments(mosi):
    first = mosi.group_ids == mosi.group_ids[0]
    ids = mosi.utterance_ids[first][np.argsort(mosi.order[first])]
    assert len(ids) == first.sum() and len(set(mosi.order[first])) == first.sum()


# ----------------------------------------------------------------------------- CMU-MOSI, MiniLM + COVAREP
@pytest.fixture(scope="module")
def minilm(data_dir):
    return load_dataset("cmu-mosi-minilm", data_dir)


def test_minilm_sizes_dims_and_labels(minilm):
    assert len(minilm) == 2199 and len(np.unique(minilm.group_ids)) == 93
    assert minilm.dims == {"audio": 73, "text": 384}
    assert minilm.task == "regression" and minilm.speakers is None
    assert minilm.labels.min() >= -3 and minilm.labels.max() <= 3
    assert np.isfinite(minilm.features["text"]).all() and np.isfinite(minilm.features["audio"]).all()
    np.testing.assert_allclose(np.linalg.norm(minilm.features["text"], axis=1), 1.0, atol=1e-4)


def test_minilm_uses_standard_split_with_its_validation_part(minilm, data_dir):
    parts = minilm.split_indices()
    assert {s: len(idx) for s, idx in parts.items()} == {"train": 1284, "valid": 229, "test": 686}
    groups = {s: set(minilm.group_ids[idx]) for s, idx in parts.items()}
    assert {s: len(g) for s, g in groups.items()} == {"train": 52, "valid": 10, "test": 31}
    assert not groups["train"] & groups["valid"] and not groups["train"] & groups["test"] and not groups["valid"] & groups["test"]
    meta = safe_load_pickle(data_dir / "gcnet-meta" / "CMUMOSI_features_raw_2way.pkl")
    assert groups["valid"] == {str(v) for v in meta[5]} and groups["test"] == {str(v) for v in meta[6]}
    # the carving options do not apply: the validation part is the dataset's own
    assert np.array_equal(minilm.split_indices(split_seed=3)["valid"], parts["valid"])


def test_minilm_development_folds_drop_the_test_videos(minilm):
    dev = minilm.development_folds(5, seed=0)
    test_videos = set(minilm.group_ids[minilm.split == "test"])
    assert dev.split is None and dev.folds == [1, 2, 3, 4, 5]
    assert len(dev) == 1284 + 229 and not set(dev.group_ids) & test_videos
    sizes = np.bincount(dev.fold)[1:]
    assert sizes.max() - sizes.min() <= 30  # largest-first dealing: similar utterance counts
    for g in np.unique(dev.group_ids):  # a video lies in one fold
        assert len(np.unique(dev.fold[dev.group_ids == g])) == 1
    parts = dev.split_indices(fold=2)
    assert set(dev.group_ids[parts["test"]]) == set(dev.group_ids[dev.fold == 2])
    assert not set(dev.group_ids[parts["valid"]]) & set(dev.group_ids[parts["test"]])
    np.testing.assert_array_equal(minilm.development_folds(5, seed=0).fold, dev.fold)
    assert not np.array_equal(minilm.development_folds(5, seed=1).fold, dev.fold)
    with pytest.raises(DataError, match="dev_folds"):
        minilm.development_folds(1)
    with pytest.raises(DataError, match="already evaluated by folds"):
        dev.development_folds(5)


def test_minilm_ids_features_and_labels_are_aligned(minilm, data_dir):
    raw = np.load(data_dir / "cmu-mosi-minilm" / "features.npz", allow_pickle=False)
    row_of = {u: i for i, u in enumerate(raw["ids"])}
    rows = np.array([row_of[u] for u in minilm.utterance_ids])
    np.testing.assert_array_equal(minilm.features["text"], raw["text"][rows])
    np.testing.assert_array_equal(minilm.features["audio"], raw["audio"][rows])
    meta = safe_load_pickle(data_dir / "gcnet-meta" / "CMUMOSI_features_raw_2way.pkl")
    for k in (0, 700, 2198):
        vid, pos = minilm.group_ids[k], minilm.order[k]
        assert meta[0][vid][pos] == minilm.utterance_ids[k] and meta[1][vid][pos] == pytest.approx(minilm.labels[k])
    # same utterances as the bc-LSTM set, and the audio features are that release's, row for row
    mosi = load_dataset("cmu-mosi", data_dir)
    assert set(mosi.utterance_ids) == set(minilm.utterance_ids)
    where = {u: i for i, u in enumerate(mosi.utterance_ids)}
    np.testing.assert_allclose(minilm.features["audio"], mosi.features["audio"][[where[u] for u in minilm.utterance_ids]], rtol=1e-5, atol=1e-4)


def test_minilm_missing_file_and_bad_content_are_named(tmp_path, data_dir):
    with pytest.raises(DataError, match="features.npz: cmu-mosi-minilm feature file not found"):
        load_dataset("cmu-mosi-minilm", tmp_path)
    (tmp_path / "cmu-mosi-minilm").mkdir()
    np.savez(tmp_path / "cmu-mosi-minilm" / "features.npz", ids=np.array(["a_1"]), text=np.zeros((1, 3), np.float32))
    with pytest.raises(DataError, match="key 'audio' missing"):
        load_dataset("cmu-mosi-minilm", tmp_path)
    np.savez(tmp_path / "cmu-mosi-minilm" / "features.npz", ids=np.array(["a_1"]), text=np.zeros((1, 3), np.float32), audio=np.zeros((1, 2), np.float32))
    (tmp_path / "gcnet-meta").mkdir()
    (tmp_path / "gcnet-meta" / "CMUMOSI_features_raw_2way.pkl").write_bytes((data_dir / "gcnet-meta" / "CMUMOSI_features_raw_2way.pkl").read_bytes())
    with pytest.raises(DataError, match="no features for utterance"):
        load_dataset("cmu-mosi-minilm", tmp_path)


# ----------------------------------------------------------------------------- restricted unpickler
def test_real_gcnet_pickles_load(data_dir):
    for name in ("CMUMOSI_features_raw_2way.pkl", "IEMOCAP_features_raw_4way.pkl", "IEMOCAP_features_raw_6way.pkl"):
        meta = safe_load_pickle(data_dir / "gcnet-meta" / name)
        assert isinstance(meta, list) and isinstance(meta[0], dict)


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    target = tmp_path / "pwned"
    evil = _Evil()
    evil.target = str(target)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([{"a": 1}, evil]))
    with pytest.raises(DataError, match="refused to unpickle.*not allowed"):
        safe_load_pickle(path)
    assert not target.exists()


def test_os_system_pickle_is_refused(tmp_path):
    path = tmp_path / "system.pkl"
    path.write_bytes(b"cos\nsystem\n(S'touch /tmp/imer-pwned'\ntR.")
    with pytest.raises(DataError, match="os.system"):
        safe_load_pickle(path)


# ----------------------------------------------------------------------------- GCNet layout
def _write_features(root: Path, ids, dims, rng, time_steps=True, skip=None):
    for m, d in dims.items():
        folder = root / "features" / f"feat-{m}"
        folder.mkdir(parents=True, exist_ok=True)
        for k, utt in enumerate(ids):
            if utt == skip:
                continue
            shape = (3, d) if time_steps and k % 2 else (d,)
            np.save(folder / f"{utt}.npy", rng.normal(size=shape).astype(np.float32))


@pytest.fixture(scope="module")
def iemocap_meta(data_dir):
    return safe_load_pickle(data_dir / "gcnet-meta" / "IEMOCAP_features_raw_4way.pkl")


def _small_iemocap(tmp_path, meta, per_session=2):
    """A label pickle with a few real dialogues of each session, and matching feature folders."""
    vids = sorted(meta[0], key=str)
    chosen = []
    for s in range(1, 6):
        chosen += [v for v in vids if v.startswith(f"Ses0{s}")][:per_session]
    small = [{v: meta[k][v] for v in chosen} for k in range(4)] + [[v for v in chosen if not v.startswith("Ses05")], [v for v in chosen if v.startswith("Ses05")]]
    label_file = tmp_path / "labels.pkl"
    label_file.write_bytes(pickle.dumps(small))
    ids = [u for v in chosen for u in meta[0][v]]
    return label_file, ids


def test_gcnet_iemocap_layout_with_real_ids(tmp_path, iemocap_meta):
    label_file, ids = _small_iemocap(tmp_path, iemocap_meta)
    dims = {"audio": 5, "text": 7, "video": 4}
    _write_features(tmp_path, ids, dims, np.random.default_rng(0))
    # a face folder for one utterance: several arrays averaged
    face = tmp_path / "features" / "feat-video" / ids[0]
    (tmp_path / "features" / "feat-video" / f"{ids[0]}.npy").unlink()
    face.mkdir()
    np.save(face / "F.npy", np.ones((2, 4), np.float32))
    np.save(face / "M.npy", 3 * np.ones(4, np.float32))
    ds = load_gcnet("iemocap4", label_file, tmp_path / "features", {m: f"feat-{m}" for m in dims}, "classification", ["happy", "sad", "neutral", "angry"])
    assert len(ds) == len(ids) and ds.dims == dims
    assert ds.folds == [1, 2, 3, 4, 5]
    assert np.allclose(ds.features["video"][0], 2.0)
    assert ds.speakers is not None and set(np.unique(ds.speakers)) <= {"F", "M"}
    parts = ds.split_indices(fold=5)
    assert all(g.startswith("Ses05") for g in ds.group_ids[parts["test"]])
    assert not any(g.startswith("Ses05") for g in ds.group_ids[parts["train"]])
    assert len(parts["valid"]) > 0
    expected = [iemocap_meta[1][v][k] for v in sorted({*ds.group_ids}) for k in range(len(iemocap_meta[1][v]))]
    assert sorted(ds.labels.tolist()) == sorted(expected)


def test_gcnet_loader_by_name_uses_data_dir(tmp_path, iemocap_meta):
    label_file, ids = _small_iemocap(tmp_path, iemocap_meta, per_session=1)
    dims = {"audio": 3, "text": 3}
    _write_features(tmp_path, ids, dims, np.random.default_rng(1))
    ds = load_dataset("iemocap4", tmp_path, label_file=str(label_file), features={m: f"feat-{m}" for m in dims})
    assert ds.modalities == ["audio", "text"] and ds.class_names[0] == "happy"


def test_gcnet_mosi_layout_standard_split(tmp_path, data_dir):
    meta = safe_load_pickle(data_dir / "gcnet-meta" / "CMUMOSI_features_raw_2way.pkl")
    ids = [u for v in meta[0] for u in meta[0][v]]
    dims = {"audio": 4, "text": 6}
    _write_features(tmp_path, ids, dims, np.random.default_rng(2), time_steps=False)
    ds = load_dataset("gcnet-mosi", data_dir, feature_dir=str(tmp_path / "features"), features={m: f"feat-{m}" for m in dims})
    assert len(ds) == 2199 and ds.task == "regression"
    parts = ds.split_indices()
    assert (len(parts["train"]), len(parts["valid"]), len(parts["test"])) == (1284, 229, 686)


def test_gcnet_missing_utterance_features(tmp_path, iemocap_meta):
    label_file, ids = _small_iemocap(tmp_path, iemocap_meta, per_session=1)
    _write_features(tmp_path, ids, {"audio": 3, "text": 3}, np.random.default_rng(0), skip=ids[4])
    with pytest.raises(DataError, match=f"{ids[4]}.npy: no features"):
        load_gcnet("x", label_file, tmp_path / "features", {"audio": "feat-audio", "text": "feat-text"}, "classification", ["a", "b", "c", "d"])


def test_gcnet_missing_folder_and_inconsistent_dims(tmp_path, iemocap_meta):
    label_file, ids = _small_iemocap(tmp_path, iemocap_meta, per_session=1)
    _write_features(tmp_path, ids, {"audio": 3}, np.random.default_rng(0))
    with pytest.raises(DataError, match="feat-text: feature folder not found"):
        load_gcnet("x", label_file, tmp_path / "features", {"audio": "feat-audio", "text": "feat-text"}, "classification", list("abcd"))
    np.save(tmp_path / "features" / "feat-audio" / f"{ids[2]}.npy", np.zeros(5, np.float32))
    with pytest.raises(DataError, match="inconsistent feature dims"):
        load_gcnet("x", label_file, tmp_path / "features", {"audio": "feat-audio", "text": "feat-audio"}, "classification", list("abcd"))


def test_gcnet_unknown_label(tmp_path, iemocap_meta):
    label_file, ids = _small_iemocap(tmp_path, iemocap_meta, per_session=1)
    _write_features(tmp_path, ids, {"audio": 3, "text": 3}, np.random.default_rng(0))
    with pytest.raises(DataError, match="unknown label 3"):
        load_gcnet("x", label_file, tmp_path / "features", {"audio": "feat-audio", "text": "feat-text"}, "classification", ["a", "b", "c"])


def test_missing_label_file(tmp_path):
    with pytest.raises(DataError, match="nope.pkl: file not found"):
        load_gcnet("x", tmp_path / "nope.pkl", tmp_path, {"a": "a", "b": "b"}, "regression", None)


# ----------------------------------------------------------------------------- custom format
def test_custom_round_trip(tmp_path):
    ds = make_synthetic(num_groups=10, seed=3)
    path = save_custom(ds, tmp_path / "syn.npz")
    back = load_dataset(str(path))
    assert back.modalities == ds.modalities and back.class_names == ds.class_names
    for m in ds.modalities:
        assert np.array_equal(back.features[m], ds.features[m])
    assert np.array_equal(back.labels, ds.labels) and np.array_equal(back.split, ds.split)
    assert np.array_equal(back.speakers, ds.speakers)


def test_custom_missing_key_and_not_npz(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, format="imer-dataset-v1", name="x")
    with pytest.raises(DataError, match="missing key"):
        load_custom(bad)
    junk = tmp_path / "junk.npz"
    junk.write_text("hello")
    with pytest.raises(DataError, match="junk.npz: not a .npz archive"):
        load_custom(junk)
    with pytest.raises(DataError, match="dataset file not found"):
        load_custom(tmp_path / "absent.npz")


# ----------------------------------------------------------------------------- validation of the dataset type
def _base(**changes):
    n = 4
    values = dict(
        name="t",
        features={"a": np.zeros((n, 2)), "b": np.ones((n, 3))},
        labels=np.array([0, 1, 0, 1]),
        task="classification",
        utterance_ids=[f"u{i}" for i in range(n)],
        group_ids=["g0", "g0", "g1", "g1"],
        order=[0, 1, 0, 1],
        split=["train", "train", "test", "test"],
        class_names=["neg", "pos"],
    )
    values.update(changes)
    return MultimodalDataset(**values)


def test_bad_inputs_are_named():
    with pytest.raises(DataError, match="'b' has NaN values in 1 utterance.*'u2'"):
        _base(features={"a": np.zeros((4, 2)), "b": np.array([[1, 1, 1], [1, 1, 1], [np.nan, 1, 1], [1, 1, 1]])})
    with pytest.raises(DataError, match="modality 'b' has shape"):
        _base(features={"a": np.zeros((4, 2)), "b": np.ones((3, 3))})
    with pytest.raises(DataError, match="unknown label 2 at utterance 'u3'"):
        _base(labels=np.array([0, 1, 0, 2]))
    with pytest.raises(DataError, match="utterance 'u1' has no modality"):
        _base(available=np.array([[1, 1], [0, 0], [1, 1], [1, 0]], bool))
    with pytest.raises(DataError, match="at least 2 modalities"):
        _base(features={"a": np.zeros((4, 2))})
    with pytest.raises(DataError, match="unknown split names"):
        _base(split=["train", "dev", "test", "test"])


def test_nan_allowed_where_modality_absent():
    ds = _base(
        features={"a": np.zeros((4, 2)), "b": np.array([[1, 1, 1], [np.nan] * 3, [1, 1, 1], [1, 1, 1]])},
        available=np.array([[1, 1], [1, 0], [1, 1], [1, 1]], bool),
    )
    assert len(ds) == 4


def test_empty_split_is_an_error():
    ds = _base(split=["train", "train", "train", "train"])
    with pytest.raises(DataError, match="'test' split is empty"):
        ds.split_indices()


def test_unknown_dataset_and_missing_data_dir(monkeypatch):
    monkeypatch.delenv("IMER_DATA", raising=False)
    with pytest.raises(ConfigError, match="unknown dataset 'mosei-x'"):
        load_dataset("mosei-x")
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("cmu-mosi")
    with pytest.raises(DataError, match="data folder not found"):
        load_dataset("cmu-mosi", "/nonexistent/imer")


def test_mosi_missing_csv_is_named(tmp_path, data_dir):
    (tmp_path / "cmu-mosi-bclstm").mkdir()
    with pytest.raises(DataError, match="transcripts.csv: file not found"):
        load_dataset("cmu-mosi", tmp_path)


def test_synthetic_is_deterministic_and_imbalanced():
    a, b = make_synthetic(seed=5), make_synthetic(seed=5)
    assert all(np.array_equal(a.features[m], b.features[m]) for m in a.modalities)
    assert not np.array_equal(make_synthetic(seed=6).labels, a.labels)
    reg = make_synthetic(task="regression")
    assert reg.task == "regression" and np.abs(reg.labels).max() <= 3


def test_every_data_module_is_discovered_without_an_import_list():
    """Adding a dataset is one new module in imer/data: the registry imports them all (no hand-kept list in __init__)."""
    import sys

    import imer.data

    folder = Path(imer.data.__file__).parent
    modules = {p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")}
    assert all(f"imer.data.{m}" in sys.modules for m in modules)
    assert "import custom" not in (folder / "__init__.py").read_text()
