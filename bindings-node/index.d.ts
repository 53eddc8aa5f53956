// Types of the tasker package (the JS half, written by hand; native.d.ts is napi's output for
// the native half, which this package does not expose directly).

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json }
export type TaskState = 'pending' | 'in_progress' | 'complete' | 'error' | 'cancelled' | 'resolved_manually'
/** A step's states: a task's, and `waiting` (for the child task it created). */
export type StepState = TaskState | 'waiting'

export interface EngineOptions {
  /** Selects the templates' `environments.<name>` overrides. */
  environment?: string
  /** PostgreSQL: keep Tasker's tables in this schema. */
  schema?: string
  /** How long a claimed step is held before another worker may take it over (default 30). */
  leaseSeconds?: number
  /** PostgreSQL: LISTEN for new work (default true); false behind poolers that cannot. */
  listen?: boolean
  /** Refuse a changed template body under a registered version (default: a new revision), and template keys its format does not know (default: kept, a `TemplateWarning`). */
  strictTemplates?: boolean
}

export interface CreateTaskOptions {
  namespace?: string
  version?: string
  idempotencyKey?: string
  initiator?: string
  sourceSystem?: string
  reason?: string
  tags?: string[]
  bypassSteps?: string[]
  priority?: number
  /** Seconds: unfinished by then, the task is failed and its unfinished steps cancelled (default: the template's). */
  deadlineSeconds?: number
}

export interface TaskRequest extends CreateTaskOptions {
  name: string
  context?: { [key: string]: Json }
}

export interface StepSnapshot {
  id: number
  name: string
  handler: string
  status: StepState
  attempts: number
  max_attempts: number
  results: Json
  /** The last failure: {message, kind, attempt, at, retry_after_seconds?, detail?}. */
  error: { message: string, kind: string, attempt: number, at: string, retry_after_seconds?: number, detail?: Json } | null
  depends_on: string[]
  next_attempt_at: string | null
  last_attempted_at: string | null
  completed_at: string | null
  duration_ms: number | null
  /** A fan-out instance's batch worker step (`work` for `work_003`). */
  instance_of?: string
  /** A fan-out instance's 0-based place among its fan-out's items. */
  batch_index?: number
  /** The task this step created (it returned a ChildTask): the newest after a retry. */
  child_task_id?: number
  /** What a waiting step waits for: `{signal?, correlation_id?, timeout_at?}` or `{child_task_id}`. */
  waiting_for?: { signal?: string, correlation_id?: string, timeout_at?: string, child_task_id?: number }
}

export interface TaskSnapshot {
  id: number
  name: string
  namespace: string
  version: string
  status: TaskState
  /** Paused by an operator (pauseTask): no new step of it starts. */
  paused: boolean
  context: { [key: string]: Json }
  initiator: string
  source_system: string
  reason: string
  tags: string[]
  bypass_steps: string[]
  idempotency_key: string | null
  created_at: string
  updated_at: string
  completed_at: string | null
  /** A child task's parent task and the step that waits for it (null otherwise). */
  parent_task_id: number | null
  parent_step: string | null
  steps: StepSnapshot[]
}

export interface TaskSummary {
  id: number
  name: string
  namespace: string
  version: string
  status: TaskState
  steps_total: number
  steps_done: number
  created_at: string
  completed_at: string | null
  parent_task_id: number | null
}

export interface ListTasksOptions {
  status?: TaskState
  name?: string
  namespace?: string
  limit?: number
  offset?: number
}

export interface TaskerEvent {
  /** A lifecycle event (`step.completed`, ...) or a declared custom event. */
  name: string
  task_id: number
  step_id?: number
  step_name?: string
  from_state: string | null
  /** null for custom events. */
  to_state: string | null
  attempt?: number
  metadata: { [key: string]: Json }
  at_ms: number
}

/** What a handler receives. */
export declare class Step {
  readonly taskId: number
  readonly stepId: number
  /** The step's name. */
  readonly name: string
  readonly handler: string
  /** 1 for the first attempt. */
  readonly attempt: number
  readonly maxAttempts: number
  /** The task's context. */
  readonly context: { [key: string]: Json }
  /** The step's handler_config. */
  readonly config: { [key: string]: Json }
  /** Parent step name -> its results. */
  readonly results: { [step: string]: Json }
  /** The custom events the template declares. */
  readonly customEvents: string[]
  /** A fan-out instance's item (`null` for any other step). */
  readonly batch: Json
  /** A fan-out instance's 0-based place among its items (`null` for any other step). */
  readonly batchIndex: number | null
  /** What an earlier attempt saved with `saveCheckpoint` (`null` at first). */
  readonly checkpoint: Json
  /** Publishes a declared custom event to every subscriber at once; throws ValidationError otherwise. */
  publishCustomEvent(name: string, payload?: Json): void
  /** Saves a checkpoint durably: the next attempt (a retry, a crashed worker's successor, an operator's retry) sees it as `checkpoint`. Rejects with ConflictError when this attempt no longer holds the step. */
  saveCheckpoint(value: Json): Promise<void>
}

