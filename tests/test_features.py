"""Feature extraction (text, audio, OpenFace), dataset building, the manifest, and prediction on raw input."""

from __future__ import annotations

import csv
import json
import re
import shlex
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from make_recordings import openface_csv, synthetic_speech

from imer.cli import main
from imer.data import list_datasets, load_custom
from imer.errors import DataError
from imer.features import ModalityFeatures, build_dataset, extract_video
from imer.features.manifest import builtin_manifest
from imer.features.store import Result
from imer.features.video import DEFAULT_COLUMNS

REPO = Path(__file__).resolve().parent.parent


def _has(*modules: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)


needs_text = pytest.mark.skipif(not _has("sentence_transformers", "all_minilm_l6_v2"), reason="needs the [text] extra")
needs_audio = pytest.mark.skipif(not _has("opensmile", "soundfile"), reason="needs the [audio] extra")


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _fake_modality(path: Path, modality: str, ids: list[str], dim: int = 4, failed: dict[str, str] | None = None, seed: int = 0) -> Path:
    """A modality feature file without running an extractor (for build/predict logic)."""
    rng = np.random.default_rng(seed)
    failed = failed or {}
    results = [Result(u, None if u in failed else rng.normal(size=dim).astype(np.float32), failed.get(u, "")) for u in ids]
    entry = {"extractor": "test", "model": "fake", "settings": {}, "dim": dim, "reproducible": False}
    ModalityFeatures.from_results(modality, entry, results).save(path)
    return path


# ---------------------------------------------------------------- video (OpenFace import, no extra needed)
def test_openface_mean_std_over_successful_frames(tmp_path):
    openface_csv(tmp_path / "u1.csv", positive=True, seed=0)
    feats = extract_video([str(tmp_path / "u1.csv")], tmp_path / "video.npz", progress=False)
    assert feats.ids == ["u1"] and feats.x.shape == (1, 2 * len(DEFAULT_COLUMNS)) and feats.ok.all()
    with (tmp_path / "u1.csv").open() as fh:
        rows = list(csv.reader(fh))
    header = [h.strip() for h in rows[0]]
    table = np.array(rows[1:], dtype=float)
    good = table[:, header.index("success")] == 1
    values = table[good][:, [header.index(c) for c in DEFAULT_COLUMNS]]
    np.testing.assert_allclose(feats.x[0], np.concatenate([values.mean(0), values.std(0)]), rtol=1e-5, atol=1e-6)
    assert good.sum() < len(table)


def test_openface_segments_by_timestamp_and_missing_cases(tmp_path):
    openface_csv(tmp_path / "dialogue.csv", positive=False, seed=1, frames=90)
    _write_csv(tmp_path / "broken.csv", ["frame", " timestamp", " success", " confidence", " AU01_r"], [[1, 0.0, 1, 0.9, 0.5]])
    no_face = tmp_path / "noface.csv"
    openface_csv(no_face, positive=True, seed=2, frames=5)
    text = no_face.read_text().splitlines()
    no_face.write_text("\n".join([text[0]] + [re.sub(r"^(\d+,0,[^,]+),[^,]+,1,", r"\1,0.00,0,", line) for line in text[1:]]) + "\n")
    seg = _write_csv(tmp_path / "segments.csv", ["utterance_id", "file", "start", "end"],
                     [["d_1", "dialogue.csv", 0, 1.0], ["d_2", "dialogue.csv", 1.0, 3.0], ["d_3", "dialogue.csv", 5.0, 6.0],
                      ["b_1", "broken.csv", "", ""], ["n_1", "noface.csv", "", ""]])
    feats = extract_video([], tmp_path / "v.npz", segments=str(seg), progress=False)
    reasons = dict(zip(feats.ids, feats.reasons))
    assert feats.ok.tolist() == [True, True, False, False, False]
    assert "no successful face frame between 5.00 and 6.00 s" in reasons["d_3"]
    assert "lacks column(s)" in reasons["b_1"] and "(48 of 52 needed)" in reasons["b_1"]
    assert "no successful face frame" in reasons["n_1"]
    assert feats.groups[:2] == ["dialogue", "dialogue"]
    assert not np.allclose(feats.x[0], feats.x[1])


