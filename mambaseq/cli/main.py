"""`mambaseq` entry point: the Typer app, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from .. import __version__

app = typer.Typer(
    name="mambaseq",
    help="Long-sequence modeling of DNA and raw audio on one Mamba backbone.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# Typer vendors click in recent releases and depends on it in older ones: reach the base class of
# its usage errors through a public name so both work.
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class UserError(ClickException):
    """Bad input named precisely: printed as one line, exit code 2."""

    exit_code = 2


def _group(name: str, help_text: str) -> typer.Typer:
    """A `mambaseq <verb>` group whose commands are the modalities (dna, audio)."""
    group = typer.Typer(help=help_text, no_args_is_help=True, add_completion=False)
    app.add_typer(group, name=name)
    return group


@contextmanager
def _one_line_errors(*extra: type[Exception]) -> Iterator[None]:
    """Bad input (DnaInputError, AudioInputError, CheckpointError, or the `extra` types) becomes a one-line
    UserError."""
    from ..checkpoint import CheckpointError
    from ..tasks.audio.data import AudioInputError
    from ..tasks.dna.fasta import DnaInputError

    try:
        yield
    except (DnaInputError, AudioInputError, CheckpointError, *extra) as err:
        # A file name that is not valid UTF-8 reaches us with surrogate escapes, which no console can print.
        message = " ".join(str(err).split()).encode("utf-8", "backslashreplace").decode("utf-8")
        raise UserError(message) from None


@contextmanager
def _progress(label: str, unit: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """A transient progress bar on stderr; yields `advance(n)`."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    count = "{task.completed:,}/{task.total:,}" if total else "{task.completed:,}"
    with Progress(TextColumn(label), BarColumn(), TextColumn(f"{count} {unit}"), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)


def _size(config: dict[str, Any]) -> str:
    """One line of a model config: blocks and widths (per stage for a multi-scale U-Net)."""
    if "pool" in config:  # SashimiConfig: n_layer per stage, widths growing by pool_expand per pooling
        return (f"U-Net, pools {config['pool']}, blocks per stage {config['n_layer']}, d_model {config['d_model']} "
                f"(x{config['pool_expand']} per pool), d_state {config['d_state']}, vocab {config['vocab_size']}")
    return (f"{config['n_layer']} blocks x d_model {config['d_model']}, d_state {config['d_state']}, "
            f"vocab {config['vocab_size']}")


@contextmanager
def _skipped_files_as_lines(command: str) -> Iterator[None]:
    """Each audio file skipped on loading as one line on stderr (not Python's two-line warning)."""
    import warnings

    from ..tasks.audio.data import SkippedAudioWarning
    from ..training.trainer import is_global_zero

    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, SkippedAudioWarning):
            if is_global_zero():  # every rank of a multi-device run loads the files: report them once
                typer.echo(f"{command}: warning: {message}", err=True)
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


