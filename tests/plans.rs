//! Golden plans: the statements of every golden case (see `golden`), run
//! through `EXPLAIN QUERY PLAN` (SQLite) or `EXPLAIN (FORMAT JSON)`
//! (PostgreSQL) on a database seeded with two years of one tenant's
//! history, must read only the time range they ask for: an index range
//! scan bounded by time, never a walk through the tenant's whole history
//! (`SCAN events`, or an index search bounded only by tenant and type).
//!
//! SQLite's plan lines are snapshotted beside each case
//! (`sqlite-plan.snap`): they depend on the schema and the statement only,
//! as Pulse does not `ANALYZE` its embedded database. PostgreSQL's plans
//! depend on statistics, so there the test asserts their shape (node
//! types, relations, index conditions), never costs.

use std::collections::HashSet;
use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use pulse::auth::{Role, TenantCtx};
use pulse::domain::events::store::{Partitions, month_index};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, Value as SqlValue};
use serde_json::Value;
use uuid::Uuid;

use crate::common::*;
use crate::golden::{Case, now};

/// Enough events that a full scan and a range scan differ by orders of
/// magnitude, spread over two years before the golden `now` and a month
/// after it (so the partitions at the ends of a range hold rows outside
/// it, as they do in production once time moves on).
const EVENTS: i64 = 60_000;
const HISTORY_DAYS: i64 = 730;
const FUTURE_DAYS: i64 = 30;

async fn seed(db: &DatabaseConnection, tenant: Uuid) {
    let backend = db.get_database_backend();
    let start = now() - Duration::days(HISTORY_DAYS);
    let step_micros = Duration::days(HISTORY_DAYS + FUTURE_DAYS)
        .num_microseconds()
        .expect("fits")
        / EVENTS;
    let kind = "CASE i % 10 WHEN 7 THEN 'purchase' WHEN 8 THEN 'signup' WHEN 9 THEN 'email_open' ELSE 'page_view' END";
    let sql = if backend == DbBackend::Postgres {
        let months: HashSet<i32> = (month_index(start)..=month_index(now()) + 2).collect();
        Partitions::default()
            .ensure(db, months)
            .await
            .expect("partitions");
        format!(
            "INSERT INTO events (tenant_id, id, type, occurred_at, user_id, session_id, properties, source, received_at) \
             SELECT $1, gen_random_uuid(), {kind}, $2 + i * $3 * interval '1 microsecond', 'u' || (i % 5000), 's' || (i % 20000), \
             jsonb_build_object('country', (ARRAY['de', 'fr', 'us', 'jp'])[i % 4 + 1], 'path', '/p' || (i % 50), \
             'duration', i % 300, 'plan', (ARRAY['free', 'pro', 'team'])[i % 3 + 1], 'amount', i % 500), \
             'test', $2 + i * $3 * interval '1 microsecond' FROM generate_series(0, {last}) AS i",
            last = EVENTS - 1
        )
    } else {
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last}) \
             INSERT INTO events (tenant_id, id, type, occurred_at, user_id, session_id, properties, source, received_at) \
             SELECT ?1, randomblob(16), {kind}, ?2 + i * ?3, 'u' || (i % 5000), 's' || (i % 20000), \
             json_object('country', CASE i % 4 WHEN 0 THEN 'de' WHEN 1 THEN 'fr' WHEN 2 THEN 'us' ELSE 'jp' END, \
             'path', '/p' || (i % 50), 'duration', i % 300, \
             'plan', CASE i % 3 WHEN 0 THEN 'free' WHEN 1 THEN 'pro' ELSE 'team' END, 'amount', i % 500), \
             'test', ?2 + i * ?3 FROM n",
            last = EVENTS - 1
        )
    };
    let start_value: SqlValue = if backend == DbBackend::Postgres {
        start.into()
    } else {
        start.timestamp_micros().into()
    };
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        sql,
        [tenant.into(), start_value, step_micros.into()],
    ))
    .await
    .expect("seed events");
    // The hourly rollups, as the migration builds them from events.
    let hour = if backend == DbBackend::Postgres {
        "date_trunc('hour', occurred_at, 'UTC')"
    } else {
        "occurred_at / 3600000000 * 3600000000"
    };
    let tenant_param = if backend == DbBackend::Postgres {
        "$1"
    } else {
        "?1"
    };
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        format!(
            "INSERT INTO analytics_aggregates (tenant_id, event_type, hour_start, event_count) \
             SELECT tenant_id, type, {hour}, count(*) FROM events WHERE tenant_id = {tenant_param} GROUP BY 1, 2, 3"
        ),
        [tenant.into()],
    ))
    .await
    .expect("seed rollups");
    // Actor bitmaps (per type and over all types, both kinds) and numeric
    // rollups of `amount` (alone and by `plan`) for the same hours; their
    // contents do not matter to a plan.
    let empty_bitmap = if backend == DbBackend::Postgres {
        "'\\x00'::bytea"
    } else {
        "x'00'"
    };
    let kinds = "(SELECT 0 AS kind UNION ALL SELECT 1 AS kind) k";
    let plans = "(SELECT 'free' AS v UNION ALL SELECT 'pro' UNION ALL SELECT 'team') p";
    for insert in [
        format!(
            "INSERT INTO actor_bitmaps (tenant_id, kind, event_type, hour_start, bitmap) \
             SELECT tenant_id, k.kind, event_type, hour_start, {empty_bitmap} \
             FROM analytics_aggregates CROSS JOIN {kinds} WHERE tenant_id = {tenant_param}"
        ),
        format!(
            "INSERT INTO actor_bitmaps (tenant_id, kind, event_type, hour_start, bitmap) \
             SELECT DISTINCT tenant_id, k.kind, '', hour_start, {empty_bitmap} \
             FROM analytics_aggregates CROSS JOIN {kinds} WHERE tenant_id = {tenant_param}"
        ),
        format!(
            "INSERT INTO property_rollups \
             (tenant_id, property, dimension, hour_start, event_type, value, n, s, lo, hi, skipped) \
             SELECT tenant_id, 'amount', '', hour_start, event_type, '', event_count, 1, 1, 1, 0 \
             FROM analytics_aggregates WHERE tenant_id = {tenant_param}"
        ),
        format!(
            "INSERT INTO property_rollups \
             (tenant_id, property, dimension, hour_start, event_type, value, n, s, lo, hi, skipped) \
             SELECT tenant_id, 'amount', 'plan', hour_start, event_type, p.v, event_count, 1, 1, 1, 0 \
             FROM analytics_aggregates CROSS JOIN {plans} WHERE tenant_id = {tenant_param}"
        ),
    ] {
        db.execute_raw(Statement::from_sql_and_values(
            backend,
            insert,
            [tenant.into()],
        ))
        .await
        .expect("seed bitmaps and numeric rollups");
    }
    if backend == DbBackend::Postgres {
        db.execute_unprepared(
            "ANALYZE events; ANALYZE analytics_aggregates; ANALYZE actor_bitmaps; ANALYZE property_rollups",
        )
        .await
        .expect("analyze");
    }
}

