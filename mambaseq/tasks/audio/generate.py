"""`mambaseq generate audio`: sample raw audio from an audio model folder, many streams at once.

Files written under OUT:

    sample_000.wav, sample_001.wav, ...   mono, 16-bit PCM, at the model's sample rate. With a prompt,
                                          each file starts with the prompt (as the codec quantized it)
                                          followed by the generated audio; without one, it holds the
                                          generated audio only.
    samples.json                          the model, rate and codec, and one record per file: path,
                                          seed, sampling settings, seconds, prompt, and the model's
                                          log-likelihood of the generated part.

Without a prompt every stream starts from one silence sample (the codec's id of 0.0): the models are
trained on windows cut anywhere in a file, with no start token, so the first sample needs a context.
That sample conditions the model but is written nowhere and is not scored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from ...fileio import atomic_write
from ...generation import SamplingConfig, sample_stream
from ...sysinfo import default_device
from .data import AudioInputError, load_audio
from .model_dir import load_audio_model

JSON_NAME = "samples.json"


def sample_name(index: int) -> str:
    return f"sample_{index:03d}.wav"


def batch_sizes(n: int, batch_size: int | None) -> list[int]:
    """The streams of each batch, in order: `n` split into batches of at most `batch_size`."""
    size = batch_size or n
    return [min(size, n - start) for start in range(0, n, size)]


def check_arguments(n: int, seconds: float, prompt_seconds: float, batch_size: int | None) -> None:
    if n < 1:
        raise AudioInputError(f"--n must be >= 1, got {n}")
    if not (0 < seconds < math.inf):
        raise AudioInputError(f"--seconds must be a positive number, got {seconds}")
    if not (0 < prompt_seconds < math.inf):
        raise AudioInputError(f"--prompt-seconds must be a positive number, got {prompt_seconds}")
    if batch_size is not None and batch_size < 1:
        raise AudioInputError(f"--batch-size must be >= 1, got {batch_size}")


def _read_prompt(path: str | Path, rate: int, prompt_seconds: float) -> np.ndarray:
    """The first `prompt_seconds` of `path` at `rate` (float32 mono); the file must be that long."""
    wave = load_audio(path, rate)
    wanted = max(1, round(prompt_seconds * rate))
    if wave.shape[0] < wanted:
        raise AudioInputError(f"{path}: {wave.shape[0] / rate:.3f} s of audio, shorter than --prompt-seconds "
                              f"{prompt_seconds:g}; pass --prompt-seconds {wave.shape[0] / rate:.3f} or less")
    return wave[:wanted]


def _write_wav(path: Path, wave: np.ndarray, rate: int) -> None:
    # Explicit format: atomic_write's temporary name does not end in .wav.
    atomic_write(path, lambda tmp: sf.write(tmp, wave, rate, subtype="PCM_16", format="WAV"))


def generate_audio(model_dir: str | Path, out: str | Path, n: int = 8, seconds: float = 4.0,
                   prompt: str | Path | None = None, prompt_seconds: float = 1.0, temperature: float = 1.0,
                   top_k: int = 0, top_p: float = 1.0, seed: int = 0, batch_size: int | None = None,
                   device: str | None = None, on_progress: Callable[[int], None] | None = None,
                   use_cuda_graph: bool | None = None) -> list[dict[str, Any]]:
    """Generate `n` clips of `seconds` of new audio each and write them under the folder `out`.

    prompt: an audio file (any format load_audio reads; mixed to mono and resampled to the model's
        rate), cut to its first `prompt_seconds`, quantized with the model's codec and given to every
        stream (prefilled once). Every file starts with it.
    batch_size: streams generated together (default: all n); batches run one after another and draw
        from one generator seeded with `seed`, so the same seed, n, batch size and device give the
        same files.
    on_progress(done): samples generated per stream so far, counted along the batches one after
        another (from 0 to len(batch_sizes(n, batch_size)) * round(seconds * rate)).

    Returns the per-file records written to samples.json.
    """
    check_arguments(n, seconds, prompt_seconds, batch_size)
    sampling = SamplingConfig(temperature, top_k, top_p)
    device = device or default_device()
    model, codec, rate, metadata = load_audio_model(model_dir, device)
    n_new = max(1, round(seconds * rate))
    prompt_info: dict[str, Any] | None = None
    if prompt is not None:
        wave = _read_prompt(prompt, rate, prompt_seconds)
        prompt_ids = codec.encode(wave)[None]  # (1, P): one prompt shared by every stream
        prompt_info = {"path": str(prompt), "seconds": prompt_ids.shape[1] / rate, "samples": prompt_ids.shape[1]}
    else:
        prompt_ids = None
    generator = torch.Generator(device=device).manual_seed(seed)
    settings = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "batch_size": batch_size or n,
                "device": str(torch.device(device))}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    done_before = 0
    for size in batch_sizes(n, batch_size):
        progress = None if on_progress is None else (lambda done, base=done_before: on_progress(base + done))
        result = sample_stream(model, prompt_ids, n_new, sampling, generator, batch_size=size,
                               start_token=codec.silence_id, vocab_limit=codec.num_classes,
                               use_cuda_graph=use_cuda_graph, on_progress=progress)
        done_before += n_new
        generated = result.tokens.cpu()
        log_likelihood = result.log_likelihood.cpu().tolist()
        for row in range(size):
            ids = generated[row] if prompt_ids is None else torch.cat([prompt_ids[0], generated[row]])
            index = len(records)
            _write_wav(out / sample_name(index), codec.decode(ids).numpy(), rate)
            records.append({
                "path": sample_name(index),
                "stream": index,
                "seed": seed,
                "settings": settings,
                "seconds": ids.numel() / rate,
                "generated_seconds": n_new / rate,
                "prompt": prompt_info,
                "log_likelihood_nats": log_likelihood[row],
                # The model's negative log-likelihood of the generated samples, in bits per sample.
                "bits_per_sample": -log_likelihood[row] / (n_new * math.log(2)),
                "cuda_graph": result.used_cuda_graph,
            })
    document = {"model": str(model_dir), "sample_rate": rate, "codec": codec.to_dict(),
                "architecture": type(model).__name__, "task": metadata.get("task"),
                "log_likelihood": "log p of each generated sample under the model at temperature 1 without "
                                  "top-k/top-p (whatever the sampling settings), summed over the generated part",
                "samples": records}
    atomic_write(out / JSON_NAME, lambda tmp: Path(tmp).write_text(json.dumps(document, indent=2) + "\n"))
    return records
