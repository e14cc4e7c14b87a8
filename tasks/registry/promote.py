"""`tunegate promote`: register HEAD's gated model as a new version and move a stage to it, only when the gate's
decision says PROMOTE (or an override gives its reason), and only after the bytes are in the DVC remote."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tasks.core.dvc_cache import DvcStageCache
from tasks.core.errors import TunegateError
from tasks.core.io import file_sha256, read_json
from tasks.core.paths import ArtifactPaths
from tasks.core.vcs import CommandFailed, dirty_files, dvc_file_outs, git, git_succeeds
from tasks.judging.card import CARD_FILE
from tasks.judging.compare import INCONCLUSIVE, PROMOTE
from tasks.judging.stats import CHECK_PASS
from tasks.registry import tags
from tasks.registry.tags import ARTIFACT, PROD, RELEASE_PATH, Bump, RegistryError
from tasks.runtime.files import RELEASE_FILE, SERVING_FILE

GATE_STAGE = "gate"  # the dvc.yaml stage whose outputs (decision.json, the release folder) a version ships
# The registry's prod version is not a DVC dep of the gate, so a plain `dvc repro` does not rerun it when prod moves.
REGATE = "`tunegate run` (or `dvc repro -f -s gate`)"
LOCK_NAME = "tunegate-registry.lock"  # in the git dir: shared by every worktree of the repository, never committed


class PromotionRefused(RegistryError):
    """The promotion would publish something the gate did not approve, or approved against another state."""


class RegistryBusy(RegistryError):
    """Another promotion or rollback holds the registry lock."""


@dataclass(frozen=True)
class Promotion:
    """What one `tunegate promote` did: the version, its stage, the tags it made or found, where it pushed."""

    version: str
    stage: str
    commit: str
    decision: str
    forced: bool
    dvc_remote: str
    registration_tag: str
    registered: bool  # False: the version was already registered for this commit (a rerun finishing the job)
    stage_tag: str
    moved: bool  # False: the stage already held this version
    pushed_to: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def tags(self) -> list[str]:
        return [self.registration_tag, self.stage_tag]


# --- pure rules --------------------------------------------------------------------------------------------------

def settled_by_labels(decision: dict[str, Any], decision_sha256: str, verdict: dict[str, Any] | None) -> str | None:
    """Why an INCONCLUSIVE decision may be promoted after all, or None: every check of the candidate held, only its
    comparison with the champion was unsettled, and `tunegate label-queue judge` re-judged that comparison PROMOTE
    from labelled rows of the queue built for this very decision (its sha256)."""
    if verdict is None or decision.get("decision") != INCONCLUSIVE or verdict.get("outcome") != PROMOTE:
        return None
    checks_hold = all(c.get("outcome") == CHECK_PASS for c in decision.get("checks", []))
    comparison = decision.get("comparison") or {}
    if not checks_hold or comparison.get("outcome") != INCONCLUSIVE or verdict.get("decision_sha256") != decision_sha256:
        return None
    accuracy = verdict["differences"]["accuracy"]
    return (f"gate INCONCLUSIVE against the champion, settled PROMOTE by {verdict['labelled']} labelled rows of the "
            f"label queue: accuracy difference {accuracy['value']:+.4f} [{accuracy['low']:+.4f}, "
            f"{accuracy['high']:+.4f}]")


def decision_refusal(decision: dict[str, Any], force: bool, reason: str | None,
                     settled: str | None = None) -> str | None:
    """Why the gate's verdict does not allow this promotion, or None (PROMOTE, an INCONCLUSIVE comparison `settled`
    by labelled rows, or a forced one with a reason)."""
    if force and not (reason or "").strip():
        return "--force needs --reason \"...\": the reason is recorded in the tags, so `git show` tells why"
    verdict = decision.get("decision")
    if verdict == PROMOTE or settled or force:
        return None
    settle = (" An unsettled comparison with the champion can be settled by labels: `tunegate label-queue`."
              if verdict == INCONCLUSIVE else "")
    return (f"the gate decided {verdict}: {decision.get('why', '(no reason recorded)')}. Only a PROMOTE is promoted; "
            f"override with --force --reason \"...\" (recorded in the tags).{settle}")


def artifact_mismatches(decision: dict[str, Any], release: dict[str, Any], model_sha256: str) -> list[str]:
    """How the release folder on disk differs from what the gate judged (empty when it is the judged one)."""
    judged = (decision.get("candidate") or {}).get("sha256")
    problems = []
    if model_sha256 != judged:
        problems.append(f"the model file in {RELEASE_PATH} has sha256 {model_sha256[:12]}…, but the gate judged "
                        f"{str(judged)[:12]}… (decision.json candidate.sha256)")
    if release.get("sha256") != judged:
        problems.append(f"{RELEASE_PATH}/{RELEASE_FILE} records sha256 {str(release.get('sha256'))[:12]}…, "
                        f"but the gate judged {str(judged)[:12]}…")
    if release.get("decision") != decision.get("decision"):
        problems.append(f"{RELEASE_PATH}/{RELEASE_FILE} records the decision {release.get('decision')}, "
                        f"decision.json says {decision.get('decision')}")
    return problems


def judged_champion(decision: dict[str, Any]) -> dict[str, Any] | None:
    """The champion the gate compared with (None: it compared with nothing, the first-run policy decided)."""
    return (decision.get("comparison") or {}).get("champion")


def stale_comparison(decision: dict[str, Any], prod_version: str | None, this_version: str | None) -> str | None:
    """Why the decision was not made against the registry's current prod version, or None when it was.

    `this_version` is the version already registered for the commit being promoted: prod holding it means an
    earlier run of this very promotion moved it, so a rerun (to push tags) is not judged against itself.
    """
    if prod_version is not None and prod_version == this_version:
        return None
    champion = judged_champion(decision)
    if champion is None:
        if prod_version is None:
            return None  # first run: nothing in prod, and the gate compared with nothing
        return (f"the gate compared with no production model, but prod now holds {prod_version}: rerun the gate "
                f"against it ({REGATE}) and commit dvc.lock")
    judged = champion.get("version")
    if judged is not None and judged == prod_version:
        return None
    against = f"version {judged}" if judged else f"the folder {champion.get('path')!r} (gate.champion)"
    now = f"prod now holds {prod_version}" if prod_version else "prod holds no version yet"
    return (f"the gate compared with {against}, but {now}: rerun the gate against the registry's prod version "
            f"(gate.champion: null; {REGATE}) and commit dvc.lock")


def promotion_fields(decision: dict[str, Any], decision_sha256: str, model_sha256: str, data_md5: str,
                     reason: str | None, forced: bool, stage: str, card: str) -> dict[str, str]:
    """The `key: value` lines of both tags' messages: why this version exists and what it is (`card`: card_field's
    line)."""
    champion = judged_champion(decision)
    compared = "none (first run)" if champion is None else (champion.get("version") or champion.get("path"))
    return {
        "gate": str(decision.get("decision")),
        "reason": _one_line(reason) if (reason or "").strip() else "gate PROMOTE",
        "forced": "yes" if forced else "no",
        "stage": stage,
        "gate why": _one_line(str(decision.get("why", ""))),
        "champion": str(compared),
        "decision sha256": decision_sha256,
        tags.MODEL_FIELD: model_sha256,
        "card": card,
        "data md5": data_md5,
        "train run": str((decision.get("candidate") or {}).get("train_run")),
    }


def card_field(release_dir: Path) -> str:
    """The tags' card line: which model card came with the version, by its sha256 (a release made before the gate
    wrote cards has none)."""
    card = release_dir / CARD_FILE
    return f"{CARD_FILE} (sha256 {file_sha256(card)})" if card.is_file() else f"none (the release has no {CARD_FILE})"


def _one_line(text: str | None) -> str:
    """A message value on one line (message_fields reads `key: value` lines)."""
    return " ".join((text or "").split())


def stale_stages(status: dict[str, Any]) -> list[str]:
    """DVC's status of stages (and .dvc files) as one line each: what changed since dvc.lock recorded them."""
    lines = []
    for name, changes in sorted(status.items()):
        parts = []
        for change in changes:
            if isinstance(change, dict):
                parts += [f"{kind} {', '.join(f'{path} ({_how(how)})' for path, how in sorted(paths.items()))}"
                          if isinstance(paths, dict) else f"{kind} {paths}" for kind, paths in change.items()]
            else:
                parts.append(str(change))
        lines.append(f"{name}: {'; '.join(parts)}")
    return lines


