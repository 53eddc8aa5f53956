//! Schedules: a template run on a cron pattern in a time zone. This module holds the rules that
//! need no database: what a schedule is ([`ScheduleSpec`], checked), when its ticks come
//! ([`Cadence`]) and which of the ticks that came due a process fires ([`due`]). The engine
//! ([`crate::engine`]'s `schedule.rs`) stores schedules and fires them.
//!
//! * **Patterns**: 5 fields (`minute hour day-of-month month day-of-week`) or 6 with seconds
//!   first, as cron has them (lists, ranges, steps, names, `L`, `#`, `W`: the `croner` crate),
//!   evaluated in an IANA time zone (`chrono-tz`; default `UTC`).
//! * **Daylight saving** (croner's rules, tested in this module): a local time that does not
//!   exist (spring forward) fires a fixed-time pattern (`30 2 * * *`) once, at the first
//!   valid time after the gap, and skips an interval pattern's (`*/15 * * * *`) ticks inside
//!   it; a local time that occurs twice (fall back) fires a fixed-time pattern once, at its
//!   first occurrence, and an interval pattern at each.
//! * **Missed ticks** (`catch_up`, after every process was down): a tick is *on time* when
//!   fired at most [`MISFIRE_GRACE_MS`] after it came; `none` fires only an on-time tick,
//!   `latest` the latest tick that came, `all` every tick that came, at most [`MAX_CATCH_UP`]
//!   (the latest ones).
//! * **Overlap** (a tick while this schedule's previous task is unfinished): `skip` fires
//!   nothing, `allow` fires, `cancel_previous` cancels that task and fires. Ticks fired
//!   together (a catch-up) count as overlapping one another too.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, FixedOffset, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::{Cron, JobType};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How late a tick may be fired and still count as on time (`catch_up: none`).
pub const MISFIRE_GRACE_MS: i64 = 2_000;
/// At most this many missed ticks are fired at once (`catch_up: all`): the latest ones.
pub const MAX_CATCH_UP: usize = 100;

/// What a tick does while the schedule's previous task is unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// No new task (the default).
    #[default]
    Skip,
    /// A new task anyway.
    Allow,
    /// Cancel the previous task, then create the new one.
    CancelPrevious,
}

/// Which missed ticks fire after every process was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Only a tick that is on time ([`MISFIRE_GRACE_MS`]).
    None,
    /// The latest tick that came (the default).
    #[default]
    Latest,
    /// Every tick that came, at most [`MAX_CATCH_UP`].
    All,
}

macro_rules! names {
    ($t:ty, $what:literal, $($v:ident = $s:literal),+) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),+ }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok(Self::$v),)+
                    other => Err(format!(
                        concat!($what, " must be one of ", $("`", $s, "` ",)+ "(got {:?})"),
                        other
                    )),
                }
            }
        }
    };
}
names!(
    Overlap,
    "overlap",
    Skip = "skip",
    Allow = "allow",
    CancelPrevious = "cancel_previous"
);
names!(
    CatchUp,
    "catch_up",
    None = "none",
    Latest = "latest",
    All = "all"
);

/// A cron pattern in a time zone: when a schedule's ticks come.
#[derive(Debug, Clone)]
pub struct Cadence {
    cron: Cron,
    tz: Tz,
}

