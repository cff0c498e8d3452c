"""`mambaseq train audio`: next-sample prediction on quantized waveforms, as a Python function.

    from mambaseq.tasks.audio.train import AudioTrainConfig, train_audio
    result = train_audio(AudioTrainConfig.from_recipe("audio-tiny-cpu", data="clips/", out="runs/x"))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import lightning as L

from ...checkpoint import save_pretrained
from ...config import PRESETS, MambaConfig
from ...models import SASHIMI_PRESETS, SashimiConfig
from ...training.audio_module import AudioLMModule
from ...training.data import length_schedule
from ...training.trainer import ChunkedTraining, TrainRecipe, global_step, is_global_zero
from .codec import Codec, make_codec
from .data import AudioCorpus, AudioInputError, CorpusSummary, find_audio, split_files
from .model_dir import audio_metadata
from .windows import AudioBatches, FixedWindows


def bundled_clips() -> list[Path]:
    """The demo piano clips shipped in the package (see data/SOURCE.md), sorted by name."""
    folder = resources.files("mambaseq.tasks.audio") / "data"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".flac"))


def bundled_folder() -> Path:
    return Path(str(resources.files("mambaseq.tasks.audio") / "data"))


# The bundled clips are <piece>_<rendition>.flac: split by piece, so validation is on unheard pieces.
BUNDLED_GROUP_PATTERN = r"^([^_]+)_"


@dataclass
class AudioTrainConfig(ChunkedTraining, TrainRecipe):
    """Every field can be set in a recipe YAML and overridden from the command line."""

    RECIPES: ClassVar[tuple[str, ...]] = ("audio-tiny-cpu", "sc09", "music")
    RECIPE_PACKAGE: ClassVar[str] = "mambaseq.tasks.audio"
    input_error: ClassVar[type[Exception]] = AudioInputError

    data: str | None = None  # a folder of audio files or a manifest; None: the bundled demo clips
    out: str = "runs/audio"
    model: str = "sashimi-tiny"  # a SaShiMi preset (sashimi-tiny, sashimi-sc09) or a MambaConfig preset
    sample_rate: int = 16000
    codec: str = "mulaw"  # mulaw | linear
    bits: int = 8
    seq_len: int = 16000  # samples predicted per window (the model reads seq_len + 1)
    lr: float = 2e-3
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    # A regex on paths relative to the data folder; its first group (or whole match) is the speaker,
    # voice or piece key, and no key is in two splits. None: each file is its own group (the bundled
    # clips: by piece).
    group_pattern: str | None = None
    split_seed: int = 0
    eval_windows: int | None = 64  # validation windows (a fixed subset; None: every window)
    eval_batch_size: int | None = None  # default: batch_size

    def make_codec(self) -> Codec:
        try:
            return make_codec(self.codec, self.bits)
        except ValueError as err:
            raise AudioInputError(str(err)) from None

    def model_config(self) -> tuple[str, MambaConfig | SashimiConfig]:
        """(architecture, config): a SashimiLM for SaShiMi presets, a MambaLM for MambaConfig presets;
        the vocabulary is the codec's classes."""
        classes = {"vocab_size": self.make_codec().num_classes}
        if self.model in SASHIMI_PRESETS:
            return "SashimiLM", SashimiConfig.from_preset(self.model, **{**self.model_overrides, **classes})
        if self.model in PRESETS:
            return "MambaLM", MambaConfig.from_preset(self.model, **{**self.model_overrides, **classes})
        raise AudioInputError(f"unknown model {self.model!r}; choose a SaShiMi preset "
                              f"({', '.join(SASHIMI_PRESETS)}) or a Mamba preset ({', '.join(PRESETS)})")

    def check(self) -> None:
        """One-line errors for values no run can use, before any file is read."""
        self.check_common()
        self.check_chunk_tokens()
        if self.sample_rate < 1:
            raise AudioInputError(f"sample_rate must be a positive integer, got {self.sample_rate!r}")
        if self.eval_windows is not None and self.eval_windows < 1:
            raise AudioInputError(f"eval_windows must be a positive integer or null, got {self.eval_windows!r}")
        if not 0 < self.valid_fraction < 1:
            raise AudioInputError(f"valid_fraction must be in (0, 1): training needs validation files, "
                                  f"got {self.valid_fraction}")
        if not 0 <= self.test_fraction < 1 or self.valid_fraction + self.test_fraction >= 1:
            raise AudioInputError(f"test_fraction must be in [0, 1) and leave files for training, got "
                                  f"valid {self.valid_fraction} + test {self.test_fraction}")
        self.model_config()


