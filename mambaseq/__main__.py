"""`python -m mambaseq ...` runs the CLI (same as the `mambaseq` console script)."""

from .cli.main import run

run()
