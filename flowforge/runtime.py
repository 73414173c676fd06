"""The composition root: builds every part from Settings and wires them together.

Nothing else in FlowForge constructs backends; the CLI and the tests start a `Stack`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Coroutine, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from flowforge import embedded, errors, keys, metrics as metrics_mod, settings as settings_mod
from flowforge.backends import gauges, redis_streams
from flowforge.backends.postgres import catalog, migrate, store as pg_store
from flowforge.domain import machine, model
from flowforge.engine import coordinator as coordinating
from flowforge.engine import reconciler as reconciling
from flowforge.engine import submission

log = structlog.get_logger("flowforge.runtime")
T = TypeVar("T")


@dataclass
class Services:
    """Resolved service URLs, and the embedded servers started to provide them."""

    database_url: str
    redis_url: str
    started: list[embedded.Service] = field(default_factory=list)

    def stop(self) -> None:
        for svc in reversed(self.started):
            svc.stop()
        self.started.clear()


def resolve_services(cfg: settings_mod.Settings, *, embedded_for: str | None = None) -> Services:
    """Use configured URLs; start embedded servers for those left unset. A process that shares
    its services with others (`embedded_for` names it: `flowforge api`, ...) must be given their
    URLs: a private embedded server would be a world of its own."""
    if embedded_for is not None:
        missing = [f"{group}.url ({env})" for group, url, env in (
            ("database", cfg.database.url, "FLOWFORGE_DATABASE__URL"),
            ("redis", cfg.redis.url, "FLOWFORGE_REDIS__URL"),
        ) if not url]
        if missing:
            raise errors.ConfigError(
                f"`{embedded_for}` needs the shared Postgres and Redis: set {' and '.join(missing)}; "
                "or run `flowforge up`, which starts everything embedded in one process"
            )
    started = []
    db = cfg.database.url
    if not db:
        svc = embedded.start_postgres(cfg.data_dir / "postgres")
        started.append(svc)
        db = svc.url
    rd = cfg.redis.url
    if not rd:
        svc = embedded.start_redis(cfg.data_dir / "redis")
        started.append(svc)
        rd = svc.url
    return Services(db, rd, started)


def job_runtime_env() -> dict[str, Any]:
    """What every agent's process needs: task modules importable from this working directory."""
    path = os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)
    return {"env_vars": {"PYTHONPATH": path}}


