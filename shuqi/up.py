"""`shuqi up`: the embedded stack on one machine, and `shuqi worker`: one worker service.

`up` is the composition root of the embedded default: a SQLite (or Redis) store, a local Ray head on
loopback, the scheduler (hook below), one worker actor per model named in the config's `up` list, and
the gateway served by uvicorn in this process. SIGINT and SIGTERM stop all of it in reverse order, and
a last sweep kills anything still alive below this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import uvicorn

from shuqi.ray_head import NodeSpec, RayCluster, default_token
from vouchers.catalog import Catalog
from vouchers.clock import Clock, SystemClock
from vouchers.factory import Stores, open_stores
from vouchers.settings import UpSettings
from workers.engine import ModelSpec
from workers.process import finish_tree, snapshot_tree
from workers.service import WorkerSettings
from workers.specs import ModelConfig, load_config, price_of

logger = logging.getLogger(__name__)
T = TypeVar("T")

_WORKER_START_TIMEOUT_S = 300.0
_WORKER_STOP_TIMEOUT_S = 30.0
# Ray's default object store is 30% of memory; the stack's objects are small (no tensors pass through).
_OBJECT_STORE_BYTES = 512 * 1024 * 1024


async def seed_prices(catalog: Catalog, specs: list[ModelSpec]) -> list[str]:
    """Set each model's price from its spec where the store has none (an admin's PUT wins); names set."""
    seeded = []
    for spec in specs:
        if await catalog.get_price(spec.name) is None:
            await catalog.set_price(price_of(spec))
            seeded.append(spec.name)
    return seeded


def worker_settings(settings: UpSettings) -> WorkerSettings:
    """The settings every worker of this stack gets."""
    return WorkerSettings(store_url=settings.store_url(), data_dir=settings.data_dir.resolve(),
                          namespace=settings.namespace)


def _start_ray(settings: UpSettings) -> RayCluster:
    """Fork the local Ray head: its own process group, a scrubbed environment, token auth on.

    The head is `ray start --block`, not a `ray.init` in this process: everything Ray starts inherits
    the environment of the process that started it, and this one holds the admin token and the store
    URL (see shuqi/ray_head.py). Its GCS port is free (never 6379); the dashboard and its Jobs API
    listen on loopback only. Ray binds GCS and the raylet to every interface whatever it is asked, and
    protects them with its token (`~/.ray/auth_token`, which Ray's own CLI reads too).
    Call it from the event loop's thread: the head is told to stop when the forking thread dies.
    """
    head = NodeSpec(num_gpus=settings.logical_gpus, object_store_bytes=_OBJECT_STORE_BYTES)
    return RayCluster.start(head, token=default_token(), log_dir=settings.data_dir.resolve() / "logs")


def _connect_ray(cluster: RayCluster) -> None:
    """Wait for the head, then join it as a driver (the worker actors are launched from here)."""
    from workers.actor import init_ray

    cluster.wait_ready()
    init_ray(
        address=cluster.address.gcs_address,
        token=cluster.token,
        namespace="shuqi",
        log_to_driver=False,
        logging_level=logging.WARNING,
    )


def _stop_ray() -> None:
    import ray

    ray.shutdown()


async def _start_workers(specs: list[ModelSpec], settings: UpSettings) -> list[Any]:
    from workers.actor import launch

    handles = [launch(spec, worker_settings(settings)) for spec in specs]
    statuses = await asyncio.wait_for(asyncio.gather(*(h.start.remote() for h in handles)), _WORKER_START_TIMEOUT_S)
    for status in statuses:
        logger.info("worker ready", extra={"worker_id": status.worker_id, "model": status.model})
    return handles


async def _stop_workers(handles: list[Any]) -> None:
    for handle in handles:
        try:
            await asyncio.wait_for(handle.stop.remote(), _WORKER_STOP_TIMEOUT_S)
        except Exception as exc:  # a dead actor must not stop the rest of the shutdown
            logger.warning("worker did not stop cleanly: %s", exc)


async def _start_scheduler(settings: UpSettings, stores: Stores, clock: Clock, cluster: RayCluster,
                           stack: contextlib.AsyncExitStack) -> Any:
    """The scheduler on the local Ray head, in this process, over the stores `up` opened; its stop is on `stack`."""
    from scheduler.run import build, worker_env

    sched = settings.model_copy(update={"ray_dashboard": cluster.dashboard_url})
    scheduler = build(sched, stores, token=cluster.token, clock=clock, worker_env=worker_env(sched))
    task = asyncio.create_task(scheduler.run())

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)
    return scheduler


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers (`up` owns SIGINT/SIGTERM and stops parts in order)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.ready.set()


def _gateway_server(settings: UpSettings, stores: Stores, clock: Clock,
                    extra_metrics: list[Any]) -> _EmbeddedServer | None:
    """The gateway's uvicorn server, not yet started; None while the gateway package is absent."""
    try:
        from gateway.app import create_app
        from gateway.server import uvicorn_config
    except ImportError as exc:
        logger.warning("gateway not available (%s); running without it", exc)
        return None
    # UpSettings is the gateway's settings too (it writes the generated admin token to the data dir);
    # the gateway serves the stores `up` opened.
    app = create_app(settings, stores, clock, extra_metrics=extra_metrics)
    return _EmbeddedServer(uvicorn_config(app, host=settings.host, port=settings.port, log_level="warning",
                                          lifespan="on"))


def banner(settings: UpSettings, models: list[str], dashboard_url: str) -> str:
    """What `up` prints once ready: the URL, where the admin token is, and how to start."""
    url = f"http://{settings.host}:{settings.port}"
    token_file = settings.data_dir / "admin-token"
    token = "from $SHUQI_ADMIN_TOKEN" if settings.admin_token_set else f"in {token_file} (mode 600)"
    export = "" if settings.admin_token_set else f"export SHUQI_ADMIN_TOKEN=$(cat {token_file})\n  "
    model = models[0] if models else "MODEL"
    return f"""
shuqi is up at {url}   models: {", ".join(models)}
admin token: {token}
Ray dashboard: {dashboard_url} (loopback only, Ray token auth on)

Try it:
  {export}export SHUQI_BASE_URL={url}
  shuqi admin startup create acme --name "Acme AI"
  shuqi admin key create acme                         # prints the key once: export KEY=sk-shuqi-...
  shuqi admin voucher grant acme --kind model --amount 10
  curl {url}/v1/chat/completions -H "Authorization: Bearer $KEY" -H 'content-type: application/json' \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Say hi"}}]}}'
  python -c 'import os, openai; c = openai.OpenAI(base_url="{url}/v1", api_key=os.environ["KEY"]); \\
print(c.chat.completions.create(model="{model}", messages=[{{"role": "user", "content": "Say hi"}}]))'
  shuqi admin balance acme
  shuqi admin voucher grant acme --kind compute --amount 1      # 1 GPU-hour (SHUQI_LOGICAL_GPUS=2 without GPUs)
  SHUQI_API_KEY=$KEY shuqi job submit --gpus 1 --max-runtime 1m -- python -c "print('hello')"
  SHUQI_API_KEY=$KEY shuqi job list; SHUQI_API_KEY=$KEY shuqi job logs JOB_ID

Ctrl-C stops everything.
"""


async def _race(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """Run `work` unless `stop` fires first (then cancel it and return None)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


def _install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def run_up(settings: UpSettings, config: ModelConfig | None = None) -> int:
    """Run the embedded stack until SIGINT/SIGTERM; the exit code."""
    config = config or load_config(settings.models)
    specs = [config.get(name) for name in config.up]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    _install_stop_signals(stop)
    code = 0
    tree: dict[int, bytes] = {}
    try:
        async with contextlib.AsyncExitStack() as stack:
            code = await _bring_up(settings, specs, stop, stack)
            if code == 0:
                await stop.wait()
                print("shuqi: stopping", file=sys.stderr, flush=True)
            # Taken before anything stops: a process whose parent dies first is reparented and would
            # no longer show below us (Ray's dashboard leaves a forkserver like that for a moment).
            tree = snapshot_tree(os.getpid())
    finally:
        tree.update(snapshot_tree(os.getpid()))
        killed = await finish_tree(tree)
        if killed:
            logger.warning("killed %d processes still alive after shutdown", len(killed))
    return code


async def _bring_up(
    settings: UpSettings, specs: list[ModelSpec], stop: asyncio.Event, stack: contextlib.AsyncExitStack
) -> int:
    """Start every part, registering its stop on `stack`; 0 when all runs, 1 if a part failed to start."""
    clock = SystemClock()
    stores = await open_stores(settings.store_url(), data_dir=settings.data_dir, clock=clock,
                               namespace=settings.namespace)
    stack.push_async_callback(stores.close)  # registered first, so closed last: after the gateway
    seeded = await seed_prices(stores.catalog, specs)
    logger.info("prices seeded from the model config: %s", seeded)

    cluster = _start_ray(settings)
    stack.push_async_callback(asyncio.to_thread, cluster.stop)
    # Waiting for the head and ray.init block for seconds; a thread keeps the loop (and the signal
    # handlers) responsive.
    await asyncio.to_thread(_connect_ray, cluster)
    stack.push_async_callback(asyncio.to_thread, _stop_ray)
    dashboard_url = cluster.dashboard_url
    if stop.is_set():
        return 0
    try:
        handles = await _race(_start_workers(specs, settings), stop)
    except (RuntimeError, TimeoutError) as exc:
        cause = getattr(exc, "cause", None) or exc  # Ray wraps the actor's own error
        print(f"shuqi: a worker failed to start: {cause}", file=sys.stderr, flush=True)
        return 1
    if handles is None:
        return 0
    stack.push_async_callback(_stop_workers, handles)
    scheduler = await _start_scheduler(settings, stores, clock, cluster, stack)

    server = _gateway_server(settings, stores, clock, [scheduler.metrics.registry])
    if server is not None:
        serving = asyncio.create_task(_serve(server, stop))
        stack.push_async_callback(_stop_gateway, server, serving)
        ready = asyncio.ensure_future(server.ready.wait())
        await asyncio.wait({serving, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if not server.ready.is_set():
            return 1
        from gateway.server import tune_gc

        tune_gc()  # everything is built: what exists now lives as long as the process
    print(banner(settings, [s.name for s in specs], dashboard_url), flush=True)
    return 0


async def _serve(server: _EmbeddedServer, stop: asyncio.Event) -> None:
    try:
        await server.serve()
    except SystemExit:
        # uvicorn exits the process when it cannot bind; here that means the stack cannot serve.
        print("shuqi: the gateway could not start (is the port taken?)", file=sys.stderr, flush=True)
        stop.set()


async def _stop_gateway(server: _EmbeddedServer, serving: asyncio.Task[None]) -> None:
    server.should_exit = True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(serving, 15.0)


def up_main() -> int:
    """Entry point of `shuqi up`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health probe otherwise
    return asyncio.run(run_up(UpSettings()))
