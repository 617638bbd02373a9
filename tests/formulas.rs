//! `formula(input)` on a fixed dataset of email events whose answers were
//! worked out by hand: open and click rates per day and per campaign, a
//! day and a campaign without deliveries (null, not an error), totals, a
//! constant, a broadcast of an ungrouped query, validation, isolation, and
//! agreement with two separate `metrics` calls. The same expectations hold
//! on SQLite and PostgreSQL.

use pulse::auth::Role;
use serde_json::{Value, json};

use crate::common::*;

/// Three UTC days. Day 1: 4 delivered (spring 2, summer 2), 3 opened
/// (spring 1, summer 2), 1 clicked (summer). Day 2: 2 delivered (spring),
/// 1 opened and 1 clicked (spring). Day 3: nothing delivered, 1 opened
/// (winter, which no email was delivered for in range).
const DATASET: &str = r#"[
  {"type":"email.delivered","timestamp":"2026-11-01T08:00:00Z","userId":"u1","properties":{"campaign":"spring"}},
  {"type":"email.delivered","timestamp":"2026-11-01T08:00:01Z","userId":"u2","properties":{"campaign":"spring"}},
  {"type":"email.delivered","timestamp":"2026-11-01T09:00:00Z","userId":"u3","properties":{"campaign":"summer"}},
  {"type":"email.delivered","timestamp":"2026-11-01T09:00:01Z","userId":"u4","properties":{"campaign":"summer"}},
  {"type":"email.opened","timestamp":"2026-11-01T10:00:00Z","userId":"u1","properties":{"campaign":"spring"}},
  {"type":"email.opened","timestamp":"2026-11-01T11:00:00Z","userId":"u3","properties":{"campaign":"summer"}},
  {"type":"email.opened","timestamp":"2026-11-01T12:00:00Z","userId":"u4","properties":{"campaign":"summer"}},
  {"type":"email.clicked","timestamp":"2026-11-01T13:00:00Z","userId":"u3","properties":{"campaign":"summer"}},
  {"type":"email.delivered","timestamp":"2026-11-02T08:00:00Z","userId":"u5","properties":{"campaign":"spring"}},
  {"type":"email.delivered","timestamp":"2026-11-02T08:00:01Z","userId":"u6","properties":{"campaign":"spring"}},
  {"type":"email.opened","timestamp":"2026-11-02T23:59:59Z","userId":"u5","properties":{"campaign":"spring"}},
  {"type":"email.clicked","timestamp":"2026-11-02T23:59:59Z","userId":"u5","properties":{"campaign":"spring"}},
  {"type":"email.opened","timestamp":"2026-11-03T00:00:00Z","userId":"u7","properties":{"campaign":"winter"}}
]"#;

const FROM: &str = "2026-11-01T00:00:00Z";
const TO: &str = "2026-11-04T00:00:00Z";

const FORMULA: &str = "query($input: FormulaInput!) { formula(input: $input) {
    total series { group total points { bucket value } } } }";

const METRICS: &str = "query($q: MetricQueryInput!) { metrics(query: $q) {
    total series { group total points { bucket value } } } }";

struct Fixture {
    app: TestApp,
    token: String,
}

/// The dataset's tenant, and an intruder with many opens and clicks of
/// the same campaigns on the same days, which no answer may count.
async fn fixture() -> Fixture {
    let app = spawn_app().await;
    let mut tokens = Vec::new();
    for prefix in ["formulas", "intruder"] {
        let tenant = app.tenant(prefix).await;
        let admin = app.token(&tenant, Role::Admin);
        let body = app
            .gql_as(
                &admin,
                "mutation { updateTenantSettings(input: { retentionDays: 3650 }) { id } }",
                json!({}),
            )
            .await;
        data(&body);
        tokens.push(app.token(&tenant, Role::Viewer));
        let events: Value = if prefix == "formulas" {
            serde_json::from_str(DATASET).expect("dataset")
        } else {
            let mut events = Vec::new();
            for day in ["2026-11-01", "2026-11-02", "2026-11-03"] {
                for (i, kind) in ["opened", "clicked", "opened", "clicked"]
                    .iter()
                    .enumerate()
                {
                    events.push(json!({
                        "type": format!("email.{kind}"),
                        "timestamp": format!("{day}T12:00:0{i}Z"),
                        "userId": format!("x{i}"),
                        "properties": {"campaign": "spring"},
                    }));
                }
            }
            Value::Array(events)
        };
        let editor = app.token(&tenant, Role::Editor);
        let (status, body) = app.post_events(&editor, events).await;
        assert_eq!(status, 202, "{body}");
    }
    Fixture {
        app,
        token: tokens.swap_remove(0),
    }
}

