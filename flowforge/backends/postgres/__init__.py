"""Postgres: the source of truth for DAGs, runs, tasks, attempts and the outbox."""
