//! What an alert measures: its query's series reduced to one number over
//! the evaluated window, and the condition that number is held to. The
//! queries run through the metric engine and the hot cache like any
//! client's, as of the evaluation's instant.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;

use super::state_machine::Outcome;
use crate::auth::TenantCtx;
use crate::domain::metrics::{self, MetricQuery, PlanMemo, formula::FormulaQuery};
use crate::error::{AppError, AppResult};

/// How a window's buckets become one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reducer {
    /// The newest bucket (the one still filling, when the range ends now).
    Last,
    Sum,
    Avg,
    Max,
    Min,
}

impl Reducer {
    pub fn as_str(self) -> &'static str {
        match self {
            Reducer::Last => "LAST",
            Reducer::Sum => "SUM",
            Reducer::Avg => "AVG",
            Reducer::Max => "MAX",
            Reducer::Min => "MIN",
        }
    }

    pub fn parse(raw: &str) -> Option<Reducer> {
        [
            Reducer::Last,
            Reducer::Sum,
            Reducer::Avg,
            Reducer::Max,
            Reducer::Min,
        ]
        .into_iter()
        .find(|r| r.as_str() == raw)
    }

    /// The buckets' value, `None` when no bucket has one (empty buckets of
    /// COUNT, COUNT_DISTINCT and SUM are 0, so those always have one).
    pub fn reduce(self, points: &[(DateTime<Utc>, Option<f64>)]) -> Option<f64> {
        if self == Reducer::Last {
            return points.last().and_then(|(_, v)| *v);
        }
        let values: Vec<f64> = points.iter().filter_map(|(_, v)| *v).collect();
        if values.is_empty() {
            return None;
        }
        Some(match self {
            Reducer::Sum | Reducer::Last => values.iter().sum(),
            Reducer::Avg => values.iter().sum::<f64>() / values.len() as f64,
            Reducer::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Reducer::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
        })
    }
}

/// What the reduced value is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    Above,
    Below,
    /// The change from the previous window, in percent (`20` = +20 %).
    ChangePctAbove,
    ChangePctBelow,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Above => "ABOVE",
            Condition::Below => "BELOW",
            Condition::ChangePctAbove => "CHANGE_PCT_ABOVE",
            Condition::ChangePctBelow => "CHANGE_PCT_BELOW",
        }
    }

    pub fn parse(raw: &str) -> Option<Condition> {
        [
            Condition::Above,
            Condition::Below,
            Condition::ChangePctAbove,
            Condition::ChangePctBelow,
        ]
        .into_iter()
        .find(|c| c.as_str() == raw)
    }

    /// Whether it compares with the previous window.
    pub fn is_change(self) -> bool {
        matches!(self, Condition::ChangePctAbove | Condition::ChangePctBelow)
    }
}

/// The reducer, condition and threshold of an alert.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub reducer: Reducer,
    pub condition: Condition,
    pub threshold: f64,
}

impl Rule {
    /// Judges a window's value (and, for change conditions, the previous
    /// window's). A change from 0 has no percentage: no data.
    pub fn judge(&self, current: Option<f64>, previous: Option<f64>) -> Outcome {
        let Some(current) = current else {
            return Outcome::NoData;
        };
        let value = if self.condition.is_change() {
            match previous {
                Some(prev) if prev != 0.0 => (current - prev) / prev.abs() * 100.0,
                _ => return Outcome::NoData,
            }
        } else {
            current
        };
        let met = match self.condition {
            Condition::Above | Condition::ChangePctAbove => value > self.threshold,
            Condition::Below | Condition::ChangePctBelow => value < self.threshold,
        };
        if met {
            Outcome::Met(value)
        } else {
            Outcome::Clear(value)
        }
    }
}

/// An alert's query, read back from its stored input.
#[derive(Clone, Debug)]
pub enum AlertQuery {
    Metric(MetricQuery),
    Formula(FormulaQuery),
}

