//! Times as people read them: the machine's local time by default (its
//! `TZ`, else `/etc/localtime`), UTC with `--utc`. `--json` keeps Unix
//! milliseconds, for scripts.

use jiff::tz::TimeZone;
use jiff::Timestamp;

/// Where times are shown.
#[derive(Debug, Clone)]
pub struct Clock {
    zone: TimeZone,
    utc: bool,
}

// === impl Clock ===

impl Clock {
    /// Local time, or UTC with `utc`.
    pub fn new(utc: bool) -> Clock {
        let zone = if utc {
            TimeZone::UTC
        } else {
            TimeZone::try_system().unwrap_or(TimeZone::UTC)
        };
        Clock { zone, utc }
    }

    /// In a fixed zone (tests).
    #[cfg(test)]
    fn in_zone(zone: TimeZone, utc: bool) -> Clock {
        Clock { zone, utc }
    }

    /// Unix ms as `2026-12-05 08:13:45` (with ` UTC` under `--utc`).
    pub fn full(&self, ms: i64) -> String {
        self.render(ms, "%F %T")
    }

    /// Unix ms as `08:13:45` when it is today, else as [`Clock::full`].
    pub fn short(&self, ms: i64) -> String {
        let today = Timestamp::now().to_zoned(self.zone.clone()).date();
        match Timestamp::from_millisecond(ms) {
            Ok(t) if t.to_zoned(self.zone.clone()).date() == today => self.render(ms, "%T"),
            _ => self.full(ms),
        }
    }

    fn render(&self, ms: i64, format: &str) -> String {
        let Ok(t) = Timestamp::from_millisecond(ms) else {
            return ms.to_string();
        };
        let s = t.to_zoned(self.zone.clone()).strftime(format).to_string();
        if self.utc {
            s + " UTC"
        } else {
            s
        }
    }
}

/// Whether a field of a reply holds a time in Unix ms, by its name and
/// value (`created_at`, `at`, `expires_at`, `pinned_at_ms`, …; a number
/// past 2001 in milliseconds).
pub fn is_time(field: &str, value: &serde_json::Value) -> bool {
    let named = field == "at"
        || field.ends_with("_at")
        || field.ends_with("_at_ms")
        || field.ends_with("_until");
    named && value.as_i64().is_some_and(|ms| ms > 1_000_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_in_the_zone_asked() {
        let ms = 951_782_400_000; // 2000-02-29 00:00:00 UTC
        let utc = Clock::in_zone(TimeZone::UTC, true);
        assert_eq!(utc.full(ms), "2000-02-29 00:00:00 UTC");
        let paris = Clock::in_zone(TimeZone::fixed(jiff::tz::offset(1)), false);
        assert_eq!(paris.full(ms), "2000-02-29 01:00:00");
        assert_eq!(paris.short(ms), "2000-02-29 01:00:00", "not today");
        let now = jiff::Timestamp::now().as_millisecond();
        assert_eq!(utc.short(now).len(), "12:00:00 UTC".len());
    }

    #[test]
    fn time_fields_are_told_by_name_and_size() {
        let t = serde_json::json!(1_796_454_825_554_i64);
        assert!(is_time("created_at", &t));
        assert!(is_time("at", &t));
        assert!(is_time("pinned_at_ms", &t));
        assert!(!is_time("idle_ms", &t));
        assert!(!is_time("created_at", &serde_json::json!(42)));
        assert!(!is_time("created_at", &serde_json::json!("2026-12-05")));
    }
}
