//! Schedules: storing them, and firing their ticks from every process with no leader (the
//! rules that need no database are [`crate::schedule`]'s).
//!
//! * **Storing.** [`Engine::create_schedule`] checks the pattern, the zone and the task it
//!   would create (template, context) before storing anything; a template's `schedules:`
//!   block does the same at registration, and a registration of the template again replaces
//!   its schedules' definitions ([`Engine::sync_template_schedules`]).
//! * **Firing.** [`Engine::fire_due_schedules`] takes the due rows (on PostgreSQL `FOR UPDATE
//!   SKIP LOCKED`: a row another process is firing is left to it), and in one transaction
//!   creates the task of each tick it fires (idempotency key `schedule:NAME:TICK`: the tick is
//!   the key), applies the overlap rule against the schedule's previous task, and moves the
//!   row's next tick past now. A process that fired commits before another can read the row,
//!   and reads the moved tick; so a tick makes one task however many processes fire.
//!   [`Engine::run_schedules`] is the loop every worker (its host driver) and `tasker serve`
//!   run: it sleeps until the earliest next tick, at most 1 s (a schedule created elsewhere).
//! * A task from a schedule has `source_system: "schedule"`, `initiator` = the schedule's
//!   name and `reason` naming the tick.

use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use super::create::Prepared;
use super::tx::TxCx;
use super::{Engine, TaskRequest};
use crate::clock::format_ms;
use crate::error::{Error, Result};
use crate::schedule::{self, tick_key, tick_text, Cadence, CatchUp, Overlap, ScheduleSpec};
use crate::store::ScheduleRow;

/// At most this many due schedules are fired per transaction.
const FIRE_BATCH: i64 = 50;

/// A schedule as the API answers it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScheduleInfo {
    pub name: String,
    /// The template's name.
    pub template: String,
    pub namespace: String,
    /// `None`: the latest registered version at each tick.
    pub version: Option<String>,
    pub cron: String,
    pub timezone: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub context: Value,
    pub overlap: String,
    pub catch_up: String,
    pub paused: bool,
    /// The next tick (RFC 3339), `None` when paused or when the pattern has no further tick.
    pub next_run_at: Option<String>,
    /// The latest tick that made a task, and that task.
    pub last_run_at: Option<String>,
    pub last_task_id: Option<i64>,
    /// Ticks that made a task, and ticks passed over (overlap `skip`, missed ticks).
    pub fired: i64,
    pub skipped: i64,
    /// `api`, or the template (`namespace/name/version`) whose `schedules:` block declared it.
    pub origin: String,
    pub created_at: String,
    pub updated_at: String,
}

impl Engine {
    /// Creates a schedule. Refused, naming what is wrong, for a bad pattern, zone, policy, an
    /// unknown template or a context the template refuses; a schedule of that name existing
    /// is [`Error::Conflict`].
    pub async fn create_schedule(&self, spec: ScheduleSpec) -> Result<ScheduleInfo> {
        let row = self.schedule_row(&spec, "api").await?;
        // Schedule rows only, no plan: a store transaction, not an engine one.
        let mut tx = self.inner.store.begin(true).await?;
        if !tx.insert_schedule(&row).await? {
            return Err(Error::Conflict(format!(
                "a schedule named {:?} exists: delete it first, or pick another name",
                spec.name
            )));
        }
        tx.commit().await?;
        self.schedule_info(row).await
    }