def init_ray(cfg: settings_mod.Settings) -> bool:
    """Connect to (or start) Ray; True if this process started a local Ray it must shut down."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": True,
        "runtime_env": job_runtime_env(),
        "logging_level": cfg.logging.level.upper(),
    }
    if cfg.ray.address:
        kwargs["address"] = cfg.ray.address
    else:
        # This machine is node group `local`; its Ray node says so, for agent placement.
        kwargs["labels"] = {"flowforge.io/node-group": "local"}
        if cfg.ray.num_cpus is not None:
            kwargs["num_cpus"] = cfg.ray.num_cpus
    # Ray's driver would otherwise install a failure handler on SIGTERM that arms a 3-second
    # alarm ending in SIGABRT: a coordinator draining for longer than that on SIGTERM would
    # die mid-drain. This process handles SIGTERM itself (it stops the stack).
    # Ray reads this whenever it sets up its logging, not only here, so it stays set.
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    ray.init(**kwargs)
    return not cfg.ray.address


class Stack:
    """Coordinator, reconciler and agent pools against one Postgres, Redis and Ray."""

    def __init__(
        self,
        cfg: settings_mod.Settings,
        services: Services,
        *,
        with_agents: bool = True,
        with_coordinator: bool = True,
        with_api: bool = False,
        metrics_port: int | None = None,
    ) -> None:
        """`metrics_port`: without the API, serve this process's metrics there (on api.host)."""
        self.cfg = cfg
        self.services = services
        self.with_agents = with_agents and with_coordinator
        self.with_coordinator = with_coordinator
        self.with_api = with_api
        self.metrics_port = metrics_port
        self.metrics = metrics_mod.Metrics()
        self.metrics_server: ApiServer | None = None
        self.api: ApiServer | None = None
        self.store: pg_store.PostgresStore | None = None
        self.catalog: catalog.Catalog | None = None
        self.queue: redis_streams.RedisQueue | None = None
        self.manager: Any = None
        self.launcher: Any = None
        self.pool_directory: Any = None
        self.wait_reader: Any = None
        self.log_store: Any = None
        self.log_writer: Any = None
        self.api_context: Any = None
        self.published: Any = None
        self.coordinator: coordinating.Coordinator | None = None
        self.reconciler: reconciling.Reconciler | None = None
        self.submitter: submission.Submitter | None = None
        self._stopping = asyncio.Event()
        self._jobs: list[asyncio.Task[None]] = []
        self._owns_ray = False

    async def start(self) -> None:
        from agents import manager, pools as pooling  # Ray is imported only where agents run

        cfg = self.cfg
        await asyncio.to_thread(migrate.upgrade, self.services.database_url)
        self.store = pg_store.PostgresStore.connect(self.services.database_url, pool_size=cfg.database.pool_size)
        self.catalog = catalog.Catalog(self.store.engine)
        self.queue = redis_streams.RedisQueue.connect(self.services.redis_url)
        self.log_store = open_log_store(cfg, self.services.database_url)
        await self.log_store.start()
        await self.queue.ping()
        pool_cfgs = pooling.load_dir(Path(cfg.agents.pool_config_dir))
        c = cfg.coordinator
        parts = tuple(c.owned_partitions or range(c.partitions))
        bad = [p for p in parts if p >= c.partitions]
        if bad:
            raise errors.ConfigError(f"coordinator.owned_partitions {bad} are outside 0..{c.partitions - 1}")
        heavy = cfg.pods.runtime != "none"
        streams = [*pool_cfgs, *([model.HEAVY_POOL] if heavy else [])]
        await self.queue.ensure_groups(parts, streams)
        if self.with_coordinator:  # the state of the partitions it owns: summed over coordinators, exact
            self.metrics.reader = gauges.StateReader(self.queue.client, self.store.engine, parts, streams,
                                                     agents=self.with_agents and 0 in parts)
        self.submitter = submission.Submitter(
            self.store, self.catalog, self.queue, partitions=c.partitions, limits=cfg.limits,
            pools={name: p.shape() for name, p in pool_cfgs.items()}, heavy=heavy,
        )
        if self.with_api:
            from flowforge.api.app import create_app
            from flowforge.api.context import ApiContext

            from flowforge.backends.pools import PoolDirectory

            self.pool_directory = PoolDirectory(self.services.redis_url, pool_cfgs, self.node_source(), c.partitions)
            from flowforge.backends.waits import WaitReader

            self.wait_reader = WaitReader(self.services.redis_url, c.partitions)
            from flowforge.logs.tail import LogTail

            ctx = ApiContext(self.catalog, self.submitter, self.readiness, pools=self.pool_directory,
                             token_cache_s=cfg.api.token_cache.total_seconds(), rate_per_s=cfg.api.rate_limit,
                             rate_burst=cfg.api.rate_burst, waits=self.wait_reader,
                             logs=LogTail(self.queue.client, self.log_store, c.partitions),
                             ticket_key=await ticket_key(cfg, self.queue.client),
                             ticket_ttl_s=cfg.api.ticket_ttl.total_seconds())
            self.api_context = ctx
            self.api = ApiServer(create_app(ctx, max_body_bytes=cfg.api.max_body_bytes, metrics=self.metrics),
                                 cfg.api.host, cfg.api.port)
            await self.api.start()
        if not self.with_coordinator:
            log.info("stack.started", api=self.api.url if self.api else None, coordinator=False)
            return
        if self.with_agents and 0 not in parts:
            # One pool manager per deployment: the coordinator that owns partition 0 runs it;
            # the others dispatch to the agents it keeps, as it publishes them.
            from flowforge.backends.pools import PublishedCapacity

            self.published = PublishedCapacity(self.services.redis_url,
                                               {n: p.slots_per_agent for n, p in pool_cfgs.items()})
            await self.published.start()
            pool_capacity = self.published
        elif self.with_agents:
            self._owns_ray = await asyncio.to_thread(init_ray, cfg)
            self.manager = manager.PoolManager(
                pool_cfgs,
                redis_url=self.services.redis_url,
                partitions=c.partitions,
                nodes=self.node_source(),
                backlog=lambda pool: self.coordinator.scheduler.backlog_everywhere(pool) if self.coordinator else 0,
                place_by_label=cfg.nodes.place_by_label,
                hung_after_s=cfg.agents.heartbeat_timeout.total_seconds(),
                runtime_env=job_runtime_env(),
                agent_defaults={
                    "lease_s": cfg.agents.lease.total_seconds(),
                    "max_deliveries": cfg.agents.max_deliveries,
                    "max_result_bytes": cfg.agents.max_result_bytes,
                    "max_log_line_bytes": cfg.agents.max_log_line_bytes,
                    "max_log_lines": cfg.agents.max_log_lines,
                    "max_log_bytes": cfg.agents.max_log_bytes,
                    "log_level": cfg.logging.level,
                    "log_format": cfg.logging.format,
                    "live_log_entries": cfg.logging.live_max_chunks,
                    "live_log_ttl_s": cfg.logging.live_ttl.total_seconds(),
                },
            )
            await self.manager.start()
            pool_capacity = self.manager.capacity
        else:
            pool_capacity = lambda pool: pool_cfgs[pool].capacity if pool in pool_cfgs else 0  # noqa: E731
        if heavy:
            self.launcher = self._launcher(pool_cfgs, c.partitions)
            self._jobs.append(asyncio.create_task(self.launcher.serve(), name="launcher"))

        def capacity(pool: str) -> int:
            return cfg.pods.max_concurrent if pool == model.HEAVY_POOL and heavy else pool_capacity(pool)

        self.coordinator = coordinating.Coordinator(
            store=self.store,
            queue=self.queue,
            clock=coordinating.SystemClock(),
            capacity=capacity,
            shapes={name: p.shape() for name, p in pool_cfgs.items()},
            metrics=self.metrics,
            options=coordinating.Options(
                partitions=parts,
                batch_size=c.batch_size,
                block_s=c.block.total_seconds(),
                prefetch=c.prefetch,
                max_cached_runs=c.max_cached_runs,
                fair_share=c.fair_share,
                machine=machine.Config(
                    deadline_grace=c.deadline_grace.total_seconds(),
                    cancel_grace=c.cancel_grace.total_seconds(),
                    infra_retries=cfg.pods.infra_retries,
                    expand_chunk=c.map_expand_chunk,
                ),
            ),
        )
        self.reconciler = reconciling.Reconciler(
            self.coordinator,
            streams,
            reconciling.Options(
                interval_s=c.reconcile_interval.total_seconds(),
                redispatch_after_s=c.redispatch_after.total_seconds(),
            ),
        )
        # Before adopting what a previous coordinator left behind (and dispatching it): the
        # quotas, and the other coordinators' counts on the board.
        await self.coordinator.quotas.refresh()
        await self.coordinator.board.exchange(force=True)
        await self.reconciler.sweep()
        from flowforge.logs.writer import LogWriter

        self.log_writer = LogWriter(self.queue.client, self.log_store, parts)
        if 0 in parts:  # one retention worker per deployment
            from flowforge.logs.retention import RetentionWorker

            retention = RetentionWorker(self.log_store, days=cfg.logging.retention_days,
                                        clock=coordinating.SystemClock())
            self._jobs.append(asyncio.create_task(retention.run_forever(), name="log retention"))
        self._jobs += [
            asyncio.create_task(self.log_writer.run_forever(), name="log writer"),
            asyncio.create_task(self.coordinator.run_forever(), name="coordinator"),
            asyncio.create_task(self.coordinator.quotas.follow(self._stopping), name="tenant limits"),
            asyncio.create_task(self.reconciler.run_forever(self._stopping), name="reconciler"),
        ]
        if self.api is None and self.metrics_port:
            await self._serve_metrics(self.metrics_port)
        log.info("stack.started", partitions=list(parts), pools=sorted(pool_cfgs),
                 api=self.api.url if self.api else None,
                 metrics=f"{self.metrics_server.url}/metrics" if self.metrics_server else None)

    async def _serve_metrics(self, port: int) -> None:
        """GET /metrics of a process without the API. A busy port costs the metrics, not the
        coordinator: it is logged and the coordinator goes on."""
        from flowforge.api import access

        server = ApiServer(access.exposition_app(self.metrics), self.cfg.api.host, port)
        try:
            await server.start()
        except errors.ConfigError:
            log.warning("metrics.not_served", host=self.cfg.api.host, port=port,
                        why="the port is in use; set coordinator.metrics_port (0: off)")
            return
        self.metrics_server = server

    def node_source(self) -> Any:
        """Where pools find their nodes: this machine, or the Kubernetes cluster's nodes."""
        if self.cfg.nodes.source == "kubernetes":
            from agents import kubenodes

            return kubenodes.KubernetesNodes(kubernetes_api(self.cfg), label_selector=self.cfg.nodes.label_selector)
        from agents import nodes

        return nodes.LocalNodes(self.services.redis_url)

    def _launcher(self, pool_cfgs: Mapping[str, Any], partitions: int) -> Any:
        """The Pod launcher for heavy attempts, on the configured runtime."""
        from agents import launcher, localpods, worker

        cfg = self.cfg
        config = worker.AgentConfig(
            pool=model.HEAVY_POOL, redis_url=self.services.redis_url, partitions=partitions,
            slots=cfg.pods.max_concurrent, lease_s=cfg.agents.lease.total_seconds(),
            max_deliveries=cfg.agents.max_deliveries, max_result_bytes=cfg.agents.max_result_bytes,
            max_log_line_bytes=cfg.agents.max_log_line_bytes, max_log_lines=cfg.agents.max_log_lines,
            max_log_bytes=cfg.agents.max_log_bytes, name=f"launcher-{os.getpid()}",
            live_log_entries=cfg.logging.live_max_chunks, live_log_ttl_s=cfg.logging.live_ttl.total_seconds(),
        )
        allowed = {n: p.allowed_functions for n, p in pool_cfgs.items()}
        grace = cfg.pods.stop_grace.total_seconds()
        if cfg.pods.runtime == "kubernetes":
            return launcher.Launcher(config, kubernetes_runtime(cfg), allowed=allowed, stop_grace_s=grace,
                                     fn_command=("python", "-m", "agents.podrun"), fn_image=cfg.pods.image,
                                     on_startup=self.metrics.pod_started)
        runtime = localpods.LocalProcessRuntime(max_log_lines=cfg.agents.max_log_lines,
                                                default_memory=cfg.pods.default_memory)
        return launcher.Launcher(config, runtime, allowed=allowed, stop_grace_s=grace,
                                 on_startup=self.metrics.pod_started)

    async def readiness(self) -> dict[str, str]:
        """Whether Postgres and Redis answer, each "ok" or what went wrong."""
        checks: dict[str, str] = {}
        try:
            assert self.store is not None
            await asyncio.wait_for(self.store.ping(), timeout=2)
            checks["postgres"] = "ok"
        except Exception as exc:  # any failure means not ready; say which
            checks["postgres"] = f"unreachable: {type(exc).__name__}"
        try:
            assert self.queue is not None
            await self.queue.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unreachable: {type(exc).__name__}"
        return checks

    async def stop(self) -> None:
        self._stopping.set()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        if self.api is not None:
            await self.api.stop()
        if self.pool_directory is not None:
            await self.pool_directory.close()
        if self.wait_reader is not None:
            await self.wait_reader.close()
        if self.submitter is not None:
            await self.submitter.aclose()
        if self.coordinator is not None:
            self.coordinator.stop()
            c = self.coordinator
            log.info("coordinator.stopped", cycles=c.cycles, events=int(c.timing["events"]),
                     **{f"{k}_s": round(v, 3) for k, v in c.timing.items() if k != "events"})
        if self.manager is not None:
            await self.manager.stop(drain_s=2.0)
        if self.launcher is not None:
            await self.launcher.stop(drain_s=2.0)
        if self.published is not None:
            await self.published.close()
        for job in self._jobs:
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
        if self.coordinator is not None and self.queue is not None:
            try:
                await self.coordinator.board.leave()
            except errors.TemporaryError as exc:  # its hash expires on its own
                log.warning("coordinator.board_not_left", error=str(exc))
        if self.queue is not None:
            await self.queue.close()
        if self.log_store is not None:
            await self.log_store.close()
        if self.store is not None:
            await self.store.close()
        if self._owns_ray:
            import ray

            await asyncio.to_thread(ray.shutdown)


