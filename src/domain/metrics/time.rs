//! Time buckets in a tenant's timezone.
//!
//! Buckets are spans of local (wall-clock) time: a day is local midnight to
//! local midnight, so a DST day of 23 or 25 hours is still one bucket, and a
//! repeated local hour (DST ending) is one two-hour bucket. Every bucket is
//! computed here, in Rust; the database only maps each event to the local
//! start of its bucket, which both backends can do exactly.

use chrono::{
    DateTime, Datelike, Duration, LocalResult, Months, NaiveDate, NaiveDateTime, Offset, TimeZone,
    Timelike, Utc,
};
use chrono_tz::Tz;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    Minute,
    Hour,
    Day,
    /// ISO weeks, starting on Monday.
    Week,
    Month,
}

/// One output bucket: its local start (how the database names it) and the
/// instant it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub local: NaiveDateTime,
    pub start: DateTime<Utc>,
}

/// The local start of the bucket holding local time `t`.
pub fn truncate(g: Granularity, t: NaiveDateTime) -> NaiveDateTime {
    let date = t.date();
    let midnight = |d: NaiveDate| d.and_time(chrono::NaiveTime::MIN);
    match g {
        Granularity::Minute => t
            .with_second(0)
            .and_then(|t| t.with_nanosecond(0))
            .unwrap_or(t),
        Granularity::Hour => midnight(date) + Duration::hours(i64::from(t.hour())),
        Granularity::Day => midnight(date),
        Granularity::Week => midnight(
            date.checked_sub_signed(Duration::days(i64::from(
                date.weekday().num_days_from_monday(),
            )))
            .unwrap_or(date),
        ),
        Granularity::Month => midnight(date.with_day(1).unwrap_or(date)),
    }
}

/// The local start of the bucket after the one starting at `t`; saturates
/// at the end of time rather than overflowing (ranges are validated far
/// from it, but a loop over buckets must still end).
pub fn next(g: Granularity, t: NaiveDateTime) -> NaiveDateTime {
    let following = match g {
        Granularity::Minute => t.checked_add_signed(Duration::minutes(1)),
        Granularity::Hour => t.checked_add_signed(Duration::hours(1)),
        Granularity::Day => t.checked_add_signed(Duration::days(1)),
        Granularity::Week => t.checked_add_signed(Duration::days(7)),
        Granularity::Month => t.checked_add_months(Months::new(1)),
    };
    following.unwrap_or(NaiveDateTime::MAX)
}

pub fn local(tz: Tz, t: DateTime<Utc>) -> NaiveDateTime {
    t.with_timezone(&tz).naive_local()
}

