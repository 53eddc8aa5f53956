//! Retry policy: how many attempts a step gets and how long to wait between them.
//!
//! * `retry_limit` is the maximum number of **attempts**, the first included.
//!   `retryable: false` means exactly one attempt.
//! * A permanent failure never retries.
//! * After the n-th failed attempt (n = attempts so far, n >= 1) the step waits
//!   `min(base * multiplier^n, max)`, spread by ±`jitter` (a fraction), unless the handler asked
//!   for `retry_after`, which wins but is capped at `max_server_backoff_seconds` (default 300).

use serde::{Deserialize, Serialize};

/// Default cap on a handler-requested `retry_after`, in seconds.
pub const DEFAULT_MAX_SERVER_BACKOFF_SECONDS: f64 = 300.0;

/// Exponential backoff parameters of one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    pub base_seconds: f64,
    pub multiplier: f64,
    pub max_seconds: f64,
    /// Fraction in [0, 1): the delay is multiplied by a uniform factor in [1 - jitter, 1 + jitter].
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base_seconds: 1.0,
            multiplier: 2.0,
            max_seconds: 30.0,
            jitter: 0.1,
        }
    }
}

impl Backoff {
    /// Checks the parameters; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        let finite_nonneg = |v: f64| v.is_finite() && v >= 0.0;
        if !finite_nonneg(self.base_seconds) {
            return Err(format!(
                "backoff.base_seconds must be >= 0, got {}",
                self.base_seconds
            ));
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(format!(
                "backoff.multiplier must be >= 1, got {}",
                self.multiplier
            ));
        }
        if !finite_nonneg(self.max_seconds) {
            return Err(format!(
                "backoff.max_seconds must be >= 0, got {}",
                self.max_seconds
            ));
        }
        if !(self.jitter.is_finite() && (0.0..1.0).contains(&self.jitter)) {
            return Err(format!(
                "backoff.jitter must be in [0, 1), got {}",
                self.jitter
            ));
        }
        Ok(())
    }

    /// The delay before the next attempt, in milliseconds, after `failed_attempts` (>= 1) failed
    /// attempts. `unit` in [0, 1) picks the jitter (0.5 = none); callers pass a random number.
    pub fn delay_ms(&self, failed_attempts: u32, unit: f64) -> i64 {
        let n = failed_attempts.max(1) as i32;
        let raw = self.base_seconds * self.multiplier.powi(n);
        let capped = raw.min(self.max_seconds);
        let factor = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        (capped * factor * 1000.0).round().max(0.0) as i64
    }

    /// The [min, max] range `delay_ms` can return, for tests and diagnostics.
    pub fn delay_bounds_ms(&self, failed_attempts: u32) -> (i64, i64) {
        (
            self.delay_ms(failed_attempts, 0.0),
            self.delay_ms(failed_attempts, 1.0),
        )
    }
}

/// The delay in milliseconds before a retry: the handler's `retry_after` (capped at
/// `max_server_backoff_seconds`) if given, else the step's exponential backoff.
pub fn retry_delay_ms(
    backoff: &Backoff,
    failed_attempts: u32,
    retry_after_seconds: Option<f64>,
    max_server_backoff_seconds: f64,
    unit: f64,
) -> i64 {
    match retry_after_seconds {
        Some(s) if s.is_finite() => {
            (s.clamp(0.0, max_server_backoff_seconds) * 1000.0).round() as i64
        }
        _ => backoff.delay_ms(failed_attempts, unit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_double_from_two_seconds_and_cap_at_thirty() {
        let b = Backoff::default();
        let mid = |n| b.delay_ms(n, 0.5);
        assert_eq!(mid(1), 2_000);
        assert_eq!(mid(2), 4_000);
        assert_eq!(mid(3), 8_000);
        assert_eq!(mid(4), 16_000);
        assert_eq!(mid(5), 30_000);
        assert_eq!(mid(50), 30_000);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let b = Backoff::default();
        assert_eq!(b.delay_bounds_ms(1), (1_800, 2_200));
    }

    #[test]
    fn retry_after_wins_and_is_capped() {
        let b = Backoff::default();
        assert_eq!(retry_delay_ms(&b, 1, Some(7.0), 300.0, 0.9), 7_000);
        assert_eq!(retry_delay_ms(&b, 1, Some(10_000.0), 300.0, 0.9), 300_000);
        assert_eq!(retry_delay_ms(&b, 1, Some(-3.0), 300.0, 0.9), 0);
    }

    #[test]
    fn bad_parameters_are_named() {
        let b = Backoff {
            multiplier: 0.5,
            ..Backoff::default()
        };
        assert!(b.validate().unwrap_err().contains("backoff.multiplier"));
        let b = Backoff {
            jitter: 1.5,
            ..Backoff::default()
        };
        assert!(b.validate().unwrap_err().contains("backoff.jitter"));
    }
}