def open_log_store(cfg: settings_mod.Settings, database_url: str) -> Any:
    """The configured LogStore: Postgres (this database), a ClickHouse server, or chDB."""
    from flowforge.logs import stores

    return stores.open_log_store(cfg, database_url=database_url)


async def ticket_key(cfg: settings_mod.Settings, client: Any) -> bytes:
    """The key signing log-stream tickets: configured, or one random key every replica shares
    through Redis (the first to start makes it)."""
    import hashlib
    import secrets

    if cfg.api.ticket_secret is not None:
        return hashlib.sha256(cfg.api.ticket_secret.get_secret_value().encode()).digest()
    await client.set(keys.TICKET_KEY, secrets.token_bytes(32), nx=True)
    return bytes(await client.get(keys.TICKET_KEY))


def kubernetes_api(cfg: settings_mod.Settings) -> Any:
    """A CoreV1Api with credentials from `pods.kubeconfig`, else the in-cluster service
    account, else ~/.kube/config."""
    from kubernetes import client, config as kube_config

    api_client = client.ApiClient(configuration=client.Configuration())
    try:
        if cfg.pods.kubeconfig is not None:
            kube_config.load_kube_config(str(cfg.pods.kubeconfig), client_configuration=api_client.configuration)
        else:
            try:
                kube_config.load_incluster_config(client_configuration=api_client.configuration)
            except kube_config.ConfigException:
                kube_config.load_kube_config(client_configuration=api_client.configuration)
    except (kube_config.ConfigException, OSError) as exc:
        raise errors.ConfigError(f"no Kubernetes credentials were found: {exc}; set pods.kubeconfig, "
                                 "or run inside the cluster") from None
    return client.CoreV1Api(api_client)