/// The first instant whose local time is at or after `local`, if it comes
/// before `until` (local): the start of a bucket whose nominal start may
/// fall in a DST gap.
fn first_instant(tz: Tz, local: NaiveDateTime, until: NaiveDateTime) -> Option<DateTime<Utc>> {
    let mut probe = local;
    while probe < until {
        match tz.from_local_datetime(&probe) {
            LocalResult::Single(t) => return Some(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(earliest, _) => return Some(earliest.with_timezone(&Utc)),
            // Gaps are whole minutes long in every zone.
            LocalResult::None => probe = probe.checked_add_signed(Duration::minutes(1))?,
        }
    }
    None
}

/// Where the bucket starting at local `start` ends: the first instant of
/// the next bucket (`None` past the representable dates).
pub fn bucket_end(g: Granularity, tz: Tz, start: NaiveDateTime) -> Option<DateTime<Utc>> {
    let following = next(g, start);
    if following <= start {
        return None;
    }
    first_instant(tz, following, next(g, following))
}

/// The buckets covering `[from, to)`, or `None` when there would be more
/// than `cap`. With no granularity, one bucket starting at `from`.
pub fn buckets(
    g: Option<Granularity>,
    tz: Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    cap: usize,
) -> Option<Vec<Bucket>> {
    let Some(g) = g else {
        return Some(vec![Bucket {
            local: local(tz, from),
            start: from,
        }]);
    };
    let mut out = Vec::new();
    let mut current = truncate(g, local(tz, from));
    let end = local(tz, to);
    while current <= end {
        let following = next(g, current);
        if following <= current {
            break;
        }
        if let Some(start) = first_instant(tz, current, following) {
            if start >= to {
                break;
            }
            if out.len() == cap {
                return None;
            }
            out.push(Bucket {
                local: current,
                start,
            });
        }
        current = following;
    }
    Some(out)
}

/// The zone's UTC offsets over `[from, to)`: the offset in force at `from`,
/// then each change as (instant, new offset in seconds).
///
/// chrono-tz, which computes every bucket, is the only source, so the two
/// can never disagree (jiff's transition table was tried and differs from
/// chrono-tz's data for some zones, e.g. Casablanca's Ramadan changes from
/// 2027, which would misplace events). chrono-tz exposes no transition
/// list, so the range is probed once a day and each change is pinned down
/// to the second by bisection: ranges are validated to at most
/// `PULSE_MAX_RANGE_DAYS` (a hundred years at most), so this is a few
/// thousand cheap probes, never the hour-by-hour walk over millennia that
/// an unbounded range allowed. Since 1970 no zone has changed its offset
/// twice within a day (a test checks a sample against hourly probes).
pub fn offsets(tz: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> (i32, Vec<(DateTime<Utc>, i32)>) {
    offsets_probing(tz, from, to, Duration::days(1))
}

fn offset_at(tz: Tz, t: DateTime<Utc>) -> i32 {
    tz.offset_from_utc_datetime(&t.naive_utc())
        .fix()
        .local_minus_utc()
}

fn offsets_probing(
    tz: Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    every: Duration,
) -> (i32, Vec<(DateTime<Utc>, i32)>) {
    let first = offset_at(tz, from);
    let mut changes = Vec::new();
    let mut current = first;
    let mut t = from;
    while t < to {
        let Some(step) = t.checked_add_signed(every).map(|s| s.min(to)) else {
            break;
        };
        let offset = offset_at(tz, step);
        if offset != current {
            // In whole seconds: `lo` still has the old offset, `hi` the new.
            let (mut lo, mut hi) = (t.timestamp(), step.timestamp() + 1);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                let at = DateTime::from_timestamp(mid, 0).unwrap_or(step);
                if offset_at(tz, at) == current {
                    lo = mid
                } else {
                    hi = mid
                }
            }
            changes.push((DateTime::from_timestamp(hi, 0).unwrap_or(step), offset));
            current = offset;
        }
        t = step;
    }
    (first, changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().expect("instant")
    }

    #[test]
    fn a_dst_day_is_one_bucket_of_23_or_25_hours() {
        let berlin: Tz = "Europe/Berlin".parse().expect("tz");
        // 2026-03-29: clocks go 02:00 → 03:00; 2026-10-25: 03:00 → 02:00.
        let spring = buckets(
            Some(Granularity::Day),
            berlin,
            utc("2026-03-28T23:00:00Z"),
            utc("2026-03-30T22:00:00Z"),
            10,
        )
        .expect("cap");
        let starts: Vec<_> = spring.iter().map(|b| b.start).collect();
        assert_eq!(
            starts,
            [utc("2026-03-28T23:00:00Z"), utc("2026-03-29T22:00:00Z")]
        );
        let autumn = buckets(
            Some(Granularity::Day),
            berlin,
            utc("2026-10-24T22:00:00Z"),
            utc("2026-10-26T23:00:00Z"),
            10,
        )
        .expect("cap");
        let starts: Vec<_> = autumn.iter().map(|b| b.start).collect();
        assert_eq!(
            starts,
            [utc("2026-10-24T22:00:00Z"), utc("2026-10-25T23:00:00Z")]
        );
    }

    #[test]
    fn hours_skip_the_missing_hour_and_merge_the_repeated_one() {
        let berlin: Tz = "Europe/Berlin".parse().expect("tz");
        let spring = buckets(
            Some(Granularity::Hour),
            berlin,
            utc("2026-03-29T00:00:00Z"),
            utc("2026-03-29T02:00:00Z"),
            10,
        )
        .expect("cap");
        let locals: Vec<_> = spring.iter().map(|b| b.local.hour()).collect();
        assert_eq!(locals, [1, 3]);
        let autumn = buckets(
            Some(Granularity::Hour),
            berlin,
            utc("2026-10-25T00:00:00Z"),
            utc("2026-10-25T02:00:00Z"),
            10,
        )
        .expect("cap");
        // 00:00Z and 01:00Z are both 02:00 local: one bucket of two hours.
        let starts: Vec<_> = autumn.iter().map(|b| (b.local.hour(), b.start)).collect();
        assert_eq!(starts, [(2, utc("2026-10-25T00:00:00Z"))]);
    }

    #[test]
    fn weeks_start_on_monday_and_months_on_the_first() {
        let t = NaiveDate::from_ymd_opt(2026, 11, 22)
            .and_then(|d| d.and_hms_opt(15, 4, 5))
            .expect("date");
        assert_eq!(
            truncate(Granularity::Week, t).to_string(),
            "2026-11-16 00:00:00"
        );
        assert_eq!(
            truncate(Granularity::Month, t).to_string(),
            "2026-11-01 00:00:00"
        );
        assert_eq!(
            next(Granularity::Month, truncate(Granularity::Month, t)).to_string(),
            "2026-12-01 00:00:00"
        );
    }

    #[test]
    fn the_cap_is_enforced_at_and_past_it() {
        let from = utc("2026-01-01T00:00:00Z");
        let to = from + Duration::minutes(10);
        assert_eq!(
            buckets(Some(Granularity::Minute), Tz::UTC, from, to, 10).map(|b| b.len()),
            Some(10)
        );
        assert_eq!(
            buckets(
                Some(Granularity::Minute),
                Tz::UTC,
                from,
                to + Duration::minutes(1),
                10
            ),
            None
        );
    }

    #[test]
    fn daily_probes_find_what_hourly_probes_find() {
        for name in [
            "Europe/Berlin",
            "America/New_York",
            "Australia/Lord_Howe",
            "Asia/Kolkata",
            "America/Sao_Paulo",
            "Africa/Casablanca",
            "Pacific/Apia",
            "Europe/Moscow",
            "Antarctica/Troll",
            "America/Caracas",
        ] {
            let tz: Tz = name.parse().expect("tz");
            let (from, to) = (utc("1970-01-01T00:00:00Z"), utc("2040-01-01T00:00:00Z"));
            assert_eq!(
                offsets(tz, from, to),
                offsets_probing(tz, from, to, Duration::hours(1)),
                "{name}"
            );
        }
    }

    #[test]
    fn the_widest_range_is_cheap() {
        // A hundred years, the most PULSE_MAX_RANGE_DAYS allows.
        let berlin: Tz = "Europe/Berlin".parse().expect("tz");
        let (first, changes) = offsets(
            berlin,
            utc("2000-01-01T00:00:00Z"),
            utc("2100-01-01T00:00:00Z"),
        );
        assert_eq!(first, 3600);
        assert_eq!(changes.len(), 200);
    }

    #[test]
    fn offsets_find_each_change_to_the_second() {
        let berlin: Tz = "Europe/Berlin".parse().expect("tz");
        let (first, changes) = offsets(
            berlin,
            utc("2026-03-01T00:00:00Z"),
            utc("2026-11-01T00:00:00Z"),
        );
        assert_eq!(first, 3600);
        assert_eq!(
            changes,
            [
                (utc("2026-03-29T01:00:00Z"), 7200),
                (utc("2026-10-25T01:00:00Z"), 3600)
            ]
        );
    }
}
