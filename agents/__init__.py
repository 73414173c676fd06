"""Agents: resident Ray actors that pull light attempts from their pool's stream and run them.

An agent speaks to the coordinator only through the wire protocol (`flowforge.wire`) on Redis
Streams; it never touches Postgres.
"""