def _how(change: Any) -> str:
    """A path's change as DVC reports it: a word, or per param section of a params file ({"gate": "modified"})."""
    if isinstance(change, dict):
        return ", ".join(f"{key}: {value}" for key, value in sorted(change.items()))
    return str(change)


def rerun_command(stage: str, bump: Bump, force: bool, reason: str | None, remote: str) -> str:
    """The command that finishes a promotion cut short after its tags were made."""
    words = ["tunegate promote", f"--push {remote}"]
    if stage != PROD:
        words.append(f"--stage {stage}")
    if bump != "minor":
        words.append(f"--bump {bump}")
    if force:
        words.append(f"--force --reason {json.dumps(reason or '')}")
    return " ".join(words)


# --- git and DVC -------------------------------------------------------------------------------------------------

def data_md5(root: Path) -> str:
    """The hash data.dvc records for the input data (several outs: `path=md5`, comma-separated)."""
    dvc_file = root / "data.dvc"
    if not dvc_file.is_file():
        return "(no data.dvc)"
    outs = dvc_file_outs(dvc_file.read_text())
    if len(outs) == 1:
        return str(outs[0].get("md5"))
    return ", ".join(f"{out.get('path')}={out.get('md5')}" for out in outs) or "(no outs in data.dvc)"


class ReleaseDvc(DvcStageCache):
    """The DVC operations a promotion needs, with DvcStageCache's patience for DVC's own repo lock."""

    def stage_status(self, stage: str) -> dict[str, Any]:
        """What changed in `stage` and every stage it depends on since dvc.lock recorded them ({} = up to date)."""
        return self._call(lambda repo: repo.status(targets=[stage], with_deps=True))

    def default_remote(self) -> str:
        remote = self._call(lambda repo: repo.config["core"].get("remote"))
        if not remote:
            raise RegistryError(f"no default DVC remote in {self.root}: a version's bytes must be in a remote before "
                                "it gets a name. Add one: `dvc remote add -d NAME URL`")
        return remote

    def push(self, stage: str, remote: str) -> None:
        """Upload the stage's outputs (from the cache) to the remote, then check that the remote holds them all."""
        try:
            self._call(lambda repo: repo.push(targets=[stage]))
            missing = self._call(lambda repo: repo.status(targets=[stage], cloud=True))
        except TunegateError:
            raise  # DvcBusy: another DVC command holds the repository
        except Exception as exc:  # noqa: BLE001 - each remote type fails in its own way; all mean "not pushed"
            raise RegistryError(f"could not push the {stage} stage's outputs to the DVC remote {remote!r}: "
                                f"{type(exc).__name__}: {exc}. No tag was created; fix the remote and run "
                                "`tunegate promote` again") from exc
        if missing:
            listed = ", ".join(f"{path} ({state})" for path, state in sorted(missing.items())[:5])
            raise RegistryError(f"after `dvc push {stage}` the DVC remote {remote!r} still lacks {len(missing)} "
                                f"file(s): {listed}. No tag was created; run `tunegate promote` again")