impl AlertQuery {
    /// The window's length: every query must have a relative range
    /// (`{last: …}`, so the window moves with the evaluations) and no
    /// `groupBy` (an alert watches one series). Errors name `at`.
    pub fn window(&self, at: &str) -> AppResult<chrono::Duration> {
        let queries: Vec<&MetricQuery> = match self {
            AlertQuery::Metric(q) => vec![q],
            AlertQuery::Formula(f) => f.queries.iter().map(|n| &n.query).collect(),
        };
        let mut window = None;
        for q in queries {
            if !q.group_by.is_empty() {
                return Err(AppError::bad_input(
                    at,
                    "an alert watches one series: its query cannot have groupBy",
                ));
            }
            let last = match (&q.last, q.from, q.to) {
                (Some(last), None, None) => last,
                _ => {
                    return Err(AppError::bad_input(
                        at,
                        "an alert's query needs a relative range, {last: \"1h\"}, that moves with each evaluation",
                    ));
                }
            };
            let span = crate::duration::parse_chrono(last)
                .map_err(|e| AppError::bad_input(format!("{at}.range.last"), e))?;
            window = Some(window.map_or(span, |w: chrono::Duration| w.max(span)));
        }
        window.ok_or_else(|| AppError::bad_input(at, "the formula has no queries"))
    }
}

/// What evaluations run with.
#[derive(Clone)]
pub struct Engine {
    pub db: DatabaseConnection,
    pub services: metrics::Services,
    pub gate: std::sync::Arc<metrics::gate::TenantGate>,
    pub timeout: Duration,
    pub max_span: chrono::Duration,
}

/// One evaluation's figures: the window's reduced value, the previous
/// window's when the condition needs it, and the verdict.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub current: Option<f64>,
    pub previous: Option<f64>,
    pub outcome: Outcome,
}

impl Engine {
    /// Evaluates `query` under `rule` as of `at`. A failing query is an
    /// [`Outcome::Error`], not an `Err`: it is a state of the alert.
    pub async fn evaluate(
        &self,
        ctx: &TenantCtx,
        query: &AlertQuery,
        rule: &Rule,
        at: DateTime<Utc>,
    ) -> Evaluation {
        let failed = |e: AppError| Evaluation::failed(&e);
        let window = match query.window("query") {
            Ok(w) => w,
            Err(e) => return failed(e),
        };
        let current = match self.value(ctx, query, rule.reducer, at).await {
            Ok(v) => v,
            Err(e) => return failed(e),
        };
        let previous = if rule.condition.is_change() {
            match self.value(ctx, query, rule.reducer, at - window).await {
                Ok(v) => v,
                Err(e) => return failed(e),
            }
        } else {
            None
        };
        Evaluation {
            current,
            previous,
            outcome: rule.judge(current, previous),
        }
    }

    /// The reduced value of `query`'s window ending at `at`.
    async fn value(
        &self,
        ctx: &TenantCtx,
        query: &AlertQuery,
        reducer: Reducer,
        at: DateTime<Utc>,
    ) -> AppResult<Option<f64>> {
        let _pass = self.gate.enter(ctx.tenant_id).await?;
        let (engine, ctx, query) = (self.clone(), ctx.clone(), query.clone());
        let result = crate::db::detached(async move {
            let memo = PlanMemo::new(at);
            match query {
                AlertQuery::Metric(q) => {
                    metrics::run(
                        &engine.db,
                        &ctx,
                        q,
                        engine.timeout,
                        engine.max_span,
                        &engine.services,
                        Some(&memo),
                    )
                    .await
                }
                AlertQuery::Formula(f) => {
                    metrics::formula::run(
                        &engine.db,
                        &ctx,
                        f,
                        engine.timeout,
                        engine.max_span,
                        &engine.services,
                        Some(&memo),
                    )
                    .await
                }
            }
        })
        .await?;
        Ok(result
            .series
            .first()
            .and_then(|s| reducer.reduce(&s.points)))
    }
}