def _model_option() -> Any:
    return typer.Option(..., "--model", help="Model folder (config.json + model.safetensors).")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mambaseq {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Long-sequence modeling of DNA and raw audio on one Mamba backbone.

    Example: mambaseq info
    """


@app.command()
def info(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    model: str = typer.Option(None, "--model", help="Describe this model folder instead (reads config.json and "
                              "the safetensors header only; runs no code from it)."),
) -> None:
    """Versions, devices, and which backend each kernel op uses on each device; or what a model folder holds.

    Example: MAMBASEQ_KERNELS=reference mambaseq info --json
    Example: mambaseq info --model runs/dna/model
    """
    from ..kernels import KernelBackendError
    from ..sysinfo import system_report

    if model is not None:
        _describe_model(model, as_json)
        return

    try:
        report = system_report()
    except KernelBackendError as err:
        raise UserError(str(err)) from None
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    console = Console()
    keys = ("mambaseq", "python", "platform", "torch", "torch_cuda", "triton", "kernel_backend_requested")
    for key in keys:
        console.print(f"[bold]{key:>24}[/]  {report[key]}")
    for device in report["devices"]:
        extra = f", {device['memory_gib']} GiB, sm_{device['capability'].replace('.', '')}" \
            if device["type"] == "cuda" else f", {device['threads']} threads"
        console.print(f"[bold]{'device':>24}[/]  {device['name']}: {device['description']}{extra}")
    table = Table(title="kernel backends", show_header=True)
    table.add_column("op")
    for device in report["kernels"]:
        table.add_column(device)
    for op in next(iter(report["kernels"].values())):
        table.add_row(op, *(row[op] for row in report["kernels"].values()))
    console.print(table)


def _describe_model(directory: str, as_json: bool) -> None:
    from ..checkpoint import describe_model_dir

    with _one_line_errors():
        report = describe_model_dir(directory)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    console = Console()
    config, metadata = report["model"], report["metadata"]
    rows = {"folder": report["path"], "architecture": report["architecture"],
            "task": metadata.get("task", "(not recorded)"),
            "size": _size(config),
            "parameters": f"{report['parameters']:,} in {report['tensors']} tensors ({', '.join(report['dtypes'])})",
            "written by": f"mambaseq {report['mambaseq_version']} (format {report['format_version']})"}
    if report["head"]:
        head = report["head"]
        rows["head"] = f"{head['num_classes']} classes, {head['pooling']} pooling, {head.get('norm', 'none')} norm"
    if isinstance(metadata.get("codec"), dict):
        rows["audio"] = (f"{metadata.get('sample_rate', '?')} Hz, {metadata['codec'].get('name')} "
                         f"{metadata['codec'].get('bits')} bits")
    for key in ("classes", "seq_len", "steps", "trained_steps", "valid_bits_per_base", "valid_bits_per_sample",
                "valid_accuracy", "test_accuracy"):
        if key in metadata:
            value = metadata[key]
            rows[key] = ", ".join(value) if isinstance(value, list) else f"{value:.4f}" \
                if isinstance(value, float) else str(value)
    for key, value in rows.items():
        console.print(f"[bold]{key:>20}[/]  {value}")


train_app = _group("train", "Train a model.")


def _quiet_lightning() -> None:
    import logging
    import warnings

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")


def _overrides(items: list[str] | None, **flags: Any) -> dict[str, Any]:
    """Recipe overrides: --set KEY=VALUE items (values in YAML syntax), then the flags given."""
    import yaml

    overrides: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"--set {key}: cannot read value {value!r}") from None
    return {**overrides, **{k: v for k, v in flags.items() if v is not None}}


def _set_option() -> Any:
    return typer.Option(None, "--set", help="Override any recipe field: --set valid_fraction=0.1 (YAML value syntax).")


def _devices_option() -> Any:
    return typer.Option(None, "--devices", help="Devices per machine (default 1): a count, -1 or auto (all), or GPU "
                        "ids (0,1). --batch-size stays the global batch.")


def _num_nodes_option() -> Any:
    return typer.Option(None, "--num-nodes", help="Machines (torchrun or SLURM start one process per device).")


def _strategy_option() -> Any:
    return typer.Option(None, "--strategy", help="auto | ddp | fsdp (Lightning strategy for several devices).")


def _chunk_tokens_option(unit: str) -> Any:
    return typer.Option(None, "--chunk-tokens", help=f"Train at most this many {unit} at a time: long windows in "
                        "pieces with the states carried (exact gradients, one piece's memory).")


def _devices(value: str | None) -> int | str | None:
    """--devices 2 -> 2; -1, auto and GPU ids ("0,1") as Lightning takes them."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return value


def _train(command: str, run: Callable[[Callable[[str], None]], Any]) -> Any:
    """What every training command shares: `run(log)` with bad input, a diverging run and Lightning's
    own errors as one line, `log` printing to stderr under the command's name. Returns run's result on
    rank 0 and None on the other ranks of a multi-device run (rank 0 reports)."""
    from ..training.guards import NonFiniteError
    from ..training.trainer import is_global_zero

    _quiet_lightning()
    console = Console(stderr=True)
    with _one_line_errors(TypeError, ValueError, NonFiniteError):
        result = run(lambda line: console.print(f"[bold]{command}[/]: {line}"))
    return result if is_global_zero() else None


def _exported(result: Any, label: str, value: float, more: str = "") -> str:
    """A training command's closing line: the validation `label` (bits/base, ...) of the exported
    weights, `more` figures of them, and which step they are from when not the last."""
    if result.exported_step == result.steps:
        return f"validation {label}: {value:.4f}{more} after {result.steps} steps"
    return (f"exported the best weights: step {result.exported_step} of {result.steps} "
            f"(validation {label}: {value:.4f}){more}")


@train_app.command("dna")
def train_dna_command(
    fasta: list[str] = typer.Option(None, "--fasta", help="FASTA files (plain, .gz or bgzip); default: the bundled "
                                    "yeast chromosome I sequences."),
    bed: str = typer.Option(None, "--bed", help="BED file restricting where windows come from."),
    out: str = typer.Option(None, "--out", help="Run folder: checkpoints, logs, and the exported model/."),
    recipe: str = typer.Option("tiny-cpu", "--recipe", "--config",
                               help="Recipe name (tiny-cpu, hg38-1.4m, hg38-7m) or a YAML file."),
    seq_len: int = typer.Option(None, "--seq-len", help="Window length in bases."),
    batch_size: int = typer.Option(None, "--batch-size", help="Windows per step at the full length."),
    max_steps: int = typer.Option(None, "--max-steps", help="Optimizer steps."),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate."),
    model: str = typer.Option(None, "--model", help="Model preset (tiny, dna-1.4m, dna-7m)."),
    seed: int = typer.Option(None, "--seed", help="Seed of model init and window sampling."),
    chunk_tokens: int = _chunk_tokens_option("bases"),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN_DIR/checkpoints/last.ckpt."),
    devices: str = _devices_option(),
    num_nodes: int = _num_nodes_option(),
    strategy: str = _strategy_option(),
    set_: list[str] = _set_option(),
) -> None:
    """Pretrain a nucleotide-level Mamba LM on FASTA files.

    With no arguments: the tiny recipe on the bundled yeast genome (a few minutes on a laptop CPU).
    Example: mambaseq train dna --fasta genome.fa.gz --bed regions.bed --out runs/my-genome
    Example: mambaseq train dna --recipe hg38-1.4m --fasta hg38.fa.gz --devices 4 --strategy ddp
    """
    from ..tasks.dna.train import DnaTrainConfig, train_dna

    overrides = _overrides(set_, fasta=fasta or None, bed=bed, out=out, seq_len=seq_len, batch_size=batch_size,
                           max_steps=max_steps, lr=lr, model=model, seed=seed, chunk_tokens=chunk_tokens,
                           resume=resume or None, devices=_devices(devices), num_nodes=num_nodes, strategy=strategy)
    result = _train("mambaseq train dna",
                    lambda log: train_dna(DnaTrainConfig.from_recipe(recipe, **overrides), log=log))
    if result is None:
        return
    typer.echo(_exported(result, "bits/base", result.valid_bits_per_base))
    typer.echo(f"model saved to: {result.model_dir}")


@train_app.command("audio")
def train_audio_command(
    data: str = typer.Option(None, "--data", help="Folder of audio files (searched recursively) or a manifest "
                             "(.txt/.tsv/.csv, one path per line); default: the bundled demo piano clips."),
    out: str = typer.Option(None, "--out", help="Run folder: checkpoints, logs, and the exported model/."),
    recipe: str = typer.Option("audio-tiny-cpu", "--recipe", "--config",
                               help="Recipe name (audio-tiny-cpu, sc09, music) or a YAML file."),
    seq_len: int = typer.Option(None, "--seq-len", help="Window length in samples."),
    batch_size: int = typer.Option(None, "--batch-size", help="Windows per step at the full length."),
    max_steps: int = typer.Option(None, "--max-steps", help="Optimizer steps."),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate."),
    model: str = typer.Option(None, "--model", help="Model preset (sashimi-tiny, sashimi-sc09, or a Mamba preset "
                              "such as sc09-6m)."),
    seed: int = typer.Option(None, "--seed", help="Seed of model init and window sampling."),
    chunk_tokens: int = _chunk_tokens_option("samples"),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN_DIR/checkpoints/last.ckpt."),
    devices: str = _devices_option(),
    num_nodes: int = _num_nodes_option(),
    strategy: str = _strategy_option(),
    set_: list[str] = _set_option(),
) -> None:
    """Train a sample-level language model on raw audio (8-bit mu-law at 16 kHz by default).

    With no arguments: a tiny SaShiMi on the bundled demo piano clips (2-3 minutes on a laptop CPU).
    Split by speaker or piece with --set group_pattern=REGEX (its first group is the key).
    Example: mambaseq train audio --data sc09/ --recipe sc09 --out runs/sc09
    Example: mambaseq train audio --data music/ --recipe music --devices 4 --strategy ddp --out runs/music
    """
    from ..tasks.audio.train import AudioTrainConfig, load_data, train_audio
    from ..training.trainer import is_global_zero

    overrides = _overrides(set_, data=data, out=out, seq_len=seq_len, batch_size=batch_size, max_steps=max_steps,
                           lr=lr, model=model, seed=seed, chunk_tokens=chunk_tokens, resume=resume or None,
                           devices=_devices(devices), num_nodes=num_nodes, strategy=strategy)

    def run(log: Callable[[str], None]) -> Any:
        cfg = AudioTrainConfig.from_recipe(recipe, **overrides)
        if is_global_zero():  # every rank loads the corpus; one progress bar
            with _progress("loading audio", "files") as advance:
                loaded = load_data(cfg, on_file=advance)
        else:
            loaded = load_data(cfg)
        return train_audio(cfg, log=log, data=loaded)

    with _skipped_files_as_lines("mambaseq train audio"):
        result = _train("mambaseq train audio", run)
    if result is None:
        return
    typer.echo(_exported(result, "bits/sample", result.valid_bits_per_sample))
    typer.echo(f"model saved to: {result.model_dir}")


eval_app = _group("eval", "Evaluate a model.")


@eval_app.command("dna")
def eval_dna_command(
    model: str = _model_option(),
    fasta: list[str] = typer.Option(..., "--fasta", help="FASTA files to score."),
    bed: str = typer.Option(None, "--bed", help="BED intervals to restrict the windows to."),
    seq_len: int = typer.Option(None, "--seq-len", help="Window length (default: the training length)."),
    max_windows: int = typer.Option(None, "--max-windows", help="Evaluate a fixed random subset of windows."),
    batch_size: int = typer.Option(8, "--batch-size"),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
    by_position: bool = typer.Option(False, "--by-position",
                                     help="Also bits/base by context length within the window (1, 2-3, 4-7, ...)."),
) -> None:
    """Bits per base and perplexity of a DNA model on FASTA windows.

    Example: mambaseq eval dna --model runs/dna/model --fasta test.fa.gz --seq-len 4096 --json
    Example: mambaseq eval dna --model runs/dna-32k/model --fasta test.fa.gz --by-position
    """
    from ..tasks.dna.evaluate import evaluate_dna

    with _one_line_errors():
        result = evaluate_dna(model, fasta, bed, seq_len, max_windows, batch_size, by_position=by_position)
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"bits/base {result['bits_per_base']:.4f}  perplexity {result['perplexity']:.4f}  "
               f"({result['windows']} windows of {result['seq_len']}, {result['tokens']} bases)")
    for band in result.get("by_position", []):
        typer.echo(f"  context {band['context_from']:>8}-{band['context_to']:<8} bits/base {band['bits_per_base']:.4f}")


