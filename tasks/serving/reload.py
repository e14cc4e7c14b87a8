"""Follow the model source: load a new version beside the one serving, warm it, swap, drain the old one."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from pathlib import Path

from tasks.core.errors import TunegateError
from tasks.serving import scoring
from tasks.serving.scoring import ModelHolder, ServedModel
from tasks.serving.source import ModelSource

# One lock per holder (not per module): an asyncio.Lock belongs to the event loop that first waits on it, and
# tests (or an embedding app) may run several loops in one process.
_locks: weakref.WeakKeyDictionary[ModelHolder, asyncio.Lock] = weakref.WeakKeyDictionary()


class ReloadError(TunegateError):
    """A new version could not be resolved or loaded; the version that was serving still serves."""


def _lock_for(holder: ModelHolder) -> asyncio.Lock:
    lock = _locks.get(holder)
    if lock is None:
        lock = _locks[holder] = asyncio.Lock()
    return lock


async def reload_if_changed(source: ModelSource, holder: ModelHolder, *, name: str, threads: int,
                            drain_timeout_s: float,
                            vet: Callable[[ServedModel, Path], None] | None = None) -> str | None:
    """Serve the source's version now: None when the holder already serves it, else the version swapped in.
    `vet(model, folder)` runs on the loaded version before the swap and refuses it by raising (the parity check).
    Concurrent calls run one after another; on failure (ReloadError) the old version keeps serving."""
    async with _lock_for(holder):
        serving = holder.current.info.version
        try:
            resolved = await asyncio.to_thread(source.resolve)
        except Exception as exc:  # noqa: BLE001 - gto, git and DVC raise many kinds; each leaves the old version up
            raise ReloadError(f"cannot resolve {source.description} ({type(exc).__name__}: {exc}); "
                              f"still serving {serving}") from exc
        if resolved.version == serving:
            return None
        try:
            # In a thread: loading and warming take seconds, during which the old version answers requests.
            new = await asyncio.to_thread(scoring.load_served, resolved.folder, name, resolved.version, threads)
        except Exception as exc:  # noqa: BLE001 - a broken folder fails in onnxruntime/tokenizers in many ways
            raise ReloadError(f"cannot load {resolved.version} from {resolved.folder} ({type(exc).__name__}: "
                              f"{exc}); still serving {serving}") from exc
        if vet is not None:
            try:
                # In a thread too: re-scoring the certificate's texts takes seconds.
                await asyncio.to_thread(vet, new, resolved.folder)
            except TunegateError as exc:
                new.close()
                raise ReloadError(f"{resolved.version} from {resolved.folder} was refused ({type(exc).__name__}): "
                                  f"{exc}\nstill serving {serving}") from exc
        try:
            await holder.swap(new, drain_timeout_s)
        except BaseException:
            if holder.current is not new:  # never admitted: release its session; the old one still serves
                new.close()
            raise
        return new.info.version
