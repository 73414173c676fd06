"""Implementations of the engine's ports: Postgres, Redis Streams, Ray, the clock."""
