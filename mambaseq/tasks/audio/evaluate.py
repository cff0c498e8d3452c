"""`mambaseq eval audio`: next-sample NLL (bits and nats per sample) of an audio model on held-out files,
and waveform + spectrogram plots.

    from mambaseq.tasks.audio.evaluate import evaluate_audio, plot_audio
    report = evaluate_audio("runs/audio/model")            # the test split the model was trained with
    report = evaluate_audio("runs/audio/model", data="clips/")   # every file of clips/
    plot_audio(["clip.wav"], "plots/")
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ...sysinfo import default_device
from .data import AUDIO_EXTENSIONS, SPLITS, AudioCorpus, AudioInputError, find_audio, load_audio, split_files
from .model_dir import load_audio_model
from .train import data_files, split_root
from .windows import FixedWindows

EVAL_SPLITS = (*SPLITS, "all")


def _eval_files(data: str | Path | None, metadata: dict[str, Any], split: str, model_dir: str | Path
                ) -> tuple[list[Path], str]:
    """The files of `split`, and what they are (for the report)."""
    if data is not None and Path(data).is_file() and Path(data).suffix.lower() in AUDIO_EXTENSIONS:
        files = [Path(data)]
    elif data is not None:
        files = find_audio(data)
    elif "data" not in metadata:
        raise AudioInputError(f"{model_dir}: the model folder does not record its training data; give --data")
    else:
        trained_on = metadata["data"]
        if trained_on is not None and not Path(trained_on).exists():
            raise AudioInputError(f"{model_dir}: its training data {trained_on} is gone; give --data")
        files = data_files(trained_on)
        data = trained_on
    if split == "all":
        return files, "all"
    params = metadata.get("split")
    if not isinstance(params, dict):
        raise AudioInputError(f"{model_dir}: no split recorded in the model folder; use split 'all' with --data")
    try:
        parts = split_files(files, params["valid_fraction"], params["test_fraction"], params["group_pattern"],
                            params["seed"], split_root(data))
    except (KeyError, TypeError) as err:
        raise AudioInputError(f"{model_dir}: unusable split metadata ({err})") from None
    except ValueError as err:
        raise AudioInputError(" ".join(str(err).split())) from None
    return parts[split], split


@torch.no_grad()
def evaluate_audio(model_dir: str | Path, data: str | Path | None = None, split: str | None = None,
                   max_windows: int | None = None, batch_size: int = 8, device: str | None = None,
                   on_window: Callable[[int], None] | None = None, seq_len: int | None = None) -> dict[str, Any]:
    """Next-sample NLL of the model in `model_dir` over non-overlapping windows tiling held-out files.

    Files are read, resampled and quantized with the model's own sample rate and codec. With no
    `data`: the model's training files (from its metadata), split as in training, `split` "test" by
    default (or "valid", "train"). With `data` (a folder, a manifest or one audio file): those files,
    split "all" by default. Windows are seq_len + 1 samples (seq_len: the training length by default),
    scored as in training: the first sample of a window is context only, padding never counts.
    `max_windows` keeps a fixed random subset (seeded with the split seed, as validation in training).
    `on_window(n)` is called after each batch of n windows.

    Returns {"bits_per_sample", "nats_per_sample", "samples", "windows", "files", "seconds", "split",
    "seq_len", "sample_rate", "codec", "per_file": [{"file", "samples", "bits_per_sample"}, ...]}.
    """
    split = split or ("all" if data is not None else "test")
    if split not in EVAL_SPLITS:
        raise AudioInputError(f"unknown split {split!r}; choose one of {', '.join(EVAL_SPLITS)}")
    if max_windows is not None and max_windows < 1:
        raise AudioInputError(f"max_windows must be positive, got {max_windows}")
    if batch_size < 1:
        raise AudioInputError(f"batch_size must be positive, got {batch_size}")
    device = device or default_device()
    model, codec, rate, metadata = load_audio_model(model_dir, device)
    seq_len = int(metadata.get("seq_len", rate)) if seq_len is None else seq_len
    if seq_len < 1:
        raise AudioInputError(f"seq_len must be positive, got {seq_len}")
    files, split = _eval_files(data, metadata, split, model_dir)
    if not files:
        raise AudioInputError(f"no {split} files to evaluate")
    corpus = AudioCorpus(files, rate, codec)
    seed = int((metadata.get("split") or {}).get("seed", 0))
    windows = FixedWindows(corpus, None, seq_len + 1, max_windows, seed)
    device_type = torch.device(device).type
    vocab = model.config.vocab_size
    nll_per_window, samples_per_window = [], []
    for ids, mask in DataLoader(windows, batch_size=batch_size):
        ids, mask = ids.to(device), mask.to(device)
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=device_type == "cuda"):
            logits = model(ids[:, :-1])[..., :vocab]
        nll = F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")
        # Per window, for the per-file figures; padded targets are dropped, not multiplied by zero.
        keep = mask[:, 1:]
        nll_per_window += torch.where(keep, nll, 0.0).sum(dim=1).double().tolist()
        samples_per_window += keep.sum(dim=1).tolist()
        if on_window is not None:
            on_window(len(ids))
    total_nll, total = math.fsum(nll_per_window), sum(samples_per_window)
    if total == 0:
        raise AudioInputError("nothing to evaluate: every window is a single sample")
    per_file: dict[int, list[float]] = {}
    for (file, _), nll, samples in zip(windows.tiles, nll_per_window, samples_per_window, strict=True):
        acc = per_file.setdefault(file, [0.0, 0])
        acc[0] += nll
        acc[1] += samples
    return {
        "bits_per_sample": total_nll / total / math.log(2), "nats_per_sample": total_nll / total,
        "samples": total, "windows": len(windows), "files": len(corpus),
        "seconds": float(corpus.lengths.sum()) / rate, "split": split, "seq_len": seq_len, "sample_rate": rate,
        "codec": codec.to_dict(),
        "per_file": [{"file": str(corpus.files[i]), "samples": n,
                      "bits_per_sample": nll / n / math.log(2) if n else None}
                     for i, (nll, n) in sorted(per_file.items())],
    }


def _spectrogram(wave: np.ndarray, rate: int) -> tuple[np.ndarray, int, int]:
    """(dB magnitudes (freqs, frames), n_fft, hop): a Hann STFT of about 32 ms windows, 75% overlap."""
    n_fft = 2 ** max(6, round(math.log2(rate * 0.032)))
    hop = n_fft // 4
    x = torch.from_numpy(np.asarray(wave, dtype=np.float32))
    if len(x) < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - len(x)))
    spec = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft), center=True, return_complex=True).abs()
    # dB relative to full scale; the floor keeps digital silence finite.
    db = 20 * torch.log10(spec / (n_fft / 4) + 1e-6)
    return db.numpy(), n_fft, hop


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "audio"


def plot_audio(files_or_waves: Sequence[str | Path | np.ndarray | torch.Tensor] | Mapping[str, np.ndarray],
               out_dir: str | Path, sample_rate: int | None = None) -> list[Path]:
    """One PNG per item in `out_dir`: the waveform above its spectrogram (dB, Hann STFT of ~32 ms).

    Items are audio files (read at their own rate, mixed to mono) or waveforms (n,) in [-1, 1] at
    `sample_rate`; a mapping names its waveforms. Files are named after the file or key
    (`<name>.png`, numbered when names repeat). Returns the paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(files_or_waves, Mapping):
        items = list(files_or_waves.items())
    else:
        items = [(Path(item).stem if isinstance(item, str | Path) else f"wave_{i}", item)
                 for i, item in enumerate(files_or_waves)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    used: set[str] = set()
    for name, item in items:
        if isinstance(item, str | Path):
            if not Path(item).is_file():
                raise AudioInputError(f"{item}: no such file")
            try:
                rate = sf.info(str(item)).samplerate
            except (sf.LibsndfileError, RuntimeError, OSError) as err:
                raise AudioInputError(f"{item}: cannot read audio ({' '.join(str(err).split())})") from None
            wave = load_audio(item, rate)
        else:
            if sample_rate is None:
                raise ValueError("plot_audio: waveforms need a sample_rate")
            rate = sample_rate
            wave = np.asarray(item.detach().cpu() if isinstance(item, torch.Tensor) else item, dtype=np.float32)
            if wave.ndim != 1 or not len(wave):
                raise ValueError(f"plot_audio: {name}: expected a non-empty 1-D waveform, got shape {wave.shape}")
        stem = _safe_name(str(name))
        base, n = stem, 1
        while stem in used:
            n += 1
            stem = f"{base}_{n}"
        used.add(stem)
        db, _, hop = _spectrogram(wave, rate)
        seconds = len(wave) / rate
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5), sharex=True,
                                          gridspec_kw={"height_ratios": [1, 2]})
        top.plot(np.arange(len(wave)) / rate, wave, linewidth=0.4, color="tab:blue")
        top.set_ylim(-1.05, 1.05)
        top.set_ylabel("amplitude")
        top.set_title(f"{name}  ({seconds:.2f} s at {rate} Hz)")
        image = bottom.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=max(db.max() - 90, -120),
                              vmax=db.max(), extent=(0, db.shape[1] * hop / rate, 0, rate / 2))
        bottom.set_xlim(0, seconds)
        bottom.set_xlabel("time (s)")
        bottom.set_ylabel("frequency (Hz)")
        fig.colorbar(image, ax=[top, bottom], label="dB", shrink=0.6)
        path = out_dir / f"{stem}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
