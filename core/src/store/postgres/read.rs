//! The reads of the PostgreSQL store ([`Store`]): those on a worker's or waiter's hot path on
//! a kept connection ([`super::conns`]), the rest on the pool.

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use sqlx::Row;

use super::wire::*;
use super::PgStore;
use crate::error::{Error, Result};
use crate::state::{StepState, TaskState};
use crate::store::sql::{self, detail_cols, task_join};
use crate::store::*;

/// The WHERE clause of a task listing: `$1` state, `$2` name, `$3` namespace (NULL: any),
/// `$6`..`$7` the id range.
macro_rules! task_filter {
    () => {
        "($1::text IS NULL OR t.state = $1) AND ($2::text IS NULL OR n.name = $2) \
         AND ($3::text IS NULL OR n.namespace = $3) \
         AND ($6::bigint IS NULL OR t.task_id >= $6) AND ($7::bigint IS NULL OR t.task_id < $7)"
    };
}

const LIST_TASKS_NEWEST: &str = concat!(
    "SELECT ",
    detail_cols!(),
    task_join!(),
    " WHERE ",
    task_filter!(),
    " ORDER BY t.task_id DESC LIMIT $4 OFFSET $5"
);
const LIST_TASKS_OLDEST: &str = concat!(
    "SELECT ",
    detail_cols!(),
    task_join!(),
    " WHERE ",
    task_filter!(),
    " ORDER BY t.task_id ASC LIMIT $4 OFFSET $5"
);
const COUNT_TASKS: &str = concat!(
    "SELECT count(*)",
    task_join!(),
    " WHERE $4::bigint IS NULL AND $5::bigint IS NULL AND ",
    task_filter!()
);

/// The task and, once it is in one of the states `$2`, its steps (as `tasker_step_v1`
/// records): what a waiter reads at each wake-up, in one statement.
const TASK_IF_FINISHED: &str = concat!(
    "SELECT ", detail_cols!(),
    ", CASE WHEN t.state = ANY($2) THEN ARRAY(SELECT ROW(s.step_id, s.task_id, s.position, s.name, \
       s.handler, s.state, s.attempts, s.retry_limit, s.remaining_parents, s.ready_at, \
       s.parked_ready_at, s.claimed_by, s.lease_expires_at, s.results::text, s.error::text, \
       s.last_attempted_at, s.processed_at, s.version)::tasker_step_v1 \
       FROM steps s WHERE s.task_id = t.task_id ORDER BY s.position, s.batch_index) END AS steps",
    task_join!(), " WHERE t.task_id = $1"
);

const NEXT_TIMES: &str =
    "SELECT (SELECT MIN(s.ready_at) FROM steps s WHERE s.ready_at IS NOT NULL \
       AND ($1::text[] IS NULL OR s.handler = ANY($1))) AS ready_at, \
     (SELECT MIN(lease_expires_at) FROM steps WHERE state = 'in_progress') AS lease_expiry";

const PARENT_RESULTS: &str = "SELECT s.task_id, s.position, s.name, s.results::text AS results, \
       s.batch_index, s.error::text AS error \
     FROM UNNEST($1::bigint[], $2::bigint[]) AS v(task_id, position) \
     JOIN steps s ON s.task_id = v.task_id AND s.position = v.position";

const EXTEND_LEASES: &str = "UPDATE steps s SET lease_expires_at = $1, updated_at = $2 \
     FROM UNNEST($3::bigint[], $4::bigint[]) AS v(step_id, attempts) \
     WHERE s.step_id = v.step_id AND s.attempts = v.attempts AND s.state = 'in_progress' \
       AND s.step_id = ANY($3)";

const TRANSITIONS: &str = "SELECT task_id, NULL::bigint AS step_id, from_state, to_state, metadata::text AS metadata, \
       sort_key, created_at, id, 0 AS kind \
       FROM task_transitions WHERE task_id = $1 \
     UNION ALL \
     SELECT task_id, step_id, from_state, to_state, metadata::text, sort_key, created_at, id, 1 AS kind \
       FROM step_transitions WHERE step_id IN (SELECT step_id FROM steps WHERE task_id = $1) \
     ORDER BY created_at, kind, sort_key, id";

/// The states [`TaskState::is_terminal`] names: a waiter's task is finished in these.
static TERMINAL_STATES: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    TaskState::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .map(|s| s.as_str())
        .collect()
});