/// Whether a statement reads a bounded span of time (every golden case but
/// the unfiltered events listing, which a LIMIT bounds instead, and the
/// bitmaps' coverage check, one row per tenant).
fn time_bounded(s: &Statement) -> bool {
    s.sql.contains("occurred_at >=")
        || s.sql.contains("\"occurred_at\" >=")
        || s.sql.contains("hour_start >=")
}

/// The hourly rollup tables: read by index, bounded by `hour_start`.
const ROLLUP_TABLES: [&str; 3] = ["analytics_aggregates", "actor_bitmaps", "property_rollups"];

/// SQLite: the plan's lines, indented by depth.
async fn sqlite_plan(db: &DatabaseConnection, s: &Statement) -> Vec<String> {
    let rows = db
        .query_all_raw(Statement {
            sql: format!("EXPLAIN QUERY PLAN {}", s.sql),
            ..s.clone()
        })
        .await
        .unwrap_or_else(|e| panic!("explain {}: {e}", s.sql));
    let mut depth: std::collections::HashMap<i64, usize> = std::collections::HashMap::new();
    rows.iter()
        .map(|r| {
            let id: i64 = r.try_get_by_index(0).expect("id");
            let parent: i64 = r.try_get_by_index(1).expect("parent");
            let detail: String = r.try_get_by_index(3).expect("detail");
            let d = depth.get(&parent).map_or(0, |d| d + 1);
            depth.insert(id, d);
            format!("{}{detail}", "  ".repeat(d))
        })
        .collect()
}

fn check_sqlite(lines: &[String], s: &Statement, failures: &mut Vec<String>) {
    for line in lines {
        let line = line.trim();
        for table in std::iter::once("events").chain(ROLLUP_TABLES) {
            if line.starts_with(&format!("SCAN {table}")) {
                failures.push(format!(
                    "a scan of the tenant's whole history: {line}\n{}",
                    s.sql
                ));
            }
            if time_bounded(s) && line.starts_with(&format!("SEARCH {table} ")) {
                let column = if table == "events" {
                    "occurred_at"
                } else {
                    "hour_start"
                };
                // One user's events (the listing's filter) are bounded by
                // the user, as the answer is.
                let bounded = line.contains(&format!("{column}>"))
                    || line.contains(&format!("{column}<"))
                    || line.contains("user_id=?");
                if !bounded {
                    failures.push(format!(
                        "an index search not bounded by time: {line}\n{}",
                        s.sql
                    ));
                }
            }
        }
    }
}