/// A daily COUNT of one email event type over the three days.
fn count(kind: &str, group_by: Option<&str>) -> Value {
    let mut q = json!({
        "measure": "COUNT",
        "eventTypes": [format!("email.{kind}")],
        "granularity": "DAY",
        "range": { "from": FROM, "to": TO },
    });
    if let Some(g) = group_by {
        q["groupBy"] = json!([g]);
    }
    q
}

fn input(queries: &[(&str, Value)], expression: &str) -> Value {
    let queries: Vec<Value> = queries
        .iter()
        .map(|(name, query)| json!({ "name": name, "query": query }))
        .collect();
    json!({ "queries": queries, "expression": expression })
}

impl Fixture {
    async fn formula(&self, input: Value) -> Value {
        let body = self
            .app
            .gql_as(&self.token, FORMULA, json!({ "input": input }))
            .await;
        data(&body)["formula"].clone()
    }

    async fn metrics(&self, q: Value) -> Value {
        let body = self
            .app
            .gql_as(&self.token, METRICS, json!({ "q": q }))
            .await;
        data(&body)["metrics"].clone()
    }

    /// The error's code, field and message.
    async fn error(&self, input: Value) -> (String, String, String) {
        let body = self
            .app
            .gql_as(&self.token, FORMULA, json!({ "input": input }))
            .await;
        let err = &body["errors"][0];
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        (
            text(&err["extensions"]["code"]),
            text(&err["extensions"]["field"]),
            text(&err["message"]),
        )
    }
}

fn values(series: &Value) -> Vec<Value> {
    series["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p["value"].clone())
        .collect()
}

/// `value` is within rounding of `want` (`None`: null).
#[track_caller]
fn assert_close(value: &Value, want: Option<f64>) {
    match want {
        None => assert!(value.is_null(), "expected null, got {value}"),
        Some(w) => assert!(
            value.as_f64().is_some_and(|v| (v - w).abs() < 1e-9),
            "expected {w}, got {value}"
        ),
    }
}

#[track_caller]
fn assert_all_close(values: &[Value], want: &[Option<f64>]) {
    assert_eq!(values.len(), want.len(), "{values:?}");
    for (v, w) in values.iter().zip(want) {
        assert_close(v, *w);
    }
}

fn by_campaign<'a>(result: &'a Value, campaign: &str) -> &'a Value {
    result["series"]
        .as_array()
        .expect("series")
        .iter()
        .find(|s| s["group"]["properties.campaign"] == campaign)
        .unwrap_or_else(|| panic!("no series for {campaign} in {result}"))
}

