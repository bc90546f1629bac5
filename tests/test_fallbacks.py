"""Fallback aliases keep their own api_base and key: a prompt whose primary alias fails is
answered by the fallback alias's own upstream, not by the primary's."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api_fixtures import running_api
from tests.fake_upstream import FakeUpstream
from tests.helpers import init_repo

PROMPT = """---
model: primary
fallbacks:
- backup
---
<!-- role:system -->
You answer briefly.
"""


def test_fallback_alias_uses_its_own_upstream_and_key(
    tmp_path: Path, upstreams: tuple[FakeUpstream, FakeUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = upstreams
    monkeypatch.setenv("KEY_A", "secret-a")
    monkeypatch.setenv("KEY_B", "secret-b")
    config = (
        "models:\n"
        f"  primary: {{model: openai/model-a, api_base: '{a.url}',"
        " api_key_env: KEY_A, max_retries: 0}\n"
        f"  backup: {{model: openai/model-b, api_base: '{b.url}',"
        " api_key_env: KEY_B, max_retries: 0}\n"
    )
    repo = init_repo(tmp_path / "repo", {"prompts/ask.md": PROMPT, "llmkit.yaml": config}).root
    a.enqueue(status=500)
    b.enqueue(content="from the backup")
    with running_api(repo) as api:
        response = api.post(
            "/v1/chat/completions",
            json={"model": "ask", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "from the backup"
    assert [r.body["model"] for r in a.chat_requests] == ["model-a"]
    [sent_to_b] = b.chat_requests
    assert sent_to_b.body["model"] == "model-b"
    assert sent_to_b.headers["authorization"] == "Bearer secret-b"
