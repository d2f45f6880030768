"""The write queue of a sweep's MLflow runs: a tracking outage never stops training.

What cannot be written is queued in order and retried (every `RETRY_EVERY_S` and at the end); what
is still unwritten when the sweep ends is counted in one line, and `dals sweep sync` records it later
from Ray's result files, the sweep's ground truth.

The one write in flight when the store went down may have been recorded without its answer coming
back (MLflow commits a batch's params, metrics and tags one after another), so the line counts it
apart, as perhaps recorded; the sync records exactly what MLflow lacks.
"""

from __future__ import annotations

import sys
import time
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mlflow.entities import RunTag

from sweeps.tracking.store import (
    NOTES, RETRY_EVERY_S, TAG_KEY, TAG_RAY_ID, TAG_ROLE, TAG_STATUS, TAG_SWEEP, Store, Writes,
    child_tags, create_child, end_run, epoch_batch, find_parent, logged_epoch, reason, result_step,
    result_values, run_facts, run_params, search_runs, transient,
)


@dataclass(frozen=True)
class _Job:
    """One queued MLflow write job: `kind` is the outbox method (`_child`, `_log`, `_end`, `_tag`)."""

    kind: str
    trial_id: str
    spec: dict[str, Any]
    arg: Any = None  # the result (`_log`) or the status (`_end`, `_tag`)
    at_ms: int = 0  # when Tune reported it: logged metrics keep that time, not the replay's



