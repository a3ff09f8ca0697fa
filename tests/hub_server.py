"""A small local HTTP server speaking the Hub endpoints that huggingface_hub's HfApi uses to publish and fetch a
model, so tests drive the real client (HfApi(endpoint=...), snapshot_download) and check what arrived.

Publishing: POST /api/repos/create, /api/validate-yaml, /api/models/{repo}/preupload/{rev} (every file
"regular", i.e. inline), /api/models/{repo}/commit/{rev} (NDJSON: header, then base64 files),
/api/models/{repo}/tag/{rev}; GET /api/models/{repo}/refs. Fetching: GET /api/models/{repo}/revision/{rev}, .../tree/{rev},
HEAD/GET /{repo}/resolve/{rev}/{path}. Writes need an Authorization header; every request is recorded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)  # the head of main
    commits: list[dict] = field(default_factory=list)  # {"oid", "message", "files": {path: bytes}}
    tags: dict[str, str] = field(default_factory=dict)  # tag -> commit oid

    @property
    def head(self) -> str:
        return self.commits[-1]["oid"] if self.commits else "0" * 40

    def files_at(self, revision: str) -> tuple[str, dict[str, bytes]] | None:
        oid = self.tags.get(revision, self.head if revision == "main" else revision)
        snapshot: dict[str, bytes] = {}
        for commit in self.commits:
            snapshot.update(commit["files"])
            if commit["oid"] == oid:
                return oid, dict(snapshot)
        return None


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None


_API = re.compile(
    r"^/api/(?:models|datasets)/(?P<repo>[^/]+/[^/]+)/(?P<action>preupload|commit|tag|revision|refs|tree)(?:/(?P<rev>.+))?$"
)
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


class FakeHub:
    """`with FakeHub() as hub: HfApi(endpoint=hub.url, token=...)`; then inspect hub.repos and hub.requests."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    server_hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet; requests are recorded instead
        pass

    def _reply(
        self, status: int, body: dict | list | bytes | None = None, headers: dict[str, str] | None = None
    ) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream" if isinstance(body, bytes) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _route(self) -> None:
        hub = self.server_hub
        path = unquote(urlsplit(self.path).path)
        hub.requests.append(Request(self.command, path, self.headers.get("Authorization")))
        body = self._body() if self.command in ("POST", "PUT") else b""
        if self.command == "POST" and not self.headers.get("Authorization"):
            return self._reply(401, {"error": "Invalid credentials"})
        with hub.lock:
            if path == "/api/repos/create":
                return self._create(json.loads(body))
            if path == "/api/validate-yaml":
                return self._reply(200, {"errors": [], "warnings": []})
            if match := _API.match(path):
                return self._api(match["repo"], match["action"], match["rev"], body)
            if match := _RESOLVE.match(path):
                return self._resolve(match["repo"], match["rev"], match["file"])
        return self._reply(404, {"error": f"no route for {self.command} {path}"})

    do_GET = do_POST = do_HEAD = _route  # noqa: N815 (http.server dispatches on these names)

    def _create(self, payload: dict) -> None:
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        if repo_id in self.server_hub.repos:
            return self._reply(
                409, {"error": "You already created this model repo", "url": f"{self.server_hub.url}/{repo_id}"}
            )
        private = payload.get("visibility", "private" if payload.get("private") else "public") == "private"
        self.server_hub.repos[repo_id] = Repo(private=private)
        return self._reply(200, {"url": f"{self.server_hub.url}/{repo_id}", "name": repo_id})

    def _api(self, repo_id: str, action: str, rev: str | None, body: bytes) -> None:
        repo = self.server_hub.repos.get(repo_id)
        if repo is None:
            return self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if action == "preupload":
            files = json.loads(body)["files"]
            return self._reply(
                200,
                {
                    "files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files],
                    "commitOid": repo.head,
                },
            )
        if action == "commit":
            return self._commit(repo_id, repo, body)
        if action == "tag":
            tag = json.loads(body)["tag"]
            if tag in repo.tags:
                return self._reply(409, {"error": f"Tag {tag} already exists"})
            repo.tags[tag] = repo.head if rev in (None, "main") else rev
            return self._reply(200, {})
        if action == "refs":
            branch = [{"name": "main", "ref": "refs/heads/main", "targetCommit": repo.head}]
            tags = [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": oid} for t, oid in repo.tags.items()]
            return self._reply(200, {"branches": branch, "tags": tags, "converts": []})
        found = repo.files_at(rev or "main")
        if found is None:
            return self._reply(404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
        oid, files = found
        if action == "tree":
            return self._reply(
                200,
                [
                    {"type": "file", "path": p, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                    for p, d in sorted(files.items())
                ],
            )
        return self._reply(
            200,
            {
                "id": repo_id,
                "modelId": repo_id,
                "sha": oid,
                "private": repo.private,
                "siblings": [{"rfilename": p} for p in sorted(files)],
            },
        )

    def _commit(self, repo_id: str, repo: Repo, body: bytes) -> None:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        files = {}
        for line in lines:
            if line["key"] == "file":
                files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            elif line["key"] != "header":
                return self._reply(400, {"error": f"fake hub: {line['key']} operations are not supported"})
        oid = hashlib.sha1(
            repo.head.encode() + json.dumps(sorted(files)).encode() + b"".join(files.values())
        ).hexdigest()
        repo.commits.append({"oid": oid, "message": header.get("summary", ""), "files": files})
        repo.files.update(files)
        return self._reply(
            200,
            {"commitUrl": f"{self.server_hub.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None},
        )

    def _resolve(self, repo_id: str, rev: str, filename: str) -> None:
        repo = self.server_hub.repos.get(repo_id)
        found = repo.files_at(rev) if repo else None
        if found is None or filename not in found[1]:
            return self._reply(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
        oid, files = found
        data = files[filename]
        etag = f'"{hashlib.sha1(data).hexdigest()}"'
        return self._reply(200, data, {"X-Repo-Commit": oid, "ETag": etag})
