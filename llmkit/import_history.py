"""The git side of `llmkit import-llmkit`: which LLMKit versions and eval cases the history
already holds, the commits an import makes, and how they land in the repository.

- Every prompt_version becomes one commit of `prompts/<key>.md`, author and committer dated
  with its created_at, in created_at then id order across prompts, so the history reads as it
  happened. A version whose file is the same as the one before it makes no commit: it is that
  version in llmkit.
- A prompt whose current version in LLMKit is not its last gets a final "Restore" commit of the
  current version's content, since llmkit serves the latest commit: what was served stays
  served.
- Models whose provider has a base URL of its own become aliases in llmkit.yaml (one commit,
  before the others); eval cases become `evals/<key>/<slug>.yaml` (one commit, after them).

Each commit carries trailers `LLMKit-Import: <source> <kind> <id>`, and the history is what
says which versions and eval cases are in, so a kill after a commit and before any bookkeeping
cannot lead to a second copy.

The commits land through `import_land`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmkit.config import EVALS_DIR, PROMPTS_DIR
from llmkit.errors import InvalidKey, LlmkitError
from llmkit.evals.cases import EVAL_SUFFIXES, case_path
from llmkit.evals.spec import load_eval_text, load_evals
from llmkit.import_convert import (
    AliasFile,
    Converted,
    ModelTarget,
    alias_name,
    case_name,
    eval_case_text,
    model_target,
    prompt_text,
)
from llmkit.import_source import ImportRefused, LLMKitSource, SourceEval, SourceVersion
from llmkit.promptfile import (
    PROMPT_SUFFIX,
    PROMPTS_PREFIX,
    is_prompt_path,
    path_for_key,
    validate_key,
)
from llmkit.store import GitStore

TRAILER = "LLMKit-Import"
CONFIG_PATH = "llmkit.yaml"
_TRAILER_RE = re.compile(rf"^{TRAILER}: ([0-9a-f]+) (\w+)(?: (\S+))?(?: (\S+))?$")
LATEST = datetime.max.replace(tzinfo=UTC)


@dataclass
class Summary:
    """What an import did (or, in a dry run, would do)."""

    source: str
    identity: str
    schema: str
    dry_run: bool
    prompts: list[str] = field(default_factory=list)
    versions: int = 0
    restores: list[str] = field(default_factory=list)
    eval_cases: int = 0
    eval_runs: int = 0
    eval_results: int = 0
    scores: int = 0
    logs: int = 0
    aliases: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: list[dict[str, str]] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.commits or self.eval_results or self.logs or self.eval_runs)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PlannedCommit:
    message: str
    when: datetime
    files: dict[str, bytes]
    trailers: list[str]
    sha: str | None = None
    model: str | None = None  # the model name its prompt file uses, for llmkit.yaml


@dataclass
class InHistory:
    """What earlier imports of this source committed, read from the trailers in HEAD."""

    versions: dict[int, str] = field(default_factory=dict)  # LLMKit version id -> commit
    evals: dict[int, str] = field(default_factory=dict)  # LLMKit eval id -> file path
    commits: set[str] = field(default_factory=set)


@dataclass
class Plan:
    summary: Summary
    keys: dict[int, str]  # LLMKit prompt id -> key
    targets: dict[int, ModelTarget]  # LLMKit model id -> model
    commits: list[PlannedCommit] = field(default_factory=list)
    # LLMKit version id -> the commit that holds its content: an earlier one, or one planned.
    version_at: dict[int, str | PlannedCommit] = field(default_factory=dict)
    # Versions whose file is the same as the one before them make no commit: the earlier
    # commit, recorded in the durable table, or "" when a trailer of this run's commits says it.
    same_as: dict[int, str] = field(default_factory=dict)
    eval_files: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (path, name)

    def finals(self) -> dict[str, bytes]:
        """Each path the commits write, with its content after the last of them."""
        result: dict[str, bytes] = {}
        for commit in self.commits:
            result.update(commit.files)
        return result

    def version_sha(self, version_id: int) -> str | None:
        at = self.version_at.get(version_id)
        return at.sha if isinstance(at, PlannedCommit) else at


def read_history(store: GitStore, identity: str) -> InHistory:
    found = InHistory()
    if store.head() is None:
        return found
    raw = store.git(
        "log",
        "-z",
        "--format=%H%x1f%B",
        "--fixed-strings",
        f"--grep={TRAILER}: {identity} ",
        "HEAD",
    ).stdout.decode("utf-8", "replace")
    for record in raw.split("\0"):
        sha, sep, body = record.partition("\x1f")
        if not sep:
            continue
        sha = sha.strip()
        for line in body.splitlines():
            match = _TRAILER_RE.match(line.strip())
            if match is None or match.group(1) != identity:
                continue
            found.commits.add(sha)
            kind, ident, extra = match.group(2), match.group(3) or "", match.group(4)
            if not ident.isdigit():
                continue
            if kind == "version":
                found.versions.setdefault(int(ident), sha)  # newest first: the newest wins
            elif kind == "same":
                # The same file as an earlier version: that commit (named), or this one.
                found.versions.setdefault(int(ident), extra or sha)
            elif kind == "eval" and extra:
                found.evals.setdefault(int(ident), extra)
    return found


def head_tree(store: GitStore) -> dict[str, str]:
    """path -> blob id of every file under prompts/ and evals/, and llmkit.yaml, at HEAD."""
    if store.head() is None:
        return {}
    raw = store.git("ls-tree", "-r", "-z", "HEAD", "--", PROMPTS_DIR, EVALS_DIR, CONFIG_PATH).stdout
    tree = {}
    for entry in raw.decode("utf-8", "surrogateescape").split("\0"):
        meta, sep, path = entry.partition("\t")
        parts = meta.split()
        if sep and len(parts) == 3 and parts[1] == "blob":
            tree[path] = parts[2]
    return tree


# --- planning ---------------------------------------------------------------------------------


def make_plan(store: GitStore, repo: Path, source: LLMKitSource, same_as: dict[int, str]) -> Plan:
    """Every commit the import makes, computed without writing anything."""
    summary = Summary(str(source.path), source.identity, source.schema, dry_run=True)
    summary.keys = [{"name": k.name, "created_at": k.created_at} for k in source.keys]
    history = read_history(store, source.identity)
    tree = head_tree(store)
    texts = {path: data.decode("utf-8", "replace") for path, data in _blobs(store, tree).items()}
    plan = Plan(summary, _checked_keys(source, tree), {})
    plan.targets = {model_id: model_target(model) for model_id, model in source.models.items()}
    aliases = AliasFile(texts.get(CONFIG_PATH))
    now = datetime.now(UTC)
    _plan_versions(plan, store, source, history, same_as, texts, aliases, now)
    _plan_evals(plan, store, repo, source, history, tree, now)
    _plan_aliases(plan, aliases, now)
    summary.prompts = sorted({k for c in plan.commits for k in _keys_in(c)})
    summary.notes = list(dict.fromkeys(summary.notes))
    return plan


def _blobs(store: GitStore, tree: dict[str, str]) -> dict[str, bytes]:
    wanted = {p: b for p, b in tree.items() if p.startswith(PROMPTS_PREFIX) or p == CONFIG_PATH}
    contents = store.read_blobs(wanted.values())
    return {path: contents[blob] for path, blob in wanted.items() if blob in contents}


def _keys_in(commit: PlannedCommit) -> list[str]:
    return [_key_of(p) for p in commit.files if p.startswith(PROMPTS_PREFIX)]


def _key_of(path: str) -> str:
    """The key a prompt path spells, unchecked (an import reports bad keys all at once)."""
    return path[len(PROMPTS_PREFIX) : -len(PROMPT_SUFFIX)]


def _checked_keys(source: LLMKitSource, tree: dict[str, str]) -> dict[int, str]:
    """LLMKit prompt id -> key, for the prompts that have versions. Refuses every key llmkit
    cannot use as a file name, all at once, before anything is written."""
    with_versions = {v.prompt_id for v in source.versions}
    existing = {_key_of(p).lower(): _key_of(p) for p in tree if is_prompt_path(p)}
    keys: dict[int, str] = {}
    problems = []
    for prompt in sorted(source.prompts.values(), key=lambda p: p.id):
        if prompt.id not in with_versions:
            continue
        try:
            validate_key(prompt.key)
        except InvalidKey as exc:
            problems.append(f"LLMKit prompt {prompt.id}: {exc.message}")
            continue
        other = existing.get(prompt.key.lower())
        if other is not None and other != prompt.key:
            problems.append(
                f"LLMKit prompt {prompt.id}: key {prompt.key!r} differs from {other!r} only in"
                " case, and not every file system can hold both files"
            )
            continue
        existing[prompt.key.lower()] = prompt.key
        keys[prompt.id] = prompt.key
    if problems:
        raise ImportRefused(
            "Cannot import: " + "; ".join(problems) + ". Rename these prompts in LLMKit (a key"
            " is segments of letters, digits, '.', '_' and '-' joined by '/'), then import"
            " again; nothing was imported."
        )
    return keys


def _plan_versions(
    plan: Plan,
    store: GitStore,
    source: LLMKitSource,
    history: InHistory,
    same_as: dict[int, str],
    texts: dict[str, str],
    aliases: AliasFile,
    now: datetime,
) -> None:
    summary = plan.summary
    for prompt in source.prompts.values():
        if prompt.id not in plan.keys:
            summary.notes.append(f"LLMKit prompt {prompt.key!r} has no versions; skipped")
    by_id = {v.id: v for v in source.versions}
    ordered = _in_order(source.versions)
    current = dict(texts)  # path -> file text as the planned commits leave it
    last: dict[str, PlannedCommit] = {}  # path -> the last planned commit of it
    rendered: dict[int, tuple[str, str]] = {}

    def text_of(version: SourceVersion) -> tuple[str, str]:
        """The version's prompt file, and the model name it uses."""
        if version.id not in rendered:
            key = plan.keys[version.prompt_id]
            model = _model_name(plan, source, aliases, version, key)
            converted = prompt_text(version, key, model)
            summary.notes.extend(converted.notes)
            rendered[version.id] = (converted.text, model)
        return rendered[version.id]

    for version in ordered:
        key = plan.keys.get(version.prompt_id)
        if key is None:
            summary.notes.append(f"LLMKit version {version.id} belongs to no prompt; skipped")
            continue
        path = path_for_key(key)
        done = history.versions.get(version.id) or same_as.get(version.id)
        if done is not None:
            plan.version_at[version.id] = done
            continue
        text, model = text_of(version)
        when = version.created_at
        if when is None or when.timestamp() < 0:
            when = None
            summary.notes.append(
                f"{key!r} version {version.number}: created_at {version.created_text!r} is not"
                " a time git can hold; committed with the time of the import"
            )
        if text == current.get(path):
            # The file as this import leaves it so far, or as HEAD has it.
            earlier: str | PlannedCommit | None = last.get(path) or store.last_commit_touching(path)
            if earlier is not None:
                plan.version_at[version.id] = earlier
                plan.same_as[version.id] = earlier if isinstance(earlier, str) else ""
                if isinstance(earlier, PlannedCommit):
                    earlier.trailers.append(f"{TRAILER}: {source.identity} same {version.id}")
                summary.notes.append(
                    f"{key!r} version {version.number} is the same prompt file as the one"
                    " before it; it is that version in llmkit"
                )
                continue
        commit = PlannedCommit(
            f"Import {key} version {version.number} from LLMKit",
            when or now,
            {path: text.encode("utf-8")},
            [f"{TRAILER}: {source.identity} version {version.id}"],
            model=model,
        )
        plan.commits.append(commit)
        plan.version_at[version.id] = last[path] = commit
        current[path] = text
        summary.versions += 1
    _plan_restores(plan, store, source, history, by_id, current, text_of, now)