#[derive(sqlx::FromRow)]
struct PgFinished {
    #[sqlx(flatten)]
    task: PgTaskDetail,
    steps: Option<Vec<PgStep>>,
}

fn state_name(s: &str) -> Result<&'static str> {
    Ok(s.parse::<StepState>().map_err(Error::Corrupt)?.as_str())
}

#[async_trait]
impl Store for PgStore {
    async fn begin(&self, durable: bool) -> Result<Box<dyn StoreTx>> {
        Ok(Box::new(self.begin_tx(durable).await?))
    }

    fn executes_plans(&self) -> bool {
        true
    }

    fn parallel_writers(&self) -> bool {
        true
    }

    async fn execute_plan(
        &self,
        plan: &Plan,
        claim: Option<&ClaimSpec<'_>>,
    ) -> Result<PlanOutcome> {
        if !plan.decisions.is_empty() {
            return Err(Error::Internal(
                "a plan with decisions is applied in a transaction, not on its own".into(),
            ));
        }
        let mut conn = self.conns.get().await?;
        self.count();
        let out = super::apply::apply(&mut conn, &self.channel, plan, claim).await;
        // A refused plan raised inside the statement: the connection is idle again.
        if matches!(out, Ok(_) | Err(Error::PlanStale | Error::Conflict(_))) {
            self.conns.put(conn);
        }
        out
    }

    fn listen(&self, wake: Wakeups) -> Option<tokio::task::JoinHandle<()>> {
        Some(super::listen::listen(
            self.pool.clone(),
            self.own_backends.clone(),
            self.channel.clone(),
            wake,
        ))
    }

    fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// Opens the connections side by side and has each run an empty plan and an empty claim:
    /// the functions are compiled and the composite types known on each. (A worker's second
    /// lane otherwise paid both, ~20 ms, in its first cycle, while the first lane took every
    /// chain of W4; a chain stays with the lane that holds it.)
    async fn warm(&self, connections: usize) -> Result<()> {
        let n = connections.min(self.conns.keep);
        let warm_one = || async {
            let mut conn = self.conns.pool.acquire().await?;
            super::apply::apply(&mut conn, &self.channel, &Plan::new(0, false), None).await?;
            sqlx::raw_sql(super::apply::WARM_CLAIM)
                .execute(&mut *conn)
                .await?;
            Ok::<_, Error>(conn)
        };
        let conns = futures_util::future::try_join_all((0..n).map(|_| warm_one())).await?;
        for c in conns {
            self.conns.put(c);
        }
        Ok(())
    }

