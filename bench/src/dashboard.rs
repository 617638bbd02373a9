//! Scenario `dashboard`: each demo dashboard resolved whole, one request at
//! a time, against its slowest widget run alone.
//!
//! The demo dashboards ("Product overview", "Email campaigns", see
//! `src/graphql/demo.rs`) are created by `pulse seed-demo`, which runs
//! first (a no-op when they exist). For each dashboard the scenario times
//! `dashboard(id) { widgets { data } }` (2 warm-up runs, then `--runs`),
//! then each widget's query alone through the matching top-level field,
//! with the dashboard's variables, filters, range and timezone applied the
//! way the server applies them (reconstructed here: the API shows a
//! widget's stored definition, not its bound one; see `bench/README.md`).
//! Around every timed series it scrapes `pulse_db_statements_total` from
//! `/metrics`, so each row also reports statements per request.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use anyhow::{Context as _, bail};
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use serde_json::{Map, Value, json};

use crate::queries::percentile;
use crate::server::ServerArgs;

#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[arg(long, default_value = "acme")]
    pub tenant: String,
    /// Timed runs per request (after two warm-up runs).
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
}

/// The demo dashboards, as `graphql::demo::seed_dashboards` names them.
const DASHBOARDS: [&str; 2] = ["Product overview", "Email campaigns"];

const WARM_UP: usize = 2;

/// Every field of each answer type, so that nothing is left uncomputed.
const METRIC: &str = "total series { group total points { bucket value } }";
pub(crate) const FUNNEL: &str = "steps { eventType count conversionFromStart conversionFromPrevious \
    medianSecondsToConvert } breakdowns { value steps { eventType count conversionFromStart \
    conversionFromPrevious medianSecondsToConvert } }";
pub(crate) const RETENTION: &str = "cohorts { start size returned rates }";

fn any_result() -> String {
    format!(
        "__typename ...on MetricResult {{ {METRIC} }} ...on FunnelResult {{ {FUNNEL} }} \
         ...on RetentionResult {{ {RETENTION} }}"
    )
}

/// The whole dashboard, every widget's data selected.
fn whole(id: &str) -> Value {
    json!({
        "query": format!(
            "query($id: ID!) {{ dashboard(id: $id) {{ widgets {{ title kind data {{ {} }} }} }} }}",
            any_result()
        ),
        "variables": { "id": id },
    })
}

/// The dashboard without widget data: what loading it costs.
fn shell(id: &str) -> Value {
    json!({
        "query": "query($id: ID!) { dashboard(id: $id) { name widgets { title kind } } }",
        "variables": { "id": id },
    })
}

/// What the scenario needs to rebuild each widget's bound query.
fn definitions(id: &str) -> Value {
    json!({
        "query": "query($id: ID!) { dashboard(id: $id) { name variables filters range timezone \
                  widgets { id title kind definition savedQueryId } } }",
        "variables": { "id": id },
    })
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    metrics_token: Option<String>,
    runs: usize,
}

/// One timed series.
struct Timing {
    p50: f64,
    p95: f64,
    statements_per_request: f64,
    /// The last answer's `data`.
    data: Value,
}

