//! When a schedule's backups are due, how long its period is, when it is stale, and the
//! retention ages and retry delays: pure functions of the spec and the clock, no I/O.
//!
//! Times are [`jiff::Timestamp`]s, as Kubernetes's `Time` holds them; the cron expression is
//! evaluated by `croner` in UTC.

use std::str::FromStr;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

/// A backup is retried after this long at first, doubling up to [`MAX_RETRY_DELAY`].
pub const FIRST_RETRY_DELAY: Duration = Duration::from_secs(10);
/// The longest wait between two attempts of one backup.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);
/// Occurrences looked at when catching up with missed ones; beyond, the newest is due now.
const MAX_CATCH_UP: usize = 10_000;

/// A parsed cron schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: croner::Cron,
}

impl Schedule {
    /// Parse a five-field cron expression; the error says what to write instead.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.split_whitespace().count() != 5 {
            return Err(format!(
                "schedule {text:?} is not a cron expression of five fields (minute hour \
                 day-of-month month day-of-week), such as '0 */6 * * *'"
            ));
        }
        let cron = croner::Cron::from_str(text).map_err(|e| {
            format!("schedule {text:?} is not a valid cron expression ({e}); for example '0 */6 * * *' is every six hours")
        })?;
        Ok(Self { cron })
    }

    /// The first occurrence strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let from = to_chrono(t)?;
        let next = self.cron.find_next_occurrence(&from, false).ok()?;
        Timestamp::from_second(next.timestamp()).ok()
    }

    /// The newest occurrence in `(since, now]`, if there is one: the backup that is due.
    /// Occurrences missed while the operator was down collapse into that one, as a CronJob's
    /// do.
    pub fn due(&self, since: Timestamp, now: Timestamp) -> Option<Timestamp> {
        let mut due = None;
        let mut t = since;
        for _ in 0..MAX_CATCH_UP {
            match self.next_after(t) {
                Some(next) if next <= now => {
                    due = Some(next);
                    t = next;
                }
                _ => return due,
            }
        }
        // Very far behind (a per-minute schedule idle for a week): due now.
        Some(now)
    }

    /// The schedule's period around `t`: the gap between the next two occurrences.
    pub fn period(&self, t: Timestamp) -> Option<Duration> {
        let a = self.next_after(t)?;
        let b = self.next_after(a)?;
        let secs = b.as_second().saturating_sub(a.as_second());
        u64::try_from(secs).ok().map(Duration::from_secs)
    }
}

fn to_chrono(t: Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(t.as_second(), 0)
}

/// Whether no backup succeeded for more than twice the period: since the last success, or
/// since the schedule was created when none ever did.
pub fn stale(
    last_success: Option<Timestamp>,
    created: Timestamp,
    period: Duration,
    now: Timestamp,
) -> bool {
    let since = last_success.unwrap_or(created);
    let age = now.as_second().saturating_sub(since.as_second());
    u64::try_from(age).unwrap_or(0) > 2 * period.as_secs()
}

/// A retention age: a number and a unit, `m`, `h` or `d` (`30d`).
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("retention.maxAge {text:?} must be a number and a unit: m, h or d (such as 30d)")
    };
    let unit = text.chars().last().ok_or_else(bad)?;
    let n: u64 = text[..text.len() - unit.len_utf8()]
        .parse()
        .map_err(|_| bad())?;
    let secs = match unit {
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

/// How long to wait after the `attempt`-th failed attempt (1-based).
pub fn retry_delay(attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    (FIRST_RETRY_DELAY * factor).min(MAX_RETRY_DELAY)
}

/// `12.5 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn due_is_the_newest_occurrence_since_the_last_run() {
        let s = Schedule::parse("0 */6 * * *").unwrap();
        let since = ts("2026-12-05T00:00:00Z");
        assert_eq!(s.due(since, ts("2026-12-05T05:59:59Z")), None);
        assert_eq!(
            s.due(since, ts("2026-12-05T06:00:00Z")),
            Some(ts("2026-12-05T06:00:00Z"))
        );
        // Missed occurrences collapse into the newest.
        assert_eq!(
            s.due(since, ts("2026-12-05T19:30:00Z")),
            Some(ts("2026-12-05T18:00:00Z"))
        );
        assert_eq!(
            s.next_after(ts("2026-12-05T19:30:00Z")),
            Some(ts("2026-12-06T00:00:00Z"))
        );
    }

    #[test]
    fn far_behind_means_due_now() {
        let s = Schedule::parse("* * * * *").unwrap();
        let now = ts("2026-12-05T00:00:00Z");
        assert_eq!(s.due(ts("2026-01-01T00:00:00Z"), now), Some(now));
    }

    #[test]
    fn period_and_staleness() {
        let s = Schedule::parse("0 */6 * * *").unwrap();
        let now = ts("2026-12-05T13:00:00Z");
        let period = s.period(now).unwrap();
        assert_eq!(period, Duration::from_secs(6 * 3600));
        let created = ts("2026-12-01T00:00:00Z");
        assert!(!stale(
            Some(ts("2026-12-05T01:00:01Z")),
            created,
            period,
            now
        ));
        assert!(stale(
            Some(ts("2026-12-05T00:59:59Z")),
            created,
            period,
            now
        ));
        // Never succeeded: counted from creation.
        assert!(!stale(None, ts("2026-12-05T02:00:00Z"), period, now));
        assert!(stale(None, created, period, now));
    }

    #[test]
    fn bad_schedules_and_ages_say_what_to_write() {
        let e = Schedule::parse("every hour").unwrap_err();
        assert!(e.contains("five fields"), "{e}");
        let e = Schedule::parse("61 * * * *").unwrap_err();
        assert!(e.contains("not a valid cron expression"), "{e}");
        assert_eq!(parse_age("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert_eq!(parse_age("90m").unwrap(), Duration::from_secs(5400));
        for bad in ["", "d", "30", "3w", "-1d", "1.5h"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn retries_back_off_to_a_ceiling() {
        assert_eq!(retry_delay(1), Duration::from_secs(10));
        assert_eq!(retry_delay(2), Duration::from_secs(20));
        assert_eq!(retry_delay(4), Duration::from_secs(80));
        assert_eq!(retry_delay(10), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY_DELAY);
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(13_107_200), "12.5 MiB");
    }
}