impl Evaluation {
    /// An evaluation that failed with `e`, recorded as the code and the
    /// client-safe message; an internal error's cause goes to the log only.
    pub fn failed(e: &AppError) -> Evaluation {
        if let AppError::Internal(cause) = e {
            tracing::warn!(error = format!("{cause:#}"), "an alert evaluation failed");
        }
        Evaluation {
            current: None,
            previous: None,
            outcome: Outcome::Error(format!("{}: {e}", e.code())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(values: &[Option<f64>]) -> Vec<(DateTime<Utc>, Option<f64>)> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                (
                    DateTime::from_timestamp(i as i64 * 3600, 0).expect("valid"),
                    *v,
                )
            })
            .collect()
    }

    #[test]
    fn reducers_fold_the_windows_buckets() {
        let p = points(&[Some(2.0), None, Some(6.0), Some(1.0)]);
        assert_eq!(Reducer::Last.reduce(&p), Some(1.0));
        assert_eq!(Reducer::Sum.reduce(&p), Some(9.0));
        assert_eq!(Reducer::Avg.reduce(&p), Some(3.0));
        assert_eq!(Reducer::Max.reduce(&p), Some(6.0));
        assert_eq!(Reducer::Min.reduce(&p), Some(1.0));
    }

    #[test]
    fn a_window_without_values_has_no_data() {
        let p = points(&[None, None]);
        for r in [
            Reducer::Last,
            Reducer::Sum,
            Reducer::Avg,
            Reducer::Max,
            Reducer::Min,
        ] {
            assert_eq!(r.reduce(&p), None, "{r:?}");
        }
        assert_eq!(Reducer::Sum.reduce(&[]), None);
        // LAST reads the newest bucket even when older ones have values.
        assert_eq!(Reducer::Last.reduce(&points(&[Some(3.0), None])), None);
    }

    fn rule(condition: Condition, threshold: f64) -> Rule {
        Rule {
            reducer: Reducer::Last,
            condition,
            threshold,
        }
    }

    #[test]
    fn above_and_below_are_strict() {
        assert_eq!(
            rule(Condition::Above, 5.0).judge(Some(5.0), None),
            Outcome::Clear(5.0)
        );
        assert_eq!(
            rule(Condition::Above, 5.0).judge(Some(5.5), None),
            Outcome::Met(5.5)
        );
        assert_eq!(
            rule(Condition::Below, 5.0).judge(Some(5.0), None),
            Outcome::Clear(5.0)
        );
        assert_eq!(
            rule(Condition::Below, 5.0).judge(Some(4.0), None),
            Outcome::Met(4.0)
        );
        assert_eq!(
            rule(Condition::Below, 5.0).judge(None, None),
            Outcome::NoData
        );
    }

    #[test]
    fn change_conditions_compare_with_the_previous_window_in_percent() {
        // 80 → 100 is +25 %.
        assert_eq!(
            rule(Condition::ChangePctAbove, 20.0).judge(Some(100.0), Some(80.0)),
            Outcome::Met(25.0)
        );
        assert_eq!(
            rule(Condition::ChangePctAbove, 30.0).judge(Some(100.0), Some(80.0)),
            Outcome::Clear(25.0)
        );
        // 100 → 40 is −60 %.
        assert_eq!(
            rule(Condition::ChangePctBelow, -50.0).judge(Some(40.0), Some(100.0)),
            Outcome::Met(-60.0)
        );
        // A negative baseline: −10 → −5 is +50 % (relative to its size).
        assert_eq!(
            rule(Condition::ChangePctAbove, 40.0).judge(Some(-5.0), Some(-10.0)),
            Outcome::Met(50.0)
        );
        // No baseline: no data, whatever the current value.
        assert_eq!(
            rule(Condition::ChangePctAbove, 20.0).judge(Some(5.0), Some(0.0)),
            Outcome::NoData
        );
        assert_eq!(
            rule(Condition::ChangePctAbove, 20.0).judge(Some(5.0), None),
            Outcome::NoData
        );
    }
}