    /// The stored row of a checked spec: its next tick from now.
    async fn schedule_row(&self, spec: &ScheduleSpec, origin: &str) -> Result<ScheduleRow> {
        let cadence = spec.check().map_err(Error::Validation)?;
        // The task it would create must be creatable: template, version, context.
        let p = self
            .prepare(self.tick_request(spec, 0))
            .await
            .map_err(|e| match e {
                Error::Validation(m) => Error::Validation(format!("schedule {:?}: {m}", spec.name)),
                Error::NotFound(m) => Error::NotFound(format!("schedule {:?}: {m}", spec.name)),
                other => other,
            })?;
        let now = self.now();
        Ok(ScheduleRow {
            name: spec.name.trim().to_owned(),
            namespace: p.template().namespace.clone(),
            template: spec.template.clone(),
            version: spec.version.clone(),
            cron: spec.cron.trim().to_owned(),
            timezone: spec.timezone.clone(),
            context: serde_json::to_string(&context_of(&spec.context)).expect("json"),
            overlap: spec.overlap.to_string(),
            catch_up: spec.catch_up.to_string(),
            paused: false,
            next_run_at: cadence.next_after(now),
            last_tick_at: None,
            fired: 0,
            skipped: 0,
            origin: origin.to_owned(),
            created_at: now,
            updated_at: now,
        })
    }

    /// The task request of one tick of a schedule.
    fn tick_request(&self, spec: &ScheduleSpec, tick: i64) -> TaskRequest {
        TaskRequest {
            name: spec.template.clone(),
            namespace: spec.namespace.clone(),
            version: spec.version.clone(),
            context: context_of(&spec.context),
            initiator: Some(spec.name.clone()),
            source_system: Some("schedule".into()),
            reason: Some(format!(
                "schedule {:?}: tick {}",
                spec.name,
                tick_text(tick)
            )),
            idempotency_key: Some(tick_key(&spec.name, tick)),
            ..Default::default()
        }
    }

    /// Every schedule, by name.
    pub async fn list_schedules(&self) -> Result<Vec<ScheduleInfo>> {
        let mut out = Vec::new();
        for row in self.inner.store.schedules().await? {
            out.push(self.schedule_info(row).await?);
        }
        Ok(out)
    }

    /// One schedule ([`Error::NotFound`] naming it).
    pub async fn get_schedule(&self, name: &str) -> Result<ScheduleInfo> {
        match self.inner.store.schedule(name).await? {
            Some(row) => self.schedule_info(row).await,
            None => Err(not_found(name)),
        }
    }

    /// Pauses a schedule: its ticks make no task until it is resumed (and are not caught up).
    pub async fn pause_schedule(&self, name: &str) -> Result<ScheduleInfo> {
        self.change_schedule(name, |row, _| row.paused = true).await
    }

    /// Resumes a paused schedule from its next tick after now.
    pub async fn resume_schedule(&self, name: &str) -> Result<ScheduleInfo> {
        self.change_schedule(name, |row, now| {
            if row.paused {
                row.paused = false;
                row.next_run_at = Cadence::parse(&row.cron, &row.timezone)
                    .ok()
                    .and_then(|c| c.next_after(now));
            }
        })
        .await
    }

    async fn change_schedule(
        &self,
        name: &str,
        change: impl FnOnce(&mut ScheduleRow, i64),
    ) -> Result<ScheduleInfo> {
        let now = self.now();
        let mut tx = self.inner.store.begin(true).await?;
        let mut row = tx
            .lock_schedule(name)
            .await?
            .ok_or_else(|| not_found(name))?;
        change(&mut row, now);
        row.updated_at = now;
        tx.update_schedule(&row).await?;
        tx.commit().await?;
        self.schedule_info(row).await
    }

    /// Deletes a schedule (its tasks stay).
    pub async fn delete_schedule(&self, name: &str) -> Result<()> {
        let mut tx = self.inner.store.begin(true).await?;
        if !tx.delete_schedule(name).await? {
            return Err(not_found(name));
        }
        tx.commit().await
    }