def _in_order(versions: list[SourceVersion]) -> list[SourceVersion]:
    """Versions by created_at then id across prompts, with each prompt's own versions always
    in version-number order (should their times disagree, or be missing, they take the
    prompt's places in the sequence in that order)."""
    by_time = sorted(versions, key=lambda v: (v.created_at or LATEST, v.id))
    by_number: dict[int, list[SourceVersion]] = {}
    for version in sorted(versions, key=lambda v: (v.number, v.id)):
        by_number.setdefault(version.prompt_id, []).append(version)
    queues = {prompt_id: iter(queue) for prompt_id, queue in by_number.items()}
    return [next(queues[v.prompt_id]) for v in by_time]


def _model_name(
    plan: Plan, source: LLMKitSource, aliases: AliasFile, version: SourceVersion, key: str
) -> str:
    target = plan.targets.get(version.model_id)
    if target is None:
        plan.summary.notes.append(
            f"{key!r} version {version.number}: LLMKit model {version.model_id} does not exist;"
            " it uses the model alias 'default'"
        )
        return "default"
    if target.note:
        plan.summary.notes.append(target.note)
    if target.alias is None:
        return target.model
    model = source.models[version.model_id]
    return aliases.name_for(alias_name(model.provider, model.name), target.alias)


def _plan_restores(
    plan: Plan,
    store: GitStore,
    source: LLMKitSource,
    history: InHistory,
    by_id: dict[int, SourceVersion],
    current: dict[str, str],
    text_of: Callable[[SourceVersion], tuple[str, str]],
    now: datetime,
) -> None:
    """A Restore commit for each prompt whose current version in LLMKit is not what its file
    holds after the import: when this import adds versions to it, or when the file is still
    as an earlier import left it. A file edited in llmkit since is left alone, with a note."""
    touched = {p for c in plan.commits for p in c.files}
    for prompt in sorted(source.prompts.values(), key=lambda p: p.id):
        key = plan.keys.get(prompt.id)
        version = by_id.get(prompt.current_version_id or -1)
        if key is None or version is None or version.prompt_id != prompt.id:
            continue
        path = path_for_key(key)
        text, model = text_of(version)
        if current.get(path) == text:
            continue
        if path not in touched:
            last = store.last_commit_touching(path) if current.get(path) is not None else None
            if last is None or last not in history.commits:
                plan.summary.notes.append(
                    f"{key!r} was changed in llmkit since it was imported; LLMKit's current"
                    f" version {version.number} was not restored over it"
                )
                continue
        plan.commits.append(
            PlannedCommit(
                f"Restore {key} to version {version.number} (current in LLMKit)",
                now,
                {path: text.encode("utf-8")},
                [f"{TRAILER}: {source.identity} current {version.id}"],
                model=model,
            )
        )
        current[path] = text
        plan.summary.restores.append(f"{key}@{version.number}")