impl Cadence {
    /// Parses a 5- or 6-field pattern and an IANA zone name; the error says which is wrong.
    pub fn parse(cron: &str, timezone: &str) -> Result<Cadence, String> {
        let fields = cron.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "cron {cron:?} has {fields} fields: give 5 (minute hour day-of-month month day-of-week) or 6 (seconds first)"
            ));
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build();
        let cron = parser
            .parse(cron)
            .map_err(|e| format!("cron {cron:?} is not a valid pattern: {e}"))?;
        let tz: Tz = timezone.parse().map_err(|_| {
            format!("timezone {timezone:?} is not an IANA time zone name (for example \"UTC\" or \"Europe/Berlin\")")
        })?;
        Ok(Cadence { cron, tz })
    }

    /// The first tick strictly after `ms` (milliseconds since the epoch); `None` when the
    /// pattern has no further tick (`0 0 30 2 *`).
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        self.occurrence(ms, true)
    }

    /// The latest tick at or before `ms`.
    fn latest_at_or_before(&self, ms: i64) -> Option<i64> {
        self.occurrence(ms + 1, false)
    }

    /// The nearest tick strictly after (`forward`) or before `ms`. A fixed-time pattern is
    /// croner's in the zone (a gap fires once after it, a repeat once). An interval pattern
    /// fires at every instant whose wall time matches, both passes of a repeated hour
    /// included: croner walks local wall times and would skip the second pass, so it is
    /// asked in each UTC offset the zone has around `ms` and a candidate counts only where
    /// the zone really has that offset.
    fn occurrence(&self, ms: i64, forward: bool) -> Option<i64> {
        // Ticks are whole seconds (croner keeps a fraction it is given).
        let from = if forward {
            ms.div_euclid(1000) * 1000
        } else {
            (ms - 1).div_euclid(1000) * 1000
        };
        let find = |t: &DateTime<FixedOffset>| {
            let r = if forward {
                self.cron.find_next_occurrence(t, false)
            } else {
                self.cron.find_previous_occurrence(t, true)
            };
            r.ok().map(|d| d.timestamp_millis())
        };
        let offset_at =
            |ms: i64| utc(ms).map(|u| self.tz.offset_from_utc_datetime(&u.naive_utc()).fix());
        if self.cron.determine_job_type() == JobType::FixedTime {
            let mut at = from;
            for _ in 0..3 {
                let zoned = self.tz.from_utc_datetime(&utc(at)?.naive_utc());
                let found = if forward {
                    self.cron.find_next_occurrence(&zoned, false)
                } else {
                    self.cron.find_previous_occurrence(&zoned, true)
                };
                let found = found.ok()?.timestamp_millis();
                // Asked from inside a repeated hour, croner may answer its first pass.
                if (forward && found > ms) || (!forward && found < ms) {
                    return Some(found);
                }
                at += if forward { 3_600_000 } else { -3_600_000 };
            }
            return None;
        }
        let mut offsets = vec![offset_at(from)?];
        let mut best: Option<i64> = None;
        let mut i = 0;
        while i < offsets.len() && i < 4 {
            let o = offsets[i];
            i += 1;
            let Some(found) = find(&o.from_utc_datetime(&utc(from)?.naive_utc())) else {
                continue;
            };
            let real = offset_at(found)?;
            if real == o {
                best = Some(match best {
                    Some(b) if forward => b.min(found),
                    Some(b) => b.max(found),
                    None => found,
                });
            }
            if !offsets.contains(&real) {
                offsets.push(real);
            }
        }
        best
    }
}

fn utc(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_millis(ms)
}

/// A tick as text: RFC 3339 in UTC, to the second (`2026-12-07T02:00:00Z`).
pub fn tick_text(ms: i64) -> String {
    utc(ms).map_or_else(
        || ms.to_string(),
        |d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

/// The idempotency key of a schedule's task for one tick: the tick is the key, so however many
/// processes fire it, it makes one task.
pub fn tick_key(schedule: &str, tick: i64) -> String {
    format!("schedule:{schedule}:{}", tick_text(tick))
}

/// What a firing does with the ticks that came due ([`due`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The ticks to fire, oldest first.
    pub fire: Vec<i64>,
    /// Ticks that came and are not fired (catch-up policy; after a long outage, at least
    /// this many: the walk back stops past [`MAX_CATCH_UP`]).
    pub missed: u64,
    /// The schedule's next tick after `now` (`None`: none will come).
    pub next: Option<i64>,
}

/// The ticks from `first` (the schedule's stored next tick, at or before `now`) to `now` and
/// what `catch_up` fires of them.
pub fn due(cadence: &Cadence, first: i64, now: i64, catch_up: CatchUp) -> Due {
    let next = cadence.next_after(now);
    if first > now {
        return Due {
            fire: Vec::new(),
            missed: 0,
            next: Some(first),
        };
    }
    let latest = cadence.latest_at_or_before(now).filter(|t| *t >= first);
    // Walk back from the latest tick (a schedule down for a year has many): at most what
    // `all` fires, plus one to know whether more were missed.
    let mut came = Vec::new();
    let mut t = latest;
    while let Some(tick) = t.filter(|t| *t >= first) {
        came.push(tick);
        if came.len() > MAX_CATCH_UP {
            break;
        }
        t = cadence.latest_at_or_before(tick - 1);
    }
    came.reverse();
    let fire: Vec<i64> = match catch_up {
        CatchUp::All => came
            .iter()
            .rev()
            .take(MAX_CATCH_UP)
            .rev()
            .copied()
            .collect(),
        CatchUp::Latest => came.last().copied().into_iter().collect(),
        CatchUp::None => came
            .last()
            .copied()
            .filter(|t| now - t <= MISFIRE_GRACE_MS)
            .into_iter()
            .collect(),
    };
    Due {
        missed: (came.len() - fire.len()) as u64,
        fire,
        next,
    }
}

/// A schedule as a user writes it (API call, `schedules:` block of a template), checked by
/// [`ScheduleSpec::check`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    pub name: String,
    /// The template's name.
    pub template: String,
    /// 5 fields, or 6 with seconds first.
    pub cron: String,
    /// The tasks' context (a JSON object; default `{}`).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub context: Value,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default = "utc_name")]
    pub timezone: String,
    #[serde(default)]
    pub overlap: Overlap,
    #[serde(default)]
    pub catch_up: CatchUp,
}

