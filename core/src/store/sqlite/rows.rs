//! Rows of the boundary ([`crate::store::rows`]) decoded from rusqlite rows by column name,
//! from the column lists of [`crate::store::sql`], and the small helpers the statements share.

use rusqlite::types::Value as Sql;
use rusqlite::{Connection, Row};

use crate::error::Result;
use crate::state::{StepState, TaskState};
use crate::store::rows::*;

/// Rows per multi-row statement (SQLite allows 32,766 bound parameters).
pub(super) const CHUNK: usize = 500;

fn conversion(e: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
}

pub(super) fn task_state(s: &str) -> rusqlite::Result<TaskState> {
    s.parse().map_err(conversion)
}

pub(super) fn step_state(s: &str) -> rusqlite::Result<StepState> {
    s.parse().map_err(conversion)
}

pub(super) fn task_row(r: &Row) -> rusqlite::Result<TaskRow> {
    Ok(TaskRow {
        task_id: r.get("task_id")?,
        named_task_id: r.get("named_task_id")?,
        state: task_state(&r.get::<_, String>("state")?)?,
        steps_total: r.get("steps_total")?,
        steps_done: r.get("steps_done")?,
        steps_blocked: r.get("steps_blocked")?,
        version: r.get("version")?,
    })
}

pub(super) fn task_detail(r: &Row) -> rusqlite::Result<TaskDetail> {
    Ok(TaskDetail {
        row: task_row(r)?,
        context: r.get("context")?,
        initiator: r.get("initiator")?,
        source_system: r.get("source_system")?,
        reason: r.get("reason")?,
        tags: r.get("tags")?,
        bypass_steps: r.get("bypass_steps")?,
        idempotency_key: r.get("idempotency_key")?,
        requested_at: r.get("requested_at")?,
        created_at: r.get("created_at")?,
        updated_at: r.get("updated_at")?,
        completed_at: r.get("completed_at")?,
        namespace: r.get("namespace")?,
        name: r.get("name")?,
        template_version: r.get("template_version")?,
    })
}

pub(super) fn step_row(r: &Row) -> rusqlite::Result<StepRow> {
    Ok(StepRow {
        step_id: r.get("step_id")?,
        task_id: r.get("task_id")?,
        position: r.get("position")?,
        name: r.get("name")?,
        handler: r.get("handler")?,
        state: step_state(&r.get::<_, String>("state")?)?,
        attempts: r.get("attempts")?,
        retry_limit: r.get("retry_limit")?,
        remaining_parents: r.get("remaining_parents")?,
        ready_at: r.get("ready_at")?,
        parked_ready_at: r.get("parked_ready_at")?,
        claimed_by: r.get("claimed_by")?,
        lease_expires_at: r.get("lease_expires_at")?,
        results: r.get("results")?,
        error: r.get("error")?,
        last_attempted_at: r.get("last_attempted_at")?,
        processed_at: r.get("processed_at")?,
        version: r.get("version")?,
    })
}

pub(super) fn template_row(r: &Row) -> rusqlite::Result<TemplateRow> {
    Ok(TemplateRow {
        named_task_id: r.get("named_task_id")?,
        namespace: r.get("namespace")?,
        name: r.get("name")?,
        version: r.get("version")?,
        definition: r.get("definition")?,
        definition_hash: r.get("definition_hash")?,
        revision: r.get("revision")?,
        created_at: r.get("created_at")?,
    })
}

pub(super) fn analytics_row(r: &Row) -> rusqlite::Result<AnalyticsRow> {
    Ok(AnalyticsRow {
        task_id: r.get("task_id")?,
        namespace: r.get("namespace")?,
        name: r.get("name")?,
        task_state: task_state(&r.get::<_, String>("task_state")?)?,
        task_created_at: r.get("task_created_at")?,
        task_completed_at: r.get("task_completed_at")?,
        step: r.get("step")?,
        step_state: step_state(&r.get::<_, String>("step_state")?)?,
        attempts: r.get("attempts")?,
        last_attempted_at: r.get("last_attempted_at")?,
        processed_at: r.get("processed_at")?,
    })
}

pub(super) fn expired_lease(r: &Row) -> rusqlite::Result<ExpiredLease> {
    Ok(ExpiredLease {
        step_id: r.get("step_id")?,
        task_id: r.get("task_id")?,
        position: r.get("position")?,
        attempts: r.get("attempts")?,
    })
}

/// A transition row read back (`from_state`, `to_state` as the state names they hold).
pub(super) fn transition_row(r: &Row) -> rusqlite::Result<TransitionRow> {
    let from: Option<String> = r.get("from_state")?;
    Ok(TransitionRow {
        task_id: r.get("task_id")?,
        step_id: r.get("step_id")?,
        from_state: from
            .as_deref()
            .map(step_state)
            .transpose()?
            .map(StepState::as_str),
        to_state: step_state(&r.get::<_, String>("to_state")?)?.as_str(),
        metadata: r.get("metadata")?,
        sort_key: r.get("sort_key")?,
        created_at: r.get("created_at")?,
    })
}

/// Every row of `sql` with `params`, decoded by `f`.
pub(super) fn query_rows<T>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnMut(&Row) -> rusqlite::Result<T>,
) -> Result<Vec<T>> {
    let mut st = c.prepare_cached(sql)?;
    let rows = st.query_map(params, f)?;
    Ok(rows.collect::<rusqlite::Result<Vec<T>>>()?)
}

/// `(?, ?, ?), (?, ?, ?)` for `rows` rows of `cols` columns.
pub(super) fn placeholders(rows: usize, cols: usize) -> String {
    let one = format!("({})", vec!["?"; cols].join(", "));
    vec![one; rows].join(", ")
}

/// `?, ?, ?` for `n` values.
pub(super) fn list(n: usize) -> String {
    vec!["?"; n].join(", ")
}

pub(super) fn opt_i64(v: Option<i64>) -> Sql {
    v.map(Sql::Integer).unwrap_or(Sql::Null)
}

pub(super) fn opt_text(v: Option<&str>) -> Sql {
    v.map(|s| Sql::Text(s.to_owned())).unwrap_or(Sql::Null)
}

pub(super) fn text(s: &str) -> Sql {
    Sql::Text(s.to_owned())
}

/// ` AND s.handler IN (...)` and its parameters.
pub(super) fn handler_filter(handlers: Option<&[String]>, params: &mut Vec<Sql>) -> String {
    match handlers {
        None => String::new(),
        Some([]) => " AND 0".to_owned(),
        Some(hs) => {
            params.extend(hs.iter().map(|h| text(h)));
            format!(" AND s.handler IN ({})", list(hs.len()))
        }
    }
}

/// Rewrites plain `?` placeholders as `?N, ?N+1, ...` starting at `first` (for statements that
/// also use a numbered `?1`).
pub(super) fn number_placeholders(sql: &str, first: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 64);
    let mut n = first;
    let mut chars = sql.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch == '?' && !chars.peek().is_some_and(|c| c.is_ascii_digit()) {
            out.push_str(&format!("?{n}"));
            n += 1;
        } else {
            out.push(ch);
        }
    }
    out
}