def _plan_evals(
    plan: Plan,
    store: GitStore,
    repo: Path,
    source: LLMKitSource,
    history: InHistory,
    tree: dict[str, str],
    now: datetime,
) -> None:
    new = [e for e in source.evals if e.id not in history.evals]
    in_files = _case_names(store, tree, set(history.evals.values()))
    for e in source.evals:
        if e.id in history.evals:
            path = history.evals[e.id]
            plan.eval_files[e.id] = (path, in_files.get(path) or e.name)
    if not new:
        return
    # Names and paths taken by committed cases, and by cases only in the working tree. A
    # file in the working tree that holds exactly the case this import writes at its path is
    # one an import killed before moving the branch left there: it is taken as written.
    committed: dict[str, set[str]] = {}
    anywhere: dict[str, set[str]] = {}
    cases, _ = load_evals(repo)
    for case in cases:
        anywhere.setdefault(case.prompt_key, set()).add(case.name)
        if case.file in tree:
            committed.setdefault(case.prompt_key, set()).add(case.name)
    on_disk = set(store.working_files(EVALS_DIR, EVAL_SUFFIXES))
    taken_paths = set(tree)
    files: dict[str, bytes] = {}
    trailers = []
    for e in new:
        key = plan.keys.get(e.prompt_id)
        if key is None:
            plan.summary.notes.append(
                f"LLMKit eval case {e.name!r} belongs to a prompt with no versions; skipped"
            )
            continue
        try:
            name, path, converted = _place_case(
                e,
                key,
                committed.setdefault(key, set()),
                anywhere.setdefault(key, set()),
                taken_paths,
                on_disk,
                store,
            )
        except ImportRefused as exc:
            plan.summary.notes.append(f"{exc.message}; skipped")
            continue
        plan.summary.notes.extend(converted.notes)
        for names in (committed[key], anywhere[key]):
            names.add(name)
        taken_paths.add(path)
        files[path] = converted.text.encode("utf-8")
        trailers.append(f"{TRAILER}: {source.identity} eval {e.id} {path}")
        plan.eval_files[e.id] = (path, name)
    if files:
        count = len(files)
        plan.commits.append(
            PlannedCommit(
                f"Import {count} eval case{'s' if count != 1 else ''} from LLMKit",
                now,
                files,
                trailers,
            )
        )
        plan.summary.eval_cases = count


