"""`flowforge up` as a new user runs it: embedded Postgres and Redis under a data folder, the
API and the agents; a client submits over HTTP; the CLI talks to it; history survives a
restart; SIGTERM leaves no process behind; a busy port is a clear error."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children_of(data_dir: Path) -> list[str]:
    """Processes still running out of the data folder (embedded postgres, redis-server)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(data_dir) in line and "ps -eo" not in line]


class Up:
    def __init__(self, env: dict[str, str], port: int) -> None:
        self.env, self.port = env, port
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    def start(self, timeout: float = 180) -> str:
        self.proc = subprocess.Popen([sys.executable, "-m", "flowforge", "up", "--port", str(self.port)],
                                     cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            self.output.append(line)
            if "FlowForge is up at" in line:
                return re.search(r"up at (\S+)", line).group(1)
            if self.proc.poll() is not None:
                break
        raise AssertionError("flowforge up did not start:\n" + "".join(self.output))

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(90)
        self.output += self.proc.stdout.readlines()
        return code


@pytest.fixture()
def up_env(tmp_path, stack):
    import ray

    data = tmp_path / "data"
    env = dict(os.environ, FLOWFORGE_DATA_DIR=str(data), FLOWFORGE_RAY__ADDRESS=ray.get_runtime_context().gcs_address)
    for key in ("FLOWFORGE_DATABASE__URL", "FLOWFORGE_REDIS__URL", "FLOWFORGE_URL", "FLOWFORGE_TOKEN"):
        env.pop(key, None)
    return env, data


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flowforge", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_up_serves_rest_and_cli_keeps_history_and_stops_cleanly(up_env):
    env, data = up_env
    port = _free_port()
    up = Up(env, port)
    url = up.start()
    try:
        creds = data / "credentials.json"
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600
        token = __import__("json").loads(creds.read_text())["token"]
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        # What a person does with curl: submit, then poll until it succeeded.
        dag = (ROOT / "examples/diamond.yaml").read_text()
        import yaml

        run_id = http.post("/api/v1/runs", json={"dag": yaml.safe_load(dag)}).json()["id"]
        for _ in range(600):
            run = http.get(f"/api/v1/runs/{run_id}").json()
            if run["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.05)
        assert run["status"] == "succeeded", run

        # The CLI finds the server through the credentials file.
        done = _cli(env, "submit", "examples/branch.yaml", "--wait", "--param", "threshold=0.5")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "succeeded" in done.stdout
        sdk = _cli(env, "submit", "examples/sdk_pipeline.py", "--wait", "-p", "n=3")
        assert sdk.returncode == 0, sdk.stdout + sdk.stderr
        listed = _cli(env, "runs", "--limit", "5")
        assert listed.returncode == 0 and "quality-gate" in listed.stdout and run_id[:8] in listed.stdout
        shown = _cli(env, "run", run_id)
        assert shown.returncode == 0 and "report" in shown.stdout and "succeeded" in shown.stdout
        assert _cli(env, "dags", "push", "examples/diamond.yaml").returncode == 0
        assert "diamond" in _cli(env, "dags", "list").stdout
        assert "name: diamond" in _cli(env, "dags", "show", "diamond").stdout
        tpl = _cli(env, "submit", "--name", "diamond", "--wait")
        assert tpl.returncode == 0, tpl.stdout + tpl.stderr
        refused = _cli(env, "cancel", run_id)  # already ended
        assert refused.returncode == 2 and "is succeeded" in refused.stderr and "Traceback" not in refused.stderr
        bad = _cli(env, "submit", "examples/diamond.yaml", "-p", "nope=1")
        assert bad.returncode == 2 and "params" in bad.stderr
        failing = _cli(env, "run", "00000000-0000-0000-0000-000000000000")
        assert failing.returncode == 2 and "not found" in failing.stderr

        # A second `up` on the same port says so plainly.
        busy = _cli(env, "up", "--port", str(port))
        assert busy.returncode != 0 and f"cannot listen on 127.0.0.1:{port}" in busy.stderr, busy.stderr
        assert "Traceback" not in busy.stderr
    finally:
        code = up.stop()
    assert code == 0, "".join(up.output)
    time.sleep(0.5)
    assert _children_of(data) == []
    unreachable = _cli(env, "runs")
    assert unreachable.returncode == 1 and "cannot reach FlowForge" in unreachable.stderr

    # Restart: same data, same token, same history.
    up = Up(env, port)
    up.start()
    try:
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        again = http.get(f"/api/v1/runs/{run_id}")
        assert again.status_code == 200 and again.json()["status"] == "succeeded"
    finally:
        assert up.stop() == 0
    time.sleep(0.5)
    assert _children_of(data) == []