export type Handler = (step: Step) => unknown | Promise<unknown>

export interface RunWorkerOptions {
  /** Handlers running at once (default 8). */
  concurrency?: number
  /** Resolve once nothing is left to do for this process's handlers. */
  untilIdle?: boolean
  /** Stops the worker gracefully when aborted (as SIGINT/SIGTERM do). */
  signal?: AbortSignal
  /** Seconds running steps may still finish after a stop (default 30). */
  shutdownGrace?: number
}

/** A custom event defined by an event definition file (`events: custom: <key>: {...}`). */
export interface EventDefinition {
  name: string
  key: string
  description?: string
  payload_schema?: Array<{ key: string, type: string, required: boolean }>
  fired_by?: string[]
  source?: string
}

/** One state change of a task or of one of its steps. */
export interface Transition {
  task_id: number
  workflow_step_id: number | null
  step_name: string | null
  from_state: string | null
  to_state: string
  metadata: { [key: string]: Json }
  sort_key: number
  created_at: string
}

/** One event of the catalogue (`eventCatalog()`, `GET /events`). */
export interface CatalogEntry {
  name: string
  category: string
  description: string
  payload_keys: string[]
  /** False for the original's events with no meaning here (`note` says why). */
  emitted: boolean
  note?: string
  fired_by?: string[]
  source?: string
}

export declare class Engine {
  constructor(url?: string | null, options?: EngineOptions)
  registerTemplate(src: string | object): Promise<string>
  /** Registers event definition files (YAML text, a file or a directory); resolves to the names. */
  registerEvents(src: string): Promise<string[]>
  eventDefinitions(): Promise<EventDefinition[]>
  /** Every event a subscriber may hear, with category, description and payload keys. */
  eventCatalog(): Promise<CatalogEntry[]>
  handler(name: string, fn: Handler): this
  on(event: string, fn: (event: TaskerEvent) => void): this
  createTask(name: string, context?: { [key: string]: Json }, options?: CreateTaskOptions): Promise<number>
  createTasks(requests: TaskRequest[]): Promise<number[]>
  /** What the database says commits get (PostgreSQL fsync/synchronous_commit/full_page_writes, SQLite synchronous). */
  durability(): Promise<{ description: string, durable: boolean }>
  getTask(id: number): Promise<TaskSnapshot>
  listTasks(options?: ListTasksOptions): Promise<TaskSummary[]>
  cancelTask(id: number): Promise<void>
  retryStep(id: number, step: string): Promise<void>
  /** Changes a task's `reason` and/or `tags` (not its state). */
  updateTask(id: number, changes: { reason?: string | null, tags?: string[] | null }): Promise<void>
  /** Cancels a step that has not run to the end, with its dependents. */
  cancelStep(id: number, step: string): Promise<void>
  setStepRetryLimit(id: number, step: string, retryLimit: number): Promise<void>
  /** The task's audit history, oldest first. */
  transitions(id: number): Promise<Transition[]>
  /** Figures for the tasks created in the last `windowSeconds` (default 3600). */
  analytics(options?: { windowSeconds?: number, namespace?: string | null, name?: string | null }): Promise<{ [key: string]: Json }>
  resolveStepManually(id: number, step: string, results?: Json): Promise<void>
  /** Completes the task's steps waiting for signal `name` (or keeps it for the first that waits); resolves to how many. */
  signal(id: number, name: string, payload?: Json): Promise<number>
  /** Completes a waiting step. */
  completeStep(id: number, step: string, results?: Json): Promise<void>
  /** Fails a waiting step: for good with `permanent`, else its handler runs again. */
  failStep(id: number, step: string, message: string, options?: { permanent?: boolean }): Promise<void>
  /** Completes every step waiting with this correlation id; resolves to how many. */
  completeCorrelated(correlationId: string, results?: Json): Promise<number>
  /** Pauses a task: no new step of it starts until resumed; running steps finish. Resolves to whether it changed. */
  pauseTask(id: number): Promise<boolean>
  resumeTask(id: number): Promise<boolean>
  /** Pauses every unfinished task of a template (any version); resolves to how many. */
  pauseTemplate(name: string, namespace?: string): Promise<number>
  resumeTemplate(name: string, namespace?: string): Promise<number>
  /** Puts `step` and every step below it back to pending with fresh attempts (complete, resolved or failed tasks); resolves to how many steps. */
  rerunFrom(id: number, step: string): Promise<number>
  /** Retries every step out of attempts of a task in error; resolves to how many. */
  retryTask(id: number): Promise<number>
  /** Retries every failed task matching the filters (`since`: a Date, RFC 3339 text or an age such as '24h'); resolves to how many tasks. */
  retryTasks(filter?: BulkFilter): Promise<number>
  /** Cancels every unfinished task matching the filters; resolves to how many. */
  cancelTasks(filter?: BulkFilter): Promise<number>
  /** Removes tasks that ended more than `olderThan` ago (seconds or an age such as '30d'), complete, cancelled and resolved_manually unless `statuses` says; resolves to how many. */
  prune(olderThan: number | string, options?: { statuses?: TaskState[] }): Promise<number>
  /** A task of `template` at each tick of `cron` (5 fields, or 6 with seconds first); every worker process fires it. */
  createSchedule(name: string, template: string, cron: string, options?: ScheduleOptions): Promise<Schedule>
  listSchedules(): Promise<Schedule[]>
  getSchedule(name: string): Promise<Schedule>
  pauseSchedule(name: string): Promise<Schedule>
  resumeSchedule(name: string): Promise<Schedule>
  deleteSchedule(name: string): Promise<void>
  waitForTask(id: number, options?: { timeout?: number }): Promise<TaskSnapshot>
  /** `timeout` in seconds. */
  runUntilComplete(id: number, options?: { timeout?: number, concurrency?: number }): Promise<TaskSnapshot>
  runWorker(options?: RunWorkerOptions): Promise<void>
  stop(): void
  close(): Promise<void>
  static newWorkerId(): string
}

