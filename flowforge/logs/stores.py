"""Choose the LogStore from the settings (`logging.storage_driver`); the composition root calls
`open_log_store`, then `start()` on what it returns, and `close()` at shutdown."""

from __future__ import annotations

from flowforge import errors, settings as settings_mod
from flowforge.logs import model


def open_log_store(cfg: settings_mod.Settings, *, database_url: str | None = None) -> model.LogStore:
    """The configured store, not yet started. `database_url`: the Postgres the stack resolved
    (an embedded one when `database.url` is unset)."""
    log_cfg = cfg.logging
    if log_cfg.storage_driver == "postgres":
        from flowforge.logs import postgres

        url = database_url or cfg.database.url
        if not url:
            raise errors.ConfigError(
                "logging.storage_driver is postgres but no Postgres is known: set database.url "
                "(FLOWFORGE_DATABASE__URL), or pass the embedded server's URL"
            )
        return postgres.PostgresLogStore.connect(url)
    if log_cfg.storage_driver == "clickhouse":
        from flowforge.logs import clickhouse

        if log_cfg.clickhouse_url:
            return clickhouse.ClickHouseLogStore.server(log_cfg.clickhouse_url, retention_days=log_cfg.retention_days)
        return clickhouse.ClickHouseLogStore.embedded(cfg.data_dir / "chdb", retention_days=log_cfg.retention_days)
    raise errors.ConfigError(
        f"logging.storage_driver: {log_cfg.storage_driver!r} is not a log store; use postgres or clickhouse"
    )