@contextmanager
def registry_lock(root: Path, holder: str = "tunegate promote") -> Iterator[None]:
    """Hold the repository's registry lock (only one promotion or rollback moves a stage at a time), or raise
    RegistryBusy at once, naming the holder. The kernel drops it with the process: a killed run leaves no lock."""
    lock_file = (root / git(root, "rev-parse", "--git-common-dir")).resolve() / LOCK_NAME
    handle = lock_file.open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        who = handle.read().strip() or "another process"
        handle.close()
        raise RegistryBusy(f"the registry is busy: {who} holds {lock_file}. Wait for it to finish, then run "
                           "again (it may already have done what you asked: see `git tag`)") from None
    try:
        handle.truncate(0)
        handle.write(f"`{holder}` (pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the flock; the holder line left behind names no one (no flock)


# --- the command -------------------------------------------------------------------------------------------------

def read_decision(paths: ArtifactPaths) -> tuple[dict[str, Any], bytes]:
    """decision.json as the gate wrote it: parsed, and its bytes (their sha256 goes into the tags)."""
    if not paths.decision.is_file():
        raise PromotionRefused(f"no gate decision at {paths.decision}: run the pipeline first (`tunegate run` or "
                               "`dvc repro`), commit dvc.lock, then promote")
    raw = paths.decision.read_bytes()
    try:
        decision = json.loads(raw)
    except ValueError as exc:
        raise PromotionRefused(f"{paths.decision} is not valid JSON ({exc}): rerun the gate (`dvc repro`)") from exc
    return decision, raw


def read_label_verdict(paths: ArtifactPaths) -> dict[str, Any] | None:
    """`tunegate label-queue judge`'s verdict beside the decision, None when there is none."""
    return read_json(paths.label_verdict) if paths.label_verdict.is_file() else None


def check_release(paths: ArtifactPaths, decision: dict[str, Any]) -> str:
    """The release folder is the one the gate judged; returns its model's sha256."""
    release_dir = paths.root / RELEASE_PATH
    if not (release_dir / RELEASE_FILE).is_file() or not (release_dir / SERVING_FILE).is_file():
        raise PromotionRefused(f"{RELEASE_PATH} is missing or incomplete: run the pipeline (`dvc repro`) or "
                               "`dvc checkout gate`")
    release = read_json(release_dir / RELEASE_FILE)
    model = release_dir / read_json(release_dir / SERVING_FILE)["model_file"]
    model_sha256 = file_sha256(model) if model.is_file() else "(missing)"
    problems = artifact_mismatches(decision, release, model_sha256)
    if problems:
        raise PromotionRefused("the release is not the one the gate judged: " + "; ".join(problems) +
                               ". Restore it with `dvc checkout --force gate`, or rerun the gate (`dvc repro`) and "
                               "commit dvc.lock")
    return model_sha256


def check_committed(root: Path) -> str:
    """The working tree's tracked files are HEAD's and HEAD holds a dvc.lock; returns HEAD's commit."""
    dirty = dirty_files(root)
    if dirty:
        raise PromotionRefused(f"the working tree has uncommitted changes to tracked files: {', '.join(dirty)}. "
                               "A version names a commit: commit them (or restore them), then promote")
    commit = git(root, "rev-parse", "HEAD")
    if not git_succeeds(root, "cat-file", "-e", "HEAD:./dvc.lock"):
        raise PromotionRefused("HEAD has no dvc.lock: commit the dvc.lock of the run the gate judged, then promote")
    return commit


def check_up_to_date(dvc: ReleaseDvc) -> None:
    """The gate, and every stage before it, is what dvc.lock (HEAD's, on a clean tree) records."""
    stale = stale_stages(dvc.stage_status(GATE_STAGE))
    if stale:
        raise PromotionRefused("the gate's decision is not what HEAD's dvc.lock records (out of date: "
                               + " | ".join(stale) + "). Run `dvc repro` (or `tunegate run`), commit dvc.lock, then "
                               "promote")


def promote(root: Path, bump: Bump = "minor", stage: str = PROD, force: bool = False, reason: str | None = None,
            push: str | None = None) -> Promotion:
    """Register HEAD's gated release as a version and move `stage` to it: refused unless the gate said PROMOTE (or
    force with a reason) against the current prod, on a clean tree matching dvc.lock; bytes pushed before any tag."""
    paths = ArtifactPaths(root)
    if stage not in (allowed := tags.allowed_stages(root)):
        raise RegistryError(f"stage {stage!r} is not allowed here (.gto allows: {', '.join(allowed)})")
    decision, raw = read_decision(paths)
    settled = settled_by_labels(decision, hashlib.sha256(raw).hexdigest(), read_label_verdict(paths))
    refusal = decision_refusal(decision, force, reason, settled)
    if refusal:
        raise PromotionRefused(refusal)
    commit = check_committed(root)
    model_sha256 = check_release(paths, decision)
    dvc = ReleaseDvc(root)
    check_up_to_date(dvc)
    remote = dvc.default_remote()
    notes = []
    with registry_lock(root, "tunegate promote"):
        # Re-read under the lock: another promotion may have moved prod since this one started.
        existing = tags.version_of_commit(root, commit)
        prod = tags.in_stage(root, PROD)
        stale = stale_comparison(decision, prod.version if prod else None, existing.version if existing else None)
        if stale and not force:
            raise PromotionRefused(f"stale decision: {stale}. Or override with --force --reason \"...\"")
        forced = force and ((decision.get("decision") != PROMOTE and not settled) or stale is not None)
        if settled and not force:
            reason = settled  # recorded in the tags as the promotion's reason
        if stale:
            notes.append(f"forced past a stale comparison: {stale}")
        dvc.push(GATE_STAGE, remote)  # bytes before names: a tag must never point at bytes the remote lacks
        fields = promotion_fields(decision, hashlib.sha256(raw).hexdigest(), model_sha256, data_md5(root), reason,
                                  forced, stage, card_field(root / RELEASE_PATH))
        if existing:
            version, registration_tag = existing.version, existing.tag  # a rerun finishing a promotion cut short
        else:
            version = tags.next_version(root, bump)
            title = f"register {ARTIFACT} {version}: gate {decision.get('decision')}{' (forced)' if forced else ''}"
            registration_tag = tags.register(root, commit, version, tags.tag_message(title, fields))
        holder = tags.in_stage(root, stage)
        if holder is not None and holder.version == version:
            stage_tag, moved = holder.tag, False
        else:
            title = f"promote {ARTIFACT} {version} to {stage}{f' (was {holder.version})' if holder else ''}"
            stage_tag, moved = tags.assign(root, version, stage, tags.tag_message(title, fields)), True
    done = Promotion(version, stage, commit, str(decision.get("decision")), forced, remote, registration_tag,
                     existing is None, stage_tag, moved, None, notes)
    if push is None:
        return done
    push_tags(root, push, done.tags, rerun_command(stage, bump, force, reason, push), remote)
    return replace(done, pushed_to=push)


def push_tags(root: Path, remote: str, names: list[str], rerun: str, dvc_remote: str) -> None:
    """`git push REMOTE` the tags; a refusal says the tags and bytes are safe and how to finish."""
    try:
        git(root, "push", remote, *(f"refs/tags/{name}" for name in names))
    except CommandFailed as exc:
        why = exc.output.rstrip(".")
        raise RegistryError(f"`git push {remote}` of {', '.join(names)} failed: {why}. The tags exist "
                            f"locally and the model's bytes are in the DVC remote {dvc_remote!r}: rerun `{rerun}` "
                            "to finish") from exc


def already_registered(root: Path, decision: dict[str, Any]) -> str | None:
    """Why there is nothing new to promote (the model the gate judged is a registered version's), or None.

    A merge that leaves the model alone (docs, a refactor) reproduces the same bytes; after a promotion the gate
    re-judges them against prod (itself), which changes dvc.lock's gate entry. That is no reason to fail, and
    no reason to register the same bytes again, nor to undo a rollback by re-promoting what was rolled back."""
    sha256 = (decision.get("candidate") or {}).get("sha256")
    registered = tags.version_of_model(root, sha256) if sha256 else None
    if registered is None:
        return None
    version = registered.version
    prod = tags.in_stage(root, PROD)
    if prod is not None and prod.version == version:
        return f"prod already holds this model ({version})"
    return (f"this model is already registered as {version}, but prod holds {prod.version if prod else 'nothing'} "
            f"(rolled back?): CI promotes new models only; `tunegate rollback --to {version}` moves prod to it")
