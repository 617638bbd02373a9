//! Funnels and retention: questions about each user's (or session's)
//! sequence of events rather than about event counts.
//!
//! The database selects the caller's matching events, sorted by actor and
//! time, with a flag per step; the sequences are walked here as the rows
//! stream in, holding one actor's state at a time. That keeps the
//! definitions exact and identical on both backends.

use std::collections::HashMap;

use chrono::{DateTime, Days, Duration, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use sea_orm::{DatabaseConnection, DbBackend, DbErr, Statement};
use serde_json::Value;

use super::cohorts::Counts;
use super::plan::{self, Field, FilterOp};
use super::raw::{self, percentile_cont};
use super::time::{self, Granularity};
use super::{OTHER, Snapshot, Source, within};
use crate::auth::TenantCtx;
use crate::domain::events::query::{time_at, time_value};
use crate::error::{AppError, AppResult};

pub const MAX_STEPS: usize = 10;
pub const MAX_BREAKDOWN_GROUPS: usize = 20;
pub const MAX_PERIODS: usize = 100;

/// Whose journey: a user's (default) or a session's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    User,
    Session,
}

impl Actor {
    pub fn parse(raw: Option<&str>, at: &str) -> AppResult<Actor> {
        match raw {
            None | Some("userId") => Ok(Actor::User),
            Some("sessionId") => Ok(Actor::Session),
            Some(other) => Err(AppError::bad_input(
                at,
                format!("`{other}`: count by userId or sessionId"),
            )),
        }
    }

    pub(super) fn column(self) -> &'static str {
        match self {
            Actor::User => "user_id",
            Actor::Session => "session_id",
        }
    }

    /// The column where the statement filters and sorts on it. On SQLite
    /// a unary `+` keeps the planner off the `(tenant_id, user_id)` index,
    /// which it otherwise picks to skip the sort and then walks the
    /// tenant's whole history (`tests/plans.rs`); sorting the time range's
    /// rows costs what the answer costs.
    fn sort_key(self, backend: DbBackend) -> String {
        if backend == DbBackend::Postgres {
            self.column().to_owned()
        } else {
            format!("+{}", self.column())
        }
    }
}

pub struct FunnelStepQuery {
    pub event_type: String,
    pub filters: Vec<(String, FilterOp, Option<Value>)>,
}

pub struct FunnelQuery {
    pub steps: Vec<FunnelStepQuery>,
    pub conversion_window: String,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub last: Option<String>,
    pub timezone: Option<String>,
    pub count_by: Option<String>,
    /// `properties.<key>` of each actor's first-step event.
    pub breakdown: Option<String>,
    /// The widest range allowed (`PULSE_MAX_RANGE_DAYS`); `None`: the
    /// default.
    pub max_span: Option<chrono::Duration>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FunnelStep {
    pub event_type: String,
    /// Actors who reached this step.
    pub count: u64,
    pub conversion_from_start: f64,
    pub conversion_from_previous: f64,
    /// Median seconds from the previous step (interpolated); none for the
    /// first step or when no one converted.
    pub median_seconds_to_convert: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct FunnelResult {
    pub steps: Vec<FunnelStep>,
    /// Time spent waiting for the database (funnels read raw events).
    pub db_time: std::time::Duration,
    /// Per value of the breakdown property, largest first; the rest as
    /// `__other__`.
    pub breakdowns: Vec<(Value, Vec<FunnelStep>)>,
}

/// How long after its first step an actor may convert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConversionWindow {
    /// `m` and `h`: elapsed time.
    Fixed(Duration),
    /// `d` and `w`: that many local calendar days in the funnel's zone, so
    /// a day across a DST change is 23 or 25 hours, as people count it.
    Days(u64),
}

impl ConversionWindow {
    fn parse(raw: &str) -> AppResult<ConversionWindow> {
        let duration = plan::parse_relative(raw).ok_or_else(|| {
            AppError::bad_input(
                "input.conversionWindow",
                format!("`{raw}` is not a duration such as 30m, 24h, 7d or 2w"),
            )
        })?;
        // The shared parser validates the number and unit; the unit alone
        // says whether the window counts calendar days.
        Ok(if raw.trim().ends_with(['d', 'w']) {
            ConversionWindow::Days(duration.num_days().unsigned_abs())
        } else {
            ConversionWindow::Fixed(duration)
        })
    }