@dataclass
class AudioData:
    """A loaded corpus and its split: what `train_audio` trains and validates on."""

    corpus: AudioCorpus
    splits: dict[str, list[Path]]
    source: str  # what to tell the user the files are
    group_pattern: str | None  # the one the split used

    @property
    def summary(self) -> CorpusSummary:
        return self.corpus.summary


def split_root(data: str | Path | None) -> Path | None:
    """The folder split keys are relative to: the data folder itself (files added elsewhere in it never
    move other keys), or None (the folder holding all files) for a manifest."""
    if data is None:
        return bundled_folder()
    return Path(data) if Path(data).is_dir() else None


def data_files(data: str | Path | None) -> list[Path]:
    """The audio files of a folder or manifest, or the bundled clips when `data` is None."""
    return bundled_clips() if data is None else find_audio(data)


def load_data(cfg: AudioTrainConfig, on_file: Callable[[int], None] | None = None) -> AudioData:
    """Find, split and load (resample, quantize) the files of `cfg.data`; `on_file(1)` after each file."""
    cfg.check()
    files = data_files(cfg.data)
    pattern = cfg.group_pattern if cfg.data is not None or cfg.group_pattern else BUNDLED_GROUP_PATTERN
    # Loaded first, so a folder of nothing but unreadable files says so (rather than failing to split).
    # The split is still of the whole file list: which files fail to load does not move the others.
    corpus = AudioCorpus(files, cfg.sample_rate, cfg.make_codec(), on_file)
    try:
        splits = split_files(files, cfg.valid_fraction, cfg.test_fraction, pattern, cfg.split_seed,
                             split_root(cfg.data))
    except ValueError as err:  # AudioInputError included: its message is already one line
        raise AudioInputError(" ".join(str(err).split())) from None
    source = str(cfg.data) if cfg.data else "the bundled demo piano clips"
    return AudioData(corpus, splits, source, pattern)


@dataclass
class AudioTrainResult:
    valid_bits_per_sample: float  # of the exported weights
    model_dir: Path
    run_dir: Path
    steps: int  # steps trained
    corpus: CorpusSummary
    files: dict[str, int]  # files per split (skipped files not counted)
    exported_step: int  # the step the exported weights are from (the best validation's, or the last)


