//! One statement for the measures that decompose (COUNT, SUM, AVG, MIN,
//! MAX): the database returns partial aggregates per (group, bucket) cell,
//! and the totals, the group ranking and `__other__` are combined here from
//! those cells, exactly, instead of being asked for in three to five more
//! statements over the same rows.
//!
//! When a grouping has so many cells that shipping them would cost more
//! than letting the database rank the groups, [`aggregate`] declines and
//! the caller takes the statement-per-part path in [`raw`](super::raw).

use std::collections::HashMap;

use chrono::NaiveDateTime;
use sea_orm::{DbBackend, Statement};

use super::Snapshot;
use super::plan::{Measure, Plan};
use super::raw::{self, Aggregates, GroupKey};

/// The most cells fetched before giving the ranking back to the database.
pub(super) const MAX_CELLS: usize = 50_000;

/// Whether `measure` combines exactly from per-cell partials.
pub fn decomposes(measure: Measure) -> bool {
    matches!(
        measure,
        Measure::Count | Measure::Sum | Measure::Avg | Measure::Min | Measure::Max
    )
}

/// What a cell's rows add up to: enough to finish any decomposable measure
/// over any union of cells.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Partial {
    count: f64,
    sum: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
}

impl Partial {
    fn merge(&mut self, o: &Partial) {
        let both = |a: Option<f64>, b: Option<f64>, f: fn(f64, f64) -> f64| match (a, b) {
            (Some(a), Some(b)) => Some(f(a, b)),
            (a, b) => a.or(b),
        };
        self.count += o.count;
        self.sum = both(self.sum, o.sum, |a, b| a + b);
        self.min = both(self.min, o.min, f64::min);
        self.max = both(self.max, o.max, f64::max);
    }

    fn value(&self, measure: Measure) -> Option<f64> {
        match measure {
            Measure::Count => Some(self.count),
            Measure::Sum => self.sum,
            Measure::Avg => self
                .sum
                .filter(|_| self.count > 0.0)
                .map(|s| s / self.count),
            Measure::Min => self.min,
            Measure::Max => self.max,
            _ => None,
        }
    }
}

fn merged<'a>(parts: impl IntoIterator<Item = &'a Partial>) -> Partial {
    let mut total = Partial::default();
    for p in parts {
        total.merge(p);
    }
    total
}

/// The one statement: per-cell partials, at most [`MAX_CELLS`] + 1 rows.
pub fn statement(
    backend: DbBackend,
    plan: &Plan,
    tenant: uuid::Uuid,
    rollup: Option<raw::Window>,
) -> Statement {
    let g = raw::group_columns(plan);
    let mut sql = raw::new_sql(backend);
    let inner = raw::inner(&mut sql, plan, tenant, rollup);
    // Over hourly aggregate rows, `v` is a count: counting sums it.
    let count = if rollup.is_some() {
        "sum(v)"
    } else {
        "count(v)"
    };
    let numeric = |agg: &str| {
        if plan.measure.numeric() {
            format!("CAST({agg}(v) AS DOUBLE PRECISION)")
        } else {
            "CAST(NULL AS DOUBLE PRECISION)".to_owned()
        }
    };
    // The last column counts the rows aggregated: the work done, which
    // the query budget's estimate is checked against.
    let text = format!(
        "SELECT bucket{g}, CAST({count} AS DOUBLE PRECISION), {sum}, {min}, {max}, sum(skip), \
         count(*) FROM ({inner}) e GROUP BY bucket{g} LIMIT {limit}",
        sum = numeric("sum"),
        min = numeric("min"),
        max = numeric("max"),
        limit = MAX_CELLS + 1,
    );
    raw::statement(sql, text)
}

/// One (group, bucket) cell's partial aggregate.
pub type Cell = (GroupKey, Option<NaiveDateTime>, Partial);

/// What [`fetch`] found.
pub struct Fetched {
    pub cells: Vec<Cell>,
    /// Values skipped (present but not numbers).
    pub skipped: u64,
    /// Rows aggregated.
    pub rows: u64,
    /// Whether the numeric rollups answered ([`numeric`](super::numeric)).
    pub numeric: bool,
}

