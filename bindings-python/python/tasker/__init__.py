"""Tasker: workflow orchestration with a Rust core.

A task is a DAG of steps defined in YAML; each step runs a handler. Tasker persists every state
change (SQLite by default, PostgreSQL to scale out), runs independent steps in parallel, retries
failures with backoff and recovers the steps of crashed workers.

    import tasker

    engine = tasker.Engine()                     # $TASKER_DATABASE_URL, else ./tasker.db
    engine.register_template("order.yaml")

    @engine.handler("charge_payment")
    def charge(step):
        return {"charged": step.results["validate_order"]["total"]}

    task_id = engine.create_task("order", {"order_id": 7})
    print(engine.run_until_complete(task_id)["status"])

This module holds no orchestration rule: retries, readiness, leases and finalization are the
Rust core's. It runs your handlers (plain functions on a thread pool, ``async def`` functions on
an asyncio loop) and hands their outcomes back to the core in batches.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import datetime as _dt
import inspect
import json
import os
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from . import _tasker
from ._tasker import (
    ConflictError,
    DatabaseError,
    NotFoundError,
    TaskerError as Error,
    TemplateError,
    TimeoutError,
    ValidationError,
)

__all__ = [
    "Engine",
    "Step",
    "Error",
    "TemplateError",
    "TemplateWarning",
    "ValidationError",
    "NotFoundError",
    "ConflictError",
    "DatabaseError",
    "TimeoutError",
    "RetryableError",
    "PermanentError",
    "Decision",
    "Batches",
    "ChildTask",
    "Wait",
    "Reschedule",
]


class TemplateWarning(UserWarning):
    """A template registered with something only warned about: a key its format does not know
    (kept, shown with the template, no effect). ``strict_templates=True`` refuses it instead."""



JSON = Any
Handler = Callable[["Step"], Union[JSON, Awaitable[JSON]]]


class RetryableError(Exception):
    """Raise from a handler to fail this attempt; the step is retried while attempts remain.

    ``retry_after`` (seconds) replaces the step's backoff for this retry (capped by the engine).
    """

    def __init__(self, message: str, retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class PermanentError(Exception):
    """Raise from a handler to fail the step for good: it is never retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Decision:
    """Return from the handler of a ``type: decision`` step: ``steps`` names which of the steps
    that depend on it directly are created (none is allowed); ``results`` are its own results,
    which its children see. A name outside its children fails the step permanently."""

    def __init__(self, steps: Sequence[str], results: JSON = None) -> None:
        if isinstance(steps, str):
            steps = [steps]
        self.steps = list(steps)
        self.results = results

    def _to_json(self) -> JSON:
        # The one shape core reads in every language (core/src/protocol.rs, Decision).
        out: dict = {"$decision": self.steps}
        if self.results is not None:
            out["results"] = self.results
        return out

    def __repr__(self) -> str:
        return f"Decision({self.steps!r}, results={self.results!r})"


class Batches:
    """Return from the handler of a ``type: batchable`` step: each of its ``batch_worker``
    children runs once per item (any JSON value, e.g. ``{"start": 0, "end": 200}``), seen as
    ``step.batch``; ``results`` are its own results. No items: no instance. More items than
    ``batch_config.max_instances`` (default 10,000) fails the step permanently."""

    def __init__(self, items: Sequence[Any], results: JSON = None) -> None:
        self.items = list(items)
        self.results = results

    def _to_json(self) -> JSON:
        # The one shape core reads in every language (core/src/protocol.rs, Batches).
        out: dict = {"$batches": self.items}
        if self.results is not None:
            out["results"] = self.results
        return out

    def __repr__(self) -> str:
        return f"Batches({len(self.items)} items, results={self.results!r})"