def kubernetes_runtime(cfg: settings_mod.Settings) -> Any:
    """The Kubernetes Pod runtime."""
    from agents import kubepods

    p = cfg.pods
    opts = kubepods.Options(
        namespace=p.namespace, service_account=p.service_account,
        automount_service_account_token=p.automount_service_account_token, run_as_user=p.run_as_user,
        start_timeout_s=p.start_timeout.total_seconds(), stop_grace_s=p.stop_grace.total_seconds(),
        ttl_s=p.ttl_after_finished.total_seconds(), create_qps=p.create_qps, create_burst=p.create_burst,
        max_log_lines=cfg.agents.max_log_lines, max_log_bytes=cfg.agents.max_log_bytes + 2 * cfg.agents.max_result_bytes,
        init_containers=p.inject.init_containers, sidecars=p.inject.sidecars, env=p.inject.env,
        volumes=p.inject.volumes, volume_mounts=p.inject.volume_mounts,
    )
    return kubepods.KubernetesPodRuntime(kubernetes_api(cfg), opts)


class ApiServer:
    """uvicorn serving the API on this event loop. The socket is bound here first, so a busy
    port is a clear error instead of uvicorn exiting the process."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        import uvicorn

        class _Server(uvicorn.Server):
            def capture_signals(self):  # type: ignore[no-untyped-def]
                return contextlib.nullcontext()  # the process's owner handles signals

        self.host, self.port = host, port
        # No log_config: uvicorn's records go to the root logger, rendered like every service
        # log line (flowforge.servicelog); the access line is flowforge.api.access's.
        self.server = _Server(uvicorn.Config(app, host=host, port=port, log_level="warning", log_config=None,
                                             access_log=False, lifespan="off", proxy_headers=True))
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise errors.ConfigError(
                f"cannot listen on {self.host}:{self.port} ({exc.strerror}); stop what uses the port, "
                "or choose another with --port or FLOWFORGE_API__PORT"
            ) from None
        if self.port == 0:
            self.port = sock.getsockname()[1]
        sock.listen(2048)
        sock.setblocking(False)
        self._task = asyncio.create_task(self.server.serve(sockets=[sock]), name="api")
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise errors.ConfigError("the API server stopped while starting")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._task is None:
            return
        from sse_starlette.sse import AppStatus

        self.server.should_exit = True
        # Open log streams end now rather than holding the shutdown until uvicorn gives up on
        # them. sse-starlette learns of a shutdown from this process-wide flag (it cannot see a
        # server it did not install signal handlers for); it is reset for any later server.
        AppStatus.should_exit = True
        try:
            await asyncio.wait_for(self._task, timeout=10)
        except TimeoutError:
            self.server.force_exit = True
            self._task.cancel()
        finally:
            for task in asyncio.all_tasks():  # its watcher of that flag, one per event loop
                if getattr(task.get_coro(), "__qualname__", "") == "_shutdown_watcher":
                    task.cancel()
            await asyncio.sleep(0)
            AppStatus.should_exit = False


class BackgroundStack:
    """A Stack on its own event loop thread, with blocking helpers (for tests and the CLI)."""

    def __init__(self, cfg: settings_mod.Settings, services: Services, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="flowforge-stack", daemon=True)
        self.thread.start()
        self.stack = Stack(cfg, services, **kwargs)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 120) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def start(self) -> BackgroundStack:
        self.call(self.stack.start(), timeout=300)
        return self

    def stop(self) -> None:
        try:
            self.call(self.stack.stop(), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
