"""imer: incomplete multimodal emotion recognition (ComP, PROMISE, baselines, honest protocols)."""

__version__ = "0.1.0"
