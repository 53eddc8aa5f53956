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

/// A row struct decoded from the columns it names. The names are resolved to the statement's
/// column indexes once per execution ([`query_all`], [`query_opt`]): rusqlite's by-name `get`
/// scans the statement's column names at every call (3 % of a W1 cycle's CPU). `decode` reads
/// `ix[k]` for `COLUMNS[k]`.
pub(super) trait Decode: Sized {
    const COLUMNS: &'static [&'static str];
    fn decode(r: &Row, ix: &[usize]) -> rusqlite::Result<Self>;
}

/// The indexes of `names` among the statement's columns.
fn indexes(st: &rusqlite::Statement, names: &[&str]) -> rusqlite::Result<Vec<usize>> {
    names.iter().map(|n| st.column_index(n)).collect()
}

/// Every row of `sql`, decoded as `T`.
pub(super) fn query_all<T: Decode>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<T>> {
    let mut st = c.prepare_cached(sql)?;
    let ix = indexes(&st, T::COLUMNS)?;
    let rows = st.query_map(params, |r| T::decode(r, &ix))?;
    Ok(rows.collect::<rusqlite::Result<Vec<T>>>()?)
}

/// The first row of `sql`, decoded as `T`, if there is one.
pub(super) fn query_opt<T: Decode>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Option<T>> {
    let mut st = c.prepare_cached(sql)?;
    let ix = indexes(&st, T::COLUMNS)?;
    let mut rows = st.query(params)?;
    Ok(rows.next()?.map(|r| T::decode(r, &ix)).transpose()?)
}

impl Decode for TaskRow {
    const COLUMNS: &'static [&'static str] = &[
        "task_id",
        "named_task_id",
        "state",
        "steps_total",
        "steps_done",
        "steps_blocked",
        "version",
        "paused",
    ];
    fn decode(r: &Row, ix: &[usize]) -> rusqlite::Result<TaskRow> {
        Ok(TaskRow {
            task_id: r.get(ix[0])?,
            named_task_id: r.get(ix[1])?,
            state: task_state(&r.get::<_, String>(ix[2])?)?,
            steps_total: r.get(ix[3])?,
            steps_done: r.get(ix[4])?,
            steps_blocked: r.get(ix[5])?,
            version: r.get(ix[6])?,
            paused: r.get(ix[7])?,
        })
    }
}

impl Decode for TaskDetail {
    /// [`TaskRow`]'s, then these.
    const COLUMNS: &'static [&'static str] = &[
        "task_id",
        "named_task_id",
        "state",
        "steps_total",
        "steps_done",
        "steps_blocked",
        "version",
        "paused",
        "context",
        "initiator",
        "source_system",
        "reason",
        "tags",
        "bypass_steps",
        "idempotency_key",
        "requested_at",
        "created_at",
        "updated_at",
        "completed_at",
        "namespace",
        "name",
        "template_version",
        "parent_task_id",
        "parent_step_id",
        "parent_step",
    ];
    fn decode(r: &Row, ix: &[usize]) -> rusqlite::Result<TaskDetail> {
        Ok(TaskDetail {
            row: TaskRow::decode(r, &ix[..8])?,
            context: r.get(ix[8])?,
            initiator: r.get(ix[9])?,
            source_system: r.get(ix[10])?,
            reason: r.get(ix[11])?,
            tags: r.get(ix[12])?,
            bypass_steps: r.get(ix[13])?,
            idempotency_key: r.get(ix[14])?,
            requested_at: r.get(ix[15])?,
            created_at: r.get(ix[16])?,
            updated_at: r.get(ix[17])?,
            completed_at: r.get(ix[18])?,
            namespace: r.get(ix[19])?,
            name: r.get(ix[20])?,
            template_version: r.get(ix[21])?,
            parent_task_id: r.get(ix[22])?,
            parent_step_id: r.get(ix[23])?,
            parent_step: r.get(ix[24])?,
        })
    }
}

impl Decode for StepRow {
    const COLUMNS: &'static [&'static str] = &[
        "step_id",
        "task_id",
        "position",
        "name",
        "handler",
        "state",
        "attempts",
        "retry_limit",
        "remaining_parents",
        "ready_at",
        "parked_ready_at",
        "claimed_by",
        "lease_expires_at",
        "results",
        "error",
        "last_attempted_at",
        "processed_at",
        "version",
    ];
    fn decode(r: &Row, ix: &[usize]) -> rusqlite::Result<StepRow> {
        Ok(StepRow {
            step_id: r.get(ix[0])?,
            task_id: r.get(ix[1])?,
            position: r.get(ix[2])?,
            name: r.get(ix[3])?,
            handler: r.get(ix[4])?,
            state: step_state(&r.get::<_, String>(ix[5])?)?,
            attempts: r.get(ix[6])?,
            retry_limit: r.get(ix[7])?,
            remaining_parents: r.get(ix[8])?,
            ready_at: r.get(ix[9])?,
            parked_ready_at: r.get(ix[10])?,
            claimed_by: r.get(ix[11])?,
            lease_expires_at: r.get(ix[12])?,
            results: r.get(ix[13])?,
            error: r.get(ix[14])?,
            last_attempted_at: r.get(ix[15])?,
            processed_at: r.get(ix[16])?,
            version: r.get(ix[17])?,
        })
    }
}

