"""A small blocking client of the REST API, for the CLI, the demo and scripts.

Where it connects: explicit arguments, else `FLOWFORGE_URL` and `FLOWFORGE_TOKEN`, else the
credentials file `flowforge up` writes (`FLOWFORGE_CREDENTIALS`, default
`<data_dir>/credentials.json`)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

_json = json  # `json` is also the name of the request-body argument below

CREDENTIALS_FILE = "credentials.json"


class ApiError(Exception):
    """A request the API refused (4xx/5xx), or could not be sent; `str()` is what to show a person."""

    def __init__(self, status: int | None, problem: dict[str, Any] | None, message: str | None = None) -> None:
        self.status = status
        self.problem = problem or {}
        super().__init__(message or self._render())

    def _render(self) -> str:
        lines = [f"{self.problem.get('detail') or self.problem.get('title') or 'request failed'} (HTTP {self.status})"]
        for e in self.problem.get("errors") or ():
            hint = f" (fix: {e['hint']})" if e.get("hint") else ""
            lines.append(f"  {e.get('path', '?')}: {e.get('message', '')}{hint}")
        return "\n".join(lines)


def write_credentials(path: Path, url: str, token: str, tenant: str) -> None:
    """Write the credentials file readable by its owner only (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "token": token, "tenant": tenant}, f)
    os.chmod(path, 0o600)


def read_credentials(path: Path) -> dict[str, str] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("url") and data.get("token") else None


def credentials_path(data_dir: Path) -> Path:
    explicit = os.environ.get("FLOWFORGE_CREDENTIALS")
    return Path(explicit) if explicit else data_dir / CREDENTIALS_FILE


def _seg(value: str) -> str:
    """One path segment: a `/` or `..` in an id or name cannot reach another route."""
    seg = quote(value, safe="")
    return seg.replace(".", "%2E") if set(seg) == {"."} else seg


def _project(project: str | None) -> dict[str, str]:
    return {} if project is None else {"project": project}


def sse_events(lines: Iterable[str]) -> Iterator[tuple[str, str, str | None]]:
    """(event, data, id) of each Server-Sent Event in a stream's lines; comments are skipped."""
    event, data, ident = "message", [], None
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data), ident
            event, data, ident = "message", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            ident = value


def _same_server(a: str, b: str) -> bool:
    def norm(u: str) -> tuple[str, str, int | None]:
        parts = urlsplit(u.rstrip("/"))
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
        return parts.scheme, (parts.hostname or "").lower(), port

    try:
        return norm(a) == norm(b)
    except ValueError:
        return False


