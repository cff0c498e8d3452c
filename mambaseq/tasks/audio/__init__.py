"""Raw audio: quantization codecs, reading and splitting audio files, training and validation windows."""

from .codec import Codec, LinearCodec, MuLawCodec, make_codec
from .data import (
    AUDIO_EXTENSIONS,
    AudioCorpus,
    AudioInputError,
    CorpusSummary,
    SkippedAudioWarning,
    find_audio,
    load_audio,
    split_files,
)
from .windows import AudioBatches, FixedWindows, fixed_windows

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioBatches",
    "AudioCorpus",
    "AudioInputError",
    "Codec",
    "CorpusSummary",
    "FixedWindows",
    "LinearCodec",
    "MuLawCodec",
    "SkippedAudioWarning",
    "find_audio",
    "fixed_windows",
    "load_audio",
    "make_codec",
    "split_files",
]
