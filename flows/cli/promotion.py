"""The commands that move a registry stage: `ci pr` / `ci main` (the promotion workflow's two jobs), `promote` and
`rollback`."""

from __future__ import annotations

import argparse
from pathlib import Path

from flows.terminal import console, debugging, prefect_defaults


def cmd_ci(args: argparse.Namespace) -> int:
    prefect_defaults()
    from flows.ci import ci_main, ci_pr

    root = Path(args.project).resolve()
    if args.ci_command == "pr":
        return ci_pr(root, debugging(args))
    return ci_main(root, args.push, debugging(args))


def cmd_promote(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from tasks.registry.promote import promote

    done = promote(Path(args.project).resolve(), args.bump, args.stage, args.force, args.reason, args.push)
    verdict = f"gate {done.decision}" + (" [bold yellow](forced)[/]" if done.forced else "")
    console.print(f"[bold green]{done.version}[/] of {escape(done.registration_tag.split('@')[0])} "
                  f"(commit {done.commit[:12]}, {verdict}) is in [bold]{done.stage}[/]", soft_wrap=True)
    console.print(f"  bytes: the gate's outputs are in the DVC remote {escape(done.dvc_remote)!r} (verified)",
                  soft_wrap=True)
    console.print(f"  tags: {escape(done.registration_tag)} ({'created' if done.registered else 'already there'}), "
                  f"{escape(done.stage_tag)} ({'created' if done.moved else f'already there: {done.stage} not moved'})",
                  soft_wrap=True)
    for note in done.notes:
        console.print(f"  note: {note}", soft_wrap=True, markup=False, highlight=False)
    if done.pushed_to:
        console.print(f"  pushed both tags to {escape(done.pushed_to)}", soft_wrap=True)
    else:
        console.print("  tags are local: publish them with `tunegate promote --push [REMOTE]`", soft_wrap=True,
                      markup=False)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from tasks.registry.rollback import rollback

    done = rollback(Path(args.project).resolve(), args.stage, args.to, args.reason, args.push)
    if done.moved:
        console.print(f"{done.stage}: {done.from_version} -> [bold]{done.to_version}[/] ({done.tag})", soft_wrap=True)
        console.print(f"smoke test on {done.folder}: {done.smoke}", soft_wrap=True, markup=False, highlight=False)
        console.print(f"parity certificate on this host: {done.parity}", soft_wrap=True, markup=False, highlight=False)
    else:
        console.print(f"{done.stage} already holds {done.to_version} ({done.tag}): nothing moved", soft_wrap=True)
    if done.pushed_to:
        console.print(f"pushed {done.tag} to {done.pushed_to}", soft_wrap=True)
    return 0


def add_commands(sub: argparse._SubParsersAction, repository: argparse.ArgumentParser,
                 stage_move: argparse.ArgumentParser) -> None:
    """ci pr, ci main, promote, rollback; `repository` is the --project parent (a git repository), `stage_move` adds
    --stage and --push to it (what promote and rollback share)."""
    ci = sub.add_parser("ci", help="what the promotion workflow runs: `ci pr` gates a pull request, `ci main` "
                                   "promotes after a merge",
                        description="The two jobs of .github/workflows/promote.yml, runnable locally too. Both run "
                                    "`dvc pull` (a missing remote or missing files are a warning: the pipeline "
                                    "rebuilds stage outputs), then the flow as `tunegate run` does (the gate judges "
                                    "against the registry's prod version), and append the gate report to "
                                    "$GITHUB_STEP_SUMMARY when set.")
    ci_sub = ci.add_subparsers(dest="ci_command", required=True)
    ci_pr = ci_sub.add_parser("pr", parents=[repository], help="reproduce and gate; exit 1 when the gate says REJECT",
                              description="Reproduce and gate, publish artifacts/gate/report.md (job summary; a PR "
                                          "comment when GITHUB_TOKEN, GITHUB_REPOSITORY and GITHUB_EVENT_PATH's "
                                          "pull_request.number are set, posted to GITHUB_API_URL; a comment that "
                                          "cannot be posted is a warning). Exits 1 on REJECT or a failed pipeline, "
                                          "0 on PROMOTE and INCONCLUSIVE (said loudly: main will not promote it).")
    ci_pr.set_defaults(func=cmd_ci)
    ci_main = ci_sub.add_parser("main", parents=[repository],
                                help="reproduce and gate the merged commit; promote it on PROMOTE",
                                description="On a clean checkout of the merged commit: reproduce and gate. Fails "
                                            "when the run changed tracked files (the committed dvc.lock is not what "
                                            "this code reproduces: run `tunegate run` on the branch and commit "
                                            "dvc.lock). On PROMOTE runs `tunegate promote --push REMOTE` and prints "
                                            "the version; on REJECT or INCONCLUSIVE prints the verdict, promotes "
                                            "nothing and exits 0; nor when the model is already a registered "
                                            "version's (prod's, or one prod was rolled back from).")
    ci_main.add_argument("--push", default="origin", metavar="REMOTE",
                         help="git remote that receives the new tags (default: origin)")
    ci_main.set_defaults(func=cmd_ci)

    promote = sub.add_parser("promote", parents=[stage_move],
                             help="register HEAD's gated model as a version and move prod to it (PROMOTE, or an "
                                  "INCONCLUSIVE its label queue settled)",
                             description="Publish the model the gate judged (artifacts/gate/release) as the next "
                                         "version of HEAD's commit and move a stage to it. Refused unless "
                                         "artifacts/gate/decision.json says PROMOTE (or INCONCLUSIVE with every check "
                                         "held and the comparison settled PROMOTE by `tunegate label-queue`, or "
                                         "--force --reason); the "
                                         "tracked files are committed; the gate and every stage before it match "
                                         "dvc.lock; the release's model hash is the one judged; and the gate "
                                         "compared with the registry's current prod version (none on a first run). "
                                         "The gate's outputs are pushed to the default DVC remote and checked there "
                                         "before any tag is made. Tags: tunegate@vX.Y.Z (registration) and "
                                         "tunegate#STAGE#N (stage move), annotated with the verdict, the reason, "
                                         "and the decision, model and data hashes (`git show TAG`). Rerunning "
                                         "finishes a promotion cut short: the version registered for this commit is "
                                         "reused, a stage that holds it is not moved again. Exits 1 on a refusal.")
    promote.add_argument("--bump", choices=("major", "minor", "patch"), default="minor",
                         help="which part of the latest version to raise (default: minor; the first is v0.1.0)")
    promote.add_argument("--force", action="store_true",
                         help="promote a REJECT or INCONCLUSIVE decision, or one judged against another champion "
                              "than prod's version; needs --reason")
    promote.add_argument("--reason", help="why (recorded in both tags; required with --force)")
    promote.set_defaults(func=cmd_promote)

    back = sub.add_parser("rollback", parents=[stage_move],
                          help="move prod back to an earlier version, after fetching and smoke-testing it",
                          description="Move a stage (default prod) back to --to VERSION, or to the version it held "
                                      "before its current one (versions a rollback moved away from are skipped). "
                                      "First that version's artifacts/gate/release is fetched through DVC at its "
                                      "commit (local cache, then the DVC remote; never artifacts/) into "
                                      ".tunegate/registry/VERSION and must classify a few fixed texts (finite "
                                      "probabilities summing to 1 over the release's labels); only then is the "
                                      "stage tag made, recording the version rolled back from, the reason and the "
                                      "smoke test (git show TAG). If the stage already holds VERSION nothing moves.")
    back.add_argument("--to", metavar="VERSION", help="version to restore, e.g. v0.1.0 (default: the previous one)")
    back.add_argument("--reason", help="why, recorded in the tag message")
    back.set_defaults(func=cmd_rollback)
