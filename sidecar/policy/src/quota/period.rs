//! Calendar periods: which period of a quota contains an instant, and when it ends (resets).
//!
//! Periods are aligned to the policy's IANA time zone with `jiff` (bundled tzdb, so the sidecar
//! image needs no `/usr/share/zoneinfo`), which makes them DST-correct: a `Day` period is 23 or
//! 25 hours on the days clocks change, a `Month` has its real length, a `Week` starts at local
//! midnight on Monday (ISO 8601). An `Hour` is the clock hour in the offset in force at the
//! instant, so the repeated hour when clocks fall back is two distinct one-hour periods.

use bulwark_api::crd::quota::QuotaPeriod;
use jiff::{Timestamp, ToSpan, civil::Date, tz::TimeZone};

/// A half-open interval `[start, end)` of Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Period {
    pub start: i64,
    pub end: i64,
}

impl Period {
    pub fn contains(&self, unix_seconds: i64) -> bool {
        (self.start..self.end).contains(&unix_seconds)
    }
}

/// A time zone by IANA name, as `timeZone` gives it. Errors say why, for a `CompileError`.
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name).map_err(|e| format!("unknown time zone {name:?}: {e}"))
}

/// The period of kind `kind` in `tz` that contains `unix_nanos`.
pub fn period_at(kind: QuotaPeriod, tz: &TimeZone, unix_nanos: u64) -> Period {
    let seconds = i64::try_from(unix_nanos / 1_000_000_000).unwrap_or(i64::MAX);
    // Every instant a sidecar sees is far inside jiff's range (years -9999..=9999).
    let ts = Timestamp::from_second(seconds).expect("the clock is within jiff's range");
    let zdt = ts.to_zoned_datetime(tz.clone());
    if kind == QuotaPeriod::Hour {
        let into_hour = i64::from(zdt.minute()) * 60 + i64::from(zdt.second());
        let start = seconds - into_hour;
        return Period {
            start,
            end: start + 3600,
        };
    }
    let date = zdt.date();
    let (first, next) = match kind {
        QuotaPeriod::Day => (date, date.tomorrow().expect("in range")),
        QuotaPeriod::Week => {
            let monday = date
                .checked_sub(i64::from(date.weekday().to_monday_zero_offset()).days())
                .expect("in range");
            (monday, monday.checked_add(7.days()).expect("in range"))
        }
        QuotaPeriod::Month => {
            let first = date.first_of_month();
            (first, first.checked_add(1.month()).expect("in range"))
        }
        QuotaPeriod::Hour => unreachable!("handled above"),
    };
    Period {
        start: local_midnight(first, tz),
        end: local_midnight(next, tz),
    }
}

/// The first instant of `date` in `tz`: midnight, or the end of the gap when clocks jump over
/// midnight (jiff's "compatible" disambiguation).
fn local_midnight(date: Date, tz: &TimeZone) -> i64 {
    date.to_zoned_datetime(tz.clone())
        .expect("in range")
        .timestamp()
        .as_second()
}

