"""Which version of each prompt the branches and tags hold: `feature` holds version 7 of
`hello`, tag `v1.2` holds version 5, `feature` holds a text of `triage` that is no committed
version of the served branch.

Read from git in bulk: one `git for-each-ref` per question, then one `git ls-tree -r` of
`prompts/` per ref not seen before, cached by (ref name, commit): a tree at a commit never
changes. A file's blob id names its version through the index (the blob of each committed
version). The answer for one set of refs at one indexed head is kept whole, so asking again
while nothing moved costs the for-each-ref and a dictionary lookup."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from llmkit.config import PROMPTS_DIR
from llmkit.errors import InvalidKey
from llmkit.index import Index
from llmkit.promptfile import is_prompt_path, key_from_path
from llmkit.store import GitStore

# The most recently made refs that are read; a repository with thousands of tags shows the
# newest ones rather than reading every tree.
MAX_REFS = 50
KINDS = {"refs/heads/": "branch", "refs/tags/": "tag"}

RefList = tuple[tuple[str, str], ...]  # (full ref name, object id)


@dataclass(frozen=True)
class RefMark:
    """What one branch or tag holds of one prompt: a blob, which is committed version `number`
    of the served branch, or no committed version (`number` None)."""

    ref: str  # refs/heads/feature
    name: str  # feature
    kind: str  # branch or tag
    blob: str
    number: int | None
    # How a person names the ref: `feature`, `v1.2 tag`.
    title: str


class RefVersions:
    """The cache of what the refs hold; one per app, shared by its requests."""

    def __init__(self, max_refs: int = MAX_REFS) -> None:
        self.max_refs = max_refs
        self._lock = threading.Lock()
        self._trees: dict[tuple[str, str], dict[str, str]] = {}
        self._numbers: tuple[str | None, dict[tuple[str, str], int]] | None = None
        self._marks: tuple[tuple[RefList, str | None], dict[str, list[RefMark]]] | None = None

    def marks(self, index: Index) -> dict[str, list[RefMark]]:
        """For each prompt key, what every branch and tag but the served one holds of it (refs
        that do not hold the prompt are left out), newest ref first."""
        store = index.store
        refs = self._refs(store)
        head = index.head()
        with self._lock:
            if self._marks is not None and self._marks[0] == (refs, head):
                return self._marks[1]
            numbers = self._version_numbers(index, head)
            trees = {(ref, sha): self._tree(store, ref, sha) for ref, sha in refs}
            self._trees = trees  # the trees of refs gone or moved are dropped
            result: dict[str, list[RefMark]] = {}
            for (name, _), tree in trees.items():
                kind, short = _kind_and_name(name)
                title = short if kind == "branch" else f"{short} {kind}"
                for key, blob in tree.items():
                    number = numbers.get((key, blob))
                    mark = RefMark(name, short, kind, blob, number, title)
                    result.setdefault(key, []).append(mark)
            self._marks = ((refs, head), result)
            return result

    def _refs(self, store: GitStore) -> RefList:
        served = _served_ref(store)
        out = store.git(
            "for-each-ref",
            "--sort=-creatordate",
            f"--count={self.max_refs + 1}",
            "--format=%(objectname) %(refname)",
            *KINDS,
        ).stdout.decode("utf-8", "surrogateescape")
        refs = []
        for line in out.splitlines():
            sha, _, name = line.partition(" ")
            if name and name != served:
                refs.append((name, sha))
        return tuple(refs[: self.max_refs])

    def _tree(self, store: GitStore, ref: str, sha: str) -> dict[str, str]:
        """{key: blob} of the prompt files at `sha` (a commit or a tag), read once."""
        found = self._trees.get((ref, sha))
        if found is not None:
            return found
        listing = store.git("ls-tree", "-r", "-z", sha, "--", f"{PROMPTS_DIR}/", check=False)
        tree: dict[str, str] = {}
        if listing.returncode == 0:
            for record in listing.stdout.decode("utf-8", "surrogateescape").split("\0"):
                meta, _, path = record.partition("\t")
                parts = meta.split()
                if len(parts) != 3 or parts[1] != "blob" or not is_prompt_path(path):
                    continue
                try:
                    tree[key_from_path(path)] = parts[2]
                except InvalidKey:
                    continue  # a file the index would not serve either
        self._trees[(ref, sha)] = tree
        return tree

    def _version_numbers(self, index: Index, head: str | None) -> dict[tuple[str, str], int]:
        """(key, blob) -> the latest committed version with that text, read once per head."""
        if self._numbers is not None and self._numbers[0] == head:
            return self._numbers[1]
        numbers: dict[tuple[str, str], int] = {}
        for key, number, blob in index.committed_blobs():
            if number > numbers.get((key, blob), 0):
                numbers[(key, blob)] = number
        self._numbers = (head, numbers)
        return numbers


def _kind_and_name(ref: str) -> tuple[str, str]:
    for prefix, kind in KINDS.items():
        if ref.startswith(prefix):
            return kind, ref.removeprefix(prefix)
    return "ref", ref


def _served_ref(store: GitStore) -> str:
    """The ref whose history the index serves: HEAD's branch, or the ref `serve --ref` pins."""
    local = getattr(store, "local_ref", None)
    return local if isinstance(local, str) else store.head_ref()
