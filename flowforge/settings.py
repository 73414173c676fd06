"""Typed settings: `./flowforge.yaml` (then `/etc/flowforge/flowforge.yaml`) overlaid by
environment variables `FLOWFORGE_<GROUP>__<FIELD>`, e.g. `FLOWFORGE_DATABASE__URL`."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from flowforge.domain import spec

CONFIG_PATHS = (Path("flowforge.yaml"), Path("/etc/flowforge/flowforge.yaml"))


class DatabaseSettings(BaseModel):
    url: str | None = Field(
        None,
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user@host:5432/db. "
        "Unset: an embedded Postgres under `data_dir`.",
    )
    pool_size: int = Field(10, ge=1, description="Connections per process.")


class RedisSettings(BaseModel):
    url: str | None = Field(None, description="redis://host:port/db. Unset: an embedded redis-server.")


class RaySettings(BaseModel):
    address: str | None = Field(None, description="Ray cluster address. Unset: a local Ray.")
    num_cpus: int | None = Field(None, description="CPUs of a local Ray (unset: all).")


class CoordinatorSettings(BaseModel):
    partitions: int = Field(1, ge=1, le=1024, description="Event partitions runs are hashed into.")
    owned_partitions: list[int] | None = Field(
        None, description="Partitions this coordinator serves (unset: all of them)."
    )
    batch_size: int = Field(1000, ge=1, le=10_000, description="Events handled per cycle.")
    block: timedelta = Field(timedelta(milliseconds=500), description="Longest wait for events.")
    reconcile_interval: timedelta = Field(
        timedelta(seconds=10), description="How often the reconciler compares Redis with Postgres."
    )
    redispatch_after: timedelta = Field(
        timedelta(seconds=15),
        description="A dispatched attempt missing from its stream for this long is dispatched again.",
    )
    deadline_grace: timedelta = Field(
        timedelta(seconds=30),
        description="Past its timeout plus this, a silent attempt is failed by the coordinator.",
    )
    cancel_grace: timedelta = Field(
        timedelta(seconds=10), description="How long a running attempt has to stop after a cancel."
    )
    prefetch: float = Field(
        1.0, ge=0, le=10,
        description="Dispatch entries allowed in flight beyond a pool's slots, as a multiple of "
        "its slots: agents stay busy while the coordinator writes, and streams stay shallow.",
    )
    max_cached_runs: int = Field(10_000, ge=10, description="Active runs kept in memory.")
    map_expand_chunk: int = Field(
        32, ge=1, le=100_000,
        description="Instances of a mapped task created per cycle: a large fan-out is made over several "
        "cycles, so other runs' events are not held up behind it, and the next chunk only once fewer than "
        "this many of its instances wait for a slot.",
    )
    fair_share: bool = Field(
        True, description="Give each pool's free slots to tenants by weighted fair share (off: first come, first served).",
    )
    metrics_port: int = Field(
        9464, ge=0, le=65535,
        description="Port where `flowforge coordinator` serves GET /metrics, on `api.host` (0: not served). "
        "A process with the API (`flowforge up`) serves them at the API's /metrics instead.",
    )



class AgentSettings(BaseModel):
    pool_config_dir: Path = Field(Path("pool-config"), description="Folder of pool YAML files.")
    lease: timedelta = Field(
        timedelta(seconds=30),
        description="A dispatch entry idle this long (its agent died) is taken over by another agent.",
    )
    max_deliveries: int = Field(
        3, ge=1, description="Deliveries before an entry moves to the dead-letter stream."
    )
    max_result_bytes: int = Field(1 << 20, ge=1024, description="Largest inline task result.")
    max_log_line_bytes: int = Field(8192, ge=128, description="Longer output lines are cut.")
    max_log_lines: int = Field(10_000, ge=1, description="Captured output lines per attempt.")
    max_log_bytes: int = Field(1 << 20, ge=1024, description="Captured output bytes per attempt; the rest is dropped.")
    heartbeat_timeout: timedelta = Field(
        timedelta(seconds=30), description="An agent that does not answer its heartbeat this long is hung: it is "
        "killed and replaced (its attempts are taken over after the lease).",
    )


class NodesSettings(BaseModel):
    source: Literal["local", "kubernetes"] = Field(
        "local", description="Where pools find their nodes: `local`, this machine as node group `local`; "
        "`kubernetes`, the cluster's nodes (credentials as for `pods.kubeconfig`).",
    )
    label_selector: str | None = Field(None, description="Only nodes with these labels (kubernetes), e.g. `flowforge.io/pools=yes`.")
    place_by_label: bool = Field(
        True, description="Place agents on the Ray nodes labelled with their node group (`flowforge.io/node-group`).",
    )


class PodInjection(BaseModel):
    """Added to every heavy Pod, as Kubernetes JSON (camelCase): e.g. an init container that
    stages the runtime, a log-shipping sidecar, shared volumes."""

    init_containers: list[dict[str, Any]] = Field(default_factory=list, description="Init containers.")
    sidecars: list[dict[str, Any]] = Field(default_factory=list, description="Containers beside the task's.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment of the task's container.")
    volumes: list[dict[str, Any]] = Field(default_factory=list, description="Pod volumes.")
    volume_mounts: list[dict[str, Any]] = Field(default_factory=list, description="Mounts of the task's container.")


class PodsSettings(BaseModel):
    runtime: Literal["local", "kubernetes", "none"] = Field(
        "local", description="Where heavy tasks run: `local`, a fresh process per attempt on the coordinator's "
        "machine; `kubernetes`, a fresh Pod; `none`, heavy tasks are refused at submission.",
    )
    namespace: str = Field("default", description="Namespace of heavy Pods (kubernetes).")
    image: str | None = Field(
        None, description="Image of heavy Python tasks' Pods: the agent image, with your task code (kubernetes).",
    )
    kubeconfig: Path | None = Field(
        None, description="Kubeconfig file (kubernetes). Unset: the in-cluster service account, else ~/.kube/config.",
    )
    service_account: str | None = Field(None, description="Service account of heavy Pods (unset: the namespace's default).")
    automount_service_account_token: bool = Field(
        False, description="Give heavy Pods an API token (off: task code cannot talk to the cluster).",
    )
    run_as_user: int = Field(10001, ge=1, description="UID heavy containers run as (never root).")
    start_timeout: timedelta = Field(
        timedelta(minutes=5), description="A Pod not running after this (image pull, no node fits) fails its attempt.",
    )
    ttl_after_finished: timedelta = Field(
        timedelta(minutes=10), description="Finished Pods are deleted this long after they end (0: at once).",
    )
    create_qps: float = Field(5.0, gt=0, description="Pod creations per second, sustained.")
    create_burst: int = Field(10, ge=1, description="Pod creations allowed at once above the sustained rate.")
    inject: PodInjection = Field(default_factory=PodInjection)
    max_concurrent: int = Field(4, ge=1, le=10_000, description="Heavy attempts running at once.")
    stop_grace: timedelta = Field(
        timedelta(seconds=10), description="After SIGTERM (cancel, timeout), how long before SIGKILL.",
    )
    default_memory: str | None = Field(
        None, description="Memory limit of a heavy attempt that requests none, e.g. `2Gi` (unset: none).",
    )
    infra_retries: int = Field(
        3, ge=0, le=100, description="Attempts lost to the platform (eviction, preemption, node loss) retried "
        "per task without spending its retry budget.",
    )


class ApiSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Address the REST API listens on (0.0.0.0 in a container).")
    port: int = Field(8080, ge=0, le=65535, description="Port of the REST API (0: any free port).")
    max_body_bytes: int = Field(2 << 20, ge=1024, description="Larger request bodies are refused with 413.")
    rate_limit: float | None = Field(
        100.0, gt=0, description="Requests per second per token, per API process (unset: no limit); past it, 429.",
    )
    rate_burst: int = Field(200, ge=1, description="Requests a token may send at once above `rate_limit`.")
    token_cache: timedelta = Field(
        timedelta(seconds=10), description="How long a verified token is trusted without asking Postgres "
        "(a revoked token stops working within this time).",
    )
    ticket_ttl: timedelta = Field(timedelta(seconds=60), description="Lifetime of a log-stream ticket (for "
                                  "browsers, which cannot send the token in a header to an event stream).")
    ticket_secret: SecretStr | None = Field(None, description="Key that signs log-stream tickets, the same for "
                                            "every API replica; unset: a random key kept in Redis.")


class LoggingSettings(BaseModel):
    level: str = Field("info", pattern="^(debug|info|warning|error)$", description="Lowest level logged.")
    format: str = Field("console", pattern="^(console|json)$", description="Log line format.")
    storage_driver: str = Field("postgres", pattern="^(postgres|clickhouse)$",
                                description="Where task output is kept: postgres, or clickhouse (chDB in-process "
                                            "without logging.clickhouse_url).")
    retention_days: int = Field(14, ge=1, le=3650, description="Days task output is kept.")
    clickhouse_url: str | None = Field(None, description="A ClickHouse server, e.g. "
                                       "clickhouse://user:password@clickhouse:8123/flowforge; unset: chDB in <data_dir>/chdb.")
    live_ttl: timedelta = Field(timedelta(hours=24), description="How long a run's live log stays in Redis after "
                                "its last line (older lines are read from the store).")
    live_max_chunks: int = Field(10_000, ge=10, description="Chunks (of up to 1,000 lines) a run's live log keeps.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLOWFORGE_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Field(Path(".flowforge"), description="Where embedded servers keep their data.")
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    coordinator: CoordinatorSettings = Field(default_factory=CoordinatorSettings)
    agents: AgentSettings = Field(default_factory=AgentSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    pods: PodsSettings = Field(default_factory=PodsSettings)
    nodes: NodesSettings = Field(default_factory=NodesSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    limits: spec.Limits = Field(default_factory=spec.Limits)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))


class _YamlSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        explicit = os.environ.get("FLOWFORGE_CONFIG")
        paths = [Path(explicit)] if explicit else list(CONFIG_PATHS)
        for path in paths:
            if path.is_file():
                data = yaml.safe_load(path.read_text()) or {}
                if not isinstance(data, dict):
                    raise ValueError(f"{path}: expected a mapping of settings groups")
                return data
        return {}


def load(**overrides: Any) -> Settings:
    return Settings(**overrides)
