"""The one typed client of the worker's HTTP API used by every page."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_URL = "http://127.0.0.1:8765"


class WorkerUnavailable(Exception):
    """The worker cannot be reached or is not ready; the message is shown as it is."""


class WorkerError(Exception):
    """The worker refused a request; the message is the worker's own explanation."""


class WorkerClient:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 15.0) -> None:
        self.url = (url or os.environ.get("PERSONA_SPACE_WORKER_URL") or DEFAULT_URL).rstrip("/")
        token = token or os.environ.get("PERSONA_SPACE_TOKEN") or None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise WorkerUnavailable(
                f"the worker at {self.url} is not reachable ({type(exc).__name__}); start it with `make run`"
            ) from exc
        if response.status_code == 503:
            raise WorkerUnavailable(_message(response))
        if response.status_code >= 400:
            raise WorkerError(_message(response))
        return response.json()

    def health(self) -> dict[str, Any]:
        return dict(self._call("GET", "/health"))

    def space(self, layer: int | None = None) -> dict[str, Any]:
        return dict(self._call("GET", "/space", params={} if layer is None else {"layer": layer}))

    def traits(self, layer: int | None = None) -> dict[str, Any]:
        """The space's traits at ``layer`` (default the target layer); WorkerError when the space has none."""
        return dict(self._call("GET", "/traits", params={} if layer is None else {"layer": layer}))

    def trait_archetypes(self, name: str, layer: int | None = None) -> dict[str, Any]:
        """Every archetype projected on trait ``name`` at ``layer``, highest first, and the default Assistant's."""
        params = {} if layer is None else {"layer": layer}
        return dict(self._call("GET", f"/traits/{quote(name, safe='')}/archetypes", params=params))

    def create_session(
        self, system: str | None = None, controls: dict[str, Any] | None = None, title: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"system": system or None, "title": title}
        if controls:
            body["controls"] = controls
        return dict(self._call("POST", "/sessions", json=body))

    def session(self, sid: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/sessions/{sid}"))

    def list_sessions(self) -> list[dict[str, Any]]:
        """Every stored session, newest first: id, created (unix time), title, number of turns."""
        return list(self._call("GET", "/sessions")["sessions"])

    def post_message(self, sid: str, content: str, compare: bool = False) -> dict[str, Any]:
        return dict(self._call("POST", f"/sessions/{sid}/messages", json={"content": content, "compare": compare}))

    def events(self, sid: str, after: int = 0) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/sessions/{sid}/events", params={"after": after})["events"])

    def patch_controls(self, sid: str, **changes: Any) -> dict[str, Any]:
        return dict(self._call("PATCH", f"/sessions/{sid}/controls", json=changes))

    def stop(self, sid: str, turns: str = "all") -> dict[str, Any]:
        """Stop the session's turns: ``all``, the ``running`` one only (queued ones still run), or the ``queued`` ones
        only (the running one goes on); ``stopped`` lists the turns."""
        return dict(self._call("POST", f"/sessions/{sid}/stop", params={} if turns == "all" else {"turns": turns}))

    def undo(self, sid: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/sessions/{sid}/undo"))

    def export(self, sid: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/sessions/{sid}/export"))

    def import_session(self, data: dict[str, Any]) -> dict[str, Any]:
        return dict(self._call("POST", "/sessions/import", json=data))

    def project(
        self, conversation: Any, layer: int | None = None, *, tokens: bool = False, window: int | None = None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {} if layer is None else {"layer": layer}
        if tokens:
            params["tokens"] = "true"
        if window is not None:
            params["window"] = window
        return dict(self._call("POST", "/project", json=conversation, params=params, timeout=300))


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("error") or body.get("detail") or body)
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"
