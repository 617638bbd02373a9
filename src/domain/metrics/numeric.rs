//! `SUM`, `AVG`, `MIN` and `MAX` of a declared numeric property from its
//! hourly rollups (`domain::events::rollup_fields`): the rollup rows of
//! the whole hours, plus raw events for the partial hours at the ends of
//! the range, give the same per-cell partials as the raw path's one
//! statement ([`cells`](super::cells)), which finishes them.
//!
//! Eligible: a numeric measure of a property, no filters, grouping by
//! `type` and at most one property, HOUR or coarser buckets (or none), a
//! zone whose offset over the range is always a whole number of hours, and
//! at least one whole hour; then, checked when it runs, the series of
//! that property (and dimension) must be backfilled and the dimension must
//! have had no more distinct values in any hour of the range than its
//! declared cap. Anything else is answered from raw events.
//!
//! Sums of hourly sums are added in another order than one sum over the
//! events, so they may differ from the raw path's in the last bits of a
//! double (as two raw runs may on PostgreSQL, whose parallel workers add
//! in any order); counts, minima and maxima are identical.

use sea_orm::{DbBackend, DbErr, Statement};

use super::Snapshot;
use super::plan::{Field, Measure, Plan};
use super::raw::{self, Window};
use crate::domain::events::query::time_value;

/// Which series answers a plan, and over which whole hours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Numeric {
    pub property: String,
    /// `''`: the series without a dimension.
    pub dimension: String,
    pub hours: Window,
}

/// The series and hours that could answer `plan` (see the module doc;
/// readiness and the cap are checked by [`usable`]).
pub fn window(plan: &Plan) -> Option<Numeric> {
    if !matches!(
        plan.measure,
        Measure::Sum | Measure::Avg | Measure::Min | Measure::Max
    ) || !plan.filters.is_empty()
        || plan.granularity == Some(super::time::Granularity::Minute)
    {
        return None;
    }
    let Some(Field::Property(keys)) = &plan.field else {
        return None;
    };
    let mut dimension = None;
    for f in &plan.group_by {
        match f {
            Field::Type => {}
            Field::Property(d) if dimension.is_none() => dimension = Some(d.join(".")),
            _ => return None,
        }
    }
    Some(Numeric {
        property: keys.join("."),
        dimension: dimension.unwrap_or_default(),
        hours: raw::rollup_hours(plan)?,
    })
}

/// Whether the series is backfilled and, grouped by its dimension, within
/// the dimension's cap in every hour of the range.
pub async fn usable(
    s: &mut Snapshot,
    plan: &Plan,
    tenant: uuid::Uuid,
    n: &Numeric,
) -> Result<bool, DbErr> {
    let backend = s.backend();
    let mut sql = raw::new_sql(backend);
    let text = format!(
        "SELECT f.max_values FROM rollup_series r LEFT JOIN rollup_fields f \
         ON f.tenant_id = r.tenant_id AND f.role = 1 AND f.name = r.dimension \
         WHERE r.tenant_id = {} AND r.property = {} AND r.dimension = {} AND r.ready_at IS NOT NULL",
        sql.bind(tenant),
        sql.bind(n.property.clone()),
        sql.bind(n.dimension.clone()),
    );
    let Some(row) = s.query_one(raw::statement(sql, text)).await? else {
        return Ok(false);
    };
    if n.dimension.is_empty() {
        return Ok(true);
    }
    let cap: i64 = if backend == DbBackend::Postgres {
        i64::from(row.try_get_by_index::<Option<i32>>(0)?.unwrap_or(0))
    } else {
        row.try_get_by_index::<Option<i64>>(0)?.unwrap_or(0)
    };
    let mut sql = raw::new_sql(backend);
    let (start, end) = n.hours;
    let text = format!(
        "SELECT 1 FROM property_rollups WHERE tenant_id = {} AND property = {} AND dimension = {} \
         AND hour_start >= {} AND hour_start < {}{} GROUP BY hour_start \
         HAVING count(DISTINCT value) > {} LIMIT 1",
        sql.bind(tenant),
        sql.bind(n.property.clone()),
        sql.bind(n.dimension.clone()),
        sql.bind(time_value(backend, start)),
        sql.bind(time_value(backend, end)),
        sql.and_types_in(plan, "event_type"),
        sql.bind(cap),
    );
    Ok(s.query_one(raw::statement(sql, text)).await?.is_none())
}

