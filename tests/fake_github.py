"""A fake of GitHub's REST API for issue comments on 127.0.0.1 (the `fake_github` fixture):
what the pull-request comment of the action talks to in tests."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from llmkit import github_comment

REPOSITORY = "acme/prompts"
TOKEN = "ghs_faketoken"
PAGE_SIZE = 2  # the fake pages this small, whatever per_page asks, so pages are followed


@dataclass
class FakeGitHub:
    """Issue comments of one repository, kept in memory, and every request it was sent."""

    url: str = ""
    comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    fail: dict[str, tuple[int, str]] = field(default_factory=dict)  # method -> (status, body)
    next_id: int = 1000
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, number: int, body: str, user: str = "someone") -> int:
        with self.lock:
            self.next_id += 1
            self.comments.setdefault(number, []).append(
                {
                    "id": self.next_id,
                    "body": body,
                    "user": {"login": user},
                    "html_url": f"https://github.test/{REPOSITORY}/pull/{number}#c{self.next_id}",
                }
            )
            return self.next_id

    def ours(self, number: int) -> list[dict[str, Any]]:
        return [
            c
            for c in self.comments.get(number, [])
            if c["body"].startswith(github_comment.marker())
        ]

    def methods(self) -> list[str]:
        return [method for method, _, _ in self.requests]


def handler_for(fake: FakeGitHub) -> type[BaseHTTPRequestHandler]:
    issue = re.compile(rf"/repos/{re.escape(REPOSITORY)}/issues/(\d+)/comments")
    one = re.compile(rf"/repos/{re.escape(REPOSITORY)}/issues/comments/(\d+)")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            raw = json.dumps(body).encode("utf-8") if not isinstance(body, bytes) else body
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(raw)

        def handle_one(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            payload = json.loads(self.rfile.read(length)) if length else None
            fake.requests.append((method, self.path, payload))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self.answer(401, {"message": "Bad credentials"})
            if method in fake.fail:
                status, body = fake.fail[method]
                return self.answer(status, body.encode("utf-8"))
            parts = urlsplit(self.path)
            if (found := issue.fullmatch(parts.path)) and method == "GET":
                page = int(parse_qs(parts.query).get("page", ["1"])[0])
                items = fake.comments.get(int(found.group(1)), [])
                chunk = items[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
                headers = {}
                if page * PAGE_SIZE < len(items):
                    nxt = f"{fake.url}{parts.path}?per_page=100&page={page + 1}"
                    headers["Link"] = f'<{nxt}>; rel="next", <{fake.url}{parts.path}>; rel="first"'
                return self.answer(200, chunk, headers)
            if (found := issue.fullmatch(parts.path)) and method == "POST":
                new_id = fake.add(int(found.group(1)), payload["body"], "github-actions[bot]")
                url = f"https://github.test/c{new_id}"
                return self.answer(201, {"id": new_id, "html_url": url})
            if (found := one.fullmatch(parts.path)) and method == "PATCH":
                wanted = int(found.group(1))
                for comment in (c for cs in fake.comments.values() for c in cs):
                    if comment["id"] == wanted:
                        comment["body"] = payload["body"]
                        return self.answer(200, {"id": wanted, "html_url": comment["html_url"]})
            return self.answer(404, {"message": "Not Found"})

        def do_GET(self) -> None:
            self.handle_one("GET")

        def do_POST(self) -> None:
            self.handle_one("POST")

        def do_PATCH(self) -> None:
            self.handle_one("PATCH")

    return Handler


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    fake = FakeGitHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(fake))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
