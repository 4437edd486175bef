"""Client commands over HTTP: `shuqi balance`, `shuqi usage`, `shuqi admin ...` (and `shuqi job ...` later)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import typer

from vouchers.settings import ClientSettings


def base_url() -> str:
    """SHUQI_BASE_URL, or the local default."""
    return ClientSettings().base_url.rstrip("/")


def api_key() -> str:
    """SHUQI_API_KEY; exits with a hint when unset."""
    key = ClientSettings().api_key
    if not key:
        typer.echo("SHUQI_API_KEY is not set: ask your admin for a key (shuqi admin key create ID)", err=True)
        raise typer.Exit(2)
    return key


def admin_token() -> str:
    """SHUQI_ADMIN_TOKEN, else the token the gateway wrote to $SHUQI_DATA_DIR/admin-token."""
    settings = ClientSettings()
    if settings.admin_token:
        return settings.admin_token
    path = settings.data_dir / "admin-token"
    if path.exists():
        return path.read_text().strip()
    typer.echo(f"SHUQI_ADMIN_TOKEN is not set and {path} does not exist", err=True)
    raise typer.Exit(2)


def call(method: str, path: str, token: str, *, body: dict[str, Any] | None = None,
         params: dict[str, str] | None = None) -> Any:
    """One HTTP call to the gateway; prints the OpenAI-shaped error and exits 1 when it fails."""
    try:
        resp = httpx.request(method, base_url() + path, json=body, params=params, timeout=60,
                             headers={"authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        typer.echo(f"cannot reach the gateway at {base_url()}: {exc}", err=True)
        raise typer.Exit(1) from exc
    if resp.status_code >= 400:
        try:
            error = resp.json()["error"]
            message = f"{error.get('code') or error.get('type')}: {error.get('message')}"
        except (ValueError, KeyError, TypeError):
            message = resp.text
        typer.echo(f"error {resp.status_code}: {message}", err=True)
        raise typer.Exit(1)
    return resp.json() if resp.content else None


def _print_balance(balance: dict[str, Any]) -> None:
    for kind, unit in (("model", "credits"), ("compute", "GPU-hours")):
        b = balance[kind]
        typer.echo(f"{kind:<8} granted {b['granted']:>12}  spent {b['spent']:>12}  held {b['held']:>10}  "
                   f"remaining {b['remaining']:>12}  ({unit})")
    for v in balance.get("vouchers", []):
        expiry = v.get("expires_at") or "never"
        typer.echo(f"  {v['id']}  {v['kind']:<7} {v['amount']:>10}  remaining {v['remaining']:>10}  "
                   f"expires {expiry}  priority {v['priority']}")


def balance(as_json: bool = typer.Option(False, "--json", help="print the JSON answer")) -> None:
    """Your startup's balance (model credits and GPU-hours)."""
    answer = call("GET", "/v1/balance", api_key())
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
    else:
        _print_balance(answer)


