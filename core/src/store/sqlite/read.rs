//! The reads of the SQLite store ([`Store`]), each on a read connection of its own (WAL: they
//! see committed data and never wait for the writer), and the two writes that need no
//! transaction of the engine's (heartbeats).

use async_trait::async_trait;
use rusqlite::types::Value as Sql;
use rusqlite::{params, params_from_iter, OptionalExtension};

use super::rows::*;
use super::{Durability, SqliteStore};
use crate::error::Result;
use crate::state::TaskState;
use crate::store::sql::{self, detail_cols, task_join};
use crate::store::*;

/// A statement of [`sql`] with SQLite's placeholders, rewritten once.
macro_rules! lite {
    ($name:ident) => {{
        static S: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| sql::sqlite_params(sql::$name));
        S.as_str()
    }};
}
pub(super) use lite;

/// The WHERE clause of a task listing and its parameters.
fn task_filter(f: &TaskFilter, ids: IdRange) -> (String, Vec<Sql>) {
    let mut sql = String::from("1 = 1");
    let mut p: Vec<Sql> = Vec::new();
    if let Some(s) = f.state {
        sql.push_str(" AND t.state = ?");
        p.push(text(s.as_str()));
    }
    if let Some(n) = &f.name {
        sql.push_str(" AND n.name = ?");
        p.push(text(n));
    }
    if let Some(ns) = &f.namespace {
        sql.push_str(" AND n.namespace = ?");
        p.push(text(ns));
    }
    if let Some(id) = ids.from {
        sql.push_str(" AND t.task_id >= ?");
        p.push(Sql::Integer(id));
    }
    if let Some(id) = ids.until {
        sql.push_str(" AND t.task_id < ?");
        p.push(Sql::Integer(id));
    }
    (sql, p)
}

fn next_times_sql(handlers: Option<&[String]>) -> (String, Vec<Sql>) {
    let mut p = Vec::new();
    let filter = handler_filter(handlers, &mut p);
    (
        format!(
            "SELECT (SELECT MIN(s.ready_at) FROM steps AS s WHERE s.ready_at IS NOT NULL{filter}), \
                    (SELECT MIN(lease_expires_at) FROM steps WHERE state = 'in_progress')"
        ),
        p,
    )
}

const TRANSITIONS: &str =
    "SELECT task_id, NULL AS step_id, from_state, to_state, metadata, sort_key, created_at, id, 0 AS kind \
       FROM task_transitions WHERE task_id = ?1 \
     UNION ALL \
     SELECT task_id, step_id, from_state, to_state, metadata, sort_key, created_at, id, 1 AS kind \
       FROM step_transitions WHERE task_id = ?1 \
     ORDER BY created_at, kind, sort_key, id";

#[async_trait]
impl Store for SqliteStore {
    async fn begin(&self, durable: bool) -> Result<Box<dyn StoreTx>> {
        Ok(Box::new(self.begin_tx(durable).await?))
    }

    async fn templates(&self) -> Result<Vec<TemplateRow>> {
        self.read(|c| query_all(c, sql::TEMPLATES, [])).await
    }

    async fn schedules(&self) -> Result<Vec<ScheduleRow>> {
        self.read(|c| query_all(c, sql::SCHEDULES, [])).await
    }

    async fn schedule(&self, name: &str) -> Result<Option<ScheduleRow>> {
        let name = name.to_owned();
        self.read(move |c| query_opt(c, lite!(SCHEDULE), [name]))
            .await
    }