class Client:
    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)

    @classmethod
    def connect(cls, data_dir: Path, url: str | None = None, token: str | None = None) -> Client:
        url = url or os.environ.get("FLOWFORGE_URL")
        token = token or os.environ.get("FLOWFORGE_TOKEN")
        if not (url and token):
            path = credentials_path(data_dir)
            saved = read_credentials(path)
            if saved is None and not token:
                raise ApiError(None, None, f"no API credentials: start `flowforge up` (it writes {path}), "
                                           "or set FLOWFORGE_URL and FLOWFORGE_TOKEN")
            if saved is not None and not token and url and not _same_server(url, saved["url"]):
                # The saved token belongs to the server that saved it; never send it elsewhere.
                raise ApiError(None, None, f"no token for {url}: the credentials file {path} is for "
                                           f"{saved['url']}; pass --token or set FLOWFORGE_TOKEN")
            url = url or (saved or {}).get("url") or "http://127.0.0.1:8080"
            token = token or (saved or {})["token"]
        return cls(url, token)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, *, json: Any = None, **kwargs: Any) -> httpx.Response:
        if json is not None:
            try:
                kwargs["content"] = _json.dumps(json, allow_nan=False).encode()
            except ValueError:
                raise ApiError(None, None, "a value is NaN or Infinity, which JSON cannot carry; "
                                           "send a number, or the text in quotes") from None
            kwargs["headers"] = {"Content-Type": "application/json"}
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(None, None, f"cannot reach FlowForge at {self.url} ({exc.__class__.__name__}): "
                                       "is `flowforge up` (or `flowforge api`) running?") from None
        if r.status_code >= 400:
            self._raise(r)
        return r

    @staticmethod
    def _raise(r: httpx.Response) -> None:
        try:
            problem = r.json()
        except ValueError:
            problem = {"detail": r.text[:500]}
        raise ApiError(r.status_code, problem if isinstance(problem, dict) else {"detail": str(problem)})

    # ---- runs ----------------------------------------------------------------------------

    def submit(self, dag: dict[str, Any] | None = None, *, name: str | None = None, version: int | None = None,
               params: dict[str, Any] | None = None, project: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"params": params or {}}
        if project is not None:
            body["project"] = project
        if dag is not None:
            body["dag"] = dag
        else:
            body["name"] = name
            if version is not None:
                body["version"] = version
        return self._call("POST", "/api/v1/runs", json=body).json()

    def run(self, run_id: str, *, logs: bool = False) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/runs/{_seg(run_id)}", params={"logs": str(logs).lower()}).json()

    def runs(self, **filters: Any) -> dict[str, Any]:
        return self._call("GET", "/api/v1/runs", params={k: v for k, v in filters.items() if v is not None}).json()

    def cancel(self, run_id: str) -> dict[str, Any]:
        return self._call("POST", f"/api/v1/runs/{_seg(run_id)}/cancel").json()

    def retry(self, run_id: str) -> dict[str, Any]:
        return self._call("POST", f"/api/v1/runs/{_seg(run_id)}/retry").json()

    # ---- logs ----------------------------------------------------------------------------

    def logs(self, run_id: str, *, task: str | None = None, attempt: int | None = None, after: int = 0,
             limit: int = 1000) -> dict[str, Any]:
        params = {"after": after, "limit": limit, **({"task": task} if task else {}),
                  **({"attempt": attempt} if attempt else {})}
        return self._call("GET", f"/api/v1/runs/{_seg(run_id)}/logs", params=params).json()

    def follow_logs(self, run_id: str, *, task: str | None = None, attempt: int | None = None,
                    after: int = 0, retries: int = 5) -> Iterator[dict[str, Any]]:
        """Every line from `after` on as it comes, until the run ends (the last item is
        `{"end": status}`). A dropped connection is resumed where it stopped (Last-Event-ID)."""
        params = {"follow": "true", **({"task": task} if task else {}), **({"attempt": attempt} if attempt else {})}
        last, failures = after, 0
        while True:
            try:
                with self.http.stream("GET", f"/api/v1/runs/{_seg(run_id)}/logs", params=params, timeout=None,
                                      headers={"Last-Event-ID": str(last), "Accept": "text/event-stream"}) as r:
                    if r.status_code >= 400:
                        r.read()
                        self._raise(r)
                    for event, data, _id in sse_events(r.iter_lines()):
                        failures = 0
                        if event == "line":
                            line = _json.loads(data)
                            last = line["pos"]
                            yield line
                        elif event == "end":
                            yield {"end": _json.loads(data).get("status")}
                            return
            except httpx.TransportError as exc:
                failures += 1
                if failures > retries:
                    raise ApiError(None, None, f"lost the log stream from {self.url} ({exc.__class__.__name__})") from None
                time.sleep(min(5.0, 0.2 * 2 ** failures))

    # ---- DAG templates -------------------------------------------------------------------

    def push_dag(self, dag: dict[str, Any], *, project: str | None = None) -> tuple[dict[str, Any], bool]:
        """Store `dag` as a template (a new version if it changed); return it and whether it is new."""
        name = dag.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(None, None, "the DAG has no `name`; add one, it names the template")
        r = self._call("PUT", f"/api/v1/dags/{_seg(name)}", json=dag, params=_project(project))
        return r.json(), r.status_code == 201

    def dags(self, *, limit: int = 100, cursor: str | None = None, project: str | None = None) -> dict[str, Any]:
        params = {"limit": limit, **({"cursor": cursor} if cursor else {}), **_project(project)}
        return self._call("GET", "/api/v1/dags", params=params).json()

    def dag(self, name: str, version: int | None = None, *, project: str | None = None) -> dict[str, Any]:
        params = {**({"version": version} if version else {}), **_project(project)}
        return self._call("GET", f"/api/v1/dags/{_seg(name)}", params=params).json()

    def delete_dag(self, name: str, *, project: str | None = None) -> None:
        self._call("DELETE", f"/api/v1/dags/{_seg(name)}", params=_project(project))

    # ---- pools ---------------------------------------------------------------------------

    def pools(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/pools").json()["items"]

    def annotate_pools(self, node_group: str, counts: dict[str, int]) -> dict[str, Any]:
        return self._call("POST", "/api/v1/pools/annotations", json={"node_group": node_group, "counts": counts}).json()

    # ---- tenants -------------------------------------------------------------------------

    def tenant_limits(self, tenant: str) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/tenants/{_seg(tenant)}/limits").json()

    def set_tenant_limits(self, tenant: str, max_running_tasks: int | None, weight: float,
                          **quotas: Any) -> dict[str, Any]:
        """Replace the tenant's limits: those not given in `quotas` (max_cpu, max_memory,
        max_gpu, max_active_runs, max_dag_tasks) are removed."""
        body = {"max_running_tasks": max_running_tasks, "weight": weight, **quotas}
        return self._call("PUT", f"/api/v1/tenants/{_seg(tenant)}/limits", json=body).json()

    def project_limits(self, tenant: str, project: str) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/tenants/{_seg(tenant)}/projects/{_seg(project)}/limits").json()

    def set_project_limits(self, tenant: str, project: str, **quotas: Any) -> dict[str, Any]:
        """Replace the project's limits: those not given are removed (the tenant's still apply)."""
        return self._call("PUT", f"/api/v1/tenants/{_seg(tenant)}/projects/{_seg(project)}/limits",
                          json=quotas).json()

    def create_tenant(self, tenant: str, name: str | None = None) -> dict[str, Any]:
        return self._call("POST", "/api/v1/tenants", json={"id": tenant, **({"name": name} if name else {})}).json()

    def tenants(self, *, limit: int = 500, cursor: str | None = None) -> dict[str, Any]:
        return self._call("GET", "/api/v1/tenants", params={"limit": limit, **({"cursor": cursor} if cursor else {})}).json()

    # ---- projects ------------------------------------------------------------------------

    def create_project(self, tenant: str, project: str, name: str | None = None) -> dict[str, Any]:
        body = {"id": project, **({"name": name} if name else {})}
        return self._call("POST", f"/api/v1/tenants/{_seg(tenant)}/projects", json=body).json()

    def projects(self, tenant: str, *, limit: int = 500, cursor: str | None = None) -> dict[str, Any]:
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        return self._call("GET", f"/api/v1/tenants/{_seg(tenant)}/projects", params=params).json()

    def project(self, tenant: str, project: str) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/tenants/{_seg(tenant)}/projects/{_seg(project)}").json()

    def delete_project(self, tenant: str, project: str) -> None:
        self._call("DELETE", f"/api/v1/tenants/{_seg(tenant)}/projects/{_seg(project)}")

    def ready(self) -> dict[str, Any]:
        return self._call("GET", "/readyz").json()
