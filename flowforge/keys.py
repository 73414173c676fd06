"""Every Redis key FlowForge uses, in one place.

Keys are partitioned by run: a run belongs to partition `crc32(run_id) % partitions`, and
every key of a partition carries the hash tag `{pN}`, so a pool stream, its dead-letter stream
and the partition's event stream live in one Redis Cluster slot. That is what lets an agent
publish a result and acknowledge its dispatch entry in one atomic script.
"""

from __future__ import annotations

import zlib

PREFIX = "ff"
COORDINATOR_GROUP = "coordinators"
AGENT_GROUP = "agents"
ENTRY_FIELD = b"e"  # each stream entry holds one msgpack envelope under this field
CANCEL_CHANNEL = f"{PREFIX}:cancel"  # pub/sub: stop running attempts (best effort, bounded by timers)
EPOCH = f"{PREFIX}:epoch"  # a token whose disappearance tells the coordinator Redis lost its data


def partition_of(run_id: str, partitions: int) -> int:
    return zlib.crc32(run_id.encode()) % partitions


def events(partition: int) -> str:
    return f"{PREFIX}:{{p{partition}}}:events"


def pool_stream(partition: int, pool: str) -> str:
    return f"{PREFIX}:{{p{partition}}}:pool:{pool}"


def dead_letter(partition: int, pool: str) -> str:
    return f"{PREFIX}:{{p{partition}}}:dlq:{pool}"


def reclaim_counts(partition: int) -> str:
    """A hash of counters the reclaim script keeps: `reclaimed:<pool>` (entries taken over from
    an agent that went silent) and `dead_lettered:<pool>`. Exported as metrics; never trimmed
    (a field per pool)."""
    return f"{PREFIX}:{{p{partition}}}:reclaims"


# The embedded node's `flowforge.io/agent-pools` annotation (Kubernetes keeps real nodes' own).
LOCAL_NODE_ANNOTATION = f"{PREFIX}:nodes:local:agent-pools"
# What the pool manager last saw of each pool: a hash, pool -> JSON (desired, ready, busy, ...).
POOL_STATUS = f"{PREFIX}:pools:status"
# The coordinators' board (flowforge/engine/board.py): the set of coordinators, and a hash of
# each one's counts (item -> value) that expires unless it stores it again. One hash slot.
BOARD_MEMBERS = f"{PREFIX}:{{board}}:members"
BOARD_PREFIX = f"{PREFIX}:{{board}}:c:"


def board(coordinator: str) -> str:
    return BOARD_PREFIX + coordinator


def quota_waits(partition: int) -> str:
    """A hash of why queued attempts of the partition wait for a quota: lane -> reason (with a TTL)."""
    return f"{PREFIX}:{{p{partition}}}:quota-waits"


def quota_wait_field(pool: str, tenant: str, project: str) -> str:
    """A lane of `quota_waits`: the attempts of one project of a tenant bound for one pool."""
    return f"{pool}|{tenant}|{project}"


# Task output. Each run has a live stream of its lines, in chunks (bounded, expiring) and a
# counter that numbers them; every chunk is also appended to the partition's ingest stream,
# which the log writers persist to the LogStore.
LOG_GROUP = "log-writers"


def run_log(partition: int, run_id: str) -> str:
    return f"{PREFIX}:{{p{partition}}}:log:{run_id}"


def run_log_count(partition: int, run_id: str) -> str:
    return f"{PREFIX}:{{p{partition}}}:log:{run_id}:n"


def log_ingest(partition: int) -> str:
    return f"{PREFIX}:{{p{partition}}}:logs"


TICKET_KEY = f"{PREFIX}:api:ticket-key"  # signs log-stream tickets, when api.ticket_secret is unset
