# llmkit in production: `llmkit serve --ref main --remote origin` over a clone of the prompt
# repository mounted at /repo, with its database and admin key in the /data volume.
# docs/deploy.md says how to run it, the variables it reads, and how to put it behind a proxy.
FROM python:3.11-slim

# git is what llmkit reads prompts with, and what fetches the remote.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# llmkit from this checkout (only what the package is built from).
WORKDIR /opt/llmkit
COPY pyproject.toml README.md ./
COPY llmkit ./llmkit
RUN pip install --no-cache-dir . && rm -rf /opt/llmkit

# A user of its own; the mounted clone belongs to another uid, which git would otherwise refuse.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin llmkit \
    && mkdir -p /repo /data \
    && chown llmkit:llmkit /repo /data \
    && git config --system --add safe.directory /repo

ENV LLMKIT_REPO=/repo \
    LLMKIT_DATA_DIR=/data \
    LLMKIT_HOST=0.0.0.0 \
    LLMKIT_PORT=8000 \
    GIT_TERMINAL_PROMPT=0 \
    PYTHONUNBUFFERED=1

USER llmkit
WORKDIR /repo
VOLUME ["/data"]
EXPOSE 8000

# Liveness: 200 while the server answers (the served commit, REF's state and the run log's
# health are in the body; monitors that want a status code for "degraded" use ?strict=true).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["llmkit", "serve", "--ref", "main", "--remote", "origin"]
