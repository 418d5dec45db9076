"""Building blocks shared by methods: masked pooling, MLPs, masked sequence encoders."""

from imer.layers.blocks import MLP, ModalityEmbedding, dialogue_mean, masked_mean
from imer.layers.sequence import MaskedTransformer

__all__ = ["MLP", "MaskedTransformer", "ModalityEmbedding", "dialogue_mean", "masked_mean"]