/// RFC 3339 in UTC (`2025-04-01T00:00:00Z`), for headers and the admin API.
pub fn rfc3339(unix_seconds: i64) -> String {
    Timestamp::from_second(unix_seconds)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NANOS: u64 = 1_000_000_000;

    /// Unix nanos of an RFC 3339 instant.
    fn at(text: &str) -> u64 {
        let ts: Timestamp = text.parse().unwrap();
        u64::try_from(ts.as_second()).unwrap() * NANOS
    }

    fn period(kind: QuotaPeriod, zone: &str, instant: &str) -> (String, String) {
        let p = period_at(kind, &time_zone(zone).unwrap(), at(instant));
        (rfc3339(p.start), rfc3339(p.end))
    }

    fn pair(start: &str, end: &str) -> (String, String) {
        (start.to_owned(), end.to_owned())
    }

    #[test]
    fn a_paris_day_is_23_hours_when_clocks_spring_forward() {
        // 2025-03-30: 02:00 CET becomes 03:00 CEST. Midnight is 23:00Z the day before (+01:00),
        // the next midnight is 22:00Z (+02:00).
        let p = period_at(
            QuotaPeriod::Day,
            &time_zone("Europe/Paris").unwrap(),
            at("2025-03-30T12:00:00Z"),
        );
        assert_eq!(p.end - p.start, 23 * 3600);
        assert_eq!(
            (rfc3339(p.start), rfc3339(p.end)),
            pair("2025-03-29T23:00:00Z", "2025-03-30T22:00:00Z")
        );
    }

    #[test]
    fn a_paris_day_is_25_hours_when_clocks_fall_back() {
        let p = period_at(
            QuotaPeriod::Day,
            &time_zone("Europe/Paris").unwrap(),
            at("2025-10-26T05:00:00Z"),
        );
        assert_eq!(p.end - p.start, 25 * 3600);
    }

    #[test]
    fn the_repeated_hour_when_clocks_fall_back_is_two_periods() {
        let tz = time_zone("Europe/Paris").unwrap();
        // 02:30 CEST (00:30Z) and 02:30 CET (01:30Z) are different instants and periods.
        let first = period_at(QuotaPeriod::Hour, &tz, at("2025-10-26T00:30:00Z"));
        let second = period_at(QuotaPeriod::Hour, &tz, at("2025-10-26T01:30:00Z"));
        assert_eq!(rfc3339(first.start), "2025-10-26T00:00:00Z");
        assert_eq!(first.end, second.start);
        assert_eq!(second.end - second.start, 3600);
    }

    #[test]
    fn hours_follow_half_hour_offsets() {
        // India is +05:30: the local hour starts at :30 UTC.
        assert_eq!(
            period(QuotaPeriod::Hour, "Asia/Kolkata", "2025-06-01T10:45:10Z"),
            pair("2025-06-01T10:30:00Z", "2025-06-01T11:30:00Z")
        );
        assert_eq!(
            period(QuotaPeriod::Hour, "UTC", "2025-06-01T10:45:10Z"),
            pair("2025-06-01T10:00:00Z", "2025-06-01T11:00:00Z")
        );
    }

    #[test]
    fn february_has_29_days_in_a_leap_year() {
        let p = period_at(
            QuotaPeriod::Month,
            &TimeZone::UTC,
            at("2024-02-15T00:00:00Z"),
        );
        assert_eq!(p.end - p.start, 29 * 86400);
        let p = period_at(
            QuotaPeriod::Month,
            &TimeZone::UTC,
            at("2025-02-15T00:00:00Z"),
        );
        assert_eq!(p.end - p.start, 28 * 86400);
        assert_eq!(rfc3339(p.end), "2025-03-01T00:00:00Z");
    }

    #[test]
    fn months_reset_at_local_midnight_on_the_first() {
        // March 2025 in Paris starts at +01:00 and ends at +02:00 (an hour shorter than 31 days).
        assert_eq!(
            period(QuotaPeriod::Month, "Europe/Paris", "2025-03-31T21:59:59Z"),
            pair("2025-02-28T23:00:00Z", "2025-03-31T22:00:00Z")
        );
        // One second later is April, local time.
        assert_eq!(
            period(QuotaPeriod::Month, "Europe/Paris", "2025-03-31T22:00:00Z").0,
            "2025-03-31T22:00:00Z"
        );
        // December rolls over the year.
        assert_eq!(
            period(QuotaPeriod::Month, "UTC", "2024-12-31T23:59:59Z"),
            pair("2024-12-01T00:00:00Z", "2025-01-01T00:00:00Z")
        );
    }

    #[test]
    fn weeks_start_on_monday_midnight_local() {
        // 2025-01-01 is a Wednesday: its ISO week starts Monday 2024-12-30.
        assert_eq!(
            period(QuotaPeriod::Week, "UTC", "2025-01-01T12:00:00Z"),
            pair("2024-12-30T00:00:00Z", "2025-01-06T00:00:00Z")
        );
        // Sunday 23:59:59 is still the same week; Monday 00:00 starts the next.
        assert_eq!(
            period(QuotaPeriod::Week, "UTC", "2025-01-05T23:59:59Z").1,
            "2025-01-06T00:00:00Z"
        );
        assert_eq!(
            period(QuotaPeriod::Week, "UTC", "2025-01-06T00:00:00Z").0,
            "2025-01-06T00:00:00Z"
        );
        // In New York, Monday midnight is 05:00Z (EST).
        assert_eq!(
            period(
                QuotaPeriod::Week,
                "America/New_York",
                "2025-01-06T04:59:59Z"
            )
            .1,
            "2025-01-06T05:00:00Z"
        );
    }

    #[test]
    fn a_day_starts_after_a_gap_over_midnight() {
        // America/Santiago sprang forward at 00:00 on 2024-09-08 (to 01:00): the day starts at
        // 01:00 local, which is 04:00Z.
        assert_eq!(
            period(QuotaPeriod::Day, "America/Santiago", "2024-09-08T12:00:00Z").0,
            "2024-09-08T04:00:00Z"
        );
    }

    #[test]
    fn unknown_zones_are_errors_that_name_the_zone() {
        let err = time_zone("Mars/Olympus_Mons").unwrap_err();
        assert!(err.contains("Mars/Olympus_Mons"), "{err}");
    }

    #[test]
    fn every_instant_lies_in_its_period_and_periods_tile() {
        let tz = time_zone("Europe/Paris").unwrap();
        for kind in [
            QuotaPeriod::Hour,
            QuotaPeriod::Day,
            QuotaPeriod::Week,
            QuotaPeriod::Month,
        ] {
            let mut t = at("2025-01-01T00:00:00Z");
            let stop = at("2026-01-01T00:00:00Z");
            while t < stop {
                let p = period_at(kind, &tz, t);
                assert!(p.contains((t / NANOS) as i64), "{kind:?} {p:?}");
                // The next period starts exactly where this one ends.
                let next = period_at(kind, &tz, p.end as u64 * NANOS);
                assert_eq!(next.start, p.end, "{kind:?}");
                t += 7919 * NANOS; // a prime step, to land anywhere in periods
            }
        }
    }
}