def test_openface_workers_and_resume(tmp_path, capsys):
    for i in range(4):
        openface_csv(tmp_path / f"c{i}.csv", positive=bool(i % 2), seed=i)
    one = extract_video([str(tmp_path)], tmp_path / "one.npz", progress=False)
    two = extract_video([str(tmp_path)], tmp_path / "out" / "two.npz", workers=2, progress=False)
    np.testing.assert_array_equal(one.x, two.x)
    openface_csv(tmp_path / "c4.csv", positive=True, seed=9)
    messages: list[str] = []
    again = extract_video([str(tmp_path)], tmp_path / "one.npz", progress=False, log=messages.append)
    assert "4 utterance(s) already extracted, 1 to go" in messages[0]
    assert again.ids == [f"c{i}" for i in range(5)]
    np.testing.assert_array_equal(again.x[:4], one.x)
    with pytest.raises(DataError, match="other settings"):
        extract_video([str(tmp_path)], tmp_path / "one.npz", min_confidence=0.5, progress=False)


def test_video_cli_errors(tmp_path, capsys):
    assert main(["features", "video", str(tmp_path / "nope"), "--out", str(tmp_path / "v.npz")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["features", "video", "--out", str(tmp_path / "v.npz")]) == 2
    assert "no OpenFace CSV input" in capsys.readouterr().err


# ---------------------------------------------------------------- build
def test_build_joins_by_id_marks_missing_and_embeds_manifest(tmp_path):
    ids = [f"dlg{d}_{k}" for d in range(5) for k in range(1, 4)]
    a = _fake_modality(tmp_path / "a.npz", "audio", ids, failed={"dlg0_1": "empty audio (0 samples)"})
    t = _fake_modality(tmp_path / "t.npz", "text", [i for i in ids if i != "dlg1_2"], dim=3, seed=1)
    labels = _write_csv(tmp_path / "labels.csv", ["utterance_id", "label"], [[u, f"{(k % 7) / 3 - 1:.3f}"] for k, u in enumerate(ids)])
    result = build_dataset({"text": t, "audio": a}, tmp_path / "mine.npz", labels_path=labels)
    ds = load_custom(result.path)
    assert ds.modalities == ["audio", "text"] and ds.task == "regression" and len(ds) == 15
    row = {u: i for i, u in enumerate(ds.utterance_ids)}
    assert not ds.available[row["dlg0_1"], 0] and ds.available[row["dlg0_1"], 1]
    assert not ds.available[row["dlg1_2"], 1] and ds.available[row["dlg1_2"], 0]
    assert ds.group_ids[row["dlg3_2"]] == "dlg3" and ds.order[row["dlg3_2"]] == 2
    assert set(ds.split) == {"train", "test"}
    assert ds.manifest["modalities"]["audio"]["missing"] == 1 and ds.manifest["modalities"]["text"]["dim"] == 3
    assert json.loads(result.manifest_path.read_text()) == ds.manifest
    reasons = list(csv.DictReader((tmp_path / "mine.missing.csv").open()))
    assert {(r["utterance_id"], r["modality"], r["reason"]) for r in reasons} == {
        ("dlg0_1", "audio", "empty audio (0 samples)"), ("dlg1_2", "text", "no input for this utterance")}


def test_build_rejects_ids_of_one_modality_only(tmp_path, capsys):
    a = _fake_modality(tmp_path / "a.npz", "audio", ["x_1", "x_2", "clip3.wav"])
    t = _fake_modality(tmp_path / "t.npz", "text", ["x_1", "x_2", "clip3"])
    assert main(["features", "build", "--audio", str(a), "--text", str(t), "--out", str(tmp_path / "p.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imer: error:") and "appear in no other modality" in err and "clip3" in err
    assert main(["features", "build", "--audio", str(a), "--text", str(t), "--keep-unmatched", "--out", str(tmp_path / "p.npz")]) == 0
    data = np.load(tmp_path / "p.npz")
    assert "labels" not in data and data["available"].sum(axis=1).tolist() == [2, 2, 1, 1]
    labels = _write_csv(tmp_path / "l.csv", ["utterance_id", "label", "split"], [["x_1", "a", "train"], ["x_2", "b", "test"]])
    assert main(["features", "build", "--audio", str(a), "--text", str(t), "--labels", str(labels), "--out", str(tmp_path / "q.npz")]) == 2
    assert "have no row in" in capsys.readouterr().err
    assert main(["features", "build", "--audio", str(a), "--text", str(t), "--labels", str(labels), "--keep-unmatched", "--task", "classification",
                 "--out", str(tmp_path / "q.npz")]) == 0
    assert "left out" in capsys.readouterr().err
    bad_split = _write_csv(tmp_path / "s.csv", ["utterance_id", "label", "split"], [["x_1", "a", "training"]])
    assert main(["features", "build", "--audio", str(a), "--text", str(t), "--labels", str(bad_split), "--out", str(tmp_path / "q.npz")]) == 2
    assert "unknown split name(s) ['training']" in capsys.readouterr().err
    assert main(["features", "build", "--audio", str(a), "--out", str(tmp_path / "q.npz")]) == 2
    assert "at least two modalities" in capsys.readouterr().err


def test_build_refuses_wrong_files(tmp_path, capsys):
    a = _fake_modality(tmp_path / "a.npz", "audio", ["x_1"])
    assert main(["features", "build", "--text", str(a), "--audio", str(a), "--out", str(tmp_path / "o.npz")]) == 2
    assert "holds audio features, given as --text" in capsys.readouterr().err
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    assert main(["features", "build", "--text", str(tmp_path / "other.npz"), "--audio", str(a), "--out", str(tmp_path / "o.npz")]) == 2
    assert "not a modality feature file" in capsys.readouterr().err


# ---------------------------------------------------------------- manifest travels, predict refuses what it cannot make
def test_builtin_run_carries_manifest_and_predict_refuses_bclstm(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--method", "early-fusion", "--dataset", "cmu-mosi", "--data-dir", str(data_dir), "--epochs", "1",
                 "--set", "hidden=8", "--no-progress", "--out", str(run)]) == 0
    assert json.loads((run / "features.json").read_text()) == builtin_manifest("cmu-mosi")
    capsys.readouterr()
    assert main(["predict", "--model", str(run), "--text", "it was really good"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imer: error: --text: this model's text features cannot be made from raw input") and "bc-LSTM" in err
    assert err.count("\n") == 1
    converted = tmp_path / "mosi.npz"
    assert main(["data", "convert", "--dataset", "cmu-mosi", "--data-dir", str(data_dir), "--out", str(converted)]) == 0
    assert load_custom(converted).manifest == builtin_manifest("cmu-mosi")


def test_predict_raw_without_manifest_or_input(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--method", "late-fusion", "--dataset", "synthetic", "--epochs", "1", "--set", "hidden=8", "--no-progress", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["predict", "--model", str(run), "--text", "hello"]) == 2
    assert "no features.json" in capsys.readouterr().err
    assert main(["predict", "--model", str(run), "--input", "x.npz", "--text", "hello"]) == 2
    assert "not both" in capsys.readouterr().err


# ---------------------------------------------------------------- audio (needs the [audio] extra)
def _speech(tmp_path: Path) -> Path:
    clips = tmp_path / "clips"
    clips.mkdir()
    for i, pitch in enumerate((120.0, 180.0, 240.0)):
        synthetic_speech(clips / f"s{i}.wav", 1.2, pitch, i)
    return clips


@needs_audio
def test_audio_functionals_per_file_and_segments(tmp_path):
    from imer.features import extract_audio

    clips = _speech(tmp_path)
    feats = extract_audio([str(clips)], tmp_path / "a.npz", progress=False)
    assert feats.ids == ["s0", "s1", "s2"] and feats.x.shape == (3, 88) and feats.ok.all() and np.isfinite(feats.x).all()
    assert feats.entry["settings"]["feature_set"] == "eGeMAPSv02"
    assert not np.allclose(feats.x[0], feats.x[1])
    import soundfile

    whole = np.concatenate([soundfile.read(clips / f"s{i}.wav", dtype="float32")[0] for i in range(3)])
    soundfile.write(tmp_path / "dialogue.flac", whole, 16000)
    seg = _write_csv(tmp_path / "seg.csv", ["utterance_id", "file", "start", "end"],
                     [["d_1", "dialogue.flac", 0.0, 1.2], ["d_2", "dialogue.flac", 1.2, 2.4], ["d_3", "dialogue.flac", 10.0, 11.0]])
    cut = extract_audio([], tmp_path / "seg.npz", segments=str(seg), progress=False)
    assert cut.ok.tolist() == [True, True, False] and "outside the audio" in cut.reasons[2]
    np.testing.assert_allclose(cut.x[1], feats.x[1], rtol=1e-3, atol=1e-3)
    par = extract_audio([str(clips)], tmp_path / "par.npz", workers=2, progress=False)
    np.testing.assert_array_equal(par.x, feats.x)


@needs_audio
def test_audio_unreadable_or_empty_is_missing_not_a_crash(tmp_path, capsys):
    clips = _speech(tmp_path)
    (clips / "garbage.wav").write_bytes(b"this is not audio at all")
    with wave.open(str(clips / "empty.wav"), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(16000)
    assert main(["features", "audio", str(clips), "--out", str(tmp_path / "a.npz"), "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "3 of 5 utterance(s) extracted" in out.out and "2 of 5 utterance(s) missing" in out.err
    feats = ModalityFeatures.load(tmp_path / "a.npz")
    reasons = dict(zip(feats.ids, feats.reasons))
    assert "empty audio" in reasons["empty"] and "unreadable audio" in reasons["garbage"]


@needs_audio
def test_audio_compare_option(tmp_path):
    from imer.features import extract_audio

    synthetic_speech(tmp_path / "one.wav", 0.8, 150.0, 0)
    feats = extract_audio([str(tmp_path / "one.wav")], tmp_path / "c.npz", feature_set="ComParE_2016", progress=False)
    assert feats.x.shape == (1, 6373) and feats.ok.all()


# ---------------------------------------------------------------- text (needs the [text] extra)
def _mosi_transcripts(data_dir: Path, tmp_path: Path, rows: int | None) -> tuple[Path, list[str]]:
    with (data_dir / "cmu-mosi-bclstm" / "transcripts.csv").open(newline="") as fh:
        table = [r for r in csv.reader(fh) if r][:rows]
    path = _write_csv(tmp_path / "transcripts.csv", ["utterance_id", "text"], [[r[0], r[1]] for r in table])
    return path, [r[0] for r in table]


def _check_against_minilm(data_dir: Path, tmp_path: Path, rows: int | None) -> None:
    path, ids = _mosi_transcripts(data_dir, tmp_path, rows)
    assert main(["features", "text", str(path), "--lowercase", "--out", str(tmp_path / "t.npz"), "--no-progress"]) == 0
    feats = ModalityFeatures.load(tmp_path / "t.npz")
    ref = np.load(data_dir / "cmu-mosi-minilm" / "features.npz")
    assert feats.ids == ids == [str(i) for i in ref["ids"][: len(ids)]]
    np.testing.assert_allclose(feats.x, ref["text"][: len(ids)], atol=2e-5)
    built = builtin_manifest("cmu-mosi-minilm")["modalities"]["text"]
    assert all(feats.entry[k] == built[k] for k in ("extractor", "model", "settings", "dim", "weights_sha256"))


@needs_text
def test_text_reproduces_cmu_mosi_minilm_first_rows(data_dir, tmp_path):
    _check_against_minilm(data_dir, tmp_path, 200)


@needs_text
@pytest.mark.slow
def test_text_reproduces_cmu_mosi_minilm_all_rows(data_dir, tmp_path):
    _check_against_minilm(data_dir, tmp_path, None)


@needs_text
def test_text_inputs_errors_and_resume(tmp_path, capsys):
    from imer.features import extract_text

    bad = _write_csv(tmp_path / "bad.csv", ["id", "text"], [["a", "hello"]])
    assert main(["features", "text", str(bad), "--out", str(tmp_path / "t.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imer: error:") and "no 'utterance_id' column" in err and "--id-column" in err
    assert main(["features", "text", str(bad), "--id-column", "id", "--out", str(tmp_path / "t.npz"), "--no-progress"]) == 0
    listed = tmp_path / "talk.txt"
    listed.write_text("it was good\n\nit was bad\n")
    feats = extract_text(listed, tmp_path / "l.npz", progress=False)
    assert feats.ids == ["talk_1", "talk_3"] and feats.groups == ["talk", "talk"]
    np.testing.assert_allclose(np.linalg.norm(feats.x, axis=1), 1.0, atol=1e-5)
    csvfile = _write_csv(tmp_path / "t.csv", ["utterance_id", "text"], [["a", "good"], ["b", "   "]])
    feats = extract_text(csvfile, tmp_path / "e.npz", progress=False)
    assert feats.reasons == ["", "empty transcript"]
    messages: list[str] = []
    extract_text(csvfile, tmp_path / "e.npz", progress=False, log=messages.append)
    assert "1 utterance(s) already extracted" in messages[0]


def test_text_without_model_package_names_the_extra(monkeypatch):
    from imer.features.text import TextExtractor

    monkeypatch.setitem(sys.modules, "all_minilm_l6_v2", None)
    with pytest.raises(DataError, match=r"imer\[text\]"):
        TextExtractor().entry()


# ---------------------------------------------------------------- acceptance: the README walk-through, and MOSI-MiniLM from --text alone
def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Your own recordings", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines() if line.strip() and not line.strip().startswith("#")]


@needs_text
@needs_audio
def test_readme_own_recordings_walkthrough(tmp_path, monkeypatch, capsys):
    commands = _readme_commands()
    assert commands[0] == "python tests/make_recordings.py demo" and len(commands) >= 7
    monkeypatch.chdir(tmp_path)
    subprocess.run([sys.executable, str(REPO / "tests" / "make_recordings.py"), "demo"], check=True, capture_output=True)
    for command in commands[1:]:
        argv = shlex.split(command)
        assert argv[0] == "imer"
        assert main(argv[1:]) == 0, command
    out = capsys.readouterr().out
    assert "audio: missing (not given)" in out and "video: missing (not given)" in out
    manifest = json.loads((tmp_path / "demo" / "run" / "features.json").read_text())
    assert set(manifest["modalities"]) == {"audio", "text", "video"}
    prediction = json.loads((tmp_path / "demo" / "prediction.json").read_text())[0]
    assert prediction["used"] == ["audio", "text"] and prediction["missing"] == {"video": "not given"}
    assert prediction["prediction"] in ("positive", "negative")
    capsys.readouterr()
    demo = tmp_path / "demo"
    assert main(["predict", "--model", "demo/run", "--openface", "demo/openface/talk0_2.csv", "--audio", "demo/clips/talk0_2.wav"]) == 0
    assert "text: missing (not given)" in capsys.readouterr().out
    (demo / "empty.wav").write_bytes(b"")
    _write_csv(demo / "noface.csv", ["frame", " timestamp", " success", " confidence"], [[1, 0.0, 0, 0.0]])
    for flag, path, message in (("--audio", "demo/empty.wav", "unreadable audio"), ("--openface", "demo/noface.csv", "lacks column(s)"),
                                ("--text", "  ", "empty transcript")):
        assert main(["predict", "--model", "demo/run", flag, path]) == 2
        err = capsys.readouterr().err
        assert err.startswith("imer: error:") and message in err and err.count("\n") == 1


@needs_text
def test_cmu_mosi_minilm_model_predicts_from_text_alone(data_dir, tmp_path, capsys):
    if "cmu-mosi-minilm" not in list_datasets():
        pytest.skip("cmu-mosi-minilm loader not registered")
    run = tmp_path / "run"
    assert main(["train", "--method", "early-fusion", "--dataset", "cmu-mosi-minilm", "--data-dir", str(data_dir), "--epochs", "2",
                 "--set", "hidden=16", "--no-progress", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["predict", "--model", str(run), "--text", "it was really good", "--out", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert "audio: missing (cannot be made from raw input: audio features copied from the bc-LSTM release" in out and "  score: " in out
    row = json.loads((tmp_path / "p.json").read_text())[0]
    assert row["used"] == ["text"] and "audio" in row["missing"] and np.isfinite(row["score"])
    (tmp_path / "sentences.txt").write_text("it was really good\n\nI hated every minute of it\nan ordinary film\n")
    assert main(["predict", "--model", str(run), "--text-file", str(tmp_path / "sentences.txt"), "--out", str(tmp_path / "many.json")]) == 0
    out = capsys.readouterr().out
    assert "3 predictions from text" in out and "2: I hated every minute of it" in out
    many = json.loads((tmp_path / "many.json").read_text())
    assert len(many) == 3 and many[0]["score"] == pytest.approx(row["score"], abs=1e-5)  # one batch gives what one call gives
    assert all(-3 <= r["score"] <= 3 for r in many)
    for argv, message in ((["--text", "x", "--text-file", str(tmp_path / "sentences.txt")], "not both"),
                          (["--text-file", str(tmp_path / "p.json"), "--audio", str(tmp_path / "p.json")], "cannot be made from raw input")):
        assert main(["predict", "--model", str(run), *argv]) == 2
        assert message in capsys.readouterr().err
    synthetic_speech(tmp_path / "clip.wav", 1.0, 150.0, 0)
    assert main(["predict", "--model", str(run), "--text", "good", "--audio", str(tmp_path / "clip.wav")]) == 2
    err = capsys.readouterr().err
    assert "--audio: this model's audio features cannot be made from raw input" in err and "give only --text" in err