impl Client {
    async fn post(&self, body: &Value) -> anyhow::Result<Value> {
        let answer: Value = self
            .http
            .post(format!("{}/graphql", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?
            .json()
            .await?;
        if !answer["errors"].is_null() {
            bail!("{}", answer["errors"]);
        }
        Ok(answer["data"].clone())
    }

    /// `pulse_db_statements_total` from `/metrics`.
    async fn statements(&self) -> anyhow::Result<f64> {
        let mut request = self.http.get(format!("{}/metrics", self.base));
        if let Some(token) = &self.metrics_token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        if !response.status().is_success() {
            bail!(
                "/metrics answered {} (is PULSE_METRICS_TOKEN set for the server only?)",
                response.status()
            );
        }
        let text = response.text().await?;
        text.lines()
            .find_map(|l| {
                let mut parts = l.split_whitespace();
                (parts.next() == Some("pulse_db_statements_total"))
                    .then(|| parts.next().and_then(|v| v.parse::<f64>().ok()))
                    .flatten()
            })
            .context("no pulse_db_statements_total in /metrics")
    }

    /// Two warm-up runs, then `runs` timed ones, one at a time; statements
    /// counted over the timed runs only.
    async fn measure(&self, what: &str, body: &Value) -> anyhow::Result<Timing> {
        for _ in 0..WARM_UP {
            self.post(body).await.with_context(|| what.to_owned())?;
        }
        let before = self.statements().await?;
        let mut wall = Vec::with_capacity(self.runs);
        let mut data = Value::Null;
        for _ in 0..self.runs {
            let started = Instant::now();
            data = self.post(body).await.with_context(|| what.to_owned())?;
            wall.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        let after = self.statements().await?;
        wall.sort_by(f64::total_cmp);
        Ok(Timing {
            p50: percentile(&wall, 0.5),
            p95: percentile(&wall, 0.95),
            statements_per_request: (after - before) / self.runs as f64,
            data,
        })
    }
}

/// A widget's query as the dashboard binds it, and how to run it alone.
struct Standalone {
    title: String,
    /// The top-level field it runs through.
    field: &'static str,
    body: Value,
    /// Where the answer is in `data`.
    answer_at: &'static str,
    /// The bound query's kind (`query`, `formula`, `funnel`,
    /// `retention`) and JSON: the server's key for "identical".
    key: String,
    /// Metric queries a formula is made of (1 for the other kinds), each
    /// keyed as `query:<json>`.
    parts: Vec<String>,
}

fn field_query(kind: &str) -> (&'static str, String, &'static str) {
    match kind {
        "formula" => (
            "formula",
            format!("query($q: FormulaInput!) {{ formula(input: $q) {{ {METRIC} }} }}"),
            "formula",
        ),
        "funnel" => (
            "funnel",
            format!("query($q: FunnelInput!) {{ funnel(input: $q) {{ {FUNNEL} }} }}"),
            "funnel",
        ),
        "retention" => (
            "retention",
            format!("query($q: RetentionInput!) {{ retention(input: $q) {{ {RETENTION} }} }}"),
            "retention",
        ),
        _ => (
            "metrics",
            format!("query($q: MetricQueryInput!) {{ metrics(query: $q) {{ {METRIC} }} }}"),
            "metrics",
        ),
    }
}

fn through_field(title: &str, kind: &str, bound: Value) -> Standalone {
    let (field, query, answer_at) = field_query(kind);
    let parts = if kind == "formula" {
        bound["queries"]
            .as_array()
            .map(|qs| qs.iter().map(|q| format!("query:{}", q["query"])).collect())
            .unwrap_or_default()
    } else {
        vec![format!("{kind}:{bound}")]
    };
    Standalone {
        title: title.to_owned(),
        field,
        key: format!("{kind}:{bound}"),
        parts,
        body: json!({ "query": query, "variables": { "q": bound } }),
        answer_at,
    }
}

/// Declared variables or parameters: name → (type, default).
type Declared = BTreeMap<String, (String, Option<Value>)>;

fn declared(list: &Value) -> Declared {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_owned(),
                (
                    p["type"].as_str().unwrap_or_default().to_owned(),
                    Some(p["default"].clone()).filter(|d| !d.is_null()),
                ),
            ))
        })
        .collect()
}

/// The supplied values over the defaults (the server's `bind`).
fn values(declared: &Declared, supplied: &Map<String, Value>) -> Map<String, Value> {
    declared
        .iter()
        .filter_map(|(name, (_, default))| {
            supplied
                .get(name)
                .or(default.as_ref())
                .map(|v| (name.clone(), v.clone()))
        })
        .collect()
}