    /// The last instant a conversion may happen for a first step at
    /// `start`; `None` past the representable dates.
    fn end(self, tz: Tz, start: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            ConversionWindow::Fixed(d) => start.checked_add_signed(d),
            ConversionWindow::Days(n) => {
                // Checked all the way: `naive_local` panics at the ends of
                // the representable dates.
                let offset = tz.offset_from_utc_datetime(&start.naive_utc()).fix();
                let local = start
                    .naive_utc()
                    .checked_add_offset(offset)?
                    .checked_add_days(Days::new(n))?;
                first_instant_at_or_after(tz, local)
            }
        }
    }
}

/// The instant of a local time; the earlier one when clocks go back, the
/// end of the gap when they go forward (as buckets start, see
/// [`time::buckets`]).
fn first_instant_at_or_after(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let mut probe = local;
    // DST gaps are whole minutes and at most a few hours long.
    for _ in 0..=24 * 60 {
        match tz.from_local_datetime(&probe) {
            LocalResult::Single(t) => return Some(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(earliest, _) => return Some(earliest.with_timezone(&Utc)),
            LocalResult::None => probe = probe.checked_add_signed(Duration::minutes(1))?,
        }
    }
    None
}

/// A validated funnel: what [`funnel`] runs, and what the golden tests
/// snapshot through [`FunnelPlan::statement`].
pub struct FunnelPlan {
    steps: Vec<(String, Vec<plan::Filter>)>,
    window: ConversionWindow,
    tz: Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// The end of the window of a first step at `to`: the last event read.
    until: DateTime<Utc>,
    actor: Actor,
    breakdown: Option<Field>,
}

pub fn funnel_plan(q: FunnelQuery, now: DateTime<Utc>) -> AppResult<FunnelPlan> {
    if !(2..=MAX_STEPS).contains(&q.steps.len()) {
        return Err(AppError::bad_input(
            "input.steps",
            format!("2 to {MAX_STEPS} steps"),
        ));
    }
    let window = ConversionWindow::parse(&q.conversion_window)?;
    let tz = plan::timezone(q.timezone.as_deref(), "input.timezone")?;
    let (from, to) = plan::range_within(
        q.from,
        q.to,
        q.last.as_deref(),
        now,
        q.max_span.unwrap_or(plan::DEFAULT_MAX_SPAN),
        "input.range",
    )?;
    let until = window.end(tz, to).ok_or_else(|| {
        AppError::bad_input(
            "input.conversionWindow",
            "the window reaches past the last representable date",
        )
    })?;
    let actor = Actor::parse(q.count_by.as_deref(), "input.countBy")?;
    let breakdown = match q.breakdown.as_deref() {
        None => None,
        Some(raw) => match Field::parse(raw, "input.breakdown")? {
            Field::Property(keys) => Some(Field::Property(keys)),
            _ => {
                return Err(AppError::bad_input(
                    "input.breakdown",
                    "breaks down by a property, properties.<key>",
                ));
            }
        },
    };
    let mut steps = Vec::with_capacity(q.steps.len());
    for (k, step) in q.steps.iter().enumerate() {
        if step.event_type.is_empty() || step.event_type.len() > 100 {
            return Err(AppError::bad_input(
                format!("input.steps[{k}].eventType"),
                "1 to 100 characters",
            ));
        }
        let filters = step
            .filters
            .iter()
            .enumerate()
            .map(|(i, (f, op, v))| {
                plan::filter(&format!("input.steps[{k}].filters"), i, f, *op, v.clone())
            })
            .collect::<AppResult<Vec<_>>>()?;
        steps.push((step.event_type.clone(), filters));
    }
    Ok(FunnelPlan {
        steps,
        window,
        tz,
        from,
        to,
        until,
        actor,
        breakdown,
    })
}

impl FunnelPlan {
    /// The caller's events of the steps' types, sorted by actor and time,
    /// with a flag per step.
    pub fn statement(&self, backend: DbBackend, tenant: uuid::Uuid) -> Statement {
        let mut sql = raw::new_sql(backend);
        let flags: Vec<String> = self
            .steps
            .iter()
            .enumerate()
            .map(|(k, (t, filters))| {
                let mut cond = vec![format!("type = {}", sql.bind(t.clone()))];
                cond.extend(filters.iter().map(|f| sql.filter(f)));
                format!("CASE WHEN {} THEN 1 ELSE 0 END AS s{k}", cond.join(" AND "))
            })
            .collect();
        let bd = self
            .breakdown
            .as_ref()
            .map(|f| sql.dimension(f))
            .unwrap_or_else(|| "NULL".into());
        let col = self.actor.column();
        let key = self.actor.sort_key(backend);
        let types: Vec<String> = self
            .steps
            .iter()
            .map(|(t, _)| sql.bind(t.clone()))
            .collect();
        let text = format!(
            "SELECT {col}, occurred_at, {bd}, {flags} FROM events WHERE tenant_id = {tenant} \
             AND occurred_at >= {from} AND occurred_at <= {until} AND {key} IS NOT NULL AND type IN ({types}) \
             ORDER BY {key}, occurred_at, {ties}",
            flags = flags.join(", "),
            // Events of one actor at the same instant are taken in step
            // order, so a sign-up and a purchase stamped alike convert
            // whatever order the database returns them in.
            ties = (0..self.steps.len())
                .map(|k| format!("s{k} DESC"))
                .collect::<Vec<_>>()
                .join(", "),
            tenant = sql.bind(tenant),
            from = sql.bind(time_value(backend, self.from)),
            until = sql.bind(time_value(backend, self.until)),
            types = types.join(", "),
        );
        raw::statement(sql, text)
    }
}

pub async fn funnel(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    q: FunnelQuery,
    timeout: std::time::Duration,
) -> AppResult<FunnelResult> {
    let plan = funnel_plan(q, Utc::now())?;
    let n = plan.steps.len();
    let (tz, to, window) = (plan.tz, plan.to, plan.window);

    let started = std::time::Instant::now();
    let mut snapshot = Snapshot::begin(db, ctx, timeout).await?;
    let backend = snapshot.backend();
    let stmt = plan.statement(backend, ctx.tenant_id);
    // Per breakdown value: actors reaching each step, and the seconds each
    // conversion took. Rows arrive sorted by actor, so only the current
    // actor's walk is held.
    let mut tallies: HashMap<Option<String>, Tally> = HashMap::new();
    let mut current: Option<String> = None;
    let mut walk = Walk::default();
    let streamed = snapshot.for_each_row(stmt, |row| {
        let who: String = row.try_get_by_index(0)?;
        if current.as_deref() != Some(who.as_str()) {
            walk.finish(&mut tallies, n);
            walk = Walk::default();
            current = Some(who);
        }
        let at = time_at(backend, row, 1)?;
        let matches =
            |k: usize| -> Result<bool, DbErr> { Ok(row.try_get_by_index::<i32>(3 + k)? == 1) };
        if walk.reached == 0 {
            if at < to && matches(0)? {
                walk.times.push(at);
                walk.reached = 1;
                walk.group = row.try_get_by_index(2)?;
                // Past the representable dates, the window has no end.
                walk.until = window.end(tz, at).unwrap_or(DateTime::<Utc>::MAX_UTC);
            }
        } else if walk.reached < n && at <= walk.until && matches(walk.reached)? {
            walk.times.push(at);
            walk.reached += 1;
        }
        Ok(())
    });
    within(timeout, streamed).await?;
    snapshot.finish().await?;
    let db_time = started.elapsed();
    walk.finish(&mut tallies, n);

    let names: Vec<String> = plan.steps.iter().map(|(t, _)| t.clone()).collect();
    let mut overall = Tally::new(n);
    for t in tallies.values() {
        overall.add(t);
    }
    let mut breakdowns = Vec::new();
    if plan.breakdown.is_some() {
        let mut groups: Vec<(Option<String>, Tally)> = tallies.into_iter().collect();
        groups.sort_by(|a, b| {
            b.1.counts[0]
                .cmp(&a.1.counts[0])
                .then_with(|| a.0.cmp(&b.0))
        });
        let mut other = Tally::new(n);
        for (i, (value, tally)) in groups.into_iter().enumerate() {
            if i < MAX_BREAKDOWN_GROUPS {
                let group = value
                    .map(|v| serde_json::from_str(&v).unwrap_or(Value::String(v)))
                    .unwrap_or(Value::Null);
                breakdowns.push((group, tally.steps(&names)));
            } else {
                other.add(&tally);
            }
        }
        if other.counts[0] > 0 {
            breakdowns.push((Value::String(OTHER.into()), other.steps(&names)));
        }
    }
    Ok(FunnelResult {
        steps: overall.steps(&names),
        db_time,
        breakdowns,
    })
}

#[derive(Default)]
struct Walk {
    reached: usize,
    times: Vec<DateTime<Utc>>,
    group: Option<String>,
    /// The end of the conversion window opened by the first step.
    until: DateTime<Utc>,
}

impl Walk {
    fn finish(&self, tallies: &mut HashMap<Option<String>, Tally>, n: usize) {
        if self.reached == 0 {
            return;
        }
        let tally = tallies
            .entry(self.group.clone())
            .or_insert_with(|| Tally::new(n));
        for k in 0..self.reached {
            tally.counts[k] += 1;
            if k > 0 {
                let seconds =
                    (self.times[k] - self.times[k - 1]).num_milliseconds() as f64 / 1000.0;
                tally.seconds[k].push(seconds);
            }
        }
    }
}

struct Tally {
    counts: Vec<u64>,
    seconds: Vec<Vec<f64>>,
}

impl Tally {
    fn new(n: usize) -> Self {
        Tally {
            counts: vec![0; n],
            seconds: vec![Vec::new(); n],
        }
    }

    fn add(&mut self, other: &Tally) {
        for (k, c) in other.counts.iter().enumerate() {
            self.counts[k] += c;
            self.seconds[k].extend_from_slice(&other.seconds[k]);
        }
    }

    fn steps(mut self, names: &[String]) -> Vec<FunnelStep> {
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        (0..names.len())
            .map(|k| {
                self.seconds[k].sort_by(f64::total_cmp);
                FunnelStep {
                    event_type: names[k].clone(),
                    count: self.counts[k],
                    conversion_from_start: ratio(self.counts[k], self.counts[0]),
                    conversion_from_previous: if k == 0 {
                        ratio(self.counts[0], self.counts[0])
                    } else {
                        ratio(self.counts[k], self.counts[k - 1])
                    },
                    median_seconds_to_convert: percentile_cont(&self.seconds[k], 0.5),
                }
            })
            .collect()
    }
}

pub struct RetentionQuery {
    pub start_event: String,
    pub return_event: String,
    pub period: Granularity,
    /// Later periods to follow each cohort for (default 8).
    pub periods: Option<i32>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub last: Option<String>,
    pub timezone: Option<String>,
    pub count_by: Option<String>,
    /// The widest range allowed; `None`: the default.
    pub max_span: Option<chrono::Duration>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Cohort {
    /// The instant the cohort's period starts.
    pub start: DateTime<Utc>,
    /// Actors whose first start event in range fell in this period.
    pub size: u64,
    /// Per period offset (0 = the cohort's own period): actors who did the
    /// return event then; `None` for periods that have not begun.
    pub returned: Vec<Option<u64>>,
    pub rates: Vec<Option<f64>>,
}

/// A validated retention query: what [`retention`] runs, and what the
/// golden tests snapshot through [`RetentionPlan::statement`].
pub struct RetentionPlan {
    pub(super) start_event: String,
    pub(super) return_event: String,
    pub(super) periods: usize,
    pub(super) cohorts: Vec<time::Bucket>,
    /// Every period's start, the cohorts' and the followed ones after.
    pub(super) starts: Vec<DateTime<Utc>>,
    pub(super) tz: Tz,
    pub(super) from: DateTime<Utc>,
    pub(super) to: DateTime<Utc>,
    /// The end of the last followed period: the last return event read.
    pub(super) until: DateTime<Utc>,
    pub(super) actor: Actor,
}

pub fn retention_plan(q: RetentionQuery, now: DateTime<Utc>) -> AppResult<RetentionPlan> {
    for (at, t) in [
        ("input.startEvent", &q.start_event),
        ("input.returnEvent", &q.return_event),
    ] {
        if t.is_empty() || t.len() > 100 {
            return Err(AppError::bad_input(at, "1 to 100 characters"));
        }
    }
    if !matches!(
        q.period,
        Granularity::Day | Granularity::Week | Granularity::Month
    ) {
        return Err(AppError::bad_input("input.period", "DAY, WEEK or MONTH"));
    }
    let periods = match q.periods {
        None => 8,
        Some(p) if (1..=MAX_PERIODS as i32).contains(&p) => p as usize,
        Some(_) => {
            return Err(AppError::bad_input(
                "input.periods",
                format!("1 to {MAX_PERIODS}"),
            ));
        }
    };
    let tz = plan::timezone(q.timezone.as_deref(), "input.timezone")?;
    let (from, to) = plan::range_within(
        q.from,
        q.to,
        q.last.as_deref(),
        now,
        q.max_span.unwrap_or(plan::DEFAULT_MAX_SPAN),
        "input.range",
    )?;
    let actor = Actor::parse(q.count_by.as_deref(), "input.countBy")?;
    let cohorts = time::buckets(Some(q.period), tz, from, to, MAX_PERIODS).ok_or_else(|| {
        AppError::bad_input("input.range", format!("at most {MAX_PERIODS} cohorts"))
    })?;
    // Periods after the range, so the last cohort is followed too.
    let mut end_local = time::truncate(q.period, time::local(tz, to));
    for _ in 0..=periods {
        end_local = time::next(q.period, end_local);
    }
    let until = tz
        .from_local_datetime(&end_local)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(to);
    let all = time::buckets(Some(q.period), tz, from, until, MAX_PERIODS * 3)
        .ok_or_else(|| AppError::bad_input("input.periods", "too many periods"))?;
    Ok(RetentionPlan {
        start_event: q.start_event,
        return_event: q.return_event,
        periods,
        cohorts,
        starts: all.iter().map(|b| b.start).collect(),
        tz,
        from,
        to,
        until,
        actor,
    })
}

impl RetentionPlan {
    /// The caller's start and return events, sorted by actor and time;
    /// of one actor's events at the same instant, starts first (column 3),
    /// so a return stamped like the first start counts (`at >= since`)
    /// whatever order the database would return them in.
    pub fn statement(&self, backend: DbBackend, tenant: uuid::Uuid) -> Statement {
        let mut sql = raw::new_sql(backend);
        let col = self.actor.column();
        let key = self.actor.sort_key(backend);
        let text = format!(
            "SELECT {col}, occurred_at, CASE WHEN type = {s} THEN 1 ELSE 0 END, CASE WHEN type = {r} THEN 1 ELSE 0 END \
             FROM events WHERE tenant_id = {tenant} AND occurred_at >= {from} AND occurred_at < {until} \
             AND {key} IS NOT NULL AND type IN ({s2}, {r2}) ORDER BY {key}, occurred_at, 3 DESC",
            s = sql.bind(self.start_event.clone()),
            r = sql.bind(self.return_event.clone()),
            tenant = sql.bind(tenant),
            from = sql.bind(time_value(backend, self.from)),
            until = sql.bind(time_value(backend, self.until)),
            s2 = sql.bind(self.start_event.clone()),
            r2 = sql.bind(self.return_event.clone()),
        );
        raw::statement(sql, text)
    }
}

/// A retention answer and where it came from.
#[derive(Clone, Debug)]
pub struct Retention {
    pub cohorts: Vec<Cohort>,
    pub source: Source,
    /// Time spent waiting for the database.
    pub db_time: std::time::Duration,
}

/// Answers `q` from the hourly actor bitmaps where they can answer it
/// exactly ([`cohorts`](super::cohorts)) and `bitmaps` allows it
/// (`PULSE_RETENTION_BITMAPS`), else from raw events.
pub async fn retention(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    q: RetentionQuery,
    timeout: std::time::Duration,
    bitmaps: bool,
) -> AppResult<Retention> {
    let now = Utc::now();
    let plan = retention_plan(q, now)?;
    let periods = plan.periods;

    let started = std::time::Instant::now();
    let mut snapshot = Snapshot::begin(db, ctx, timeout).await?;
    let fast = if bitmaps {
        within(
            timeout,
            super::cohorts::counts(&mut snapshot, &plan, ctx.tenant_id),
        )
        .await?
    } else {
        None
    };
    let (source, counts) = match fast {
        Some(counts) => (Source::BITMAP.and_raw(counts.raw), counts),
        None => (
            Source::RAW,
            raw_counts(&mut snapshot, &plan, ctx, timeout).await?,
        ),
    };
    snapshot.finish().await?;
    let db_time = started.elapsed();
    let (size, returned) = (counts.size, counts.returned);
    let starts = &plan.starts;

    let cohorts = plan
        .cohorts
        .iter()
        .enumerate()
        .map(|(c, bucket)| {
            let counts: Vec<Option<u64>> = (0..=periods)
                .map(|k| {
                    starts
                        .get(c + k)
                        .filter(|s| **s <= now)
                        .map(|_| returned[c][k])
                })
                .collect();
            let rates = counts
                .iter()
                .map(|r| {
                    r.map(|r| {
                        if size[c] == 0 {
                            0.0
                        } else {
                            r as f64 / size[c] as f64
                        }
                    })
                })
                .collect();
            Cohort {
                start: bucket.start,
                size: size[c],
                returned: counts,
                rates,
            }
        })
        .collect();
    Ok(Retention {
        cohorts,
        source,
        db_time,
    })
}

/// The plan's counts from raw events: the start and return events,
/// streamed sorted by actor, one actor's state held at a time.
async fn raw_counts(
    snapshot: &mut Snapshot,
    plan: &RetentionPlan,
    ctx: &TenantCtx,
    timeout: std::time::Duration,
) -> AppResult<Counts> {
    let (periods, to, starts) = (plan.periods, plan.to, &plan.starts);
    let period_of = |t: DateTime<Utc>| starts.partition_point(|s| *s <= t).saturating_sub(1);
    let backend = snapshot.backend();
    let stmt = plan.statement(backend, ctx.tenant_id);
    let mut size = vec![0u64; plan.cohorts.len()];
    let mut returned = vec![vec![0u64; periods + 1]; plan.cohorts.len()];
    let mut current: Option<String> = None;
    let mut first: Option<(usize, DateTime<Utc>)> = None;
    let mut seen = vec![false; periods + 1];
    // Rows arrive sorted by actor: only the current actor's state is held.
    let streamed = snapshot.for_each_row(stmt, |row| {
        let who: String = row.try_get_by_index(0)?;
        if current.as_deref() != Some(who.as_str()) {
            current = Some(who);
            first = None;
            seen.iter_mut().for_each(|s| *s = false);
        }
        let at = time_at(backend, row, 1)?;
        let is_start = row.try_get_by_index::<i32>(2)? == 1;
        let is_return = row.try_get_by_index::<i32>(3)? == 1;
        if first.is_none() && is_start && at < to {
            let cohort = period_of(at);
            first = Some((cohort, at));
            if let Some(n) = size.get_mut(cohort) {
                *n += 1;
            }
        }
        if let Some((cohort, since)) = first
            && is_return
            && at >= since
        {
            let offset = period_of(at) - cohort;
            if offset <= periods
                && !seen[offset]
                && let Some(r) = returned.get_mut(cohort)
            {
                seen[offset] = true;
                r[offset] += 1;
            }
        }
        Ok(())
    });
    within(timeout, streamed).await?;
    Ok(Counts {
        size,
        returned,
        raw: true,
    })
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeZone, Utc};
    use chrono_tz::Tz;

    use super::ConversionWindow;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .expect("valid")
    }

    #[test]
    fn a_day_window_follows_the_zones_calendar() {
        let berlin = Tz::Europe__Berlin;
        let day = ConversionWindow::parse("1d").expect("valid");
        assert_eq!(day, ConversionWindow::Days(1));
        // Noon to noon across the spring change: 23 hours.
        assert_eq!(
            day.end(berlin, at(2026, 3, 28, 11, 0)),
            Some(at(2026, 3, 29, 10, 0))
        );
        assert_eq!(
            day.end(Tz::UTC, at(2026, 3, 28, 11, 0)),
            Some(at(2026, 3, 29, 11, 0))
        );
        // Ending in the gap (02:30 does not exist): the gap's end, 03:00.
        assert_eq!(
            day.end(berlin, at(2026, 3, 28, 1, 30)),
            Some(at(2026, 3, 29, 1, 0))
        );
        let hours = ConversionWindow::parse("24h").expect("valid");
        assert_eq!(
            hours.end(berlin, at(2026, 3, 28, 11, 0)),
            Some(at(2026, 3, 29, 11, 0))
        );
    }

    #[test]
    fn a_window_past_the_last_date_has_no_end_rather_than_a_panic() {
        let late = DateTime::<Utc>::MAX_UTC;
        assert_eq!(
            ConversionWindow::Days(14).end(Tz::Europe__Berlin, late),
            None
        );
        let hours = ConversionWindow::parse("2h").expect("valid");
        assert_eq!(hours.end(Tz::UTC, late), None);
    }
}
