"""Service commands: `shuqi up` (the embedded stack), `shuqi gateway`, `shuqi scheduler`, `shuqi worker`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the service commands to the root app."""
    app.command("up")(up)
    app.command("gateway")(gateway)
    app.command("scheduler")(scheduler)
    app.command("worker")(worker)


def up() -> None:
    """Run the embedded stack (store, Ray, worker, gateway) in the foreground; Ctrl-C stops it all."""
    from shuqi.up import up_main

    raise typer.Exit(up_main())


def gateway(
    host: str | None = typer.Option(None, help="listen address (default: SHUQI_HOST or 127.0.0.1)"),
    port: int | None = typer.Option(None, help="listen port (default: SHUQI_PORT or 8000)"),
) -> None:
    """Run one gateway replica; replicas on one Redis store (SHUQI_STORE=redis://...) share the ledger."""
    import uvicorn

    from gateway.app import create_app
    from gateway.server import tune_gc, uvicorn_config
    from vouchers.settings import GatewaySettings

    settings = GatewaySettings()
    app = create_app(settings)
    server = uvicorn.Server(uvicorn_config(app, host=host or settings.host, port=port or settings.port))
    tune_gc()
    server.run()


def scheduler() -> None:
    """Run one scheduler on the Ray cluster at SHUQI_RAY_DASHBOARD; two on one Redis store lead and stand by."""
    import asyncio
    import logging

    from scheduler.ray_jobs import read_token
    from scheduler.run import run
    from vouchers.settings import SchedulerSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise typer.Exit(asyncio.run(run(SchedulerSettings(), read_token())))


def worker(model: str = typer.Option(..., "--model", help="a model name from the model config")) -> None:
    """Serve one model: as a Ray actor when RAY_ADDRESS is set, else in this process."""
    from workers.run import worker_main

    raise typer.Exit(worker_main(model))
