"""`shuqi`: the one command. Sub-commands live in their own modules; this file only wires them."""

from __future__ import annotations

import typer

from shuqi import client_cli, config_cli, job_cli, service_cli

app = typer.Typer(no_args_is_help=True, add_completion=False, help="shuqi: vouchers for shared models and GPUs")
service_cli.register(app)
admin = client_cli.register(app)
job_cli.register(app)
job_cli.register_admin(admin)
config_cli.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