@eval_app.command("audio")
def eval_audio_command(
    model: str = _model_option(),
    data: str = typer.Option(None, "--data", help="Folder, manifest or audio file to score (default: the test "
                             "split of the model's own training data)."),
    split: str = typer.Option(None, "--split", help="test | valid | train | all (default: test on the model's "
                              "data, all on --data)."),
    seq_len: int = typer.Option(None, "--seq-len", help="Window length in samples (default: the training length)."),
    max_windows: int = typer.Option(None, "--max-windows", help="Evaluate a fixed random subset of windows."),
    batch_size: int = typer.Option(8, "--batch-size"),
    plots: str = typer.Option(None, "--plots", help="Folder for waveform + spectrogram PNGs of the scored files "
                              "(the first 8)."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures (and per-file bits) as JSON."),
) -> None:
    """Bits and nats per sample of an audio model on held-out files (read with the model's rate and codec).

    Example: mambaseq eval audio --model runs/audio/model --json
    Example: mambaseq eval audio --model runs/sc09/model --data more-digits/ --plots runs/sc09/plots
    """
    from ..tasks.audio.evaluate import evaluate_audio, plot_audio

    with _one_line_errors(), _skipped_files_as_lines("mambaseq eval audio"):
        with _progress("evaluating", "windows") as advance:
            result = evaluate_audio(model, data, split, max_windows, batch_size, on_window=advance, seq_len=seq_len)
        written = plot_audio([row["file"] for row in result["per_file"][:8]], plots) if plots else []
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(f"bits/sample {result['bits_per_sample']:.4f}  nats/sample {result['nats_per_sample']:.4f}  "
                   f"({result['split']}: {result['files']} files, {result['seconds']:.1f} s; {result['windows']} "
                   f"windows of {result['seq_len']} samples)")
    if written:
        typer.echo(f"{len(written)} plots written to: {plots}", err=as_json)


generate_app = _group("generate", "Sample from a model.")


@generate_app.command("dna")
def generate_dna_command(
    model: str = _model_option(),
    out: str = typer.Option("generated.fa", "--out", help="FASTA file to write."),
    length: int = typer.Option(1000, "--length", help="Bases to generate per sample."),
    n: int = typer.Option(1, "--n", help="Samples per prompt."),
    prompt: str = typer.Option(None, "--prompt", help="Prompt sequence (e.g. ACGT...)."),
    prompt_fasta: str = typer.Option(None, "--prompt-fasta", help="FASTA file: each record is a prompt."),
    temperature: float = typer.Option(1.0, "--temperature", help="0 samples greedily."),
    top_k: int = typer.Option(0, "--top-k", help="Sample among the k likeliest bases (0: all)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (1.0: off)."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same output (on the same device)."),
) -> None:
    """Generate DNA in step mode (constant memory per base) and write it as FASTA.

    Example: mambaseq generate dna --model runs/dna/model --prompt ACGTTGCA --length 5000 --n 4 --out gen.fa
    """

    from ..generation import SamplingConfig
    from ..tasks.dna.generate import generate_dna

    with _one_line_errors(ValueError):
        sampling = SamplingConfig(temperature, top_k, top_p)
        with _progress("generating", "bases", total=length) as advance:
            records = generate_dna(model, out, length, n, prompt, prompt_fasta, sampling, seed,
                                   on_step=lambda i: advance(1))
    typer.echo(f"wrote {len(records)} sequences of {length} bases to {out}")


@contextmanager
def _audio_progress(per_stream: int, sizes: list[int], rate: int) -> Iterator[Callable[[int], None]]:
    """A transient bar over the samples per stream (batches one after another), showing the
    aggregate speed over all streams in samples/s and as a real-time factor (x faster than real
    time at `rate`). Yields `update(done_per_stream)`."""
    import time

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    total = per_stream * len(sizes)
    start = time.perf_counter()
    with Progress(TextColumn("generating"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} samples/clip"),
                  TextColumn("{task.fields[speed]}"), TimeRemainingColumn(), console=Console(stderr=True),
                  transient=True) as progress:
        task = progress.add_task("generating", total=total, speed="")

        def update(done: int) -> None:
            batch = min(done // per_stream, len(sizes) - 1)
            aggregate = sum(sizes[:batch]) * per_stream + (done - batch * per_stream) * sizes[batch]
            speed = aggregate / max(time.perf_counter() - start, 1e-9)
            progress.update(task, completed=done,
                            speed=f"{speed:,.0f} samples/s ({speed / rate:,.1f}x real time, {sum(sizes)} streams)")

        yield update


@generate_app.command("audio")
def generate_audio_command(
    model: str = _model_option(),
    out: str = typer.Option("generated_audio", "--out", help="Folder for sample_000.wav ... and samples.json."),
    n: int = typer.Option(8, "--n", help="Clips to generate."),
    seconds: float = typer.Option(4.0, "--seconds", help="Seconds of new audio per clip (after the prompt)."),
    prompt: str = typer.Option(None, "--prompt", help="Audio file to continue (every clip starts with it)."),
    prompt_seconds: float = typer.Option(1.0, "--prompt-seconds", help="Seconds of --prompt to use, from its start."),
    temperature: float = typer.Option(1.0, "--temperature", help="0 samples greedily."),
    top_k: int = typer.Option(0, "--top-k", help="Sample among the k likeliest values (0: all)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (1.0: off)."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same files (on the same device and batch size)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Clips generated together (default: all of --n)."),
    device: str = typer.Option(None, "--device", help="cuda or cpu (default: cuda when there is a GPU)."),
) -> None:
    """Generate raw audio in step mode, many clips at once (CUDA graphs on a GPU), written as WAV.

    Example: mambaseq generate audio --model runs/audio/model --n 16 --seconds 4 --out samples/
    """

    from ..generation import SamplingConfig
    from ..tasks.audio.data import AudioInputError
    from ..tasks.audio.generate import JSON_NAME, batch_sizes, check_arguments, generate_audio
    from ..tasks.audio.model_dir import check_audio_model

    with _one_line_errors(AudioInputError, ValueError):
        SamplingConfig(temperature, top_k, top_p)
        check_arguments(n, seconds, prompt_seconds, batch_size)
        rate = int(check_audio_model(model)["metadata"]["sample_rate"])
        per_stream = max(1, round(seconds * rate))
        with _audio_progress(per_stream, batch_sizes(n, batch_size), rate) as update:
            records = generate_audio(model, out, n, seconds, prompt, prompt_seconds, temperature, top_k, top_p,
                                     seed, batch_size, device, on_progress=update)
    mean_bits = sum(r["bits_per_sample"] for r in records) / len(records)
    typer.echo(f"wrote {len(records)} clips of {records[0]['seconds']:.2f} s to {out} "
               f"(model: {mean_bits:.3f} bits/sample on average; details in {JSON_NAME})")


embed_app = _group("embed", "Embed sequences with a model.")


@embed_app.command("dna")
def embed_dna_command(
    model: str = _model_option(),
    fasta: list[str] = typer.Option(..., "--fasta", help="FASTA files whose records to embed."),
    out: str = typer.Option(..., "--out", help="Output file: .npy (+ .tsv index), .parquet or .h5."),
    bed: str = typer.Option(None, "--bed", help="Embed these BED intervals instead of whole records."),
    pool: str = typer.Option("mean", "--pool", help="mean | max | first | last | none (per base, .h5 only)."),
    chunk_len: int = typer.Option(65536, "--chunk-len", help="Bases per forward; the state carries over."),
    batch_size: int = typer.Option(8, "--batch-size", help="Sequences embedded together."),
) -> None:
    """One vector per record or interval (or per base), streamed in bounded memory.

    Example: mambaseq embed dna --model runs/dna/model --fasta genome.fa.gz --bed genes.bed --out genes.parquet
    """

    from ..tasks.dna.embed import embed_dna

    with _one_line_errors():
        with _progress("embedding", "bases") as advance:
            result = embed_dna(model, fasta, out, bed, pool, chunk_len, batch_size, on_bases=advance)
    typer.echo(f"wrote {result['rows']} embeddings ({result['pool']}, dim {result['dim']}, "
               f"{result['bases']:,} bases) to {out}")
    if result["skipped_empty"]:
        names = result["skipped_empty"]
        typer.echo(f"skipped {len(names)} empty record(s) with no bases to embed: {', '.join(names[:5])}"
                   f"{', ...' if len(names) > 5 else ''}", err=True)


classify_app = _group("classify", "Species classification of DNA windows: train, eval, predict.")


@classify_app.command("train")
def classify_train_command(
    species: list[str] = typer.Option(None, "--species", help="NAME=FASTA[,FASTA...], once per species; default: "
                                      "the bundled yeast chromosome I sequences as 3 species."),
    manifest: str = typer.Option(None, "--manifest", help="TSV of species<TAB>fasta lines instead of --species."),
    init_from: str = typer.Option(None, "--init-from", help="Pretrained DNA LM folder to start the backbone from."),
    out: str = typer.Option(None, "--out", help="Run folder: checkpoints, logs, test/ report and model/."),
    recipe: str = typer.Option("classify-tiny-cpu", "--recipe", "--config",
                               help="Recipe name (classify-tiny-cpu, classify-1.4m) or a YAML file."),
    seq_len: int = typer.Option(None, "--seq-len", help="Window length in bases."),
    pooling: str = typer.Option(None, "--pooling", help="mean | max | first | last (the head's input)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Windows per step at the full length."),
    max_steps: int = typer.Option(None, "--max-steps", help="Optimizer steps."),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate."),
    model: str = typer.Option(None, "--model", help="Model preset when training from scratch (tiny, dna-1.4m)."),
    seed: int = typer.Option(None, "--seed", help="Seed of model init, window sampling and the fixed windows."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN_DIR/checkpoints/last.ckpt."),
    devices: str = _devices_option(),
    num_nodes: int = _num_nodes_option(),
    strategy: str = _strategy_option(),
    set_: list[str] = _set_option(),
) -> None:
    """Train a classifier that tells which species a DNA window comes from.

    With no arguments: a tiny model on the three bundled yeasts (a few minutes on a laptop CPU).
    Example: mambaseq classify train --species dmel=dmel.fa.gz --species dsim=dsim.fa.gz --seq-len 16384 --out runs/fly
    """
    from ..tasks.dna.classify import ClassifyConfig, train_classifier

    overrides = _overrides(set_, species=species or None, manifest=manifest, init_from=init_from, out=out,
                           seq_len=seq_len, pooling=pooling, batch_size=batch_size, max_steps=max_steps, lr=lr,
                           model=model, seed=seed, resume=resume or None, devices=_devices(devices),
                           num_nodes=num_nodes, strategy=strategy)
    result = _train("mambaseq classify train",
                    lambda log: train_classifier(ClassifyConfig.from_recipe(recipe, **overrides), log=log))
    if result is None:
        return
    typer.echo(_exported(result, "accuracy", result.valid_accuracy,
                         f"; test accuracy: {result.test['accuracy']:.4f} ({result.test['windows']} windows)"))
    typer.echo(f"test report: {result.run_dir / 'test'}")
    typer.echo(f"model saved to: {result.model_dir}")


@classify_app.command("eval")
def classify_eval_command(
    model: str = _model_option(),
    species: list[str] = typer.Option(None, "--species", help="NAME=FASTA[,FASTA...] to evaluate on (default: the "
                                      "model's own training files, test split)."),
    manifest: str = typer.Option(None, "--manifest", help="TSV of species<TAB>fasta lines instead of --species."),
    split: str = typer.Option(None, "--split", help="test | valid | train | all (default: test on the model's "
                              "files, all on files you give)."),
    seq_len: int = typer.Option(None, "--seq-len", help="Window length (default: the training length)."),
    windows: int = typer.Option(None, "--windows", help="Fixed windows per species (default: as in training)."),
    rc: bool = typer.Option(False, "--rc", help="Average each window's prediction with its reverse complement's."),
    batch_size: int = typer.Option(8, "--batch-size"),
    out: str = typer.Option(None, "--out", help="Folder for metrics.json, confusion_matrix.json and .png."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Accuracy, per-species precision/recall/F1 and the confusion matrix of a classifier.

    Example: mambaseq classify eval --model runs/fly/model --rc --out runs/fly/eval
    """
    from ..tasks.dna.classify import evaluate_classifier

    with _one_line_errors():
        report = evaluate_classifier(model, species or None, manifest, split, seq_len, windows, rc, batch_size, out)
    if as_json:
        typer.echo(json.dumps(report))
        return
    table = Table(title=f"{report['split']} windows of {report['seq_len']:,} bases: accuracy {report['accuracy']:.4f}, "
                  f"macro F1 {report['macro_f1']:.4f}")
    for column in ("species", "precision", "recall", "F1", "windows"):
        table.add_column(column, justify="left" if column == "species" else "right")
    for name, row in report["per_class"].items():
        table.add_row(name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"]))
    Console().print(table)
    if out:
        typer.echo(f"report written to: {out}")


@classify_app.command("predict")
def classify_predict_command(
    model: str = _model_option(),
    fasta: list[str] = typer.Option(..., "--fasta", help="FASTA files whose records to classify."),
    out: str = typer.Option("predictions.tsv", "--out", help="TSV of predictions and class probabilities."),
    bed: str = typer.Option(None, "--bed", help="Classify these BED intervals instead of whole records."),
    window: int = typer.Option(None, "--window", help="Window length (default: the training length)."),
    stride: int = typer.Option(None, "--stride", help="Bases between window starts (default: --window)."),
    per: str = typer.Option("auto", "--per", help="window | interval | auto (interval with --bed, else window)."),
    rc: bool = typer.Option(False, "--rc", help="Average each window's prediction with its reverse complement's."),
    batch_size: int = typer.Option(8, "--batch-size"),
) -> None:
    """Predict the species of every window, record or BED interval.

    Example: mambaseq classify predict --model runs/fly/model --fasta contigs.fa --per interval --rc --out pred.tsv
    """

    from ..tasks.dna.classify import predict_species

    with _one_line_errors():
        with _progress("classifying", "windows") as advance:
            result = predict_species(model, fasta, out, bed, window, stride, per, rc, batch_size, on_window=advance)
    typer.echo(f"wrote {result['rows']} predictions ({result['per']}s, {result['windows']} windows of up to "
               f"{result['window']:,} bases) to {out}")


score_app = _group("score", "Score sequences with a model.")


@score_app.command("dna")
def score_dna_command(
    model: str = _model_option(),
    fasta: list[str] = typer.Option(..., "--fasta", help="FASTA files whose records to score."),
    out: str = typer.Option(..., "--out", help="Output table (.tsv)."),
    bed: str = typer.Option(None, "--bed", help="Score these BED intervals instead of whole records."),
    variants: str = typer.Option(None, "--variants", metavar="FILE",
                                 help="Score variants instead: a chrom/pos/ref/alt table or a VCF (.vcf, .vcf.gz)."),
    window: int = typer.Option(1024, "--window", help="Bases of reference around each variant."),
    chunk_len: int = typer.Option(65536, "--chunk-len", help="Bases per forward; the state carries over."),
    batch_size: int = typer.Option(None, "--batch-size",
                                   help="Sequences scored together (default 8; 16 for variants)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Log-likelihood of each record or interval, or the likelihood change of each variant.

    Example: mambaseq score dna --model runs/dna/model --fasta genome.fa.gz --variants snps.vcf.gz --out snps.tsv
    """
    import math

    from ..tasks.dna.score import score_dna, score_variants

    if variants and bed:
        raise UserError("--bed and --variants cannot be combined: variants are scored in windows around them")
    unit = "variants" if variants else "bases"
    with _one_line_errors():
        with _progress("scoring", unit) as advance:
            if variants:
                result = score_variants(model, fasta, variants, out, window, batch_size or 16, on_variant=advance)
            else:
                result = score_dna(model, fasta, out, bed, chunk_len, batch_size or 8, on_bases=advance)
    if as_json:
        # NaN (nothing scored) is not JSON: write null.
        typer.echo(json.dumps({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in result.items()}))
    elif variants:
        typer.echo(f"scored {result['rows']} variants (window {window}) -> {out}")
    else:
        typer.echo(f"scored {result['rows']} records ({result['bases']:,} bases): "
                   f"{result['bits_per_base']:.4f} bits/base -> {out}")


MULTI_VALUE = ("--fasta", "--species")


def expand_multi_value(args: list[str]) -> list[str]:
    """`--fasta a.fa b.fa` -> `--fasta a.fa --fasta b.fa` (click takes one value per flag).

    No command has positional arguments, so a bare word after one of these flags is another value.
    """
    expanded, current = [], None
    for arg in args:
        if arg.startswith("-"):
            current = arg if arg in MULTI_VALUE else None
        elif current is not None and expanded[-1] != current:
            expanded.append(current)
        expanded.append(arg)
    return expanded


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; usage errors and UserError print one line on stderr and exit with code 2."""
    command = typer.main.get_command(app)
    args = expand_multi_value(sys.argv[1:] if argv is None else list(argv))
    try:
        command.main(args=args or ["--help"], prog_name="mambaseq", standalone_mode=False)
    except typer.Exit as done:
        return done.exit_code
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("mambaseq: aborted", err=True)
        return 130
    except ClickException as err:
        message = " ".join(err.format_message().split())
        context = getattr(err, "ctx", None)
        where = context.command_path if context is not None else "mambaseq"
        typer.echo(f"{where}: error: {message}", err=True)
        return 2
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