    /// Replaces the schedules a template's `schedules:` block declares (by name): a new one is
    /// created, a changed one keeps its counts and, with the same pattern and zone, its next
    /// tick. Schedules the template no longer declares are left alone (delete them by name).
    pub(super) async fn sync_template_schedules(
        &self,
        origin: &str,
        specs: &[ScheduleSpec],
    ) -> Result<()> {
        if specs.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(specs.len());
        for s in specs {
            rows.push(self.schedule_row(s, origin).await?);
        }
        let mut tx = self.inner.store.begin(true).await?;
        for mut row in rows {
            let db = tx.as_mut();
            match db.lock_schedule(&row.name).await? {
                None => {
                    db.insert_schedule(&row).await?;
                }
                Some(old) => {
                    if old.cron == row.cron && old.timezone == row.timezone {
                        row.next_run_at = old.next_run_at;
                    }
                    row.paused = old.paused;
                    row.last_tick_at = old.last_tick_at;
                    row.fired = old.fired;
                    row.skipped = old.skipped;
                    row.created_at = old.created_at;
                    db.update_schedule(&row).await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn schedule_info(&self, row: ScheduleRow) -> Result<ScheduleInfo> {
        let last_task_id = match row.last_tick_at {
            Some(t) => {
                self.inner
                    .store
                    .task_id_by_key(&tick_key(&row.name, t))
                    .await?
            }
            None => None,
        };
        Ok(ScheduleInfo {
            context: serde_json::from_str(&row.context).unwrap_or(Value::Null),
            next_run_at: row.next_run_at.filter(|_| !row.paused).map(format_ms),
            last_run_at: row.last_tick_at.map(format_ms),
            last_task_id,
            created_at: format_ms(row.created_at),
            updated_at: format_ms(row.updated_at),
            name: row.name,
            template: row.template,
            namespace: row.namespace,
            version: row.version,
            cron: row.cron,
            timezone: row.timezone,
            overlap: row.overlap,
            catch_up: row.catch_up,
            paused: row.paused,
            fired: row.fired,
            skipped: row.skipped,
            origin: row.origin,
        })
    }

    /// Fires the ticks that are due (see the module documentation); returns when the next
    /// tick of any schedule comes (engine clock, ms), `None` when no schedule has one.
    pub async fn fire_due_schedules(&self) -> Result<Option<i64>> {
        let now = self.now();
        match self.inner.store.next_schedule_at().await? {
            Some(t) if t <= now => {}
            other => return Ok(other),
        }
        let mut cx = TxCx::begin(self, now).await?;
        let due = cx.db()?.due_schedules(now, FIRE_BATCH).await?;
        // The previous ticks' tasks the overlap rule reads, locked first and in id order (as
        // every transaction locks tasks), not in the schedules' order.
        let mut previous = Vec::new();
        for row in due.iter().filter(|r| r.overlap != Overlap::Allow.as_str()) {
            if let Some(t) = row.last_tick_at {
                previous.extend(cx.task_by_key(&tick_key(&row.name, t)).await?);
            }
        }
        previous.sort_unstable();
        previous.dedup();
        cx.load_tasks(&previous).await?;
        let mut created = Vec::new();
        for row in due {
            created.extend(self.fire_one(&mut cx, row).await?);
        }
        let out = cx.finish(None).await?;
        for (id, p) in created {
            self.announce_created(out.task_id(id), now, p.template(), None);
        }
        self.inner.store.next_schedule_at().await
    }

    /// The ticks of one due schedule in `cx`; the new tasks (stand-in ids) with their requests.
    async fn fire_one(
        &self,
        cx: &mut TxCx<'_>,
        mut row: ScheduleRow,
    ) -> Result<Vec<(i64, Prepared)>> {
        let now = cx.now;
        let spec = match spec_of(&row) {
            Ok(s) => s,
            Err(e) => {
                // Stored by an older build or by hand: stopped, said once.
                tracing::warn!(schedule = %row.name, error = %e, "schedule cannot fire: paused");
                row.paused = true;
                row.updated_at = now;
                cx.db()?.update_schedule(&row).await?;
                return Ok(Vec::new());
            }
        };
        let cadence = spec.check().map_err(Error::Validation)?;
        let first = row.next_run_at.unwrap_or(now);
        let mut due = schedule::due(&cadence, first, now, spec.catch_up);
        if spec.overlap == Overlap::CancelPrevious && due.fire.len() > 1 {
            // Each would cancel the one before it: only the latest runs.
            let last = due.fire.pop().expect("ticks");
            due.missed += due.fire.len() as u64;
            due.fire = vec![last];
        }
        row.skipped += due.missed as i64;
        let mut made = Vec::new();
        for tick in due.fire {
            if !self
                .overlap_allows(cx, &spec, row.last_tick_at, tick)
                .await?
            {
                row.skipped += 1;
                continue;
            }
            let p = match self.prepare(self.tick_request(&spec, tick)).await {
                Ok(p) => p,
                Err(e) => {
                    // The template went away or changed its schema: the tick is passed over.
                    tracing::warn!(schedule = %row.name, tick = %tick_text(tick), error = %e, "schedule tick made no task");
                    row.skipped += 1;
                    continue;
                }
            };
            let (id, fresh, _) = cx.insert_prepared(&p, None).await?;
            row.fired += 1;
            row.last_tick_at = Some(tick);
            tracing::info!(schedule = %row.name, tick = %tick_text(tick), "schedule fired");
            if fresh {
                made.push((id, p));
            }
        }
        row.next_run_at = due.next;
        row.updated_at = now;
        cx.db()?.update_schedule(&row).await?;
        Ok(made)
    }

    /// Whether a tick may create its task, given the schedule's previous one (overlap rule);
    /// `cancel_previous` cancels it here.
    async fn overlap_allows(
        &self,
        cx: &mut TxCx<'_>,
        spec: &ScheduleSpec,
        last_tick: Option<i64>,
        tick: i64,
    ) -> Result<bool> {
        let Some(last) = last_tick.filter(|_| spec.overlap != Overlap::Allow) else {
            return Ok(true);
        };
        let Some(prev) = cx.task_by_key(&tick_key(&spec.name, last)).await? else {
            return Ok(true);
        };
        // A previous task in `error` ran to its end too: it does not hold up the schedule.
        let state = cx.task(prev).await?.state;
        if state.is_terminal() {
            return Ok(true);
        }
        match spec.overlap {
            Overlap::Skip => Ok(false),
            _ => {
                let meta = json!({"reason": "schedule_cancel_previous", "schedule": spec.name, "tick": tick_text(tick)});
                cx.cancel_tree(prev, meta).await?;
                Ok(true)
            }
        }
    }

    /// Fires due schedules until dropped: sleeps until the earliest next tick, at most 1 s
    /// (schedules created or changed by other processes are seen within it).
    pub async fn run_schedules(&self) {
        loop {
            let next = match self.fire_due_schedules().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "firing schedules failed; trying again in 1 s");
                    None
                }
            };
            let now = self.now();
            let nap = next.map_or(1000, |t| (t - now).clamp(1, 1000));
            tokio::time::sleep(Duration::from_millis(nap as u64)).await;
        }
    }
}

fn not_found(name: &str) -> Error {
    Error::NotFound(format!("no schedule named {name:?}"))
}

fn context_of(v: &Value) -> Value {
    match v {
        Value::Null => json!({}),
        other => other.clone(),
    }
}

/// The spec of a stored row.
fn spec_of(row: &ScheduleRow) -> std::result::Result<ScheduleSpec, String> {
    Ok(ScheduleSpec {
        name: row.name.clone(),
        template: row.template.clone(),
        cron: row.cron.clone(),
        context: serde_json::from_str(&row.context).map_err(|e| e.to_string())?,
        namespace: Some(row.namespace.clone()),
        version: row.version.clone(),
        timezone: row.timezone.clone(),
        overlap: row.overlap.parse()?,
        catch_up: row.catch_up.parse::<CatchUp>()?,
    })
}
