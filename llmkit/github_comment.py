"""One pull-request comment holding the eval summary, created once and updated on every push.

`python -m llmkit.github_comment --markdown eval-summary.md` is what the GitHub Action runs
after `llmkit eval`. The comment is found again by a hidden marker at the start of its body
(`<!-- llmkit-eval -->`), so a pull request carries one comment however often its checks run,
not one per push. It speaks GitHub's REST API with the standard library only, at
`GITHUB_API_URL` (set on every runner; github.com's API when unset, and a local fake in the
tests), authenticated by `GITHUB_TOKEN`. The pull request's number comes from the event payload
at `GITHUB_EVENT_PATH` (or `--pr`). Exit codes: 0 written (or no pull request to write on),
1 the API refused or could not be reached, 2 usage errors; a failure always says which request
failed and what GitHub answered.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit import __version__

DEFAULT_API_URL = "https://api.github.com"
DEFAULT_KEY = "llmkit-eval"
# GitHub refuses comment bodies over 65,536 characters; the summary is cut to leave room for
# the marker and the note that says it was cut.
MAX_BODY_CHARS = 65_000
PER_PAGE = 100
# A pull request with more comments than this is not searched further (and gets a new one).
MAX_PAGES = 50
TIMEOUT_S = 30.0
_KEY = re.compile(r"[A-Za-z0-9._-]{1,64}")
_REPOSITORY = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="next"')


class CommentError(Exception):
    """A request to GitHub failed; the message names the request and GitHub's answer."""


class UsageError(Exception):
    """What the command was given (flags, environment) cannot work."""


@dataclass(frozen=True)
class Written:
    action: str  # "created" or "updated"
    comment_id: int
    url: str


def marker(key: str = DEFAULT_KEY) -> str:
    return f"<!-- {key} -->"


def comment_body(markdown: str, key: str = DEFAULT_KEY) -> str:
    """The marker first (that is how the comment is found again), then the summary."""
    if len(markdown) > MAX_BODY_CHARS:
        markdown = (
            markdown[:MAX_BODY_CHARS]
            + "\n\n_The summary was cut here; the whole report is in the job's artifacts._\n"
        )
    return f"{marker(key)}\n{markdown}"


