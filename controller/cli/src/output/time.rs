//! Times as an operator reads them in a table: how long (`3m12s`), how long ago (`2m ago`),
//! how far ahead (`in 23h`). Every function takes `now`, so tables render the same in tests;
//! JSON keeps RFC 3339 ([`super::rfc3339`]).

use std::time::{Duration, SystemTime};

/// A duration, short and to the second while it matters: `42s`, `3m12s`, `2h10m`, `3d04h`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600)
    }
}

/// The time from `t` to `now` as [`duration`]; `-` when `t` is not known. A `t` ahead of
/// `now` (clocks apart) counts as no time at all.
pub fn elapsed(t: Option<SystemTime>, now: SystemTime) -> String {
    match t {
        Some(t) => duration(now.duration_since(t).unwrap_or_default()),
        None => "-".into(),
    }
}

/// How long ago `t` was, in its largest unit: `5s ago`, `2m ago`, `3h ago`, `4d ago`; `never`
/// when not known; `just now` for a `t` at or after `now`.
pub fn ago(t: Option<SystemTime>, now: SystemTime) -> String {
    let Some(t) = t else { return "never".into() };
    match now.duration_since(t) {
        Ok(d) if d.as_secs() > 0 => format!("{} ago", largest_unit(d)),
        _ => "just now".into(),
    }
}

/// `in 23h` for a `t` ahead of `now`, `expired 2h ago` (with `past` as the verb) for one
/// behind it; `-` when not known.
pub fn until(t: Option<SystemTime>, now: SystemTime, past: &str) -> String {
    let Some(t) = t else { return "-".into() };
    match t.duration_since(now) {
        Ok(d) => format!("in {}", largest_unit(d)),
        Err(e) => format!("{past} {} ago", largest_unit(e.duration())),
    }
}

fn largest_unit(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m", s / 60)
    } else if s < 86_400 {
        format!("{}h", s / 3600)
    } else {
        format!("{}d", s / 86_400)
    }
}

/// A wall-clock time to the second, UTC, as it prefixes `status --watch` lines:
/// `2026-01-05T12:00:07Z`.
pub fn stamp(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: SystemTime = SystemTime::UNIX_EPOCH;

    fn at(s: u64) -> SystemTime {
        T0 + Duration::from_secs(s)
    }

    #[test]
    fn durations_are_short_and_exact_where_it_matters() {
        let cases = [
            (0, "0s"),
            (42, "42s"),
            (192, "3m12s"),
            (3600, "1h00m"),
            (7800, "2h10m"),
            (3 * 86_400 + 4 * 3600 + 59, "3d04h"),
        ];
        for (s, want) in cases {
            assert_eq!(duration(Duration::from_secs(s)), want, "{s}");
        }
        assert_eq!(elapsed(Some(at(8)), at(200)), "3m12s");
        assert_eq!(elapsed(None, at(200)), "-");
        assert_eq!(elapsed(Some(at(300)), at(200)), "0s", "a clock ahead");
    }

    #[test]
    fn ago_and_until_read_as_sentences() {
        assert_eq!(ago(Some(at(100)), at(105)), "5s ago");
        assert_eq!(ago(Some(at(100)), at(100 + 150)), "2m ago");
        assert_eq!(ago(Some(at(0)), at(3 * 3600 + 5)), "3h ago");
        assert_eq!(ago(Some(at(0)), at(4 * 86_400)), "4d ago");
        assert_eq!(ago(Some(at(10)), at(10)), "just now");
        assert_eq!(ago(Some(at(11)), at(10)), "just now");
        assert_eq!(ago(None, at(10)), "never");
        assert_eq!(until(Some(at(86_399)), at(0), "expired"), "in 23h");
        assert_eq!(until(Some(at(0)), at(7200), "expired"), "expired 2h ago");
        assert_eq!(until(None, at(0), "expired"), "-");
    }

    #[test]
    fn stamps_are_utc_to_the_second() {
        let t = at(1_767_614_407) + Duration::from_millis(250);
        assert_eq!(stamp(t), "2026-01-05T12:00:07Z");
    }
}