export declare class TaskerError extends Error {}
export declare class TemplateError extends TaskerError {}
export declare class ValidationError extends TaskerError {}
export declare class NotFoundError extends TaskerError {}
export declare class ConflictError extends TaskerError {}
export declare class DatabaseError extends TaskerError {}
export declare class TimeoutError extends TaskerError {}

export declare class RetryableError extends Error {
  constructor(message: string, options?: { retryAfter?: number })
  readonly retryAfter: number | null
}
export declare class PermanentError extends Error {
  constructor(message: string)
}
/** Return from a `type: batchable` step's handler: one instance of each batch_worker child per item. */
export declare class Batches {
  constructor(items: Json[], options?: { results?: unknown })
  readonly items: Json[]
  readonly results: unknown
  toJSON(): { $batches: Json[]; results?: unknown }
}
/**
 * Return from a handler to run another task for this step: the step is `waiting` until it
 * finishes, then completes with `{task_id, status: 'complete', results: {step: results}}`, or
 * fails permanently with the child's error.
 */
export declare class ChildTask {
  constructor(name: string, options?: { context?: { [key: string]: Json }, namespace?: string, version?: string })
  readonly name: string
  readonly context: { [key: string]: Json } | null
  readonly namespace: string | null
  readonly version: string | null
  toJSON(): { $child_task: { name: string, context?: { [key: string]: Json }, namespace?: string, version?: string } }
}
/** Return from a handler to leave the step `waiting` until a signal, a completion from outside or the timeout. */
export declare class Wait {
  constructor(options?: { signal?: string, correlationId?: string, timeout?: number, results?: Json })
  readonly signal: string | null
  readonly correlationId: string | null
  readonly timeout: number | null
  readonly results: Json
  toJSON(): { $wait: { signal?: string, correlation_id?: string, timeout?: number, results?: Json } }
}
/** Return from a handler to run the step again after `after` seconds without counting an attempt. */
export declare class Reschedule {
  constructor(options: { after: number })
  readonly after: number
  toJSON(): { $reschedule: { after: number } }
}
/** Return from a `type: decision` step's handler: which of its children are created. */
export declare class Decision {
  constructor(steps: string | string[], options?: { results?: unknown })
  readonly steps: string[]
  readonly results: unknown
  toJSON(): { $decision: string[]; results?: unknown }
}

export interface BulkFilter {
  status?: TaskState
  name?: string
  namespace?: string
  since?: Date | string
}

export interface ScheduleOptions {
  context?: { [key: string]: Json } | null
  namespace?: string | null
  version?: string | null
  /** An IANA zone name (default UTC). */
  timezone?: string
  overlap?: 'skip' | 'allow' | 'cancel_previous'
  catchUp?: 'none' | 'latest' | 'all'
}

export interface Schedule {
  name: string
  template: string
  namespace: string
  version: string | null
  cron: string
  timezone: string
  context: { [key: string]: Json }
  overlap: 'skip' | 'allow' | 'cancel_previous'
  catch_up: 'none' | 'latest' | 'all'
  paused: boolean
  /** RFC 3339; null when paused or when the pattern has no further tick. */
  next_run_at: string | null
  last_run_at: string | null
  last_task_id: number | null
  fired: number
  skipped: number
  origin: string
  created_at: string
  updated_at: string
}