def _place_case(
    source: SourceEval,
    key: str,
    committed: set[str],
    anywhere: set[str],
    taken_paths: set[str],
    on_disk: set[str],
    store: GitStore,
) -> tuple[str, str, Converted]:
    """The name, path and text of a new case file: a leftover of a killed import if one is at
    its path, else a name and path nothing else has."""
    name = case_name(source.name, committed)
    path = _free_path(case_path(key, name), taken_paths)
    converted = eval_case_text(source, key, name, path)
    if path in on_disk and (store.root / path).read_bytes() == converted.text.encode("utf-8"):
        return name, path, converted
    name = case_name(source.name, anywhere)
    path = _free_path(case_path(key, name), taken_paths | on_disk)
    return name, path, eval_case_text(source, key, name, path)


def _case_names(store: GitStore, tree: dict[str, str], paths: set[str]) -> dict[str, str]:
    """The case name in each of these committed single-case files (read in one go)."""
    blobs = {path: tree[path] for path in paths if path in tree}
    contents = store.read_blobs(blobs.values())
    names = {}
    for path, blob in blobs.items():
        try:
            cases = load_eval_text(contents[blob].decode("utf-8"), path).cases
        except (LlmkitError, UnicodeDecodeError, KeyError):
            continue
        if len(cases) == 1:
            names[path] = cases[0].name
    return names


def _free_path(path: str, taken: set[str]) -> str:
    stem, suffix = path.rsplit(".", 1)
    candidate, n = path, 2
    while candidate in taken:
        candidate, n = f"{stem}-{n}.{suffix}", n + 1
    return candidate


def _plan_aliases(plan: Plan, aliases: AliasFile, now: datetime) -> None:
    """One commit of llmkit.yaml before every other, with the aliases the commits use."""
    used = {commit.model for commit in plan.commits}
    aliases.added = {name: spec for name, spec in aliases.added.items() if name in used}
    if not aliases.added:
        return
    when = min((c.when for c in plan.commits), default=now)
    plan.commits.insert(
        0,
        PlannedCommit(
            "Import model aliases from LLMKit",
            when,
            {CONFIG_PATH: aliases.new_text().encode("utf-8")},
            [f"{TRAILER}: {plan.summary.identity} aliases"],
        ),
    )
    plan.summary.aliases = dict(aliases.added)
