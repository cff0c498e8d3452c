"""nn.Modules only: mixer, backbone, LM, heads and the inference cache. No data, files or CLI."""

from .cache import InferenceCache, LayerState, StackedStates
from .classifier import MambaClassifier
from .heads import HEAD_NORMS, POOLINGS, ClassificationHead, pool
from .lm import MambaBackbone, MambaBlock, MambaLM
from .mixer import MambaMixer
from .sashimi import SASHIMI_PRESETS, SashimiCache, SashimiConfig, SashimiLM

__all__ = [
    "HEAD_NORMS",
    "POOLINGS",
    "SASHIMI_PRESETS",
    "ClassificationHead",
    "InferenceCache",
    "LayerState",
    "MambaBackbone",
    "MambaBlock",
    "MambaClassifier",
    "MambaLM",
    "MambaMixer",
    "SashimiCache",
    "SashimiConfig",
    "SashimiLM",
    "StackedStates",
    "pool",
]
