"""Service commands: `shuqi up` (the embedded stack), `shuqi gateway`, `shuqi worker`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the service commands to the root app."""
