"""A local stand-in for the Hugging Face Hub's write endpoints, as huggingface_hub (2.3)
calls them to create a repo and commit files: repo creation, README metadata validation,
the preupload check (every file "regular": sent inline, base64, in the commit) and the
ndjson commit. It keeps what arrives, and each request's path and Authorization header."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, Any]] = {}  # repo id -> {"visibility": ..., "files": {...}}
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, authorization
        self.url = ""


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            hub.requests.append(("POST", self.path, self.headers.get("Authorization")))
            path = self.path.split("?")[0]
            if path == "/api/repos/create":
                payload = json.loads(body)
                repo = f"{payload['organization']}/{payload['name']}"
                if repo in hub.repos:
                    return self._reply(409, {"error": "You already created this model repo"})
                hub.repos[repo] = {"visibility": payload.get("visibility"), "files": {}}
                return self._reply(200, {"url": f"{hub.url}/{repo}"})
            if path == "/api/validate-yaml":
                return self._reply(200, {"errors": [], "warnings": []})
            parts = path.split("/")  # /api/models/<org>/<name>/<what>/<revision>
            if len(parts) == 7 and parts[2] == "models":
                repo, what = f"{parts[3]}/{parts[4]}", parts[5]
                if repo not in hub.repos:
                    return self._reply(404, {"error": "Repository not found"})
                if what == "preupload":
                    files = json.loads(body)["files"]
                    modes = [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                        for f in files
                    ]
                    return self._reply(200, {"files": modes})
                if what == "commit":
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            value = item["value"]
                            hub.repos[repo]["files"][value["path"]] = base64.b64decode(
                                value["content"]
                            )
                    oid = "0" * 40
                    url = f"{hub.url}/{repo}/commit/{oid}"
                    return self._reply(
                        200, {"commitUrl": url, "commitOid": oid, "pullRequestUrl": None}
                    )
            self._reply(404, {"error": f"not served here: {path}"})

    return Handler


@contextmanager
def fake_hub() -> Iterator[FakeHub]:
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