impl Decode for TemplateRow {
    const COLUMNS: &'static [&'static str] = &[
        "named_task_id",
        "namespace",
        "name",
        "version",
        "definition",
        "definition_hash",
        "revision",
        "created_at",
    ];
    fn decode(r: &Row, ix: &[usize]) -> rusqlite::Result<TemplateRow> {
        Ok(TemplateRow {
            named_task_id: r.get(ix[0])?,
            namespace: r.get(ix[1])?,
            name: r.get(ix[2])?,
            version: r.get(ix[3])?,
            definition: r.get(ix[4])?,
            definition_hash: r.get(ix[5])?,
            revision: r.get(ix[6])?,
            created_at: r.get(ix[7])?,
        })
    }
}

impl Decode for EventDefinitionRow {
    const COLUMNS: &'static [&'static str] = &["name", "definition", "registered_at"];
    fn decode(r: &Row, ix: &[usize]) -> rusqlite::Result<EventDefinitionRow> {
        Ok(EventDefinitionRow {
            name: r.get(ix[0])?,
            definition: r.get(ix[1])?,
            registered_at: r.get(ix[2])?,
        })
    }
}

impl Decode for AnalyticsRow {
    const COLUMNS: &'static [&'static str] = &[
        "task_id",
        "namespace",
        "name",
        "task_state",
        "task_created_at",
        "task_completed_at",
        "step",
        "step_state",
        "attempts",
        "last_attempted_at",
        "processed_at",
    ];
    fn decode(r: &Row, ix: &[usize]) -> rusqlite::Result<AnalyticsRow> {
        Ok(AnalyticsRow {
            task_id: r.get(ix[0])?,
            namespace: r.get(ix[1])?,
            name: r.get(ix[2])?,
            task_state: task_state(&r.get::<_, String>(ix[3])?)?,
            task_created_at: r.get(ix[4])?,
            task_completed_at: r.get(ix[5])?,
            step: r.get(ix[6])?,
            step_state: step_state(&r.get::<_, String>(ix[7])?)?,
            attempts: r.get(ix[8])?,
            last_attempted_at: r.get(ix[9])?,
            processed_at: r.get(ix[10])?,
        })
    }
}

impl Decode for ScheduleRow {
    const COLUMNS: &'static [&'static str] = &[
        "name",
        "namespace",
        "template",
        "version",
        "cron",
        "timezone",
        "context",
        "overlap",
        "catch_up",
        "paused",
        "next_run_at",
        "last_tick_at",
        "fired",
        "skipped",
        "origin",
        "created_at",
        "updated_at",
    ];
    fn decode(r: &Row, ix: &[usize]) -> rusqlite::Result<ScheduleRow> {
        Ok(ScheduleRow {
            name: r.get(ix[0])?,
            namespace: r.get(ix[1])?,
            template: r.get(ix[2])?,
            version: r.get(ix[3])?,
            cron: r.get(ix[4])?,
            timezone: r.get(ix[5])?,
            context: r.get(ix[6])?,
            overlap: r.get(ix[7])?,
            catch_up: r.get(ix[8])?,
            paused: r.get(ix[9])?,
            next_run_at: r.get(ix[10])?,
            last_tick_at: r.get(ix[11])?,
            fired: r.get(ix[12])?,
            skipped: r.get(ix[13])?,
            origin: r.get(ix[14])?,
            created_at: r.get(ix[15])?,
            updated_at: r.get(ix[16])?,
        })
    }
}

impl Decode for ExpiredLease {
    const COLUMNS: &'static [&'static str] = &["step_id", "task_id", "position", "attempts"];
    fn decode(r: &Row, ix: &[usize]) -> rusqlite::Result<ExpiredLease> {
        Ok(ExpiredLease {
            step_id: r.get(ix[0])?,
            task_id: r.get(ix[1])?,
            position: r.get(ix[2])?,
            attempts: r.get(ix[3])?,
        })
    }
}

impl Decode for StepLock {
    const COLUMNS: &'static [&'static str] = &[
        "step_id",
        "task_id",
        "state",
        "attempts",
        "version",
        "retry_limit",
    ];
    fn decode(r: &Row, ix: &[usize]) -> rusqlite::Result<StepLock> {
        Ok(StepLock {
            step_id: r.get(ix[0])?,
            task_id: r.get(ix[1])?,
            state: step_state(&r.get::<_, String>(ix[2])?)?,
            attempts: r.get(ix[3])?,
            version: r.get(ix[4])?,
            retry_limit: r.get(ix[5])?,
        })
    }
}

impl Decode for ParentResult {
    const COLUMNS: &'static [&'static str] = &[
        "task_id",
        "position",
        "name",
        "results",
        "batch_index",
        "error",
    ];
    fn decode(r: &Row, ix: &[usize]) -> rusqlite::Result<ParentResult> {
        Ok(ParentResult {
            task_id: r.get(ix[0])?,
            position: r.get(ix[1])?,
            name: r.get(ix[2])?,
            results: r.get(ix[3])?,
            batch_index: r.get(ix[4])?,
            error: r.get(ix[5])?,
        })
    }
}

impl Decode for TransitionRow {
    /// `from_state`, `to_state` hold state names.
    const COLUMNS: &'static [&'static str] = &[
        "task_id",
        "step_id",
        "from_state",
        "to_state",
        "metadata",
        "sort_key",
        "created_at",
    ];
    fn decode(r: &Row, ix: &[usize]) -> rusqlite::Result<TransitionRow> {
        let from: Option<String> = r.get(ix[2])?;
        Ok(TransitionRow {
            task_id: r.get(ix[0])?,
            step_id: r.get(ix[1])?,
            from_state: from
                .as_deref()
                .map(step_state)
                .transpose()?
                .map(StepState::as_str),
            to_state: step_state(&r.get::<_, String>(ix[3])?)?.as_str(),
            metadata: r.get(ix[4])?,
            sort_key: r.get(ix[5])?,
            created_at: r.get(ix[6])?,
        })
    }
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