/// PostgreSQL: every scan of `events` reads only partitions of the months
/// the statement's time range touches (plan-time pruning), an index
/// search of a partition the range covers only in part is bounded by
/// `occurred_at`, index scans on `analytics_aggregates` are bounded by
/// `hour_start`, and it is never scanned sequentially.
fn check_postgres(plan: &Value, s: &Statement, months: &(i32, i32), seen: &mut Vec<String>) {
    let node = plan["Node Type"].as_str().unwrap_or_default();
    // An index search of a partition the range only partly covers must be
    // bounded by time, or it reads the whole month: what an OR of ranges
    // or a (tenant, user) index walk would do. A partition wholly inside
    // the range is the answer itself, however it is read; so is one user's
    // history, when the statement asks for one user (the events listing).
    if let Some(index) = plan["Index Name"].as_str()
        && let Some(month) = partition_month(index)
        && time_bounded(s)
        && !(month > months.0 && month < months.1)
    {
        let cond = plan["Index Cond"].as_str().unwrap_or_default();
        assert!(
            cond.contains("occurred_at") || cond.contains("(user_id = "),
            "{node} on {index} not bounded by time: {cond}\n{}",
            s.sql
        );
    }
    if let Some(relation) = plan["Relation Name"].as_str() {
        seen.push(format!("{node} on {relation}"));
        if let Some(month) = partition_month(relation)
            && time_bounded(s)
        {
            assert!(
                (months.0..=months.1).contains(&month),
                "{node} of partition {relation}, outside the range's months: {}",
                s.sql
            );
        }
        if ROLLUP_TABLES.contains(&relation) {
            assert_ne!(node, "Seq Scan", "rollups scanned whole: {}", s.sql);
            let cond = plan["Index Cond"].as_str().unwrap_or_default();
            if node != "Bitmap Heap Scan" {
                assert!(
                    cond.contains("hour_start"),
                    "rollup index scan not bounded by time: {cond}\n{}",
                    s.sql
                );
            }
        }
    }
    for child in plan["Plans"].as_array().into_iter().flatten() {
        check_postgres(child, s, months, seen);
    }
}

/// The month of an `events_pYYYYMM` partition or of one of its indexes.
fn partition_month(name: &str) -> Option<i32> {
    let digits = name.strip_prefix("events_p")?.get(..6)?;
    let year: i32 = digits.get(..4)?.parse().ok()?;
    let month: i32 = digits.get(4..)?.parse().ok()?;
    Some(year * 12 + month - 1)
}

/// The months from the earliest to the latest instant bound to `s`.
fn months_of(s: &Statement) -> (i32, i32) {
    let times: Vec<DateTime<Utc>> = s
        .values
        .iter()
        .flat_map(|v| v.0.iter())
        .filter_map(|v| match v {
            SqlValue::ChronoDateTimeUtc(Some(t)) => Some(*t),
            _ => None,
        })
        .collect();
    let lo = times.iter().min().map_or(i32::MIN, |t| month_index(*t));
    let hi = times.iter().max().map_or(i32::MAX, |t| month_index(*t));
    (lo, hi)
}

#[tokio::test]
async fn every_golden_statement_reads_only_its_time_range() {
    let app = spawn_app().await;
    let db = &app.state.db;
    let backend = db.get_database_backend();
    let tenant = app.tenant("plans").await;
    seed(db, tenant.id).await;
    let ctx = TenantCtx {
        tenant_id: tenant.id,
        tenant_slug: tenant.slug.clone(),
        user_id: Some(tenant.user(Role::Viewer).id),
        actor: String::new(),
        role: Role::Viewer,
        policy: Default::default(),
    };

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .expect("golden cases")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("input.json").exists())
        .collect();
    cases.sort();
    assert!(cases.len() > 10, "the golden cases are found");
    let mut failures = Vec::new();
    for dir in cases {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let statements = Case::read(&dir.join("input.json")).statements(backend, tenant.id);
        if backend == DbBackend::Postgres {
            // Inside the tenant-scoped transaction, as requests run them.
            let explained: Vec<Value> = {
                let statements = statements.clone();
                pulse::db::scoped(db, &ctx, move |txn| {
                    Box::pin(async move {
                        let mut plans = Vec::new();
                        for s in &statements {
                            let row = txn
                                .query_one_raw(Statement {
                                    sql: format!("EXPLAIN (FORMAT JSON) {}", s.sql),
                                    ..s.clone()
                                })
                                .await?
                                .expect("a plan");
                            plans.push(row.try_get_by_index::<Value>(0)?);
                        }
                        Ok(plans)
                    })
                })
                .await
                .unwrap_or_else(|e| panic!("{name}: explain: {e}"))
            };
            for (s, plan) in statements.iter().zip(&explained) {
                let mut seen = Vec::new();
                check_postgres(&plan[0]["Plan"], s, &months_of(s), &mut seen);
                assert!(!seen.is_empty(), "{name}: no relation in the plan");
            }
        } else {
            let mut shape = String::new();
            for (i, s) in statements.iter().enumerate() {
                let lines = sqlite_plan(db, s).await;
                check_sqlite(&lines, s, &mut failures);
                shape.push_str(&format!("-- statement {}\n{}\n\n", i + 1, lines.join("\n")));
            }
            let mut settings = insta::Settings::clone_current();
            settings.set_snapshot_path(&dir);
            settings.set_prepend_module_to_snapshot(false);
            settings.set_omit_expression(true);
            settings.set_input_file(dir.join("input.json"));
            settings.bind(|| insta::assert_snapshot!("sqlite-plan", shape));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
