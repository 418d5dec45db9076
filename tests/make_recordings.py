"""Write a small set of "own recordings" for the README walk-through and its test.

``python tests/make_recordings.py DIR`` writes into DIR:

* ``clips/<id>.wav``: one spoken sentence per utterance (espeak-ng when it is
  installed, else a voiced synthetic signal whose pitch follows the label),
* ``transcripts.csv`` (utterance_id, text), ``labels.csv`` (utterance_id,
  label, dialogue),
* ``openface/<id>.csv``: face-tracking output in the OpenFace 2.x layout
  (smiles on positive utterances, some frames without a face).

6 dialogues × 4 utterances, ids ``talk<d>_<n>``. Nothing is downloaded and
nothing here comes from a real person.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np

POSITIVE = ["it was really good", "i loved this movie", "what a wonderful day", "great acting and a fine story", "this made me happy"]
NEGATIVE = ["it was really bad", "i hated this movie", "what an awful day", "terrible acting and a dull story", "this made me sad"]
AU_R = [1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45]
AU_C = [1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 28, 45]
RATE = 16000


def utterances() -> list[tuple[str, str, str, str]]:
    """``(utterance_id, text, label, dialogue)`` of every utterance."""
    rows = []
    for d in range(6):
        for k in range(4):
            positive = (d + k) % 2 == 1
            text = (POSITIVE if positive else NEGATIVE)[(d * 4 + k) % 5]
            rows.append((f"talk{d}_{k + 1}", text, "positive" if positive else "negative", f"talk{d}"))
    return rows


def synthetic_speech(path: Path, seconds: float, pitch: float, seed: int) -> None:
    """A voiced, amplitude-modulated harmonic signal as 16-bit mono WAV (stand-in for speech)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = pitch * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    voice = sum(np.sin(h * phase) / h for h in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 0.5
    signal = 0.3 * voice * envelope + 0.01 * rng.standard_normal(len(t))
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(RATE)
        fh.writeframes((np.clip(signal, -1, 1) * 32767).astype("<i2").tobytes())


def speak(path: Path, text: str, speed: int, pitch: float, seed: int) -> None:
    """espeak-ng's voice when installed, else :func:`synthetic_speech`."""
    if shutil.which("espeak-ng"):
        subprocess.run(["espeak-ng", "-s", str(speed), "-w", str(path), text], check=True, capture_output=True)
    else:
        synthetic_speech(path, 1.0 + 0.05 * len(text.split()), pitch, seed)


def openface_csv(path: Path, positive: bool, seed: int, frames: int = 60) -> None:
    """Face-tracking rows in the OpenFace 2.x layout (column names with a leading space, as OpenFace writes them)."""
    rng = np.random.default_rng(seed)
    columns = ["frame", "face_id", "timestamp", "confidence", "success",
               *[f"gaze_{e}_{a}" for e in (0, 1) for a in "xyz"], "gaze_angle_x", "gaze_angle_y",
               *[f"pose_{p}" for p in ("Tx", "Ty", "Tz", "Rx", "Ry", "Rz")],
               *[f"AU{n:02d}_r" for n in AU_R], *[f"AU{n:02d}_c" for n in AU_C]]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([columns[0]] + [f" {c}" for c in columns[1:]])
        for f in range(frames):
            success = int(f % 10 != 9)
            gaze = rng.normal(0, 0.1, 8)
            pose = rng.normal([0, 0, 500, 0, 0, 0], [5, 5, 20, 0.1, 0.1, 0.1])
            au_r = np.clip(rng.normal(0.3, 0.2, len(AU_R)), 0, 5)
            au_r[AU_R.index(12)] += 2.0 if positive else 0.0
            au_r[AU_R.index(15)] += 0.0 if positive else 1.5
            au_c = (au_r[[AU_R.index(n) if n in AU_R else 0 for n in AU_C]] > 1).astype(int)
            writer.writerow([f + 1, 0, f"{f / 30:.3f}", f"{0.95 if success else 0.0:.2f}", success,
                             *[f"{v:.4f}" for v in gaze], *[f"{v:.3f}" for v in pose], *[f"{v:.2f}" for v in au_r], *au_c])


def make_recordings(out: str | Path) -> Path:
    """Write the example recordings into ``out`` (created)."""
    out = Path(out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    (out / "openface").mkdir(exist_ok=True)
    rows = utterances()
    for i, (uid, text, label, _) in enumerate(rows):
        positive = label == "positive"
        speak(out / "clips" / f"{uid}.wav", text, 150 + 10 * (i % 3), 180.0 if positive else 120.0, i)
        openface_csv(out / "openface" / f"{uid}.csv", positive, i)
    with (out / "transcripts.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["utterance_id", "text"])
        writer.writerows((uid, text) for uid, text, _, _ in rows)
    with (out / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["utterance_id", "label", "dialogue"])
        writer.writerows((uid, label, dialogue) for uid, _, label, dialogue in rows)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/make_recordings.py DIR")
    print(f"example recordings written to {make_recordings(sys.argv[1])}")