fn placeholder(s: &str) -> Option<&str> {
    s.strip_prefix('$').filter(|n| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    })
}

/// `"$name"` replaced by its value, as the server's `substitute` does
/// (`{last: "$r"}` with a TIME_RANGE `$r` stands for the whole range).
fn substitute(v: &Value, declared: &Declared, values: &Map<String, Value>) -> Value {
    match v {
        Value::String(s) => placeholder(s)
            .and_then(|n| values.get(n))
            .cloned()
            .unwrap_or_else(|| v.clone()),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| substitute(i, declared, values))
                .collect(),
        ),
        Value::Object(map) => {
            if map.len() == 1
                && let Some(name) = map
                    .get("last")
                    .and_then(Value::as_str)
                    .and_then(placeholder)
                && declared.get(name).is_some_and(|(ty, _)| ty == "TIME_RANGE")
                && let Some(range) = values.get(name)
            {
                return range.clone();
            }
            Value::Object(
                map.iter()
                    .map(|(k, i)| (k.clone(), substitute(i, declared, values)))
                    .collect(),
            )
        }
        other => other.clone(),
    }
}

/// What a dashboard applies over every widget's bound query.
struct Overrides {
    range: Option<Value>,
    timezone: Option<Value>,
    filters: Vec<Value>,
}

impl Overrides {
    /// The server's `apply_dashboard`: range and timezone replace the
    /// query's, filters are added to metric queries and funnel steps; a
    /// formula's to each of its queries.
    fn apply(&self, kind: &str, mut definition: Value) -> Value {
        if kind == "formula" {
            if let Some(queries) = definition.get_mut("queries").and_then(Value::as_array_mut) {
                for named in queries.iter_mut() {
                    if let Some(query) = named.get_mut("query") {
                        *query = self.apply("query", query.take());
                    }
                }
            }
            return definition;
        }
        let Some(query) = definition.as_object_mut() else {
            return definition;
        };
        if let Some(range) = &self.range {
            query.insert("range".into(), range.clone());
        }
        if let Some(tz) = &self.timezone {
            query.insert("timezone".into(), tz.clone());
        }
        if !self.filters.is_empty() {
            let add = |filters: &mut Value| {
                let mut all = filters.as_array().cloned().unwrap_or_default();
                all.extend(self.filters.iter().cloned());
                *filters = Value::Array(all);
            };
            match kind {
                "query" => add(query.entry("filters").or_insert(Value::Null)),
                "funnel" => {
                    for step in query
                        .get_mut("steps")
                        .and_then(Value::as_array_mut)
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_object_mut)
                    {
                        add(step.entry("filters").or_insert(Value::Null));
                    }
                }
                _ => {}
            }
        }
        definition
    }
}

/// The stored `parameters` of each saved-query widget, by widget id: the
/// API does not show them, so they are read from the database.
async fn widget_parameters(
    database_url: &str,
    dashboard: &str,
) -> anyhow::Result<BTreeMap<String, Value>> {
    let db = Database::connect(database_url).await?;
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => "SELECT CAST(widgets AS TEXT) FROM dashboards WHERE name = $1",
        _ => "SELECT CAST(widgets AS TEXT) FROM dashboards WHERE name = ?",
    };
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [dashboard.into()],
        ))
        .await?;
    let mut out = BTreeMap::new();
    for row in rows {
        let text: String = row.try_get_by_index(0)?;
        let widgets: Value = serde_json::from_str(&text)?;
        for w in widgets.as_array().into_iter().flatten() {
            if let Some(id) = w["id"].as_str() {
                out.insert(id.to_owned(), w["parameters"].clone());
            }
        }
    }
    db.close().await?;
    Ok(out)
}