def usage(
    since: str | None = typer.Option(None, help="RFC 3339 time or epoch seconds"),
    until: str | None = typer.Option(None, help="RFC 3339 time or epoch seconds"),
    limit: int | None = typer.Option(None, help="at most this many lines"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON answer"),
) -> None:
    """Your startup's ledger lines: what was charged, when, for which model or job."""
    params = {k: str(v) for k, v in (("since", since), ("until", until), ("limit", limit)) if v is not None}
    lines = call("GET", "/v1/usage", api_key(), params=params)["data"]
    if as_json:
        typer.echo(json.dumps(lines, indent=2))
        return
    for line in lines:
        what = line.get("model") or line.get("job") or ""
        tokens = ""
        if line.get("model"):
            tokens = f"{line.get('prompt_tokens', 0)}+{line.get('completion_tokens', 0)} tokens"
        typer.echo(f"{line['time']}  {line['kind']:<7} {line['amount']:>12}  {what}  {tokens}".rstrip())


def startup_create(startup_id: str = typer.Argument(...), name: str = typer.Option(..., "--name")) -> None:
    """Create a startup."""
    created = call("POST", "/admin/v1/startups", admin_token(), body={"id": startup_id, "name": name})
    typer.echo(f"created startup {created['id']} ({created['name']})")


def startup_list(as_json: bool = typer.Option(False, "--json", help="print the JSON answer")) -> None:
    """List startups."""
    data = call("GET", "/admin/v1/startups", admin_token())["data"]
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    for s in data:
        typer.echo(f"{s['id']}\t{s['name']}")


def key_create(startup_id: str = typer.Argument(...), name: str = typer.Option("", "--name")) -> None:
    """Create an API key for a startup; the key is printed once, keep it."""
    created = call("POST", f"/admin/v1/startups/{startup_id}/keys", admin_token(), body={"name": name})
    typer.echo(created["key"])


def voucher_grant(
    startup_id: str = typer.Argument(...),
    kind: str = typer.Option(..., "--kind", help="model (credits) or compute (GPU-hours)"),
    amount: str = typer.Option(..., "--amount", help="a decimal amount, e.g. 12.5"),
    expires_at: str | None = typer.Option(None, "--expires-at", help="RFC 3339 time or epoch seconds"),
    priority: int = typer.Option(0, "--priority", help="lower burns first"),
    note: str = typer.Option("", "--note"),
) -> None:
    """Grant a voucher to a startup."""
    body: dict[str, Any] = {"kind": kind, "amount": amount, "priority": priority, "note": note}
    if expires_at is not None:
        body["expires_at"] = expires_at
    v = call("POST", f"/admin/v1/startups/{startup_id}/vouchers", admin_token(), body=body)
    typer.echo(f"granted {v['id']}: {v['amount']} {v['kind']} to {v['startup']}")


def admin_balance(startup_id: str = typer.Argument(...),
                  as_json: bool = typer.Option(False, "--json", help="print the JSON answer")) -> None:
    """A startup's balance."""
    answer = call("GET", f"/admin/v1/startups/{startup_id}/balance", admin_token())
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
    else:
        _print_balance(answer)


def price_set(model: str = typer.Argument(...), input_per_1m: str = typer.Option(..., "--input"),
              output_per_1m: str = typer.Option(..., "--output")) -> None:
    """Set a model's price in credits per million prompt and completion tokens."""
    p = call("PUT", f"/admin/v1/prices/{model}", admin_token(),
             body={"input_per_1m": input_per_1m, "output_per_1m": output_per_1m})
    typer.echo(f"{p['model']}: {p['input_per_1m']} in, {p['output_per_1m']} out per 1M tokens")


def limits_set(startup_id: str = typer.Argument(...), rpm: int | None = typer.Option(None, "--rpm"),
               tpm: int | None = typer.Option(None, "--tpm"),
               max_gpus: int | None = typer.Option(None, "--max-gpus", help="GPUs its jobs may hold at once"),
               max_queued_jobs: int | None = typer.Option(None, "--max-queued-jobs", help="jobs it may queue")) -> None:
    """Set a startup's limits (omit one for no limit): requests and tokens per minute, GPUs and queued jobs."""
    body = {"rpm": rpm, "tpm": tpm, "max_gpus": max_gpus, "max_queued_jobs": max_queued_jobs}
    lim = call("PUT", f"/admin/v1/startups/{startup_id}/limits", admin_token(), body=body)
    typer.echo(f"{startup_id}: rpm {lim['rpm']}, tpm {lim['tpm']}, max_gpus {lim['max_gpus']}, "
               f"max_queued_jobs {lim['max_queued_jobs']}")


def register(app: typer.Typer) -> typer.Typer:
    """Add the client commands to the root app; the `admin` group, for other modules' admin commands."""
    app.command("balance")(balance)
    app.command("usage")(usage)
    admin = typer.Typer(no_args_is_help=True, help="admin commands (SHUQI_ADMIN_TOKEN)")
    startup = typer.Typer(no_args_is_help=True, help="startups")
    startup.command("create")(startup_create)
    startup.command("list")(startup_list)
    key = typer.Typer(no_args_is_help=True, help="API keys")
    key.command("create")(key_create)
    voucher = typer.Typer(no_args_is_help=True, help="vouchers")
    voucher.command("grant")(voucher_grant)
    price = typer.Typer(no_args_is_help=True, help="model prices")
    price.command("set")(price_set)
    limits = typer.Typer(no_args_is_help=True, help="rate limits")
    limits.command("set")(limits_set)
    admin.add_typer(startup, name="startup")
    admin.add_typer(key, name="key")
    admin.add_typer(voucher, name="voucher")
    admin.add_typer(price, name="price")
    admin.add_typer(limits, name="limits")
    admin.command("balance")(admin_balance)
    app.add_typer(admin, name="admin")
    return admin