    async fn task_deadline(&self, task_id: i64) -> Result<Option<i64>> {
        self.read(move |c| {
            Ok(c.prepare_cached(lite!(TASK_DEADLINE))?
                .query_row([task_id], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn task_id_by_key(&self, key: &str) -> Result<Option<i64>> {
        let key = key.to_owned();
        self.read(move |c| {
            Ok(c.prepare_cached(lite!(TASK_BY_IDEMPOTENCY_KEY))?
                .query_row([key], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn next_schedule_at(&self) -> Result<Option<i64>> {
        self.read(|c| {
            Ok(c.prepare_cached(sql::NEXT_SCHEDULE_AT)?
                .query_row([], |r| r.get(0))?)
        })
        .await
    }

    async fn event_definitions(&self) -> Result<Vec<EventDefinitionRow>> {
        self.read(|c| query_all(c, sql::EVENT_DEFINITIONS, []))
            .await
    }

    async fn template_by_id(&self, id: i64) -> Result<Option<TemplateRow>> {
        self.read(|c| query_opt(c, lite!(TEMPLATE_BY_ID), [id]))
            .await
    }

    async fn task(&self, task_id: i64) -> Result<Option<TaskDetail>> {
        self.read(|c| query_opt(c, lite!(TASK_BY_ID), [task_id]))
            .await
    }

    async fn task_state(&self, task_id: i64) -> Result<Option<TaskState>> {
        self.read(|c| {
            Ok(c.prepare_cached(lite!(TASK_STATE))?
                .query_row([task_id], |r| task_state(&r.get::<_, String>(0)?))
                .optional()?)
        })
        .await
    }

    async fn steps(&self, task_id: i64) -> Result<Vec<StepRow>> {
        self.read(|c| query_all(c, lite!(STEPS_OF_TASK), [task_id]))
            .await
    }

    async fn decisions(&self, task_id: i64) -> Result<Vec<DecisionRow>> {
        self.read(move |c| decisions(c, task_id)).await
    }

    async fn child_tasks(&self, task_id: i64) -> Result<Vec<ChildLink>> {
        self.read(move |c| child_tasks(c, task_id)).await
    }

    async fn waits(&self, task_id: i64) -> Result<Vec<WaitRow>> {
        self.read(move |c| waits(c, lite!(WAITS_OF_TASK), rusqlite::params![task_id]))
            .await
    }

    async fn finished_children_waited_for(&self, limit: i64) -> Result<Vec<i64>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(lite!(FINISHED_CHILDREN_WAITED_FOR))?;
            let rows = st.query_map([limit], |r| r.get(0))?;
            Ok(rows.collect::<std::result::Result<_, _>>()?)
        })
        .await
    }

    async fn list_tasks(&self, f: &TaskFilter, ids: IdRange) -> Result<Vec<TaskDetail>> {
        let (filter, mut p) = task_filter(f, ids);
        let order = if f.oldest_first { "ASC" } else { "DESC" };
        let sql = format!(
            concat!(
                "SELECT ",
                detail_cols!(),
                task_join!(),
                " WHERE {} ORDER BY t.task_id {} LIMIT ? OFFSET ?"
            ),
            filter, order
        );
        p.push(Sql::Integer(f.limit.unwrap_or(100)));
        p.push(Sql::Integer(f.offset.unwrap_or(0)));
        self.read(|c| query_all(c, &sql, params_from_iter(p))).await
    }

    async fn count_tasks(&self, f: &TaskFilter, ids: IdRange) -> Result<i64> {
        let (filter, p) = task_filter(f, ids);
        let sql = format!(
            concat!("SELECT count(*)", task_join!(), " WHERE {}"),
            filter
        );
        self.read(|c| {
            Ok(c.prepare_cached(&sql)?
                .query_row(params_from_iter(p), |r| r.get(0))?)
        })
        .await
    }

    async fn task_at_or_after(&self, id: i64) -> Result<Option<(i64, i64)>> {
        self.read(|c| {
            Ok(c.prepare_cached(lite!(TASK_AT_OR_AFTER))?
                .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?)
        })
        .await
    }

    async fn max_task_id(&self) -> Result<Option<i64>> {
        self.read(|c| {
            Ok(c.prepare_cached(sql::MAX_TASK_ID)?
                .query_row([], |r| r.get(0))?)
        })
        .await
    }

    async fn analytics_rows(&self, from_id: i64, limit: i64) -> Result<Vec<AnalyticsRow>> {
        self.read(|c| query_all(c, lite!(ANALYTICS), params![from_id, limit]))
            .await
    }

    async fn state_counts(&self, now: i64) -> Result<StateCounts> {
        let rows = self
            .read(|c| {
                query_rows(c, lite!(STATE_COUNTS), params![now], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
            })
            .await?;
        Ok(StateCounts::from_rows(rows))
    }

    async fn next_times(&self, handlers: Option<&[String]>) -> Result<NextTimes> {
        let (sql, p) = next_times_sql(handlers);
        self.read(|c| {
            Ok(c.prepare_cached(&sql)?
                .query_row(params_from_iter(p), |r| {
                    Ok(NextTimes {
                        ready_at: r.get(0)?,
                        lease_expiry: r.get(1)?,
                    })
                })?)
        })
        .await
    }

    async fn parent_results(&self, keys: &[StepKey]) -> Result<Vec<ParentResult>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.read(|c| parent_results(c, keys)).await
    }

    async fn extend_leases(&self, p: &LeaseExtension) -> Result<u64> {
        // A heartbeat may be lost on power failure without harm (the lease simply runs out):
        // no fsync, and no transaction of its own beyond the statement's.
        let mut w = self.write.lock().await;
        if w.sync != Durability::Off {
            w.c.pragma_update(None, "synchronous", Durability::Off.pragma())?;
            w.sync = Durability::Off;
        }
        let mut n = 0;
        for chunk in p.steps.chunks(CHUNK) {
            let sql = format!(
                "UPDATE steps SET lease_expires_at = ?, updated_at = ? FROM (VALUES {}) AS v \
                 WHERE steps.step_id = v.column1 AND steps.attempts = v.column2 AND steps.state = 'in_progress'",
                placeholders(chunk.len(), 2)
            );
            let mut params = vec![Sql::Integer(p.until), Sql::Integer(p.now)];
            params.extend(
                chunk
                    .iter()
                    .flat_map(|(s, a)| [Sql::Integer(*s), Sql::Integer(*a)]),
            );
            n +=
                w.c.prepare_cached(&sql)?
                    .execute(params_from_iter(params))? as u64;
        }
        Ok(n)
    }

    async fn durability(&self) -> Result<DurabilityReport> {
        let journal: String = self
            .read(|c| Ok(c.pragma_query_value(None, "journal_mode", |r| r.get(0))?))
            .await?;
        let durable = matches!(self.durability, Durability::Full);
        Ok(DurabilityReport {
            description: format!(
                "SQLite journal_mode={journal} synchronous={}{}",
                self.durability.pragma(),
                if durable {
                    " (commits that record outcomes or create tasks are fsynced; claim-only commits are not)"
                } else {
                    ""
                }
            ),
            durable,
        })
    }

    async fn transitions(&self, task_id: i64) -> Result<Vec<TransitionRow>> {
        self.read(|c| query_all(c, TRANSITIONS, [task_id])).await
    }
}

/// The results of steps by (task, position), on any connection.
pub(super) fn decisions(c: &rusqlite::Connection, task_id: i64) -> Result<Vec<DecisionRow>> {
    let mut st = c.prepare_cached(lite!(DECISIONS_OF_TASK))?;
    let rows = st.query_map([task_id], |r| {
        Ok(DecisionRow {
            step_id: r.get(0)?,
            chosen: r.get(1)?,
        })
    })?;
    Ok(rows.collect::<std::result::Result<_, _>>()?)
}

/// Wait rows ([`crate::store::sql::WAITS_OF_TASK`] and its kin) for `params`.
pub(super) fn waits(
    c: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<WaitRow>> {
    let mut st = c.prepare_cached(sql)?;
    let rows = st.query_map(params, |r| {
        Ok(WaitRow {
            step_id: r.get(0)?,
            task_id: r.get(1)?,
            position: r.get(2)?,
            attempt: r.get(3)?,
            signal: r.get(4)?,
            correlation_id: r.get(5)?,
            deadline_at: r.get(6)?,
            created_at: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<std::result::Result<_, _>>()?)
}

pub(super) fn child_tasks(c: &rusqlite::Connection, task_id: i64) -> Result<Vec<ChildLink>> {
    let mut st = c.prepare_cached(lite!(CHILD_TASKS))?;
    let rows = st.query_map([task_id], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (task_id, parent_step_id, state) = row?;
        out.push(ChildLink {
            task_id,
            parent_step_id,
            state: state.parse().map_err(crate::error::Error::Corrupt)?,
        });
    }
    Ok(out)
}

pub(super) fn parent_results(
    c: &rusqlite::Connection,
    keys: &[StepKey],
) -> Result<Vec<ParentResult>> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(CHUNK) {
        // CROSS JOIN fixes the join order (SQLite's planner, without statistics, would scan).
        let sql = format!(
            "SELECT s.task_id, s.position, s.name, s.results, s.batch_index, s.error FROM (VALUES {}) AS v \
             CROSS JOIN steps AS s ON s.task_id = v.column1 AND s.position = v.column2",
            placeholders(chunk.len(), 2)
        );
        let p = chunk
            .iter()
            .flat_map(|k| [Sql::Integer(k.task_id), Sql::Integer(k.position as i64)]);
        out.extend(query_all::<ParentResult>(c, &sql, params_from_iter(p))?);
    }
    Ok(out)
}
