"""The registry read as a record: every registration and stage move in order, which version a stage held at any
instant, and one row per version with the stages that hold it now. Pure functions over tags.Version/StageMove."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone

from tasks.registry.tags import SEMVER, RegistryError, StageMove, Version, message_fields

ROLLED_BACK_FROM = "rolled back from"  # the field that marks a stage move as a rollback (tasks/registry/rollback.py)
UNKNOWN = "-"  # a field the tag message does not carry (tags made by hand or by gto directly)


@dataclass(frozen=True)
class Event:
    """One row of `tunegate history`: a registration or a stage move."""

    at: datetime
    event: str  # "registered", "prod <- v0.2.0", "rollback prod <- v0.1.0"
    version: str
    who: str
    why: str
    gate: str
    tag: str


@dataclass(frozen=True)
class ModelRow:
    """One row of `tunegate models`: a version and the stages that hold it now."""

    version: str
    commit: str
    registered: datetime
    by: str
    gate: str
    stages: tuple[str, ...]


def iso(at: datetime) -> str:
    """A UTC instant as ISO 8601 with a Z (tag dates have one-second resolution, so no fraction)."""
    return at.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_instant(text: str) -> datetime:
    """An ISO 8601 time or date as an aware UTC datetime (no offset = UTC; a date = its 00:00 UTC)."""
    cleaned = text.strip()
    try:
        # fromisoformat (Python 3.11) takes Z, offsets, a space or T, and fractions; a bare date gives midnight.
        parsed = datetime.fromisoformat(cleaned)
    except ValueError:
        try:
            parsed = datetime.combine(date.fromisoformat(cleaned), datetime.min.time())
        except ValueError:
            raise RegistryError(f"cannot read {text!r} as a time: give ISO 8601, e.g. 2026-11-29T13:05:00Z, "
                                "2026-11-29T14:05:00+01:00 or 2026-11-29 (UTC when no offset is given)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def why(message: str) -> str:
    """Why a tag was made: its reason field, else its message's first line."""
    fields = message_fields(message)
    return fields.get("reason") or fields["title"] or UNKNOWN


def gate_outcomes(versions: list[Version]) -> dict[str, str]:
    """Each version's gate verdict, as its registration message records it."""
    return {v.version: message_fields(v.message).get("gate", UNKNOWN) for v in versions}


def rolled_back_from(move: StageMove) -> str | None:
    """The version a rollback moved the stage away from; None for a move that is not a rollback."""
    return message_fields(move.message).get(ROLLED_BACK_FROM)


def move_label(move: StageMove) -> str:
    return f"{'rollback ' if rolled_back_from(move) else ''}{move.stage} <- {move.version}"


def version_key(version: str) -> tuple:
    """Semantic versions in numeric order (v0.10.0 after v0.9.0); anything else after them, by name."""
    match = SEMVER.match(version)
    return (0, *map(int, match.groups()), "") if match else (1, 0, 0, 0, version)


def in_order(versions: list[Version], moves: list[StageMove]) -> list[Version | StageMove]:
    """Registrations and moves, oldest first. Tag dates have one-second resolution, so within a second: moves by
    their number, each after its version's registration; registrations by version (a promotion registers, then
    assigns, often in the same second)."""
    ordered: list[Version | StageMove] = []
    for second in sorted({v.at for v in versions} | {m.at for m in moves}):
        regs = sorted((v for v in versions if v.at == second), key=lambda v: version_key(v.version))
        for move in sorted((m for m in moves if m.at == second), key=lambda m: (m.number, m.stage)):
            if any(v.version == move.version for v in regs):  # its registration (and older ones) come first
                while regs and (reg := regs.pop(0)).version != move.version:
                    ordered.append(reg)
                ordered.append(reg)
            ordered.append(move)
        ordered.extend(regs)
    return ordered


def events(versions: list[Version], moves: list[StageMove]) -> list[Event]:
    """One history row per registration and stage move, oldest first (see in_order)."""
    gates = gate_outcomes(versions)

    def row(item: Version | StageMove) -> Event:
        if isinstance(item, Version):
            return Event(item.at, "registered", item.version, item.author, why(item.message), gates[item.version],
                         item.tag)
        # A move's own gate field (promote writes one) wins; else the gate verdict of the version it puts there.
        gate = message_fields(item.message).get("gate") or gates.get(item.version, UNKNOWN)
        return Event(item.at, move_label(item), item.version, item.author, why(item.message), gate, item.tag)

    return [row(item) for item in in_order(versions, moves)]


def current_stages(moves: list[StageMove]) -> dict[str, str]:
    """Each stage's current version: its highest-numbered move."""
    latest: dict[str, StageMove] = {}
    for move in moves:
        if move.stage not in latest or move.number > latest[move.stage].number:
            latest[move.stage] = move
    return {stage: move.version for stage, move in latest.items()}


def model_rows(versions: list[Version], moves: list[StageMove]) -> list[ModelRow]:
    """One row per version, oldest first, with the stages that hold it now."""
    gates = gate_outcomes(versions)
    holders = current_stages(moves)
    return [ModelRow(v.version, v.commit[:8], v.at, v.author, gates[v.version],
                     tuple(sorted(stage for stage, held in holders.items() if held == v.version)))
            for v in sorted(versions, key=lambda v: (v.at, version_key(v.version)))]


def describe_holder(move: StageMove | None, stage: str, at: datetime) -> str:
    """The answer to `history --at`: which version `stage` held at `at`, since when, by whom and why."""
    if move is None:
        return f"nothing was in {stage} at {iso(at)}"
    return f"{stage} at {iso(at)}: {move.version} (since {iso(move.at)}, by {move.author}, why: {why(move.message)})"
