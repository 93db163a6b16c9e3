"""Shared terminal output: one console, errors as one red line and a non-zero exit."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

console = Console()
# One line per error, however narrow the terminal: scripts grep these.
errors = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    errors.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)
