"""The `flowforge` command line: servers (`up`, `api`, `coordinator`, `migrate`, `demo`), and
client commands that talk to the REST API (`submit`, `runs`, `run`, `cancel`, `retry`, `dags`,
`tenants`, `projects`)."""

from __future__ import annotations

import sys

from flowforge.cli import commands, pools, servers, tenancy  # noqa: F401  (they register their commands)
from flowforge.cli.base import app


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