/// Each widget's query as the dashboard binds it (with the variables'
/// defaults: the scenario asks for `dashboard(id)` without values).
async fn standalone(
    client: &Client,
    database_url: &str,
    dashboard: &Value,
) -> anyhow::Result<Vec<Standalone>> {
    let declared_vars = declared(&dashboard["variables"]);
    let var_values = values(&declared_vars, &Map::new());
    let overrides = Overrides {
        range: Some(dashboard["range"].clone()).filter(|r| !r.is_null()),
        timezone: Some(dashboard["timezone"].clone()).filter(|t| !t.is_null()),
        filters: dashboard["filters"].as_array().cloned().unwrap_or_default(),
    };
    let name = dashboard["name"].as_str().unwrap_or_default();
    let mut parameters = None;
    let mut out = Vec::new();
    for w in dashboard["widgets"].as_array().into_iter().flatten() {
        let title = w["title"].as_str().unwrap_or_default();
        if let Some(saved_id) = w["savedQueryId"].as_str() {
            if parameters.is_none() {
                parameters = Some(widget_parameters(database_url, name).await?);
            }
            let stored = parameters
                .as_ref()
                .and_then(|p| p.get(w["id"].as_str().unwrap_or_default()))
                .cloned()
                .unwrap_or(Value::Null);
            // The widget's parameter values, dashboard variables bound.
            let given = substitute(&stored, &declared_vars, &var_values);
            let saved = client
                .post(&json!({
                    "query": "query($id: ID!) { savedQuery(id: $id) { kind definition \
                              parameters { name type default } } }",
                    "variables": { "id": saved_id },
                }))
                .await?;
            let saved = &saved["savedQuery"];
            let kind = match saved["kind"].as_str() {
                Some("FORMULA") => "formula",
                Some("FUNNEL") => "funnel",
                Some("RETENTION") => "retention",
                _ => "query",
            };
            let saved_params = declared(&saved["parameters"]);
            let supplied = given.as_object().cloned().unwrap_or_default();
            let bound = substitute(
                &saved["definition"],
                &saved_params,
                &values(&saved_params, &supplied),
            );
            let applied = overrides.apply(kind, bound.clone());
            if applied == bound {
                // The dashboard changes nothing the saved query binds: run
                // it as a saved query, with the widget's parameter values.
                let mut s = through_field(title, kind, applied);
                s.field = "runSavedQuery";
                s.answer_at = "runSavedQuery";
                s.body = json!({
                    "query": format!(
                        "query($id: ID!, $p: JSON) {{ runSavedQuery(id: $id, parameters: $p) {{ {} }} }}",
                        any_result()
                    ),
                    "variables": { "id": saved_id, "p": given },
                });
                out.push(s);
            } else {
                // The dashboard's range, timezone or filters differ from
                // the saved query's: only its own field runs it faithfully.
                out.push(through_field(title, kind, applied));
            }
            continue;
        }
        let kind = match w["kind"].as_str() {
            Some("FUNNEL") => "funnel",
            Some("RETENTION") => "retention",
            _ if w["definition"].get("expression").is_some() => "formula",
            _ => "query",
        };
        let bound = substitute(&w["definition"], &declared_vars, &var_values);
        out.push(through_field(title, kind, overrides.apply(kind, bound)));
    }
    Ok(out)
}

/// How two answers compare: the same, or the same shape with numbers at
/// most `relative` apart and bucket instants at most `seconds` apart (a
/// range `last: "30d"` ends at the request's now, so a widget without a
/// granularity has a bucket starting 30 days before it), or different at
/// a path.
enum Sameness {
    Same,
    Close { relative: f64, seconds: i64 },
    Differs(String),
}