fn utc_name() -> String {
    "UTC".into()
}

impl ScheduleSpec {
    pub fn new(name: &str, template: &str, cron: &str) -> ScheduleSpec {
        ScheduleSpec {
            name: name.into(),
            template: template.into(),
            cron: cron.into(),
            context: Value::Null,
            namespace: None,
            version: None,
            timezone: utc_name(),
            overlap: Overlap::default(),
            catch_up: CatchUp::default(),
        }
    }

    /// The checked cadence, or what is wrong, naming the schedule.
    pub fn check(&self) -> Result<Cadence, String> {
        let name = self.name.trim();
        if name.is_empty() {
            return Err("schedule: name must not be empty".into());
        }
        if name.len() > 200 || name.chars().any(|c| c.is_control()) {
            return Err(format!(
                "schedule {:?}: name must be at most 200 characters without control characters",
                self.name
            ));
        }
        if self.template.trim().is_empty() {
            return Err(format!("schedule {name:?}: template must not be empty"));
        }
        if !matches!(self.context, Value::Null | Value::Object(_)) {
            return Err(format!("schedule {name:?}: context must be a JSON object"));
        }
        Cadence::parse(&self.cron, &self.timezone).map_err(|e| format!("schedule {name:?}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    fn ticks(c: &Cadence, from: &str, n: usize) -> Vec<String> {
        let mut t = at(from);
        (0..n)
            .map(|_| {
                t = c.next_after(t).unwrap();
                tick_text(t)
            })
            .collect()
    }

    #[test]
    fn five_and_six_fields_parse_and_others_are_refused_by_name() {
        let c = Cadence::parse("*/15 * * * *", "UTC").unwrap();
        assert_eq!(
            ticks(&c, "2026-12-07T10:07:00Z", 2),
            ["2026-12-07T10:15:00Z", "2026-12-07T10:30:00Z"]
        );
        let s = Cadence::parse("*/20 * * * * *", "UTC").unwrap();
        assert_eq!(
            ticks(&s, "2026-12-07T10:07:01Z", 2),
            ["2026-12-07T10:07:20Z", "2026-12-07T10:07:40Z"]
        );
        let e = Cadence::parse("* * * *", "UTC").unwrap_err();
        assert!(e.contains("has 4 fields"), "{e}");
        let e = Cadence::parse("0 0 0 * * * 2030", "UTC").unwrap_err();
        assert!(e.contains("has 7 fields"), "{e}");
        let e = Cadence::parse("61 * * * *", "UTC").unwrap_err();
        assert!(e.contains("not a valid pattern"), "{e}");
        let e = Cadence::parse("* * * * *", "Mars/Olympus").unwrap_err();
        assert!(e.contains("\"Mars/Olympus\" is not an IANA"), "{e}");
    }

    #[test]
    fn a_zone_moves_the_ticks_to_its_local_time() {
        let c = Cadence::parse("0 9 * * *", "America/New_York").unwrap();
        assert_eq!(
            ticks(&c, "2026-12-07T00:00:00Z", 1),
            ["2026-12-07T14:00:00Z"]
        );
        let c = Cadence::parse("0 9 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            ticks(&c, "2026-07-01T00:00:00Z", 1),
            ["2026-07-01T07:00:00Z"]
        );
    }

    #[test]
    fn spring_forward_fires_a_fixed_time_once_after_the_gap_and_skips_interval_ticks_in_it() {
        // Europe/Berlin, 2026-03-29: 02:00 local jumps to 03:00 (01:00 UTC).
        let fixed = Cadence::parse("30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            ticks(&fixed, "2026-03-28T12:00:00Z", 2),
            // 02:30 does not exist on the 29th: 03:00 local (01:00 UTC), then 02:30 CEST.
            ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]
        );
        let every = Cadence::parse("*/30 * * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            ticks(&every, "2026-03-29T00:15:00Z", 3),
            // 01:30 CET, then 03:00 CEST: no tick in the hour that does not exist.
            [
                "2026-03-29T00:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-29T01:30:00Z"
            ]
        );
    }

    #[test]
    fn fall_back_fires_a_fixed_time_once_and_interval_ticks_in_both_hours() {
        // Europe/Berlin, 2026-10-25: 03:00 local goes back to 02:00 (01:00 UTC).
        let fixed = Cadence::parse("30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            ticks(&fixed, "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
        );
        let every = Cadence::parse("30 * * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            ticks(&every, "2026-10-25T00:00:00Z", 2),
            // 02:30 CEST and 02:30 CET.
            ["2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z"]
        );
        let half = Cadence::parse("*/30 * * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            ticks(&half, "2026-10-25T00:15:00Z", 4),
            [
                "2026-10-25T00:30:00Z",
                "2026-10-25T01:00:00Z",
                "2026-10-25T01:30:00Z",
                "2026-10-25T02:00:00Z"
            ]
        );
        // Walking back (a catch-up) sees both passes too.
        let d = due(
            &half,
            at("2026-10-25T00:30:00Z"),
            at("2026-10-25T02:10:00Z"),
            CatchUp::All,
        );
        assert_eq!(
            d.fire.iter().map(|t| tick_text(*t)).collect::<Vec<_>>(),
            [
                "2026-10-25T00:30:00Z",
                "2026-10-25T01:00:00Z",
                "2026-10-25T01:30:00Z",
                "2026-10-25T02:00:00Z"
            ]
        );
        // A fixed time asked from inside the repeated hour is not fired a second time.
        assert_eq!(
            ticks(&fixed, "2026-10-25T01:10:00Z", 1),
            ["2026-10-26T01:30:00Z"]
        );
    }

    #[test]
    fn catch_up_policies_pick_from_the_ticks_that_came() {
        let c = Cadence::parse("* * * * * *", "UTC").unwrap();
        let first = at("2026-12-07T10:00:00Z");
        let now = first + 5_500;
        let all = due(&c, first, now, CatchUp::All);
        assert_eq!(
            all.fire,
            (0..6).map(|i| first + i * 1000).collect::<Vec<_>>()
        );
        assert_eq!((all.missed, all.next), (0, Some(first + 6000)));
        let latest = due(&c, first, now, CatchUp::Latest);
        assert_eq!((latest.fire, latest.missed), (vec![first + 5000], 5));
        let none = due(&c, first, now, CatchUp::None);
        assert_eq!((none.fire, none.missed), (vec![first + 5000], 5));
        // Late beyond the grace: `none` fires nothing.
        let hourly = Cadence::parse("0 * * * *", "UTC").unwrap();
        let late = due(
            &hourly,
            first,
            first + 3 * 3_600_000 + 60_000,
            CatchUp::None,
        );
        assert_eq!((late.fire.len(), late.missed), (0, 4));
        // Not due yet: nothing, and the stored tick stays next.
        let early = due(&c, first, first - 1, CatchUp::All);
        assert_eq!((early.fire.len(), early.next), (0, Some(first)));
    }

    #[test]
    fn catching_up_a_long_outage_fires_at_most_the_bound_and_counts_the_rest() {
        let c = Cadence::parse("* * * * * *", "UTC").unwrap();
        let first = at("2026-12-07T10:00:00Z");
        let now = first + 86_400_000;
        let d = due(&c, first, now, CatchUp::All);
        assert_eq!(d.fire.len(), MAX_CATCH_UP);
        assert_eq!(*d.fire.last().unwrap(), now);
        assert!(d.missed >= 1);
    }

    #[test]
    fn specs_name_what_is_wrong() {
        let mut s = ScheduleSpec::new("nightly", "etl", "0 2 * * *");
        assert!(s.check().is_ok());
        s.overlap = "cancel_previous".parse().unwrap();
        let e = "sometimes".parse::<Overlap>().unwrap_err();
        assert!(e.contains("`skip` `allow` `cancel_previous`"), "{e}");
        s.context = serde_json::json!([1]);
        assert!(s
            .check()
            .unwrap_err()
            .contains("context must be a JSON object"));
        s.context = Value::Null;
        s.timezone = "Nowhere".into();
        assert!(s
            .check()
            .unwrap_err()
            .starts_with("schedule \"nightly\": timezone"));
        assert_eq!(
            tick_key("nightly", at("2026-12-07T02:00:00Z")),
            "schedule:nightly:2026-12-07T02:00:00Z"
        );
    }
}