/// The cells statement ([`cells::statement`](super::cells::statement)'s
/// columns) over the series' rows of the whole hours and the raw events
/// of the partial ones.
pub fn statement(backend: DbBackend, plan: &Plan, tenant: uuid::Uuid, n: &Numeric) -> Statement {
    let mut sql = raw::new_sql(backend);
    let (start, end) = n.hours;
    let bucket = sql.bucket(plan, "hour_start");
    let dims: String = plan
        .group_by
        .iter()
        .enumerate()
        .map(|(i, f)| match f {
            Field::Type => format!(", event_type AS g{i}"),
            _ => format!(", NULLIF(value, '') AS g{i}"),
        })
        .collect();
    let rolled = format!(
        "SELECT {bucket} AS bucket{dims}, n, s, lo, hi, skipped AS skip FROM property_rollups \
         WHERE tenant_id = {} AND property = {} AND dimension = {} AND hour_start >= {} \
         AND hour_start < {}{}",
        sql.bind(tenant),
        sql.bind(n.property.clone()),
        sql.bind(n.dimension.clone()),
        sql.bind(time_value(backend, start)),
        sql.bind(time_value(backend, end)),
        sql.and_types_in(plan, "event_type"),
    );
    let g = raw::group_columns(plan);
    let edges = raw::edges(plan, (start, end));
    let inner = if edges.is_empty() {
        rolled
    } else {
        let events = raw::raw_inner(&mut sql, plan, tenant, &edges);
        format!(
            "{rolled} UNION ALL SELECT bucket{g}, CASE WHEN v IS NULL THEN 0 ELSE 1 END, v, v, v, skip \
             FROM ({events}) x"
        )
    };
    let text = format!(
        "SELECT bucket{g}, CAST(sum(n) AS DOUBLE PRECISION), CAST(sum(s) AS DOUBLE PRECISION), \
         CAST(min(lo) AS DOUBLE PRECISION), CAST(max(hi) AS DOUBLE PRECISION), CAST(sum(skip) AS BIGINT), count(*) \
         FROM ({inner}) e GROUP BY bucket{g} LIMIT {}",
        super::cells::MAX_CELLS + 1
    );
    raw::statement(sql, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::metrics::plan::{MetricQuery, plan};
    use chrono::{TimeZone, Utc};

    fn planned(measure: Measure, field: &str, group_by: &[&str], tz: &str) -> Plan {
        let now = Utc
            .with_ymd_and_hms(2026, 6, 10, 12, 30, 0)
            .single()
            .expect("valid");
        let q = MetricQuery {
            measure: Some(measure),
            field: Some(field.into()),
            group_by: group_by.iter().map(|s| (*s).to_owned()).collect(),
            granularity: Some(super::super::time::Granularity::Day),
            last: Some("7d".into()),
            timezone: Some(tz.into()),
            ..Default::default()
        };
        plan(q, now, chrono::Duration::days(400)).expect("valid plan")
    }

    #[test]
    fn sums_of_a_property_by_type_and_one_dimension_are_eligible() {
        let p = planned(
            Measure::Sum,
            "properties.amount",
            &["type", "properties.plan"],
            "UTC",
        );
        let n = window(&p).expect("eligible");
        assert_eq!(
            (n.property.as_str(), n.dimension.as_str()),
            ("amount", "plan")
        );
    }

    #[test]
    fn what_rollups_cannot_answer_is_not_eligible() {
        for p in [
            planned(Measure::Count, "properties.amount", &[], "UTC"),
            planned(Measure::P50, "properties.amount", &[], "UTC"),
            planned(
                Measure::Sum,
                "properties.amount",
                &["properties.a", "properties.b"],
                "UTC",
            ),
            planned(Measure::Sum, "properties.amount", &["userId"], "UTC"),
            planned(Measure::Sum, "properties.amount", &[], "Asia/Kolkata"),
        ] {
            assert_eq!(window(&p), None, "{:?} {:?}", p.measure, p.group_by);
        }
    }
}