fn compare(a: &Value, b: &Value) -> Sameness {
    #[derive(Default)]
    struct Worst {
        relative: f64,
        seconds: i64,
    }
    fn walk(a: &Value, b: &Value, path: &str, worst: &mut Worst) -> Result<(), String> {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => {
                let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
                let scale = x.abs().max(y.abs());
                if scale > 0.0 {
                    worst.relative = worst.relative.max((x - y).abs() / scale);
                }
                Ok(())
            }
            (Value::String(x), Value::String(y)) if x != y => {
                let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
                match (at(x), at(y)) {
                    (Some(x), Some(y)) => {
                        worst.seconds = worst.seconds.max((x - y).num_seconds().abs());
                        Ok(())
                    }
                    _ => Err(path.to_owned()),
                }
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
                for (i, (x, y)) in x.iter().zip(y).enumerate() {
                    walk(x, y, &format!("{path}[{i}]"), worst)?;
                }
                Ok(())
            }
            (Value::Object(x), Value::Object(y)) => {
                let keys: BTreeSet<&String> = x
                    .keys()
                    .chain(y.keys())
                    .filter(|k| k.as_str() != "__typename")
                    .collect();
                for k in keys {
                    match (x.get(k), y.get(k)) {
                        (Some(x), Some(y)) => walk(x, y, &format!("{path}.{k}"), worst)?,
                        _ => return Err(format!("{path}.{k}")),
                    }
                }
                Ok(())
            }
            _ if a == b => Ok(()),
            _ => Err(path.to_owned()),
        }
    }
    let mut worst = Worst::default();
    match walk(a, b, "", &mut worst) {
        Err(path) => Sameness::Differs(path),
        Ok(()) if worst.relative == 0.0 && worst.seconds == 0 => Sameness::Same,
        Ok(()) => Sameness::Close {
            relative: worst.relative,
            seconds: worst.seconds,
        },
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

struct Summary {
    name: String,
    widgets: usize,
    distinct: usize,
    metric_queries: usize,
    statements: f64,
    p50: f64,
    slowest: String,
    slowest_p50: f64,
    /// The distinct widgets' p50s added up: the work run one after another.
    serial_p50: f64,
    /// The dashboard without data, plus each distinct widget's statements
    /// beyond a request's own: what the dashboard would send if it added
    /// nothing.
    expected_statements: f64,
}

pub async fn run(args: DashboardArgs) -> anyhow::Result<()> {
    // The server's own demo seeding (`pulse seed-demo` ends with
    // `graphql::demo::seed_dashboards`): creates the dashboards and their
    // saved query where missing.
    args.server.seed_demo().await?;
    let token = args.server.token(&args.tenant, "VIEWER").await?;
    let metrics_token = args.server.metrics_token();
    let server = args.server.start().await?;
    let client = Client {
        http: reqwest::Client::new(),
        base: server.base.clone(),
        token,
        metrics_token,
        runs: args.runs,
    };
    let result = scenario(&args, &client).await;
    server.stop().await?;
    result
}

async fn scenario(args: &DashboardArgs, client: &Client) -> anyhow::Result<()> {
    println!(
        "dashboard: tenant {}, {WARM_UP} warm-up + {} timed runs per request, one at a time; \
         load average {}",
        args.tenant,
        args.runs,
        load_average()
    );
    let listed = client
        .post(&json!({ "query": "{ dashboards(first: 100) { edges { node { id name } } } }" }))
        .await?;
    let ids: BTreeMap<&str, &str> = listed["dashboards"]["edges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["node"]["name"].as_str()?, e["node"]["id"].as_str()?)))
        .collect();
    let baseline = client
        .measure("{ __typename }", &json!({ "query": "{ __typename }" }))
        .await?;
    println!(
        "\nper-request overhead (`{{ __typename }}`): p50 {:.1} ms, {:.1} statements",
        baseline.p50, baseline.statements_per_request
    );
    let mut summaries = Vec::new();
    for name in DASHBOARDS {
        let id = *ids
            .get(name)
            .with_context(|| format!("no dashboard {name:?} for tenant {}", args.tenant))?;
        let shape = client.post(&definitions(id)).await?;
        let widgets = standalone(client, &args.server.database_url, &shape["dashboard"]).await?;
        let distinct: BTreeSet<&str> = widgets.iter().map(|w| w.key.as_str()).collect();
        let distinct_queries: usize = distinct
            .iter()
            .map(|k| {
                widgets
                    .iter()
                    .find(|w| w.key == *k)
                    .map_or(1, |w| w.parts.len())
            })
            .sum();
        let metric_queries = widgets
            .iter()
            .flat_map(|w| w.parts.iter())
            .collect::<BTreeSet<_>>()
            .len();

        let dash = client.measure(name, &whole(id)).await?;
        let empty = client.measure(name, &shell(id)).await?;
        println!(
            "\n{name}: {} widgets, {distinct_queries} distinct queries \
             ({} distinct widget queries, formulas by their sub-queries; \
             {metric_queries} distinct metric/funnel/retention queries in all)",
            widgets.len(),
            distinct.len()
        );
        println!(
            "| request | run through | p50 ms | p95 ms | statements / request | answer vs. dashboard's |"
        );
        println!("|---|---|---:|---:|---:|---|");
        println!(
            "| whole dashboard | `dashboard(id)` | {:.1} | {:.1} | {:.1} | |",
            dash.p50, dash.p95, dash.statements_per_request
        );
        println!(
            "| dashboard without data | `dashboard(id) {{ widgets {{ title }} }}` | {:.1} | {:.1} | {:.1} | |",
            empty.p50, empty.p95, empty.statements_per_request
        );
        let in_dashboard = dash.data["dashboard"]["widgets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let (mut slowest, mut slowest_p50) = (String::new(), 0.0);
        let (mut serial_p50, mut expected_statements) = (0.0, empty.statements_per_request);
        let mut seen = BTreeSet::new();
        for (i, w) in widgets.iter().enumerate() {
            let t = client
                .measure(&format!("{name}: {}", w.title), &w.body)
                .await?;
            let same = match in_dashboard.get(i) {
                Some(d) => match compare(&d["data"], &t.data[w.answer_at]) {
                    Sameness::Same => "same".to_owned(),
                    Sameness::Close { relative, seconds } => format!(
                        "same shape; numbers within {:.3} %, bucket instants within {seconds} s",
                        relative * 100.0
                    ),
                    Sameness::Differs(at) => format!("**differs** at `{at}`"),
                },
                None => "-".to_owned(),
            };
            println!(
                "| {} | `{}` | {:.1} | {:.1} | {:.1} | {same} |",
                w.title, w.field, t.p50, t.p95, t.statements_per_request
            );
            if seen.insert(w.key.as_str()) {
                serial_p50 += t.p50;
                expected_statements += t.statements_per_request - baseline.statements_per_request;
            }
            if t.p50 > slowest_p50 {
                (slowest, slowest_p50) = (w.title.clone(), t.p50);
            }
        }
        summaries.push(Summary {
            name: name.to_owned(),
            widgets: widgets.len(),
            distinct: distinct_queries,
            metric_queries,
            statements: dash.statements_per_request,
            p50: dash.p50,
            slowest,
            slowest_p50,
            serial_p50,
            expected_statements,
        });
    }
    println!("\nload average {}", load_average());
    println!(
        "\n| dashboard | widgets | distinct queries | statements / request (shell + widgets alone) | dashboard p50 ms | slowest widget | its p50 ms | ratio | ≤ 1.5 | Σ distinct widgets' p50 ms |"
    );
    println!("|---|---:|---:|---:|---:|---|---:|---:|---|---:|");
    for s in summaries {
        let ratio = s.p50 / s.slowest_p50;
        println!(
            "| {} | {} | {} ({} without repeats) | {:.1} ({:.1}) | {:.1} | {} | {:.1} | {:.2} | {} | {:.1} |",
            s.name,
            s.widgets,
            s.distinct,
            s.metric_queries,
            s.statements,
            s.expected_statements,
            s.p50,
            s.slowest,
            s.slowest_p50,
            ratio,
            if ratio <= 1.5 { "yes" } else { "**no**" },
            s.serial_p50
        );
    }
    Ok(())
}
