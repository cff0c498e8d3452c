"""nn.Modules only: mixer, backbone, LM, heads and the inference cache. No data, files or CLI."""

from .cache import InferenceCache, LayerState
from .classifier import MambaClassifier
from .heads import HEAD_NORMS, POOLINGS, ClassificationHead, pool
from .lm import MambaBackbone, MambaBlock, MambaLM
from .mixer import MambaMixer

__all__ = [
    "HEAD_NORMS",
    "POOLINGS",
    "ClassificationHead",
    "InferenceCache",
    "LayerState",
    "MambaBackbone",
    "MambaBlock",
    "MambaClassifier",
    "MambaLM",
    "MambaMixer",
    "pool",
]
