"""Command line: a thin Typer app that parses, validates and calls the task code."""
