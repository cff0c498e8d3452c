"""mambaseq: long-sequence modeling of DNA and raw audio on one Mamba backbone."""

__version__ = "0.1.0"

from .checkpoint import CheckpointError, from_pretrained, load_weights, save_pretrained
from .config import PRESETS, MambaConfig
from .generation import SamplingConfig, generate
from .models import InferenceCache, MambaLM, SashimiConfig, SashimiLM

__all__ = [
    "PRESETS",
    "CheckpointError",
    "InferenceCache",
    "MambaConfig",
    "MambaLM",
    "SamplingConfig",
    "SashimiConfig",
    "SashimiLM",
    "__version__",
    "from_pretrained",
    "generate",
    "load_weights",
    "save_pretrained",
]
