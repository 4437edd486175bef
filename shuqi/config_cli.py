"""`shuqi config`: the effective settings of every service, as this environment gives them, secrets masked."""

from __future__ import annotations

import json

import typer

from vouchers.settings import ClientSettings, UpSettings, masked


def register(app: typer.Typer) -> None:
    """Add `config` to the root app."""
    app.command("config")(config)


def config(as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Print every SHUQI_* setting with the value in force (secrets masked)."""
    values = {**masked(UpSettings()), **masked(ClientSettings())}
    if as_json:
        typer.echo(json.dumps(dict(sorted(values.items())), indent=2))
        return
    for name, value in sorted(values.items()):
        typer.echo(f"{name}={value}")
