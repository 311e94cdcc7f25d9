"""The agent's source role: the folders it is the source of, each run and restarted on its own.

AgentService (agent/service.py) inherits it and owns the state: the attributes declared below
are set in its __init__ and serve().
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

import anyio
import msgspec

from relaysync._util.aio import leaf_error
from relaysync.constants import RECEIVE_TIMEOUT_S, SOURCE_RETRY_MAX_S, SOURCE_RETRY_MIN_S
from relaysync.protocol.messages import (
    MAX_SOURCE_FAILURES,
    MappingSpec,
    MassDeleteEnded,
    MassDeleteHeld,
    ReleaseReport,
    SourceFailure,
    failure_reason,
)
from relaysync.watch.content_cache import ContentCache

from ._role import AgentRole
from .links import LinkSet, children_of
from .master_link import MasterLink
from .source import SourceMapping

logger = logging.getLogger(__name__)

# Why a source's hold ended when the source stopped (MassDeleteEnded.reason)
END_MAPPING_REMOVED = "mapping removed"  # no longer this agent's to source (deleted, moved, off)
END_MAPPING_CHANGED = "mapping changed"  # restarted with a new spec: its scan holds anew
END_SOURCE_FAILED = "source failed"  # restarted after a failure: likewise


@dataclass
class _Running:
    spec: MappingSpec
    scope: anyio.CancelScope
    links: LinkSet | None = None
    source: SourceMapping | None = None
    ended: anyio.Event = field(default_factory=anyio.Event)  # its journal and manifest are closed
    # Its last run failed or could not start, why and since when: waiting for a retry. The
    # master shows it (MetricsReport.source_failures) until a retry starts the source.
    failure: SourceFailure | None = None
    stopped: str = ""  # why `_apply_sources` stopped it (a hold it had ends so)

    @property
    def failing(self) -> bool:
        return self.failure is not None


class _Refused(NamedTuple):
    """A source folder agent/guard.py refuses: it never runs (until an assignment changes it)."""

    name: str  # the mapping's
    failure: SourceFailure


class SourceRole(AgentRole):
    """The source mappings of AgentService (a mixin: AgentService sets its state)."""

    sources: dict[int, _Running]
    content_cache: ContentCache  # small files read to hash, for the links (one per agent)
    refused_sources: dict[int, _Refused]  # by mapping id: a source folder refused
    link: MasterLink | None
    _refusals_logged: dict[tuple[int, str], str]  # TargetRole's: (mapping, role) -> why

    if TYPE_CHECKING:

        def _refuse(self, spec: MappingSpec, path: str, role: str) -> bool: ...  # TargetRole's

        def _figures_soon(self) -> None: ...  # AgentService's: send the figures now

    async def _apply_sources(self, wanted: dict[int, MappingSpec]) -> None:
        stopping = []
        for mapping_id, running in list(self.sources.items()):
            spec = wanted.get(mapping_id)
            if (
                spec is not None
                and _same_but_live(spec, running.spec)
                and await self._change_source(running, spec)
            ):
                continue
            running.stopped = END_MAPPING_REMOVED if spec is None else END_MAPPING_CHANGED
            running.scope.cancel()  # gone, changed otherwise, or its change failed: restart
            stopping.append(running)
            del self.sources[mapping_id]
        for running in stopping:  # one Journal per folder at a time: wait for the old one to close
            with anyio.move_on_after(RECEIVE_TIMEOUT_S):
                await running.ended.wait()
        assert self._tg is not None
        refused: dict[int, _Refused] = {}
        for mapping_id, spec in wanted.items():
            if mapping_id in self.sources:
                continue
            if self._refuse(spec, spec.source_path, "source"):
                # never runs: source_failing and the master's status say so
                refused[mapping_id] = self._refused_source(spec)
                continue
            running = _Running(spec=spec, scope=anyio.CancelScope())
            self.sources[mapping_id] = running
            self._tg.start_soon(self._run_source, spec, running.scope, running.ended)
        before, self.refused_sources = self.refused_sources, refused
        if {m: r.failure.error for m, r in before.items()} != {
            m: r.failure.error for m, r in refused.items()
        }:
            self._figures_soon()

    def _refused_source(self, spec: MappingSpec) -> _Refused:
        """The refusal of the mapping's source folder, since it was first refused for this reason."""
        why = self._refusals_logged.get((spec.mapping_id, "source"), "source folder refused")
        before = self.refused_sources.get(spec.mapping_id)
        if before is not None and before.failure.error == failure_reason(why):
            return before._replace(name=spec.name)
        failure = SourceFailure(
            mapping_id=spec.mapping_id, error=failure_reason(why), since=time.time()
        )
        return _Refused(spec.name, failure)

    def source_failures(self) -> tuple[SourceFailure, ...]:
        """Every source of this agent that cannot run, by mapping id (for the master)."""
        failures = [r.failure for r in self.refused_sources.values()]
        failures += [r.failure for r in self.sources.values() if r.failure is not None]
        return tuple(sorted(failures, key=lambda f: f.mapping_id)[:MAX_SOURCE_FAILURES])

    async def _change_source(self, running: _Running, spec: MappingSpec) -> bool:
        """Change a running source in place (routes, targets, counters); False if that failed
        (a bug, its journal): then the mapping is restarted with the new spec, the others go on."""
        relink = spec.transfer_override != running.spec.transfer_override
        running.spec = spec
        try:
            if running.links is not None:
                if relink:  # every link restarts with the mapping's new delta/dump choice
                    running.links.close()
                running.links.reconcile(children_of(spec, self.node_id))
            if running.source is not None:
                running.source.spec = spec
                self._release(running.source, spec.release)
                if running.source.confirm_deletes(spec.delete_confirm):
                    await running.source.rescan()
        except Exception:  # cancellation is no Exception: it goes through
            logger.exception(
                "source of mapping %s: changing it failed; restarting it", spec.mapping_id
            )
            return False
        return True

    async def _run_source(
        self, spec: MappingSpec, scope: anyio.CancelScope, ended: anyio.Event
    ) -> None:
        """Run the mapping's source until its scope is cancelled. One that cannot start or
        fails (its folder, its state directory, its watcher) costs its own mapping only: it is
        logged and started again with backoff, while the agent and its other mappings go on."""
        delay_s = SOURCE_RETRY_MIN_S
        try:
            with scope:
                while True:
                    began = time.monotonic()
                    try:
                        await self._run_source_inner(spec, scope)
                    except Exception as exc:  # cancellation is no Exception: it ends the loop
                        if time.monotonic() - began >= SOURCE_RETRY_MAX_S:
                            delay_s = SOURCE_RETRY_MIN_S  # it ran a while: a new failure
                        _log_source_failure(spec.mapping_id, exc, delay_s)
                        if (failed := self._running_source(spec.mapping_id, scope)) is not None:
                            self._source_failed(failed, exc)  # the master sees it, and why
                    await anyio.sleep(delay_s)
                    delay_s = min(delay_s * 2, SOURCE_RETRY_MAX_S)
                    running = self._running_source(spec.mapping_id, scope)
                    spec = running.spec if running is not None else spec
        finally:
            ended.set()

    def _source_failed(self, running: _Running, exc: Exception) -> None:
        """Note why the source could not run; the master hears at once of a new reason."""
        err = leaf_error(exc)
        error = failure_reason(f"{type(err).__name__}: {err}")
        before = running.failure
        running.failure = SourceFailure(
            mapping_id=running.spec.mapping_id,
            error=error,
            since=before.since if before is not None else time.time(),
            attempts=before.attempts + 1 if before is not None else 1,
        )
        if before is None or before.error != error:
            self._figures_soon()

    def _running_source(self, mapping_id: int, scope: anyio.CancelScope) -> _Running | None:
        """The mapping's entry while `scope` is still the one running it."""
        running = self.sources.get(mapping_id)
        return running if running is not None and running.scope is scope else None

    async def _run_source_inner(self, spec: MappingSpec, scope: anyio.CancelScope) -> None:
        source = await anyio.to_thread.run_sync(
            partial(
                SourceMapping,
                rescan_interval_s=self.cfg.rescan_interval_s,
                hot_file_s=self.cfg.hot_file_s,
                content=self.content_cache,
            ),
            spec,
            self.data_dir / "sources" / str(spec.mapping_id),
        )
        running = self._running_source(spec.mapping_id, scope)
        if running is not None:
            running.source = source
        source.on_guard = self._report_guard
        source.on_hold_end = self._report_guard
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(source.serve)
                await source.links_may_start.wait()  # a first sync's: see SourceMapping.serve
                if not source.realtime and running is not None:
                    self._release(source, running.spec.release)  # a send made while we were down
                links = LinkSet(
                    tg,
                    partial(self._make_link, source, spec.mapping_id),
                    label=f"source of mapping {spec.mapping_id}",
                )
                latest = running.spec if running is not None else spec
                source.spec = latest
                if running is not None:
                    running.links = links
                links.reconcile(children_of(latest, self.node_id))
                await source.ready.wait()  # the source runs: its initial scan is journaled
                if running is not None and running.failure is not None:
                    running.failure = None
                    self._figures_soon()  # the master clears it at once
        except Exception:
            source.stop_hold(END_SOURCE_FAILED)
            raise
        finally:
            if running is not None and running.stopped:  # not when the agent stops
                source.stop_hold(running.stopped)
            if running is not None:  # until a retry starts it again, nothing to change in place
                running.source = running.links = None
            source.close()

    def _report_guard(self, notice: MassDeleteHeld | MassDeleteEnded) -> None:
        """Tell the master a hold began or ended (the link keeps the holds in force, to tell
        them again to a master that restarted)."""
        if self.link is not None:
            self.link.notify(notice)

    def _release(self, source: SourceMapping, release: int) -> None:
        """A manual send or a reserved run reached this source: let the journal go out."""
        new = source.set_release(release)
        if self.link is None:
            return
        told = self.link.release_told(source.mapping_id)
        # also the release told before, if it counted in a journal replaced since (Journal.
        # _start_afresh keeps the release): the master resets what it tied to the old one
        if new or (told is not None and told.journal_id != source.journal.journal_id):
            self.link.report_release(
                ReleaseReport(
                    mapping_id=source.mapping_id,
                    release=source.release,
                    upto_seq=source.send_upto,
                    journal_id=source.journal.journal_id,
                )
            )


def _log_source_failure(mapping_id: int, exc: Exception, delay_s: float) -> None:
    err = leaf_error(exc)
    logger.warning(
        "source of mapping %s stopped or cannot start, will retry in %.0f s: %s: %s",
        mapping_id,
        delay_s,
        type(err).__name__,
        err,
        exc_info=not isinstance(err, OSError),  # not the disk or the folder: keep the traceback
    )


def _same_but_live(a: MappingSpec, b: MappingSpec) -> bool:
    """Equal but for what changes in place: counters, routes, the set of targets, the transfer override."""
    live = {
        "release": 0,
        "delete_confirm": 0,
        "routes": (),
        "route_epoch": 0,
        "targets": (),
        "transfer_override": "",
    }
    return msgspec.structs.replace(a, **live) == msgspec.structs.replace(b, **live)
