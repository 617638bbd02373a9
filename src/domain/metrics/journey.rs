//! Funnels and retention: questions about each user's (or session's)
//! sequence of events rather than about event counts.
//!
//! The database selects the caller's matching events, sorted by actor and
//! time, with a flag per step; the sequences are walked here. That keeps
//! the definitions exact and identical on both backends, and streams one
//! pass over the rows.

use std::collections::HashMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use sea_orm::DatabaseConnection;
use serde_json::Value;

use super::plan::{self, Field, FilterOp};
use super::raw::{self, percentile_cont};
use super::time::{self, Granularity};
use super::{OTHER, Session, within};
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

    fn column(self) -> &'static str {
        match self {
            Actor::User => "user_id",
            Actor::Session => "session_id",
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
    /// Per value of the breakdown property, largest first; the rest as
    /// `__other__`.
    pub breakdowns: Vec<(Value, Vec<FunnelStep>)>,
}

fn window(raw: &str) -> AppResult<Duration> {
    plan::parse_relative(raw).ok_or_else(|| {
        AppError::bad_input(
            "input.conversionWindow",
            format!("`{raw}` is not a duration such as 30m, 24h, 7d or 2w"),
        )
    })
}

pub async fn funnel(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    q: FunnelQuery,
    timeout: std::time::Duration,
) -> AppResult<FunnelResult> {
    let now = Utc::now();
    if !(2..=MAX_STEPS).contains(&q.steps.len()) {
        return Err(AppError::bad_input(
            "input.steps",
            format!("2 to {MAX_STEPS} steps"),
        ));
    }
    let window = window(&q.conversion_window)?;
    plan::timezone(q.timezone.as_deref(), "input.timezone")?;
    let (from, to) = plan::range(q.from, q.to, q.last.as_deref(), now, "input.range")?;
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

    let mut session = Session::begin(db, ctx, timeout).await?;
    let backend = session.backend();
    let mut sql = raw::new_sql(backend);
    let flags: Vec<String> = steps
        .iter()
        .enumerate()
        .map(|(k, (t, filters))| {
            let mut cond = vec![format!("type = {}", sql.bind(t.clone()))];
            cond.extend(filters.iter().map(|f| sql.filter(f)));
            format!("CASE WHEN {} THEN 1 ELSE 0 END AS s{k}", cond.join(" AND "))
        })
        .collect();
    let bd = breakdown
        .as_ref()
        .map(|f| sql.dimension(f))
        .unwrap_or_else(|| "NULL".into());
    let col = actor.column();
    let types: Vec<String> = steps.iter().map(|(t, _)| sql.bind(t.clone())).collect();
    let text = format!(
        "SELECT {col}, occurred_at, {bd}, {flags} FROM events WHERE tenant_id = {tenant} \
         AND occurred_at >= {from} AND occurred_at < {until} AND {col} IS NOT NULL AND type IN ({types}) \
         ORDER BY {col}, occurred_at",
        flags = flags.join(", "),
        tenant = sql.bind(ctx.tenant_id),
        from = sql.bind(time_value(backend, from)),
        until = sql.bind(time_value(backend, to + window)),
        types = types.join(", "),
    );
    let rows = within(timeout, session.query_all(raw::statement(sql, text))).await?;
    session.finish().await?;

    let n = steps.len();
    // Per breakdown value: actors reaching each step, and the seconds each
    // conversion took.
    let mut tallies: HashMap<Option<String>, Tally> = HashMap::new();
    let mut current: Option<String> = None;
    let mut walk = Walk::default();
    for row in &rows {
        let who: String = row.try_get_by_index(0).map_err(AppError::from)?;
        if current.as_deref() != Some(who.as_str()) {
            walk.finish(&mut tallies, n);
            walk = Walk::default();
            current = Some(who);
        }
        let at = time_at(backend, row, 1)?;
        let value: Option<String> = row.try_get_by_index(2)?;
        let matches =
            |k: usize| -> AppResult<bool> { Ok(row.try_get_by_index::<i32>(3 + k)? == 1) };
        if walk.reached == 0 {
            if at < to && matches(0)? {
                walk.times.push(at);
                walk.reached = 1;
                walk.group = value;
            }
        } else if walk.reached < n && at - walk.times[0] <= window && matches(walk.reached)? {
            walk.times.push(at);
            walk.reached += 1;
        }
    }
    walk.finish(&mut tallies, n);

    let names: Vec<String> = steps.iter().map(|(t, _)| t.clone()).collect();
    let mut overall = Tally::new(n);
    for t in tallies.values() {
        overall.add(t);
    }
    let mut breakdowns = Vec::new();
    if breakdown.is_some() {
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
        breakdowns,
    })
}

#[derive(Default)]
struct Walk {
    reached: usize,
    times: Vec<DateTime<Utc>>,
    group: Option<String>,
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

pub async fn retention(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    q: RetentionQuery,
    timeout: std::time::Duration,
) -> AppResult<Vec<Cohort>> {
    let now = Utc::now();
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
    let (from, to) = plan::range(q.from, q.to, q.last.as_deref(), now, "input.range")?;
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
    let starts: Vec<DateTime<Utc>> = all.iter().map(|b| b.start).collect();
    let period_of = |t: DateTime<Utc>| starts.partition_point(|s| *s <= t).saturating_sub(1);

    let mut session = Session::begin(db, ctx, timeout).await?;
    let backend = session.backend();
    let mut sql = raw::new_sql(backend);
    let col = actor.column();
    let text = format!(
        "SELECT {col}, occurred_at, CASE WHEN type = {s} THEN 1 ELSE 0 END, CASE WHEN type = {r} THEN 1 ELSE 0 END \
         FROM events WHERE tenant_id = {tenant} AND occurred_at >= {from} AND occurred_at < {until} \
         AND {col} IS NOT NULL AND type IN ({s2}, {r2}) ORDER BY {col}, occurred_at",
        s = sql.bind(q.start_event.clone()),
        r = sql.bind(q.return_event.clone()),
        tenant = sql.bind(ctx.tenant_id),
        from = sql.bind(time_value(backend, from)),
        until = sql.bind(time_value(backend, until)),
        s2 = sql.bind(q.start_event.clone()),
        r2 = sql.bind(q.return_event.clone()),
    );
    let rows = within(timeout, session.query_all(raw::statement(sql, text))).await?;
    session.finish().await?;

    let mut size = vec![0u64; cohorts.len()];
    let mut returned = vec![vec![0u64; periods + 1]; cohorts.len()];
    let mut current: Option<String> = None;
    let mut first: Option<(usize, DateTime<Utc>)> = None;
    let mut seen = vec![false; periods + 1];
    for row in &rows {
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
            size[cohort] += 1;
        }
        if let Some((cohort, since)) = first
            && is_return
            && at >= since
        {
            let offset = period_of(at) - cohort;
            if offset <= periods && !seen[offset] {
                seen[offset] = true;
                returned[cohort][offset] += 1;
            }
        }
    }

    Ok(cohorts
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
        .collect())
}