def train_audio(cfg: AudioTrainConfig, log: Callable[[str], None] | None = None,
                data: AudioData | None = None) -> AudioTrainResult:
    """Train (or resume) an audio LM as `cfg` says; returns validation bits/sample and the model folder.

    `data` is what `load_data(cfg)` returns (loaded here when not given, so a caller can show loading
    progress). `log` receives the corpus summary and a one-line description once training starts.
    On several devices every rank runs this (and loads the corpus); rank 0 alone logs and writes the
    model folder, the other ranks return the same figures once training ends.
    """
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = data or load_data(cfg)
    corpus = data.corpus
    used = {part: corpus.indices(files) for part, files in data.splits.items()}
    if log is not None and is_global_zero():
        log(f"loaded {describe_corpus(data.summary)} from {data.source}; "
            f"{', '.join(f'{part} {len(idx)}' for part, idx in used.items())} files")
    train_lengths = corpus.lengths[used["train"]] if used["train"] else corpus.lengths[:0]
    if not len(train_lengths):
        raise AudioInputError("no usable training audio: every training file was skipped on loading")
    if cfg.seq_len > train_lengths.max():
        longest = int(train_lengths.max())
        raise AudioInputError(f"seq_len {cfg.seq_len} is longer than every training file (longest {longest} "
                              f"samples = {longest / cfg.sample_rate:.2f} s at {cfg.sample_rate} Hz); "
                              "lower --seq-len or give longer audio")
    architecture, model_config = cfg.model_config()
    module = AudioLMModule(architecture, model_config.to_dict(), **cfg.optimizer_kwargs(),
                           chunk_tokens=cfg.chunk_tokens)
    schedule = length_schedule(cfg.seq_len, cfg.warmup_start_len, cfg.warmup_stage_steps)
    # Windows of L + 1 samples: L predictions each (extra=1). Predicted samples per step stay constant
    # through the warmup: batch_size x seq_len / L windows, which split_batch checks split over ranks.
    train_batches = AudioBatches(corpus, lambda step: schedule(step) + 1, cfg.batch_size * cfg.seq_len,
                                 cfg.seed, data.splits["train"], first_step=global_step(module), extra=1)
    valid = FixedWindows(corpus, data.splits["valid"], cfg.seq_len + 1, cfg.eval_windows, cfg.split_seed)
    if log is not None and is_global_zero():
        log(f"{describe(cfg)}; {len(valid)} validation windows")
    eval_batch = cfg.eval_batch_size or cfg.batch_size
    fitted = cfg.fit(module, train_batches, valid, eval_batch, "val/bits_per_sample")
    run_dir = Path(cfg.out)
    files = {part: len(idx) for part, idx in used.items()}
    if not fitted.trainer.is_global_zero:
        return AudioTrainResult(fitted.metric, run_dir / "model", run_dir, fitted.steps, data.summary, files,
                                fitted.step)
    metadata = audio_metadata(
        cfg.sample_rate, corpus.codec, seq_len=cfg.seq_len, data=data_reference(cfg.data),
        split=split_metadata(cfg, data.group_pattern, files), eval_windows=cfg.eval_windows, model_preset=cfg.model,
        **fitted.metadata(), valid_bits_per_sample=fitted.metric)
    model_dir = save_pretrained(module.model.cpu(), run_dir / "model", metadata=metadata)
    return AudioTrainResult(fitted.metric, model_dir, run_dir, fitted.steps, data.summary, files, fitted.step)


def data_reference(data: str | None) -> str | None:
    """How the model folder names its training data: an absolute path, or None for the bundled clips."""
    return None if data is None else str(Path(data).absolute())


def split_metadata(cfg: AudioTrainConfig, group_pattern: str | None, files: dict[str, int]) -> dict[str, Any]:
    """What evaluation needs to rebuild the same split (and the file counts to check it against)."""
    return {"valid_fraction": cfg.valid_fraction, "test_fraction": cfg.test_fraction,
            "group_pattern": group_pattern, "seed": cfg.split_seed, "files": files}


def describe_corpus(summary: CorpusSummary) -> str:
    """'28 files, 67.2 s of audio' (hours from 0.1 h on), then the skipped files, if any."""
    seconds = summary.seconds
    amount = f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.1f} s"
    text = f"{summary.loaded} files, {amount} of audio"
    if summary.skipped:
        path, reason = summary.skipped[0]
        text += f"; {len(summary.skipped)} skipped (first: {path}: {reason})"
    return text


def describe(cfg: AudioTrainConfig) -> str:
    architecture, _ = cfg.model_config()
    seconds = cfg.max_steps * cfg.batch_size * cfg.seq_len / cfg.sample_rate
    devices = "" if cfg.devices == 1 and cfg.num_nodes == 1 else \
        f" over {cfg.devices} devices x {cfg.num_nodes} nodes"
    return (f"{cfg.model} ({architecture}), {cfg.codec} {cfg.bits}-bit at {cfg.sample_rate} Hz, "
            f"seq_len {cfg.seq_len} ({cfg.seq_len / cfg.sample_rate:.3g} s){cfg.chunk_description()}, "
            f"batch {cfg.batch_size}{devices}, "
            f"{cfg.max_steps} steps, {math.ceil(seconds / 60)} min of audio seen")