class ChildTask:
    """Return from a handler to run another task for this step: the engine creates it (its
    snapshot has ``parent_task_id`` and ``parent_step``) and the step is ``waiting`` until it
    finishes. Child complete: the step completes with ``{"task_id": ID, "status": "complete",
    "results": {step name: results}}``; child in error or cancelled: the step fails
    permanently with the child's error. A template or context the engine refuses fails the
    step permanently, naming why. Cancelling the parent task cancels the child."""

    def __init__(
        self,
        name: str,
        context: Optional[JSON] = None,
        namespace: Optional[str] = None,
        version: Optional[str] = None,
    ) -> None:
        self.name = name
        self.context = context
        self.namespace = namespace
        self.version = version

    def _to_json(self) -> JSON:
        # The one shape core reads in every language (core/src/protocol.rs, ChildTask).
        spec: dict = {"name": self.name}
        for key in ("context", "namespace", "version"):
            if getattr(self, key) is not None:
                spec[key] = getattr(self, key)
        return {"$child_task": spec}

    def __repr__(self) -> str:
        return f"ChildTask({self.name!r}, context={self.context!r}, namespace={self.namespace!r}, version={self.version!r})"


class Wait:
    """Return from a handler to leave the step ``waiting`` until something outside ends it:
    ``engine.signal(task_id, signal, payload)``, ``engine.complete_correlated(correlation_id,
    results)``, ``engine.complete_step`` / ``engine.fail_step``, or ``timeout`` seconds passing
    (a retryable failure: the handler runs again). ``results`` show while it waits and stay
    if it is completed without any. The step holds no lease and no worker slot meanwhile."""

    def __init__(self, signal: Optional[str] = None, correlation_id: Optional[str] = None,
                 timeout: Optional[float] = None, results: JSON = None) -> None:
        self.signal = signal
        self.correlation_id = correlation_id
        self.timeout = timeout
        self.results = results

    def _to_json(self) -> JSON:
        # The one shape core reads in every language (core/src/protocol.rs, Wait).
        spec = {k: v for k, v in (("signal", self.signal), ("correlation_id", self.correlation_id),
                                  ("timeout", self.timeout), ("results", self.results)) if v is not None}
        return {"$wait": spec}

    def __repr__(self) -> str:
        return f"Wait(signal={self.signal!r}, correlation_id={self.correlation_id!r}, timeout={self.timeout!r})"


class Reschedule:
    """Return from a handler to run the step again after ``after`` seconds without counting an
    attempt (polling an outside job). The step's ``max_reschedules``, when set, bounds how
    often."""

    def __init__(self, after: float) -> None:
        self.after = after

    def _to_json(self) -> JSON:
        return {"$reschedule": {"after": self.after}}

    def __repr__(self) -> str:
        return f"Reschedule(after={self.after!r})"


class Step:
    """What a handler receives.

    Attributes: ``task_id``, ``name`` (the step's name; a fan-out instance's is
    ``worker_001``, ...), ``handler``, ``attempt`` (1 for the first), ``max_attempts``,
    ``context`` (the task's context), ``config`` (the step's ``handler_config``), ``results``
    (parent step name -> its results; a batch worker's is the list of its instances' results,
    in item order), ``batch`` and ``batch_index`` (a fan-out instance's item and 0-based place;
    None otherwise) and ``checkpoint`` (what an earlier attempt saved with
    ``save_checkpoint``; None at first).
    """

    __slots__ = ("task_id", "step_id", "name", "handler", "attempt", "max_attempts", "context", "config",
                 "results", "custom_events", "batch", "batch_index", "checkpoint", "_key", "_core")

    def __init__(self, job: Any, core: Any = None) -> None:
        # `job`: the native `tasker._tasker.Job` (core's HostJob), JSON as text.
        self.task_id: int = job.task_id
        self.step_id: int = job.step_id
        self.attempt: int = job.attempt
        self.name: str = job.step_name
        self.handler: str = job.handler
        self.max_attempts: int = job.max_attempts
        self.context: Dict[str, Any] = json.loads(job.context)
        self.results: Dict[str, Any] = json.loads(job.results)
        self.config: Dict[str, Any] = json.loads(job.config)
        self.custom_events: List[str] = list(job.custom_events)
        self.batch: Any = None if job.batch is None else json.loads(job.batch)
        self.batch_index: Optional[int] = job.batch_index
        self.checkpoint: Any = None if job.checkpoint is None else json.loads(job.checkpoint)
        self._key = job.key
        self._core = core

    def publish_custom_event(self, name: str, payload: Any = None) -> None:
        """Publishes a custom event the template declares (``custom_events``) to every
        subscriber (``@engine.on(name)``) at once. An undeclared name raises
        ``tasker.ValidationError``."""
        if self._core is None:
            raise RuntimeError("this step is not running in a worker")
        try:
            text = json.dumps(payload)
        except (TypeError, ValueError) as e:
            raise ValidationError(f"custom event {name}: payload is not JSON-able: {e}") from None
        self._core.publish_custom_event(self._key, self.name, self.custom_events, name, text)

    def save_checkpoint(self, value: Any) -> None:
        """Saves ``value`` (JSON) as this step's checkpoint, durably, before returning: the
        next attempt (a retry, a crashed worker's successor, an operator's retry) sees it as
        ``step.checkpoint``. Raises ``tasker.ConflictError`` when this attempt no longer holds
        the step (its lease was taken over)."""
        if self._core is None:
            raise RuntimeError("this step is not running in a worker")
        try:
            text = json.dumps(value)
        except (TypeError, ValueError) as e:
            raise ValidationError(f"checkpoint is not JSON-able: {e}") from None
        self._core.save_checkpoint(self._key, text)
        self.checkpoint = json.loads(text)

    def __repr__(self) -> str:
        return f"Step(task_id={self.task_id}, name={self.name!r}, attempt={self.attempt}/{self.max_attempts})"