/// The cells of a decomposable `plan` from one statement, over a numeric
/// property's rollups where they answer it, or `None` when it has more
/// than [`MAX_CELLS`] cells.
pub async fn fetch(
    s: &mut Snapshot,
    plan: &Plan,
    tenant: uuid::Uuid,
    rollup: Option<raw::Window>,
) -> Result<Option<Fetched>, sea_orm::DbErr> {
    let backend = s.backend();
    let n = plan.group_by.len();
    let mut numeric = None;
    if let Some(series) = super::numeric::window(plan)
        && super::numeric::usable(s, plan, tenant, &series).await?
    {
        numeric = Some(series);
    }
    let query = match &numeric {
        Some(series) => super::numeric::statement(backend, plan, tenant, series),
        None => statement(backend, plan, tenant, rollup),
    };
    let rows = s.query_all(query).await?;
    if rows.len() > MAX_CELLS {
        return Ok(None);
    }
    let (mut skipped, mut aggregated) = (0u64, 0u64);
    let mut cells = Vec::with_capacity(rows.len());
    for row in &rows {
        let partial = Partial {
            count: raw::float(row, n + 1)?.unwrap_or(0.0),
            sum: raw::float(row, n + 2)?,
            min: raw::float(row, n + 3)?,
            max: raw::float(row, n + 4)?,
        };
        skipped += raw::skipped(row, n + 5)?;
        aggregated += raw::skipped(row, n + 6)?;
        cells.push((raw::key(row, 1, n)?, raw::bucket_of(backend, row)?, partial));
    }
    Ok(Some(Fetched {
        cells,
        skipped,
        rows: aggregated,
        numeric: numeric.is_some(),
    }))
}

/// Answers a decomposable `plan` from one statement, or `None` when it has
/// more than [`MAX_CELLS`] cells.
pub async fn aggregate(
    s: &mut Snapshot,
    plan: &Plan,
    tenant: uuid::Uuid,
    rollup: Option<raw::Window>,
) -> Result<Option<Aggregates>, sea_orm::DbErr> {
    Ok(fetch(s, plan, tenant, rollup).await?.map(|f| {
        let mut out = combine(plan, f.cells, f.skipped, rollup.is_some() || f.numeric);
        out.rows = Some(f.rows);
        out
    }))
}

/// The totals, the group ranking and `__other__` of `plan` from its cells.
pub fn combine(plan: &Plan, found: Vec<Cell>, skipped: u64, from_rollups: bool) -> Aggregates {
    let n = plan.group_by.len();
    let mut cells: HashMap<GroupKey, Vec<(Option<NaiveDateTime>, Partial)>> = HashMap::new();
    for (key, bucket, partial) in found {
        cells.entry(key).or_default().push((bucket, partial));
    }
    let m = plan.measure;
    let mut out = Aggregates {
        total: merged(cells.values().flatten().map(|(_, p)| p)).value(m),
        skipped,
        from_rollups,
        ..Default::default()
    };
    if n == 0 {
        // Cells of one bucket may come from several statements (the cache
        // and the database): merge, don't overwrite.
        let mut points: HashMap<Option<NaiveDateTime>, Partial> = HashMap::new();
        for (bucket, p) in cells.remove(&Vec::new()).unwrap_or_default() {
            points.entry(bucket).or_default().merge(&p);
        }
        for (bucket, p) in points {
            out.points.insert((Some(Vec::new()), bucket), p.value(m));
        }
        return out;
    }

    // Groups by total, largest first (no value last), ties by key with
    // nulls first: the order the statement-per-part path asks SQL for.
    let mut groups: Vec<(GroupKey, Option<f64>)> = cells
        .iter()
        .map(|(key, cells)| (key.clone(), merged(cells.iter().map(|(_, p)| p)).value(m)))
        .collect();
    groups.sort_by(|(ka, a), (kb, b)| {
        b.partial_cmp(a)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| ka.cmp(kb))
    });
    let rest = groups.split_off(groups.len().min(plan.limit));
    out.more_groups = !rest.is_empty();

    let mut other: HashMap<Option<NaiveDateTime>, Partial> = HashMap::new();
    for (key, _) in &rest {
        for (bucket, p) in cells.remove(key).unwrap_or_default() {
            other.entry(bucket).or_default().merge(&p);
        }
    }
    if out.more_groups {
        out.other_total = merged(other.values()).value(m);
        for (bucket, p) in other {
            out.points.insert((None, bucket), p.value(m));
        }
    }
    for (key, cells) in cells {
        let mut points: HashMap<Option<NaiveDateTime>, Partial> = HashMap::new();
        for (bucket, p) in cells {
            points.entry(bucket).or_default().merge(&p);
        }
        for (bucket, p) in points {
            out.points.insert((Some(key.clone()), bucket), p.value(m));
        }
    }
    out.groups = groups;
    out
}