class Outbox:
    """The MLflow writes of one sweep's trials, in order, on one background thread.

    A write never stalls Tune's event loop (a SQLite write takes ~20 ms). When one fails because
    the store is unreachable, it and every later one wait in a backlog (in order) that is retried
    every `RETRY_EVERY_S` and by `flush()`; `unrecorded()` counts what is still waiting. Every live
    outbox is known to `flush_all`, `attempt` and `unrecorded_line`, which the runner calls.
    """

    def __init__(self, store: Store, sweep_id: str):
        self.store, self.sweep_id = store, sweep_id
        self._client = self.store.client()
        self._exp_id = self.store.experiment_id(self._client)
        parent = find_parent(self._client, self._exp_id, self.sweep_id)
        if parent is None:
            raise RuntimeError(f"no MLflow parent run for sweep {self.sweep_id}")
        self._parent_id = parent.info.run_id
        # trial keys with a run in this sweep (a resumed one): only those are searched for again
        self._have_runs = {r.data.tags.get(TAG_KEY) for r in search_runs(
            self._client, self._exp_id, **{TAG_ROLE: "trial", TAG_SWEEP: self.sweep_id})}
        self._runs: dict[str, str] = {}  # Ray trial id -> child run id
        self._last_step: dict[str, int] = {}  # child run id -> last epoch logged
        self._reopened: dict[str, Any] = {}  # child run id -> its run, until its first result checks it
        self._held: dict[str, set[str]] = {}  # child run id -> its params, until a result adds run facts
        self._queue = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-log")
        self._backlog: deque[_Job] = deque()  # logging thread only; the oldest first
        self._lost = Writes()  # refused for good (not retried): counted, never silently dropped
        self._down_since: float | None = None
        self._cut: _Job | None = None  # the write in flight when the store went down (maybe recorded)
        self._last_try = 0.0
        self._retry_queued = False
        _LIVE.add(self)

    def _say(self, line: str) -> None:
        print(f"dals: {line}", file=sys.stderr, flush=True)

    def submit(self, kind: str, trial_id: str, spec: dict[str, Any], arg: Any = None) -> None:
        """Queue a write job: `kind` is `_child` (open the trial's run), `_log` (a result), `_end`
        (its final status) or `_tag` (a passing status)."""
        job = _Job(kind, trial_id, spec, arg, int(time.time() * 1000))
        self._queue.submit(self._accept, job)

    # -- the backlog (logging thread)
    def _accept(self, job: _Job) -> None:
        """Run the job now, or behind the backlog while the store is down."""
        self._backlog.append(job)
        if len(self._backlog) == 1 or self._retry_due():
            self._drain()

    def _retry_due(self) -> bool:
        return time.monotonic() - self._last_try >= RETRY_EVERY_S

    def _drain(self) -> None:
        """Run backlog jobs in order until one fails on a store outage (then wait for a retry)."""
        self._retry_queued = False
        self._last_try = time.monotonic()
        while self._backlog:
            job = self._backlog[0]
            try:
                getattr(self, job.kind)(job.trial_id, job.spec, job.arg, job.at_ms)
            except Exception as exc:
                if transient(exc):
                    if self._down_since is None:
                        self._down_since = time.monotonic()
                        self._cut = job
                        self._say(f"MLflow at {self.store.shown} is unreachable ({reason(exc)}); "
                                  f"training goes on, its writes wait and are retried every "
                                  f"{RETRY_EVERY_S:.0f} s")
                    return
                self._lost += self._writes([job])
                self._say(f"MLflow refused a write for trial {job.spec['key']} ({reason(exc)}); "
                          "`dals sweep sync` records it from Ray's results")
            self._backlog.popleft()
        if self._down_since is not None:
            self._say(f"MLflow at {self.store.shown} is reachable again after "
                      f"{time.monotonic() - self._down_since:.0f} s; the waiting writes are recorded")
            self._down_since = None

    def _retry(self) -> None:
        try:
            if self._backlog:
                self._drain()
        except Exception as exc:  # the logging thread must survive anything
            self._say(f"MLflow retry failed: {reason(exc)}")

    def flush(self) -> None:
        """Wait for the queued writes, with one more try of any the store was down for."""
        if hasattr(self, "_queue"):
            self._queue.submit(self._retry).result()

    def down(self) -> bool:
        """Whether the store was unreachable at the last try (and no retry is due yet)."""
        return self._down_since is not None and bool(self._backlog) and not self._retry_due()

    def unrecorded(self) -> tuple[Writes, Writes]:
        """What this sweep could not write so far (the backlog and what was refused), and apart
        from it the write cut off by the outage, which may have been recorded."""
        if not hasattr(self, "_queue"):
            return Writes(), Writes()
        pending = self._queue.submit(lambda: list(self._backlog)).result()
        cut = pending[:1] if pending and pending[0] is self._cut else []
        maybe = self._writes(cut)
        missed = self._writes(pending) - maybe  # in order: the cut write may open the run
        missed += self._lost
        return missed, maybe

    def abandon(self) -> None:
        """Forget the backlog (once reported): `dals sweep sync` records it from Ray's results."""
        if hasattr(self, "_queue"):
            self._queue.submit(self._backlog.clear).result()
            self._lost, self._cut = Writes(), None

    def _writes(self, jobs: list[_Job]) -> Writes:
        """The MLflow writes `jobs` would make, given what this callback has written so far."""
        out = Writes()
        known = set(self._runs)
        last = {t: self._last_step.get(r, 0) for t, r in self._runs.items()}
        held = {t: self._held[r] for t, r in self._runs.items() if r in self._held}  # facts not yet logged
        for job in jobs:
            if job.trial_id not in known:  # the run would be created (or reopened)
                known.add(job.trial_id)
                last.setdefault(job.trial_id, 0)
                held[job.trial_id] = {p.key for p in run_params(job.spec)}
                out.params += len(held[job.trial_id])
                out.tags += len(child_tags("", "", job.spec)) + 2  # + Ray id, status
            if job.kind == "_log":
                step = result_step(job.arg)
                if step > last[job.trial_id]:
                    out.metrics += len(result_values(job.arg, step))
                    if job.trial_id in held:
                        out.params += len(run_facts(job.arg, held.pop(job.trial_id)))
                    out.tags += 1  # the run's last epoch
                    last[job.trial_id] = step
            elif job.kind == "_end":
                out.tags += 1 + (job.arg in NOTES)
                out.statuses += 1
                known.discard(job.trial_id)
            elif job.kind == "_tag":
                out.tags += 1
        return out

    # -- work on the logging thread
    def _child(self, trial_id: str, spec: dict[str, Any], arg: Any = None, at_ms: int = 0) -> str:
        """The trial's child run: the one it had (reopened) or a new one."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        client = self._client
        found = spec["key"] in self._have_runs and search_runs(
            client, self._exp_id, **{TAG_ROLE: "trial", TAG_SWEEP: self.sweep_id, TAG_KEY: spec["key"]})
        if found:
            run_id = found[0].info.run_id
            if not found[0].data.params:  # created, but its params did not get through
                client.log_batch(run_id, params=run_params(spec))
            self._last_step[run_id] = logged_epoch(client, found[0])
            self._reopened[run_id] = found[0]
            self._held[run_id] = set(found[0].data.params) or {p.key for p in run_params(spec)}
            client.update_run(run_id, status="RUNNING")
            client.log_batch(run_id, tags=[RunTag(TAG_RAY_ID, trial_id), RunTag(TAG_STATUS, "running")])
        else:  # created with its Ray id and status: one write fewer per trial
            self._have_runs.add(spec["key"])  # first: a retry after an outage finds a half-made run
            run_id = create_child(client, self._exp_id, self._parent_id, self.sweep_id, spec,
                                  **{TAG_RAY_ID: trial_id, TAG_STATUS: "running"})
            self._last_step[run_id] = 0
            self._held[run_id] = {p.key for p in run_params(spec)}
        self._runs[trial_id] = run_id
        return run_id

    def _log(self, trial_id: str, spec: dict[str, Any], result: dict[str, Any], at_ms: int = 0) -> None:
        run_id = self._child(trial_id, spec)
        step = result_step(result)
        if run_id in self._reopened:  # the epoch tag may lag its metrics by one (a killed driver)
            own = sorted(k for k in result_values(result, step) if not k.startswith("system/"))
            if own:
                last = logged_epoch(self._client, self._reopened[run_id], own[0])
                self._last_step[run_id] = max(self._last_step[run_id], last)
            del self._reopened[run_id]
        if step <= self._last_step.get(run_id, 0):
            return  # an epoch re-run after a restore: its first report is already logged
        metrics, tags = epoch_batch(result, step, at_ms or int(time.time() * 1000))
        facts = run_facts(result, self._held[run_id]) if run_id in self._held else []
        self._client.log_batch(run_id, metrics=metrics, params=facts, tags=tags)
        self._held.pop(run_id, None)
        self._last_step[run_id] = step

    def _end(self, trial_id: str, spec: dict[str, Any], status: str, at_ms: int = 0) -> None:
        run_id = self._child(trial_id, spec)
        end_run(self._client, run_id, status)
        self._runs.pop(trial_id, None)

    def _tag(self, trial_id: str, spec: dict[str, Any], status: str, at_ms: int = 0) -> None:
        self._client.set_tag(self._child(trial_id, spec), TAG_STATUS, status)

    def tick(self) -> None:
        """While the store is down, queue a retry every RETRY_EVERY_S (even with no new result)."""
        if self._backlog and not self._retry_queued and self._retry_due():
            self._retry_queued = True
            self._queue.submit(self._retry)


_LIVE: "weakref.WeakSet[Outbox]" = weakref.WeakSet()
_MISSED: dict[Store, Writes] = {}  # writes outside the callbacks that did not get through


def flush_all() -> None:
    """Wait until every live callback's queued MLflow writes are done (or still waiting on an
    unreachable store: see `unrecorded_line`)."""
    for callback in list(_LIVE):
        callback.flush()


def attempt(store: Store, writes: Writes, call: Callable[[], Any]) -> bool:
    """Run one driver-side MLflow call; on a store outage count `writes` as not recorded
    (skipping the call while a callback already knows the store is down) and return False."""
    if any(c.store == store and c.down() for c in list(_LIVE)):
        _MISSED.setdefault(store, Writes()).__iadd__(writes)
        return False
    try:
        call()
        return True
    except Exception as exc:
        if not transient(exc):
            raise
        _MISSED.setdefault(store, Writes()).__iadd__(writes)
        return False


def unrecorded_line(store: Store, folder: str, spec_ref: str | Path) -> str | None:
    """One line saying what the sweep could not write to MLflow and how to record it, or None;
    the count is reported once (the callbacks' backlogs are then dropped)."""
    missed, maybe = _MISSED.pop(store, Writes()), Writes()
    for callback in [c for c in list(_LIVE) if c.store == store]:
        sure, cut = callback.unrecorded()
        missed += sure
        maybe += cut
        callback.abandon()
    if not missed and not maybe:
        return None
    cut = f" (and {maybe.brief()} in flight when it went down, perhaps recorded)" if maybe else ""
    return (f"dals: MLflow at {store.shown} did not record {missed.describe()}{cut}; all of it is "
            f"in Ray's results under {folder}: once MLflow is reachable, run `dals sweep sync "
            f"{spec_ref}` to record it")


def close_parent(store: Store, run_id: str, status: str) -> None:
    """End the sweep's parent run (counted as not recorded when the store is down)."""
    attempt(store, Writes(statuses=1), lambda: store.client().set_terminated(run_id, status))
