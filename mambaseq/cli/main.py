"""`mambaseq` entry point: the Typer app, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import json
import sys

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