def _failure(kind: str, message: str, retry_after: Optional[float] = None, detail: Any = None) -> str:
    f: Dict[str, Any] = {"message": message, "kind": kind}
    if retry_after is not None:
        f["retry_after_seconds"] = float(retry_after)
    if detail is not None:
        f["detail"] = detail
    return json.dumps(f)


class _AsyncLoop:
    """An asyncio event loop on its own thread, for ``async def`` handlers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tasker-asyncio", daemon=True)
        self.thread.start()

    def submit(self, coro: Awaitable[Any]) -> "cf.Future[Any]":
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


_FINISHED = {"complete", "error", "cancelled", "resolved_manually"}


class Engine:
    """A Tasker engine on a database.

    ``url``: ``sqlite://PATH`` or ``postgres://USER@HOST:PORT/DB``; ``None`` reads
    ``$TASKER_DATABASE_URL`` and falls back to ``sqlite://tasker.db``. ``environment`` selects
    templates' ``environments.<name>`` overrides; ``schema`` (PostgreSQL) keeps Tasker's tables
    in their own schema; ``lease_seconds`` is how long a claimed step is held before another
    worker may take it over; ``listen=False`` polls instead of LISTEN/NOTIFY;
    ``strict_templates=True`` refuses a changed template body under an already registered
    version (by default it becomes a new revision that new tasks use) and a template with keys
    its format does not know (by default kept, shown, and warned about: ``TemplateWarning``).
    """

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        environment: Optional[str] = None,
        schema: Optional[str] = None,
        lease_seconds: float = 30.0,
        listen: bool = True,
        strict_templates: bool = False,
    ) -> None:
        self._core = _tasker.Core(url, environment, schema, lease_seconds, listen, strict_templates)
        self._handlers: Dict[str, Handler] = {}
        self._subscribers: Dict[str, List[Callable[[Dict[str, Any]], Any]]] = {}
        self.worker_id: str = _tasker.Core.new_worker_id()
        self._stop = threading.Event()

    # ---- templates ---------------------------------------------------------------------

    def register_template(self, src: Union[str, "os.PathLike[str]", Mapping[str, Any]]) -> str:
        """Registers a template from YAML text, a file path, or a dict; returns
        ``namespace.name@version``. A changed body under a registered version becomes a new
        revision that new tasks use (running tasks keep theirs), unless ``strict_templates``."""
        if isinstance(src, Mapping):
            try:
                text = json.dumps(src)
            except (TypeError, ValueError) as e:
                raise TemplateError(f"template is not JSON-able: {e}") from None
            key, notes = self._core.register_template("json", text)
        elif isinstance(src, os.PathLike) or (isinstance(src, str) and "\n" not in src and src.endswith((".yaml", ".yml", ".json"))):
            path = Path(src)
            if not path.exists():
                raise TemplateError(f"template file {path}: No such file or directory")
            key, notes = self._core.register_template("file", str(path))
        elif isinstance(src, str):
            key, notes = self._core.register_template("yaml", src)
        else:
            raise TypeError(f"register_template takes YAML text, a path or a dict, not {type(src).__name__}")
        for note in notes:
            warnings.warn(f"template {key}: {note}", TemplateWarning, stacklevel=2)
        return key

    # ---- handlers and events -----------------------------------------------------------

    def register_events(self, src: Union[str, "os.PathLike[str]"]) -> List[str]:
        """Registers event definitions (the original's ``config/tasker/events/*.yml``: ``events:
        custom: <key>: {constant, description, payload_schema, fired_by}``) from YAML text, a
        file or a directory of them; returns the names registered. They are stored: every
        process opened afterwards knows them. Any handler may publish a defined event, and its
        payload is checked against ``payload_schema``."""
        if isinstance(src, os.PathLike) or (isinstance(src, str) and "\n" not in src and not src.lstrip().startswith("events:")):
            defs = self._core.register_events("path", str(src))
        elif isinstance(src, str):
            defs = self._core.register_events("yaml", src)
        else:
            raise TypeError(f"register_events takes YAML text or a path, not {type(src).__name__}")
        return [d["name"] for d in json.loads(defs)]

    def event_definitions(self) -> List[Dict[str, Any]]:
        """The stored event definitions: ``[{name, key, description, payload_schema: [{key,
        type, required}], fired_by, source}]``."""
        return json.loads(self._core.event_definitions())

    def event_catalog(self) -> List[Dict[str, Any]]:
        """Every event a subscriber may hear: ``[{name, category, description, payload_keys,
        emitted, note?, fired_by?, source?}]`` — the engine's (the original's included, with
        ``emitted: False`` and why where they have no meaning here), the defined ones and those
        registered templates declare."""
        return json.loads(self._core.event_catalog())

    def handler(self, name: str) -> Callable[[Handler], Handler]:
        """Registers a function (``def`` or ``async def``) as the handler ``name``: steps whose
        ``handler_class`` is ``name`` run it. Its return value (JSON-able) is the step's results."""
        if not isinstance(name, str) or not name:
            raise ValueError("handler name must be a non-empty string")

        def register(fn: Handler) -> Handler:
            if not callable(fn):
                raise TypeError(f"handler {name!r} must be callable")
            self._handlers[name] = fn
            return fn

        return register

    def on(self, event: str) -> Callable[[Callable[[Dict[str, Any]], Any]], Callable[[Dict[str, Any]], Any]]:
        """Subscribes a function to a lifecycle event (``"step.failed"``, ``"task.completed"``,
        ...), a custom event a template declares (``"order.fulfilled"``), or ``"*"`` for all. Subscribers run in the worker's loop thread after the transaction
        that made the transition commits, with the event as a dict."""
        try:
            _tasker.Core.check_subscription(event)
        except ValidationError as e:
            raise ValueError(str(e)) from None

        def register(fn: Callable[[Dict[str, Any]], Any]) -> Callable[[Dict[str, Any]], Any]:
            self._subscribers.setdefault(event, []).append(fn)
            self._core.subscribe()
            return fn

        return register

    def _dispatch_events(self) -> None:
        if not self._subscribers:
            return
        for raw in self._core.drain_events():
            ev = json.loads(raw)
            for fn in self._subscribers.get(ev.get("name"), []) + self._subscribers.get("*", []):
                try:
                    fn(ev)
                except Exception:  # a subscriber never breaks the worker
                    traceback.print_exc()

    # ---- tasks -------------------------------------------------------------------------

    def create_task(
        self,
        name: str,
        context: Optional[Mapping[str, Any]] = None,
        *,
        namespace: Optional[str] = None,
        version: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        initiator: Optional[str] = None,
        source_system: Optional[str] = None,
        reason: Optional[str] = None,
        tags: Optional[Sequence[str]] = None,
        bypass_steps: Optional[Sequence[str]] = None,
        priority: int = 0,
        deadline_seconds: Optional[float] = None,
    ) -> int:
        """Creates a task of template ``name`` (latest version unless ``version``); returns its
        id. A repeated ``idempotency_key`` returns the first task's id. ``deadline_seconds``
        (default: the template's): unfinished by then, the task is failed and its unfinished
        steps cancelled."""
        req: Dict[str, Any] = {"name": name, "context": {} if context is None else context, "priority": priority}
        for k, v in (("namespace", namespace), ("version", version), ("idempotency_key", idempotency_key),
                     ("initiator", initiator), ("source_system", source_system), ("reason", reason),
                     ("deadline_seconds", deadline_seconds)):
            if v is not None:
                req[k] = v
        if tags is not None:
            req["tags"] = list(tags)
        if bypass_steps is not None:
            req["bypass_steps"] = list(bypass_steps)
        try:
            text = json.dumps(req)
        except (TypeError, ValueError) as e:
            raise ValidationError(f"task {name}: context is not JSON-able: {e}") from None
        return self._core.create_task(text)

    def create_tasks(self, requests: Sequence[Mapping[str, Any]]) -> List[int]:
        """Creates many tasks in one transaction (all or none). Each request is a dict with the
        keywords of ``create_task`` (``name`` and ``context`` included); returns their ids."""
        try:
            text = json.dumps([{"context": {}, **r} for r in requests])
        except (TypeError, ValueError) as e:
            raise ValidationError(f"task requests are not JSON-able: {e}") from None
        return self._core.create_tasks(text)

    def wait_for_task(self, task_id: int, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Waits until the task is finished (another thread or process runs it) and returns its
        snapshot. Raises ``tasker.TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if left <= 0:
                raise TimeoutError(f"task {task_id} did not finish within {timeout} s")
            if self._core.wait_for_task(task_id, left) in _FINISHED:
                return self.get_task(task_id)

    def stop(self) -> None:
        """Asks a running ``run_worker`` (in another thread) to stop: it claims nothing more and
        returns once the steps in flight finish."""
        self._stop.set()

    def durability(self) -> Dict[str, Any]:
        """What the database says commits get: ``{"description": ..., "durable": bool}``
        (PostgreSQL ``fsync``/``synchronous_commit``/``full_page_writes``; SQLite
        ``synchronous``)."""
        description, durable = self._core.durability()
        return {"description": description, "durable": durable}

    def get_task(self, task_id: int) -> Dict[str, Any]:
        """The task's snapshot: ``{id, name, namespace, version, status, context, steps: [{name,
        status, attempts, results, error, ...}], ...}``."""
        return json.loads(self._core.get_task(task_id))

    def list_tasks(self, *, status: Optional[str] = None, name: Optional[str] = None,
                   namespace: Optional[str] = None, limit: int = 100, offset: int = 0) -> List[Dict[str, Any]]:
        """Tasks, newest first."""
        return json.loads(self._core.list_tasks(status, name, namespace, limit, offset))

    def cancel_task(self, task_id: int) -> None:
        self._core.cancel_task(task_id)

    def retry_step(self, task_id: int, step_name: str) -> None:
        self._core.retry_step(task_id, step_name)

    def update_task(self, task_id: int, *, reason: Optional[str] = None, tags: Optional[Sequence[str]] = None) -> None:
        """Changes a task's ``reason`` and/or ``tags`` (not its state), as ``PATCH /tasks/{id}``."""
        self._core.update_task(task_id, reason, None if tags is None else list(tags))

    def cancel_step(self, task_id: int, step_name: str) -> None:
        """Cancels a step that has not run to the end, with the steps that depend on it."""
        self._core.cancel_step(task_id, step_name)

    def set_step_retry_limit(self, task_id: int, step_name: str, retry_limit: int) -> None:
        """Gives a step another attempt limit (1..), judged from its next failure on; an
        exhausted step given more attempts runs again."""
        self._core.set_step_retry_limit(task_id, step_name, retry_limit)

    def transitions(self, task_id: int) -> List[Dict[str, Any]]:
        """The task's audit history, oldest first: ``[{task_id, workflow_step_id, step_name,
        from_state, to_state, metadata, sort_key, created_at}]``."""
        return json.loads(self._core.transitions(task_id))

    def analytics(self, window_seconds: float = 3600.0, *, namespace: Optional[str] = None, name: Optional[str] = None) -> Dict[str, Any]:
        """Figures for the tasks created in the last ``window_seconds``, as ``GET
        /analytics/performance`` shows them."""
        return json.loads(self._core.analytics(float(window_seconds), namespace, name))

    def resolve_step_manually(self, task_id: int, step_name: str, results: Any = None) -> None:
        self._core.resolve_step_manually(task_id, step_name, _json_arg("results", results))

    # ---- steering tasks ----------------------------------------------------------------

    def _flow(self, op: str, **args: Any) -> Any:
        return json.loads(self._core.flow_op(op, json.dumps({k: v for k, v in args.items() if v is not None})))

    def pause_task(self, task_id: int) -> bool:
        """Pauses a task: no new step of it starts until :meth:`resume_task`; running steps
        finish. Returns whether it changed (False when already paused); ``ConflictError`` for
        a finished task."""
        return self._flow("pause_task", task_id=task_id)

    def resume_task(self, task_id: int) -> bool:
        """Resumes a paused task; returns whether it changed."""
        return self._flow("resume_task", task_id=task_id)

    def pause_template(self, name: str, namespace: str = "default") -> int:
        """Pauses every unfinished task of a template (any version); returns how many.
        Tasks created later are not paused."""
        return self._flow("pause_template", name=name, namespace=namespace)

    def resume_template(self, name: str, namespace: str = "default") -> int:
        """Resumes every paused task of a template; returns how many."""
        return self._flow("resume_template", name=name, namespace=namespace)

    def rerun_from(self, task_id: int, step: str) -> int:
        """Puts ``step`` and every step below it back to pending with fresh attempts (their
        history kept: the transitions say ``rerun_from``) and the task back to work; for a
        complete, resolved or failed task. Returns how many steps."""
        return self._flow("rerun_from", task_id=task_id, step=step)

    def retry_task(self, task_id: int) -> int:
        """Retries every step out of attempts of a task in error; returns how many."""
        return self._flow("retry_task", task_id=task_id)

    def retry_tasks(self, *, status: Optional[str] = "error", name: Optional[str] = None,
                    namespace: Optional[str] = None, since: Union[None, str, _dt.datetime] = None) -> int:
        """Retries every failed task matching the filters (``since``: a datetime, an RFC
        3339 string or an age such as ``"24h"``); returns how many tasks."""
        return self._flow("retry_tasks", status=status, name=name, namespace=namespace, since=_since(since))

    def cancel_tasks(self, *, status: Optional[str] = None, name: Optional[str] = None,
                     namespace: Optional[str] = None, since: Union[None, str, _dt.datetime] = None) -> int:
        """Cancels every unfinished task matching the filters; returns how many."""
        return self._flow("cancel_tasks", status=status, name=name, namespace=namespace, since=_since(since))

    def prune(self, older_than: Union[float, str, _dt.timedelta], statuses: Optional[Sequence[str]] = None) -> int:
        """Removes tasks that ended longer than ``older_than`` ago (seconds, a timedelta or
        an age such as ``"30d"``) in ``statuses`` (complete, cancelled and resolved_manually
        unless given), with their steps and history; returns how many."""
        age = older_than.total_seconds() if isinstance(older_than, _dt.timedelta) else older_than
        return self._flow("prune", older_than=age, statuses=None if statuses is None else list(statuses))

    # ---- steps that wait ---------------------------------------------------------------

    def signal(self, task_id: int, name: str, payload: Any = None) -> int:
        """Completes each step of the task waiting for signal ``name``, with ``payload`` as
        its results (None: the wait's own); returns how many. When none waits yet, the
        signal is kept and taken by the first step of the task that waits for it."""
        return self._core.signal(task_id, name, _json_arg("payload", payload))

    def complete_step(self, task_id: int, step_name: str, results: Any = None) -> None:
        """Completes a waiting step (``ConflictError`` naming its state when it is not
        waiting)."""
        self._core.complete_step(task_id, step_name, _json_arg("results", results))

    def fail_step(self, task_id: int, step_name: str, message: str, permanent: bool = False) -> None:
        """Fails a waiting step: for good with ``permanent``, else its handler runs again
        after backoff while attempts remain."""
        self._core.fail_step(task_id, step_name, message, permanent)

    def complete_correlated(self, correlation_id: str, results: Any = None) -> int:
        """Completes every step waiting with this correlation id; returns how many."""
        return self._core.complete_correlated(correlation_id, _json_arg("results", results))

    # ---- schedules ---------------------------------------------------------------------

    def create_schedule(self, name: str, template: str, cron: str, context: Optional[Dict[str, Any]] = None,
                        namespace: Optional[str] = None, version: Optional[str] = None, timezone: str = "UTC",
                        overlap: str = "skip", catch_up: str = "latest") -> Dict[str, Any]:
        """Creates a schedule: a task of ``template`` at each tick of ``cron`` (5 fields, or 6
        with seconds first) in ``timezone``. ``overlap``: ``skip`` (no new task while the last
        is unfinished), ``allow``, ``cancel_previous``; ``catch_up`` after every process was
        down: ``none``, ``latest``, ``all``. Every worker process fires it. Returns the
        schedule (``next_run_at``, ...); ``ValidationError`` naming what is wrong,
        ``ConflictError`` when the name is taken."""
        spec = {"name": name, "template": template, "cron": cron, "context": context,
                "namespace": namespace, "version": version, "timezone": timezone,
                "overlap": overlap, "catch_up": catch_up}
        return json.loads(self._core.schedule_op("create", _json_arg("schedule", spec)))

    def list_schedules(self) -> List[Dict[str, Any]]:
        """Every schedule, by name, with its next run time."""
        return json.loads(self._core.schedule_op("list", ""))

    def get_schedule(self, name: str) -> Dict[str, Any]:
        return json.loads(self._core.schedule_op("get", name))

    def pause_schedule(self, name: str) -> Dict[str, Any]:
        """Its ticks make no task until resumed (and are not caught up)."""
        return json.loads(self._core.schedule_op("pause", name))

    def resume_schedule(self, name: str) -> Dict[str, Any]:
        """Resumes from its next tick after now."""
        return json.loads(self._core.schedule_op("resume", name))

    def delete_schedule(self, name: str) -> None:
        """Deletes it (its tasks stay)."""
        self._core.schedule_op("delete", name)

    # ---- running -----------------------------------------------------------------------

    def run_until_complete(self, task_id: int, timeout: Optional[float] = None, *, concurrency: int = 8) -> Dict[str, Any]:
        """Runs this process's handlers until the task is finished (``complete``, ``error``,
        ``cancelled``); returns its snapshot. Raises ``tasker.TimeoutError`` after ``timeout``
        seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._run(concurrency, task_id=task_id, deadline=deadline)
        return self.get_task(task_id)

    def run_worker(self, concurrency: int = 8, until_idle: bool = False, *, shutdown_grace: float = 30.0) -> None:
        """Runs this process's handlers for every task in the database. Returns when nothing is
        left to do (``until_idle``), or on Ctrl-C or ``stop()``: steps not started yet are handed
        back at once (their attempt is not spent), steps in flight get ``shutdown_grace``
        seconds to finish and are then reported as ``worker_shutdown`` failures (retried at
        once by any worker). Python cannot interrupt a running thread: a handler still running
        then finishes in the background, its outcome ignored."""
        self._run(concurrency, until_idle=until_idle, shutdown_grace=shutdown_grace)

    def _run(self, concurrency: int, *, until_idle: bool = False, task_id: Optional[int] = None,
             deadline: Optional[float] = None, shutdown_grace: float = 30.0) -> None:
        """Runs handlers for the core's host driver, which decides everything else (claims,
        batching, heartbeats, timeouts, database outages, shutdown, built-in handlers)."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        mode = "until_task" if task_id is not None else "until_idle" if until_idle else "forever"
        driver = self._core.start_driver(sorted(self._handlers), concurrency, mode, task_id, self.worker_id, shutdown_grace)
        pool = cf.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="tasker-step")
        aloop: Optional[_AsyncLoop] = None
        core = self._core
        timed_out = False
        self._stop.clear()
        try:
            while True:
                try:
                    jobs, done = driver.next(0.1)
                    for job in jobs:
                        fn = self._handlers[job.handler]
                        if inspect.iscoroutinefunction(fn):
                            if aloop is None:
                                aloop = _AsyncLoop()
                            aloop.submit(_run_async(driver, fn, Step(job, core)))
                        else:
                            pool.submit(_run_sync, driver, fn, job, core)
                    self._dispatch_events()
                    if done:
                        break
                    if self._stop.is_set() or (deadline is not None and not timed_out and time.monotonic() > deadline):
                        timed_out = not self._stop.is_set()
                        driver.shutdown()
                except KeyboardInterrupt:
                    # Ctrl-C: claim nothing more; steps in flight finish (or are reported after
                    # the grace period), steps not started are handed back.
                    driver.shutdown()
            driver.join()
        finally:
            driver.shutdown()
            self._dispatch_events()
            pool.shutdown(wait=False, cancel_futures=True)
            if aloop is not None:
                aloop.close()
        if timed_out:
            raise TimeoutError(f"task {task_id} did not finish in time")