#[tokio::test]
async fn open_rate_per_day_is_null_on_a_day_without_deliveries() {
    let f = fixture().await;
    let r = f
        .formula(input(
            &[
                ("opened", count("opened", None)),
                ("delivered", count("delivered", None)),
            ],
            "opened / delivered",
        ))
        .await;
    let series = r["series"].as_array().expect("series");
    assert_eq!(series.len(), 1);
    assert_eq!(series[0]["group"], json!({}));
    let buckets: Vec<&str> = series[0]["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p["bucket"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(buckets.len(), 3);
    assert!(buckets[0].starts_with("2026-11-01T00:00:00"), "{buckets:?}");
    assert!(buckets[2].starts_with("2026-11-03T00:00:00"), "{buckets:?}");
    // 3/4, 1/2, 1/0.
    assert_all_close(&values(&series[0]), &[Some(0.75), Some(0.5), None]);
    assert_close(&series[0]["total"], Some(5.0 / 6.0));
    assert_close(&r["total"], Some(5.0 / 6.0));
}

#[tokio::test]
async fn open_rate_per_campaign_matches_groups_by_value() {
    let f = fixture().await;
    let r = f
        .formula(input(
            &[
                ("opened", count("opened", Some("properties.campaign"))),
                ("delivered", count("delivered", Some("properties.campaign"))),
            ],
            "opened / delivered",
        ))
        .await;
    let order: Vec<&Value> = r["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|s| &s["group"]["properties.campaign"])
        .collect();
    // By total descending, the campaign without deliveries (null) last.
    assert_eq!(
        order,
        [&json!("summer"), &json!("spring"), &json!("winter")]
    );

    let spring = by_campaign(&r, "spring");
    assert_all_close(&values(spring), &[Some(0.5), Some(0.5), None]);
    assert_close(&spring["total"], Some(0.5));
    let summer = by_campaign(&r, "summer");
    assert_all_close(&values(summer), &[Some(1.0), None, None]);
    assert_close(&summer["total"], Some(1.0));
    // Winter was never delivered: its deliveries read 0 (a COUNT), so
    // every ratio is a division by zero, hence null.
    let winter = by_campaign(&r, "winter");
    assert_all_close(&values(winter), &[None, None, None]);
    assert_close(&winter["total"], None);
    assert_close(&r["total"], Some(5.0 / 6.0));
}

#[tokio::test]
async fn constants_scale_a_rate() {
    let f = fixture().await;
    let r = f
        .formula(input(
            &[
                ("clicked", count("clicked", None)),
                ("delivered", count("delivered", None)),
            ],
            "clicked / delivered * 100",
        ))
        .await;
    assert_all_close(&values(&r["series"][0]), &[Some(25.0), Some(50.0), None]);
    assert_close(&r["total"], Some(100.0 / 3.0));

    // Precedence, unary minus, parentheses and decimals.
    let r = f
        .formula(input(
            &[
                ("clicked", count("clicked", None)),
                ("delivered", count("delivered", None)),
            ],
            "-(delivered - clicked) * 0.5 + 1",
        ))
        .await;
    // Days: -(4-1)/2+1, -(2-1)/2+1, -(0-0)/2+1; total -(6-2)/2+1.
    assert_all_close(
        &values(&r["series"][0]),
        &[Some(-0.5), Some(0.5), Some(1.0)],
    );
    assert_close(&r["total"], Some(-1.0));
}

#[tokio::test]
async fn an_ungrouped_query_is_broadcast_to_every_group() {
    let f = fixture().await;
    let r = f
        .formula(input(
            &[
                ("opened", count("opened", Some("properties.campaign"))),
                ("delivered", count("delivered", None)),
            ],
            "opened / delivered",
        ))
        .await;
    assert_eq!(r["series"].as_array().map(Vec::len), Some(3), "{r}");
    // Each campaign's opens over all deliveries of the day (4, 2, 0).
    let spring = by_campaign(&r, "spring");
    assert_all_close(&values(spring), &[Some(0.25), Some(0.5), None]);
    assert_close(&spring["total"], Some(2.0 / 6.0));
    let summer = by_campaign(&r, "summer");
    assert_all_close(&values(summer), &[Some(0.5), Some(0.0), None]);
    assert_close(&summer["total"], Some(2.0 / 6.0));
    let winter = by_campaign(&r, "winter");
    assert_all_close(&values(winter), &[Some(0.0), Some(0.0), None]);
    assert_close(&winter["total"], Some(1.0 / 6.0));
    assert_close(&r["total"], Some(5.0 / 6.0));
    assert_eq!(
        r["series"][2]["group"]["properties.campaign"], "winter",
        "smallest total last"
    );
}

#[tokio::test]
async fn a_formula_equals_the_ratio_of_two_metrics_calls() {
    let f = fixture().await;
    let group = Some("properties.campaign");
    let r = f
        .formula(input(
            &[
                ("clicked", count("clicked", group)),
                ("opened", count("opened", group)),
            ],
            "clicked / opened",
        ))
        .await;
    let clicked = f.metrics(count("clicked", group)).await;
    let opened = f.metrics(count("opened", group)).await;
    let ratio = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    };
    for campaign in ["spring", "summer", "winter"] {
        let c = clicked["series"]
            .as_array()
            .expect("series")
            .iter()
            .find(|s| s["group"]["properties.campaign"] == campaign)
            .cloned()
            // A campaign without clicks has no clicked series: it reads 0.
            .unwrap_or_else(|| json!({ "total": 0.0, "points": [{"value": 0.0}, {"value": 0.0}, {"value": 0.0}] }));
        let o = by_campaign(&opened, campaign);
        let want: Vec<Option<f64>> = values(&c)
            .iter()
            .zip(values(o))
            .map(|(c, o)| ratio(c, &o))
            .collect();
        let got = by_campaign(&r, campaign);
        assert_all_close(&values(got), &want);
        assert_close(&got["total"], ratio(&c["total"], &o["total"]));
    }
    assert_close(&r["total"], ratio(&clicked["total"], &opened["total"]));
    // And by hand: 2 clicks of 5 opens; the intruder's 6 opens and 6
    // clicks per day are nowhere.
    assert_close(&r["total"], Some(0.4));
    assert_close(&opened["total"], Some(5.0));
}

#[tokio::test]
async fn bad_formulas_are_refused_naming_the_field() {
    let f = fixture().await;
    let two = |expression: &str| {
        input(
            &[
                ("clicked", count("clicked", None)),
                ("delivered", count("delivered", None)),
            ],
            expression,
        )
    };

    let (code, field, message) = f.error(two("clicks / delivered")).await;
    assert_eq!(
        (code.as_str(), field.as_str()),
        ("BAD_USER_INPUT", "input.expression")
    );
    assert!(message.contains("unknown name `clicks`"), "{message}");
    assert!(message.contains("known: clicked, delivered"), "{message}");

    let (code, field, message) = f.error(two("clicked * * delivered")).await;
    assert_eq!(
        (code.as_str(), field.as_str()),
        ("BAD_USER_INPUT", "input.expression")
    );
    assert!(message.contains("unexpected `*` at 11"), "{message}");

    let (code, field, message) = f.error(two("(clicked / delivered")).await;
    assert_eq!(
        (code.as_str(), field.as_str()),
        ("BAD_USER_INPUT", "input.expression")
    );
    assert!(message.contains("unbalanced parenthesis at 1"), "{message}");

    let seven: Vec<(String, Value)> = (0..7)
        .map(|i| (format!("q{i}"), count("opened", None)))
        .collect();
    let seven: Vec<(&str, Value)> = seven.iter().map(|(n, q)| (n.as_str(), q.clone())).collect();
    let (code, field, _) = f
        .error(input(&seven, "q0 + q1 + q2 + q3 + q4 + q5 + q6"))
        .await;
    assert_eq!(
        (code.as_str(), field.as_str()),
        ("BAD_USER_INPUT", "input.queries")
    );
    // Six is the limit, and allowed.
    let r = f
        .formula(input(&seven[..6], "q0 + q1 + q2 + q3 + q4 + q5"))
        .await;
    assert_close(&r["total"], Some(30.0));

    let (code, field, _) = f
        .error(input(
            &[
                ("opened", count("opened", None)),
                ("opened", count("delivered", None)),
            ],
            "opened / opened",
        ))
        .await;
    assert_eq!(
        (code.as_str(), field.as_str()),
        ("BAD_USER_INPUT", "input.queries[1].name")
    );

    let (code, field, _) = f
        .error(input(&[("Opened", count("opened", None))], "1"))
        .await;
    assert_eq!(
        (code.as_str(), field.as_str()),
        ("BAD_USER_INPUT", "input.queries[0].name")
    );

    let mut hourly = count("delivered", None);
    hourly["granularity"] = json!("HOUR");
    let (code, field, _) = f
        .error(input(
            &[("opened", count("opened", None)), ("delivered", hourly)],
            "opened / delivered",
        ))
        .await;
    assert_eq!(
        (code.as_str(), field.as_str()),
        ("BAD_USER_INPUT", "input.queries[1].query.granularity")
    );

    // A query's own errors are named where it sits in the formula.
    let mut no_range = count("delivered", None);
    no_range["range"] = json!({ "from": TO, "to": FROM });
    let (code, field, _) = f
        .error(input(
            &[("opened", count("opened", None)), ("delivered", no_range)],
            "opened / delivered",
        ))
        .await;
    assert_eq!(
        (code.as_str(), field.as_str()),
        ("BAD_USER_INPUT", "input.queries[1].query.range.from")
    );
}

#[tokio::test]
async fn formulas_need_a_token() {
    let f = fixture().await;
    let body = f
        .app
        .gql_anonymous(
            FORMULA,
            json!({ "input": input(&[("opened", count("opened", None))], "opened") }),
        )
        .await;
    assert_code(&body, "UNAUTHENTICATED");
}
