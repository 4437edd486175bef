"""Client commands over HTTP: `shuqi balance`, `shuqi usage`, `shuqi admin ...` (and `shuqi job ...` later)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the client commands to the root app."""