def _key(job: Any) -> Tuple[int, int, int, int]:
    return job.key


def _since(since: Union[None, str, _dt.datetime]) -> Optional[str]:
    """A bulk action's ``since`` as core takes it: RFC 3339 text (a naive datetime is UTC)."""
    if isinstance(since, _dt.datetime):
        if since.tzinfo is None:
            since = since.replace(tzinfo=_dt.timezone.utc)
        return since.isoformat()
    return since


def _json_arg(what: str, value: Any) -> str:
    """An argument as JSON text, or a ValidationError naming it."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as e:
        raise ValidationError(f"{what} is not JSON-able: {e}") from None


def _finish(driver: Any, key: Tuple[int, int, int, int], ok: bool, value: Any) -> None:
    """Hands a handler's outcome to the driver: results as JSON, or the failure."""
    if not ok:
        driver.finished(key, False, value)
        return
    if isinstance(value, (Decision, Batches, ChildTask, Wait, Reschedule)):
        value = value._to_json()
    try:
        text = json.dumps(value)
    except (TypeError, ValueError) as e:
        driver.finished_not_json(key, str(e))
        return
    driver.finished(key, True, text)


def _run_sync(driver: Any, fn: Handler, job: Any, core: Any) -> None:
    driver.started(_key(job))
    try:
        value = fn(Step(job, core))
    except BaseException:
        _finish(driver, _key(job), False, _exception_failure())
        return
    _finish(driver, _key(job), True, value)


async def _run_async(driver: Any, fn: Handler, step: Step) -> None:
    driver.started(step._key)
    try:
        value = await fn(step)  # type: ignore[misc]
    except BaseException:
        _finish(driver, step._key, False, _exception_failure())
        return
    _finish(driver, step._key, True, value)


def _exception_failure() -> str:
    """The failure (JSON) for the exception being handled (inside an ``except`` block): a
    ``RetryableError`` or ``PermanentError`` as raised, anything else retryable with its class
    and traceback kept."""
    e = sys.exc_info()[1]
    if isinstance(e, RetryableError):
        return _failure("retryable", e.message, e.retry_after)
    if isinstance(e, PermanentError):
        return _failure("permanent", e.message)
    if isinstance(e, asyncio.CancelledError):
        return _failure("retryable", "the handler was cancelled")
    assert e is not None
    return _failure(
        "retryable",
        f"{type(e).__name__}: {e}",
        detail={"exception": type(e).__name__, "traceback": traceback.format_exc()},
    )