    async fn templates(&self) -> Result<Vec<TemplateRow>> {
        self.count();
        let rows: Vec<PgTemplate> = sqlx::query_as(sql::TEMPLATES).fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(PgTemplate::into_row).collect())
    }

    async fn schedules(&self) -> Result<Vec<ScheduleRow>> {
        self.count();
        let rows: Vec<PgSchedule> = sqlx::query_as(sql::SCHEDULES).fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(PgSchedule::into_row).collect())
    }

    async fn schedule(&self, name: &str) -> Result<Option<ScheduleRow>> {
        self.count();
        let row: Option<PgSchedule> = sqlx::query_as(sql::SCHEDULE)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(PgSchedule::into_row))
    }

    async fn task_deadline(&self, task_id: i64) -> Result<Option<i64>> {
        self.count();
        Ok(sqlx::query_scalar(sql::TASK_DEADLINE)
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn task_id_by_key(&self, key: &str) -> Result<Option<i64>> {
        self.count();
        Ok(sqlx::query_scalar(sql::TASK_BY_IDEMPOTENCY_KEY)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn next_schedule_at(&self) -> Result<Option<i64>> {
        self.count();
        Ok(sqlx::query_scalar(sql::NEXT_SCHEDULE_AT)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn event_definitions(&self) -> Result<Vec<EventDefinitionRow>> {
        self.count();
        let rows: Vec<PgEventDefinition> = sqlx::query_as(sql::EVENT_DEFINITIONS)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(PgEventDefinition::into_row).collect())
    }

    async fn decisions(&self, task_id: i64) -> Result<Vec<DecisionRow>> {
        self.count();
        let rows: Vec<PgDecision> = sqlx::query_as(sql::DECISIONS_OF_TASK)
            .bind(task_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(PgDecision::into_row).collect())
    }

    async fn child_tasks(&self, task_id: i64) -> Result<Vec<ChildLink>> {
        self.count();
        let rows: Vec<PgChildLink> = sqlx::query_as(sql::CHILD_TASKS)
            .bind(task_id)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(PgChildLink::into_row).collect()
    }

    async fn waits(&self, task_id: i64) -> Result<Vec<WaitRow>> {
        self.count();
        let rows: Vec<PgWait> = sqlx::query_as(sql::WAITS_OF_TASK)
            .bind(task_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(PgWait::into_row).collect())
    }

    async fn finished_children_waited_for(&self, limit: i64) -> Result<Vec<i64>> {
        self.count();
        Ok(sqlx::query_scalar(sql::FINISHED_CHILDREN_WAITED_FOR)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn template_by_id(&self, id: i64) -> Result<Option<TemplateRow>> {
        self.count();
        let row: Option<PgTemplate> = sqlx::query_as(sql::TEMPLATE_BY_ID)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(PgTemplate::into_row))
    }

    async fn task(&self, task_id: i64) -> Result<Option<TaskDetail>> {
        self.count();
        let mut conn = self.conns.get().await?;
        let row: Option<PgTaskDetail> = sqlx::query_as(sql::TASK_BY_ID)
            .bind(task_id)
            .fetch_optional(&mut *conn)
            .await?;
        self.conns.put(conn);
        row.map(PgTaskDetail::into_detail).transpose()
    }

    async fn task_if_finished(
        &self,
        task_id: i64,
    ) -> Result<Option<(TaskDetail, Option<Vec<StepRow>>)>> {
        self.count();
        let mut conn = self.conns.get().await?;
        let row: Option<PgFinished> = sqlx::query_as(TASK_IF_FINISHED)
            .bind(task_id)
            .bind(&*TERMINAL_STATES)
            .fetch_optional(&mut *conn)
            .await?;
        self.conns.put(conn);
        let Some(f) = row else { return Ok(None) };
        let steps = f
            .steps
            .map(|s| {
                s.into_iter()
                    .map(PgStep::into_row)
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?;
        Ok(Some((f.task.into_detail()?, steps)))
    }

    async fn task_state(&self, task_id: i64) -> Result<Option<TaskState>> {
        self.count();
        let mut conn = self.conns.get().await?;
        let s: Option<String> = sqlx::query_scalar(sql::TASK_STATE)
            .bind(task_id)
            .fetch_optional(&mut *conn)
            .await?;
        self.conns.put(conn);
        s.map(|s| s.parse().map_err(Error::Corrupt)).transpose()
    }

    async fn steps(&self, task_id: i64) -> Result<Vec<StepRow>> {
        self.count();
        let mut conn = self.conns.get().await?;
        let rows: Vec<PgStep> = sqlx::query_as(sql::STEPS_OF_TASK)
            .bind(task_id)
            .fetch_all(&mut *conn)
            .await?;
        self.conns.put(conn);
        rows.into_iter().map(PgStep::into_row).collect()
    }

    async fn list_tasks(&self, f: &TaskFilter, ids: IdRange) -> Result<Vec<TaskDetail>> {
        self.count();
        let sql = if f.oldest_first {
            LIST_TASKS_OLDEST
        } else {
            LIST_TASKS_NEWEST
        };
        let rows: Vec<PgTaskDetail> = sqlx::query_as(sql)
            .bind(f.state.map(|s| s.as_str()))
            .bind(f.name.as_deref())
            .bind(f.namespace.as_deref())
            .bind(f.limit.unwrap_or(100))
            .bind(f.offset.unwrap_or(0))
            .bind(ids.from)
            .bind(ids.until)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(PgTaskDetail::into_detail).collect()
    }

    async fn count_tasks(&self, f: &TaskFilter, ids: IdRange) -> Result<i64> {
        self.count();
        Ok(sqlx::query_scalar(COUNT_TASKS)
            .bind(f.state.map(|s| s.as_str()))
            .bind(f.name.as_deref())
            .bind(f.namespace.as_deref())
            .bind(None::<i64>)
            .bind(None::<i64>)
            .bind(ids.from)
            .bind(ids.until)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn task_at_or_after(&self, id: i64) -> Result<Option<(i64, i64)>> {
        self.count();
        Ok(sqlx::query_as(sql::TASK_AT_OR_AFTER)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn max_task_id(&self) -> Result<Option<i64>> {
        self.count();
        Ok(sqlx::query_scalar(sql::MAX_TASK_ID)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn analytics_rows(&self, from_id: i64, limit: i64) -> Result<Vec<AnalyticsRow>> {
        self.count();
        let rows = sqlx::query(sql::ANALYTICS)
            .bind(from_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AnalyticsRow {
                    task_id: r.try_get("task_id")?,
                    namespace: r.try_get("namespace")?,
                    name: r.try_get("name")?,
                    task_state: r
                        .try_get::<&str, _>("task_state")?
                        .parse()
                        .map_err(Error::Corrupt)?,
                    task_created_at: r.try_get("task_created_at")?,
                    task_completed_at: r.try_get("task_completed_at")?,
                    step: r.try_get("step")?,
                    step_state: r
                        .try_get::<&str, _>("step_state")?
                        .parse()
                        .map_err(Error::Corrupt)?,
                    attempts: r.try_get("attempts")?,
                    last_attempted_at: r.try_get("last_attempted_at")?,
                    processed_at: r.try_get("processed_at")?,
                })
            })
            .collect()
    }

    async fn state_counts(&self, now: i64) -> Result<StateCounts> {
        self.count();
        let rows: Vec<(String, String, i64)> = sqlx::query_as(sql::STATE_COUNTS)
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        Ok(StateCounts::from_rows(rows))
    }

    async fn next_times(&self, handlers: Option<&[String]>) -> Result<NextTimes> {
        self.count();
        let mut conn = self.conns.get().await?;
        let (ready_at, lease_expiry) = sqlx::query_as(NEXT_TIMES)
            .bind(handlers.map(<[String]>::to_vec))
            .fetch_one(&mut *conn)
            .await?;
        self.conns.put(conn);
        Ok(NextTimes {
            ready_at,
            lease_expiry,
        })
    }

    async fn parent_results(&self, keys: &[StepKey]) -> Result<Vec<ParentResult>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.count();
        let mut conn = self.conns.get().await?;
        let rows = sqlx::query(PARENT_RESULTS)
            .bind(keys.iter().map(|k| k.task_id).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.position as i64).collect::<Vec<_>>())
            .fetch_all(&mut *conn)
            .await?;
        self.conns.put(conn);
        rows.iter()
            .map(|r| {
                Ok(ParentResult {
                    task_id: r.try_get("task_id")?,
                    position: r.try_get::<i64, _>("position")? as i32,
                    name: r.try_get("name")?,
                    results: r.try_get("results")?,
                    batch_index: r.try_get("batch_index")?,
                    error: r.try_get("error")?,
                })
            })
            .collect()
    }

    async fn extend_leases(&self, p: &LeaseExtension) -> Result<u64> {
        if p.steps.is_empty() {
            return Ok(0);
        }
        self.count();
        let mut conn = self.conns.get().await?;
        let n = sqlx::query(EXTEND_LEASES)
            .bind(p.until)
            .bind(p.now)
            .bind(p.steps.iter().map(|s| s.0).collect::<Vec<_>>())
            .bind(p.steps.iter().map(|s| s.1).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?
            .rows_affected();
        self.conns.put(conn);
        Ok(n)
    }

    async fn durability(&self) -> Result<DurabilityReport> {
        let mut vals = Vec::new();
        for name in [
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "wal_sync_method",
        ] {
            let v: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {name}")))
                .fetch_one(&self.pool)
                .await?;
            vals.push(v);
        }
        let durable = vals[0] == "on" && vals[1] != "off" && vals[2] == "on";
        Ok(DurabilityReport {
            description: format!(
                "PostgreSQL fsync={} synchronous_commit={} full_page_writes={} wal_sync_method={}{}",
                vals[0],
                vals[1],
                vals[2],
                vals[3],
                if durable {
                    " (commits that record outcomes or create tasks wait for the WAL flush; claim-only commits do not)"
                } else {
                    ""
                }
            ),
            durable,
        })
    }

    async fn transitions(&self, task_id: i64) -> Result<Vec<TransitionRow>> {
        self.count();
        let rows = sqlx::query(TRANSITIONS)
            .bind(task_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let from: Option<String> = r.try_get("from_state")?;
                Ok(TransitionRow {
                    task_id: r.try_get("task_id")?,
                    step_id: r.try_get("step_id")?,
                    from_state: from.as_deref().map(state_name).transpose()?,
                    to_state: state_name(r.try_get::<&str, _>("to_state")?)?,
                    metadata: r.try_get("metadata")?,
                    sort_key: r.try_get("sort_key")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }
}
