"""`mambaseq` entry point: the Typer app, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import json
import sys
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
def info(as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Versions, devices, and which backend each kernel op uses on each device.

    Example: MAMBASEQ_KERNELS=reference mambaseq info --json
    """
    from ..kernels import KernelBackendError
    from ..sysinfo import system_report

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


train_app = _group("train", "Train a model.")


def _quiet_lightning() -> None:
    import logging
    import warnings

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")


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
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN_DIR/checkpoints/last.ckpt."),
    set_: list[str] = typer.Option(None, "--set", help="Override any recipe field: --set valid_fraction=0.1 "
                                   "(YAML value syntax)."),
) -> None:
    """Pretrain a nucleotide-level Mamba LM on FASTA files.

    With no arguments: the tiny recipe on the bundled yeast genome (a few minutes on a laptop CPU).
    Example: mambaseq train dna --fasta genome.fa.gz --bed regions.bed --out runs/my-genome
    """
    import yaml

    from ..tasks.dna.fasta import DnaInputError
    from ..tasks.dna.train import DnaTrainConfig, train_dna

    _quiet_lightning()
    overrides = dict(fasta=fasta or None, bed=bed, out=out, seq_len=seq_len, batch_size=batch_size,
                     max_steps=max_steps, lr=lr, model=model, seed=seed, resume=resume or None)
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"--set {key}: cannot read value {value!r}") from None
    try:
        cfg = DnaTrainConfig.from_recipe(recipe, **overrides)
        console = Console(stderr=True)
        result = train_dna(cfg, log=lambda line: console.print(f"[bold]mambaseq train dna[/]: {line}"))
    except (DnaInputError, TypeError, ValueError) as err:
        raise UserError(" ".join(str(err).split())) from None
    typer.echo(f"validation bits/base: {result.valid_bits_per_base:.4f} after {result.steps} steps")
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
) -> None:
    """Bits per base and perplexity of a DNA model on FASTA windows.

    Example: mambaseq eval dna --model runs/dna/model --fasta test.fa.gz --seq-len 4096 --json
    """
    from ..checkpoint import CheckpointError
    from ..tasks.dna.evaluate import evaluate_dna
    from ..tasks.dna.fasta import DnaInputError

    try:
        result = evaluate_dna(model, fasta, bed, seq_len, max_windows, batch_size)
    except (DnaInputError, CheckpointError) as err:
        raise UserError(" ".join(str(err).split())) from None
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(f"bits/base {result['bits_per_base']:.4f}  perplexity {result['perplexity']:.4f}  "
                   f"({result['windows']} windows of {result['seq_len']}, {result['tokens']} bases)")


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
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ..checkpoint import CheckpointError
    from ..generation import SamplingConfig
    from ..tasks.dna.fasta import DnaInputError
    from ..tasks.dna.generate import generate_dna

    try:
        sampling = SamplingConfig(temperature, top_k, top_p)
        with Progress(TextColumn("generating"), BarColumn(), TextColumn("{task.completed}/{task.total} bases"),
                      TimeRemainingColumn(), console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task("generate", total=length)
            records = generate_dna(model, out, length, n, prompt, prompt_fasta, sampling, seed,
                                   on_step=lambda i: progress.update(task, completed=i + 1))
    except (DnaInputError, CheckpointError, ValueError) as err:
        raise UserError(" ".join(str(err).split())) from None
    typer.echo(f"wrote {len(records)} sequences of {length} bases to {out}")


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
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ..checkpoint import CheckpointError
    from ..tasks.dna.embed import embed_dna
    from ..tasks.dna.fasta import DnaInputError

    try:
        with Progress(TextColumn("embedding"), BarColumn(), TextColumn("{task.completed:,} bases"),
                      TimeRemainingColumn(), console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task("embed", total=None)
            result = embed_dna(model, fasta, out, bed, pool, chunk_len, batch_size,
                               on_bases=lambda k: progress.advance(task, k))
    except (DnaInputError, CheckpointError) as err:
        raise UserError(" ".join(str(err).split())) from None
    typer.echo(f"wrote {result['rows']} embeddings ({result['pool']}, dim {result['dim']}, "
               f"{result['bases']:,} bases) to {out}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; usage errors and UserError print one line on stderr and exit with code 2."""
    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else list(argv)
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
