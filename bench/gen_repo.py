"""Generate a prompt repository of N prompts x V versions for benchmarks.

Every commit changes exactly one prompt file. The history is streamed into `git fast-import`, so
20,000 commits take seconds. The output is deterministic: the same arguments give the same
commit shas (fixed authors, dates and contents drawn from a seeded generator).

    python bench/gen_repo.py DIR --prompts 1000 --versions 20 [--seed 7] [--model echo]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

EPOCH = 1_700_000_000  # first commit's date; each later commit is one minute after the previous
AUTHORS = (
    ("Ada Lovelace", "ada@example.com"),
    ("Grace Hopper", "grace@example.com"),
    ("Alan Turing", "alan@example.com"),
    ("Edsger Dijkstra", "edsger@example.com"),
    ("Barbara Liskov", "barbara@example.com"),
)
MODELS = ("openai/gpt-4o-mini", "openai/gpt-4o", "anthropic/claude-3-5-haiku-latest", "default")
TONES = ("friendly", "formal", "terse", "playful", "patient", "precise")
TOPICS = (
    "billing",
    "shipping",
    "returns",
    "onboarding",
    "security",
    "pricing",
    "outages",
    "accounts",
)
VARIABLES = ("personality", "company", "product", "language", "audience")
# Keys live at the top level and in folders of one and two levels, as real repositories do.
FOLDERS = ("", "support", "sales/emails", "internal", "", "marketing/social", "support/triage", "")
GITIGNORE = b".llmkit/\n"


@dataclass(frozen=True)
class Generated:
    root: Path
    keys: list[str]
    commits: int
    head: str


def prompt_key(index: int) -> str:
    folder = FOLDERS[index % len(FOLDERS)]
    name = f"{TOPICS[index % len(TOPICS)]}-{index:05d}"
    return f"{folder}/{name}" if folder else name


def prompt_text(key: str, version: int, seed: int = 7, model: str | None = None) -> str:
    """The content of version `version` (1-based) of prompt `key`: frontmatter, a templated
    system section and a user section. Different versions always differ. `model`, when given,
    is every prompt's model (`echo` runs offline); the rest is the same either way."""
    rng = random.Random(f"{seed}:{key}:{version}")
    drawn = rng.choice(MODELS)
    variable = rng.choice(VARIABLES)
    tone = rng.choice(TONES)
    temperature = round(rng.uniform(0, 1.2), 1)
    rules = "\n".join(
        f"- When the question is about {rng.choice(TOPICS)}, {rng.choice(TONES)} answers work best"
        f" (rule {rng.randrange(1000)})."
        for _ in range(rng.randint(2, 6))
    )
    return (
        "---\n"
        f"model: {model or drawn}\n"
        f"description: Benchmark prompt {key}, revision {version}\n"
        f"temperature: {temperature}\n"
        f"max_tokens: {rng.choice((256, 512, 1024, 2048))}\n"
        "---\n"
        "<!-- role:system -->\n"
        f"You are a {tone} assistant for {{{{ {variable} }}}}. This is revision {version}.\n"
        "\n"
        f"{rules}\n"
        "\n"
        "<!-- role:user -->\n"
        "{{ question }}\n"
    )


def commit_order(prompts: int, versions: int, seed: int) -> Iterator[tuple[int, int]]:
    """(prompt index, version) pairs: every prompt's version v lands in round v, in a shuffled
    order per round, so histories interleave like a real team's."""
    rng = random.Random(seed)
    order = list(range(prompts))
    for version in range(1, versions + 1):
        rng.shuffle(order)
        for index in order:
            yield index, version


def _data(payload: bytes) -> bytes:
    return b"data %d\n%s\n" % (len(payload), payload)


def fast_import_stream(
    prompts: int, versions: int, seed: int, branch: str, model: str | None = None
) -> Iterator[bytes]:
    for n, (index, version) in enumerate(commit_order(prompts, versions, seed)):
        key = prompt_key(index)
        name, email = AUTHORS[(index + version) % len(AUTHORS)]
        when = EPOCH + 60 * n
        verb = "Add" if version == 1 else "Update"
        message = f"{verb} {key} (revision {version})".encode()
        parts = [
            f"commit refs/heads/{branch}\n".encode(),
            f"author {name} <{email}> {when} +0000\n".encode(),
            f"committer {name} <{email}> {when} +0000\n".encode(),
            _data(message),
        ]
        if n == 0:
            parts.append(b"M 100644 inline .gitignore\n" + _data(GITIGNORE))
        parts.append(f"M 100644 inline prompts/{key}.md\n".encode())
        parts.append(_data(prompt_text(key, version, seed, model).encode()))
        yield b"".join(parts)


def _git(root: Path, *args: str, input: bytes | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=root, input=input, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"git {args[0]} failed in {root}: {proc.stderr.decode(errors='replace').strip()}"
        )
    return proc.stdout.decode().strip()


def generate(
    root: Path,
    prompts: int = 1000,
    versions: int = 20,
    seed: int = 7,
    branch: str = "main",
    model: str | None = None,
) -> Generated:
    """Create a git repository at `root` (absent or empty) holding prompts x versions commits."""
    if prompts < 1 or versions < 1:
        raise ValueError(f"need at least one prompt and one version, got {prompts} x {versions}")
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty")
    root.mkdir(parents=True, exist_ok=True)
    _git(root, "init", "-q", "-b", branch)
    proc = subprocess.Popen(
        ["git", "fast-import", "--quiet", "--done"],
        cwd=root,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stderr is not None
    for chunk in fast_import_stream(prompts, versions, seed, branch, model):
        proc.stdin.write(chunk)
    proc.stdin.write(b"done\n")
    proc.stdin.close()
    errors = proc.stderr.read()
    if proc.wait() != 0:
        raise RuntimeError(f"git fast-import failed: {errors.decode(errors='replace').strip()}")
    _git(root, "checkout", "-q", "-f", branch)
    head = _git(root, "rev-parse", "HEAD")
    keys = [prompt_key(i) for i in range(prompts)]
    return Generated(root.resolve(), keys, prompts * versions, head)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "directory", type=Path, help="where to create the repository (absent or empty)"
    )
    parser.add_argument(
        "--prompts", type=int, default=1000, help="number of prompt files (default 1000)"
    )
    parser.add_argument("--versions", type=int, default=20, help="commits per prompt (default 20)")
    parser.add_argument(
        "--seed", type=int, default=7, help="seed for contents and commit order (default 7)"
    )
    parser.add_argument("--branch", default="main", help="branch name (default main)")
    parser.add_argument("--model", default=None, help="every prompt's model (e.g. echo)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        result = generate(
            args.directory, args.prompts, args.versions, args.seed, args.branch, args.model
        )
    except (ValueError, FileExistsError, RuntimeError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    print(
        f"{result.root}: {len(result.keys)} prompts x {args.versions} versions ="
        f" {result.commits} commits in {elapsed:.1f} s (HEAD {result.head[:12]})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