class GitHubApi:
    """The few REST calls the comment needs, with the token sent to `api_url` and nowhere else."""

    def __init__(self, api_url: str, token: str) -> None:
        parsed = urllib.parse.urlsplit(api_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UsageError(f"GITHUB_API_URL {api_url!r} is not an http(s) URL")
        self.api_url = api_url.rstrip("/")
        self._origin = (parsed.scheme, parsed.netloc)
        self._token = token

    def request(self, method: str, url: str, payload: Any = None) -> tuple[Any, dict[str, str]]:
        """(decoded JSON body, headers) of one call; CommentError when it fails."""
        if urllib.parse.urlsplit(url)[:2] != self._origin:
            # A Link header pointing elsewhere must not receive the token.
            raise CommentError(f"GitHub sent a link outside {self.api_url}: {url}")
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        req = urllib.request.Request(
            url,
            data=data,
            method=method,
            headers={
                "Accept": "application/vnd.github+json",
                "Authorization": f"Bearer {self._token}",
                "X-GitHub-Api-Version": "2022-11-28",
                "User-Agent": f"llmkit/{__version__}",
                **({"Content-Type": "application/json"} if data is not None else {}),
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as response:
                raw = response.read()
                headers = {k.lower(): v for k, v in response.headers.items()}
        except urllib.error.HTTPError as exc:
            raise CommentError(
                f"{method} {url} answered {exc.code} {exc.reason}: {_github_message(exc)}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CommentError(f"{method} {url} failed: cannot reach GitHub ({reason})") from None
        try:
            return (json.loads(raw) if raw else None), headers
        except ValueError:
            raise CommentError(f"{method} {url} answered something that is not JSON") from None

    def issue_comments(self, repository: str, number: int) -> list[dict[str, Any]]:
        """Every comment of the pull request, following the Link header page by page."""
        url: str | None = (
            f"{self.api_url}/repos/{repository}/issues/{number}/comments?per_page={PER_PAGE}"
        )
        comments: list[dict[str, Any]] = []
        for _ in range(MAX_PAGES):
            if url is None:
                break
            page, headers = self.request("GET", url)
            if not isinstance(page, list):
                raise CommentError(f"GET {url} answered {type(page).__name__}, not a list")
            comments += [c for c in page if isinstance(c, dict)]
            found = _NEXT_LINK.search(headers.get("link", ""))
            url = found.group(1) if found else None
        return comments


def _github_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read().decode("utf-8", "replace")
    except OSError:
        return "(no body)"
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else (body.strip()[:300] or "(no body)")


def upsert_comment(
    api: GitHubApi, repository: str, number: int, markdown: str, key: str = DEFAULT_KEY
) -> Written:
    """Update the pull request's comment that starts with the marker, or create it."""
    body = comment_body(markdown, key)
    ours = [
        c
        for c in api.issue_comments(repository, number)
        if isinstance(c.get("body"), str) and c["body"].startswith(marker(key))
    ]
    if ours:
        comment_id = int(ours[0]["id"])
        answer, _ = api.request(
            "PATCH",
            f"{api.api_url}/repos/{repository}/issues/comments/{comment_id}",
            {"body": body},
        )
        action = "updated"
    else:
        answer, _ = api.request(
            "POST", f"{api.api_url}/repos/{repository}/issues/{number}/comments", {"body": body}
        )
        action = "created"
    if not isinstance(answer, dict) or "id" not in answer:
        raise CommentError(f"GitHub's answer to the {action} comment holds no id")
    return Written(action, int(answer["id"]), str(answer.get("html_url", "")))


def pull_request_number(event_path: str | None) -> int | None:
    """The pull request an event is about (pull_request or pull_request_target), if any."""
    if not event_path:
        return None
    try:
        event = json.loads(Path(event_path).read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"GITHUB_EVENT_PATH {event_path}: cannot read the event ({exc})") from None
    pull = event.get("pull_request") if isinstance(event, dict) else None
    number = pull.get("number") if isinstance(pull, dict) else None
    return number if isinstance(number, int) and number > 0 else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m llmkit.github_comment",
        description="Create or update the pull request's llmkit eval comment.",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        required=True,
        help="The summary to post (llmkit eval --markdown FILE).",
    )
    parser.add_argument(
        "--pr",
        type=int,
        default=None,
        help="Pull request number (default: from GITHUB_EVENT_PATH).",
    )
    parser.add_argument(
        "--repository", default=None, help="OWNER/NAME (default: GITHUB_REPOSITORY)."
    )
    parser.add_argument(
        "--key", default=DEFAULT_KEY, help="Name in the hidden marker; one comment per key."
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace, env: dict[str, str]) -> str:
    """Write the comment; returns what to print. Raises UsageError or CommentError."""
    token = env.get("GITHUB_TOKEN", "")
    if not token:
        raise UsageError("GITHUB_TOKEN is not set; the comment needs a token")
    repository = args.repository or env.get("GITHUB_REPOSITORY", "")
    if not _REPOSITORY.fullmatch(repository):
        raise UsageError(f"repository {repository!r} is not OWNER/NAME (GITHUB_REPOSITORY)")
    if not _KEY.fullmatch(args.key):
        raise UsageError(f"--key {args.key!r}: use letters, digits, '.', '_' or '-'")
    if args.pr is not None and args.pr <= 0:
        raise UsageError(f"--pr {args.pr} is not a pull request number")
    number = args.pr or pull_request_number(env.get("GITHUB_EVENT_PATH"))
    if number is None:
        return "Not a pull request event: no comment written."
    try:
        markdown = args.markdown.read_text("utf-8")
    except OSError as exc:
        raise UsageError(f"--markdown {args.markdown}: {exc.strerror or exc}") from None
    api = GitHubApi(env.get("GITHUB_API_URL") or DEFAULT_API_URL, token)
    written = upsert_comment(api, repository, number, markdown, args.key)
    return f"{written.action} comment {written.comment_id} on #{number} {written.url}".rstrip()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        print(run(args, dict(os.environ)))
    except UsageError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    except CommentError as exc:
        print(f"Error: the pull request comment was not written: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
