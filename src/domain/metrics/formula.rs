//! Formulas: up to [`MAX_QUERIES`] named metric queries and one arithmetic
//! expression over their names (`clicked / delivered`), evaluated per
//! bucket and per group into one [`MetricResult`].
//!
//! The expression language is tiny on purpose (`+ - * /`, unary minus,
//! parentheses, decimal constants, names), so it is parsed here by
//! recursive descent rather than by a general expression crate whose larger
//! language (functions, assignment, strings) we would have to fence off;
//! property tests below hold the parser and evaluator to a reference.
//!
//! Rules, as documented for clients:
//! - Any missing operand, a division by zero, or any non-finite result
//!   gives null, never an error, infinity or NaN.
//! - Every query must share granularity, range and timezone (so buckets
//!   line up); grouped queries must group by the same dimensions. They may
//!   differ in measure, field, event types, filters and limit.
//! - Groups match by their `group` value. The formula runs for every group
//!   any grouped query has; a grouped query lacking that group contributes
//!   0 where its measure reads 0 when empty (COUNT, COUNT_DISTINCT, SUM),
//!   null otherwise. An ungrouped query (one series, group `{}`) is
//!   broadcast to every group. `__other__` matches `__other__` by name,
//!   though each query's rest may hold different groups.
//! - Every name used must be defined, and every defined name used: an
//!   unused query would cost a database query for nothing, and is most
//!   often a typo.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use serde_json::{Map, Value};

use super::plan::{self, MetricQuery, Plan};
use super::{MetricResult, OTHER, Series, Source};
use crate::auth::TenantCtx;
use crate::error::{AppError, AppResult};

/// Most named queries one formula may combine.
pub const MAX_QUERIES: usize = 6;
/// Longest expression, in characters.
pub const MAX_LEN: usize = 500;
/// Deepest nesting of parentheses and unary minus: recursion is bounded so
/// a hostile expression cannot exhaust the stack.
pub const MAX_DEPTH: usize = 32;
/// Longest query name.
pub const MAX_NAME: usize = 64;

const FIELD: &str = "input.expression";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Add,
    Sub,
    Mul,
    Div,
}

impl Op {
    fn symbol(self) -> char {
        match self {
            Op::Add => '+',
            Op::Sub => '-',
            Op::Mul => '*',
            Op::Div => '/',
        }
    }
}

/// A parsed expression; names are indexes into the formula's names.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Num(f64),
    Var(usize),
    Neg(Box<Expr>),
    Bin(Op, Box<Expr>, Box<Expr>),
}

/// A validated expression over known names.
#[derive(Clone, Debug, PartialEq)]
pub struct Formula {
    expr: Expr,
    names: Vec<String>,
}

/// Whether `name` is a valid query name: `[a-z][a-z0-9_]*`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num(f64),
    Name(String),
    Op(Op),
    Open,
    Close,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Num(n) => write!(f, "{n}"),
            Tok::Name(n) => f.write_str(n),
            Tok::Op(op) => write!(f, "{}", op.symbol()),
            Tok::Open => f.write_str("("),
            Tok::Close => f.write_str(")"),
        }
    }
}

fn bad(message: String) -> AppError {
    AppError::bad_input(FIELD, message)
}

/// Splits `text` into tokens with their 1-based character positions.
fn lex(text: &str) -> AppResult<Vec<(Tok, usize)>> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let at = i + 1;
        let tok = match c {
            ' ' | '\t' | '\n' | '\r' => {
                i += 1;
                continue;
            }
            '+' => Tok::Op(Op::Add),
            '-' => Tok::Op(Op::Sub),
            '*' => Tok::Op(Op::Mul),
            '/' => Tok::Op(Op::Div),
            '(' => Tok::Open,
            ')' => Tok::Close,
            '0'..='9' => {
                let start = i;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
                if i < chars.len() && chars[i] == '.' {
                    i += 1;
                    if i >= chars.len() || !chars[i].is_ascii_digit() {
                        return Err(bad(format!("expected a digit after `.` at {}", i + 1)));
                    }
                    while i < chars.len() && chars[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                let raw: String = chars[start..i].iter().collect();
                let n = raw
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite())
                    .ok_or_else(|| bad(format!("number `{raw}` at {at} is too large")))?;
                out.push((Tok::Num(n), at));
                continue;
            }
            'a'..='z' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_lowercase()
                        || chars[i].is_ascii_digit()
                        || chars[i] == '_')
                {
                    i += 1;
                }
                out.push((Tok::Name(chars[start..i].iter().collect()), at));
                continue;
            }
            other => {
                let hint = if other.is_ascii_uppercase() {
                    " (names are lowercase)"
                } else {
                    ""
                };
                return Err(bad(format!("unexpected `{other}` at {at}{hint}")));
            }
        };
        out.push((tok, at));
        i += 1;
    }
    Ok(out)
}

struct Parser<'a> {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    end: usize,
    names: &'a [String],
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }

    fn at(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end, |(_, at)| *at)
    }

    fn unexpected(&self) -> AppError {
        match self.toks.get(self.pos) {
            Some((tok, at)) => bad(format!("unexpected `{tok}` at {at}")),
            None => bad(format!("unexpected end of expression at {}", self.end)),
        }
    }

    fn deeper(&self, depth: usize) -> AppResult<usize> {
        if depth >= MAX_DEPTH {
            return Err(bad(format!(
                "nested deeper than {MAX_DEPTH} levels at {}",
                self.at()
            )));
        }
        Ok(depth + 1)
    }

    /// `sum := product (('+' | '-') product)*`
    fn sum(&mut self, depth: usize) -> AppResult<Expr> {
        let mut left = self.product(depth)?;
        while let Some(Tok::Op(op @ (Op::Add | Op::Sub))) = self.peek() {
            let op = *op;
            self.pos += 1;
            let right = self.product(depth)?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    /// `product := unary (('*' | '/') unary)*`
    fn product(&mut self, depth: usize) -> AppResult<Expr> {
        let mut left = self.unary(depth)?;
        while let Some(Tok::Op(op @ (Op::Mul | Op::Div))) = self.peek() {
            let op = *op;
            self.pos += 1;
            let right = self.unary(depth)?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    /// `unary := '-' unary | number | name | '(' sum ')'`
    fn unary(&mut self, depth: usize) -> AppResult<Expr> {
        let Some((tok, at)) = self.toks.get(self.pos).cloned() else {
            return Err(self.unexpected());
        };
        match tok {
            Tok::Op(Op::Sub) => {
                let depth = self.deeper(depth)?;
                self.pos += 1;
                Ok(Expr::Neg(Box::new(self.unary(depth)?)))
            }
            Tok::Num(n) => {
                self.pos += 1;
                Ok(Expr::Num(n))
            }
            Tok::Name(name) => {
                let index = self.names.iter().position(|n| *n == name).ok_or_else(|| {
                    bad(format!(
                        "unknown name `{name}` at {at} (known: {})",
                        self.names.join(", ")
                    ))
                })?;
                self.pos += 1;
                Ok(Expr::Var(index))
            }
            Tok::Open => {
                let depth = self.deeper(depth)?;
                self.pos += 1;
                let inner = self.sum(depth)?;
                match self.peek() {
                    Some(Tok::Close) => {
                        self.pos += 1;
                        Ok(inner)
                    }
                    None => Err(bad(format!("unbalanced parenthesis at {at}"))),
                    Some(_) => Err(self.unexpected()),
                }
            }
            Tok::Op(_) | Tok::Close => Err(self.unexpected()),
        }
    }
}

impl Formula {
    /// Parses `text` over `names` (the formula's queries, in order); errors
    /// name `input.expression` and the bad token's 1-based position.
    pub fn parse(text: &str, names: &[String]) -> AppResult<Formula> {
        let len = text.chars().count();
        if len > MAX_LEN {
            return Err(bad(format!("longer than {MAX_LEN} characters")));
        }
        let toks = lex(text)?;
        if toks.is_empty() {
            return Err(bad("is empty".into()));
        }
        let mut parser = Parser {
            toks,
            pos: 0,
            end: len + 1,
            names,
        };
        let expr = parser.sum(0)?;
        match parser.toks.get(parser.pos) {
            None => {}
            Some((Tok::Close, at)) => {
                return Err(bad(format!("unbalanced parenthesis at {at}")));
            }
            Some(_) => return Err(parser.unexpected()),
        }
        Ok(Formula {
            expr,
            names: names.to_vec(),
        })
    }

    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Whether the expression reads the `i`th name.
    pub fn uses(&self, i: usize) -> bool {
        fn walk(e: &Expr, i: usize) -> bool {
            match e {
                Expr::Num(_) => false,
                Expr::Var(v) => *v == i,
                Expr::Neg(inner) => walk(inner, i),
                Expr::Bin(_, l, r) => walk(l, i) || walk(r, i),
            }
        }
        walk(&self.expr, i)
    }

    /// The value for one cell, `values[i]` being the `i`th name's: null for
    /// any missing operand, division by zero or non-finite result.
    pub fn eval(&self, values: &[Option<f64>]) -> Option<f64> {
        eval(&self.expr, values)
    }
}

fn eval(e: &Expr, values: &[Option<f64>]) -> Option<f64> {
    let v = match e {
        Expr::Num(n) => *n,
        Expr::Var(i) => values.get(*i).copied().flatten()?,
        Expr::Neg(inner) => -eval(inner, values)?,
        Expr::Bin(op, l, r) => {
            let (l, r) = (eval(l, values)?, eval(r, values)?);
            match op {
                Op::Add => l + r,
                Op::Sub => l - r,
                Op::Mul => l * r,
                Op::Div if r == 0.0 => return None,
                Op::Div => l / r,
            }
        }
    };
    // `-0` reads oddly in a chart and in JSON; it is 0.
    v.is_finite().then_some(if v == 0.0 { 0.0 } else { v })
}

impl fmt::Display for Formula {
    /// Fully parenthesized, e.g. `((clicked / delivered) * 100)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn go(e: &Expr, names: &[String], f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match e {
                Expr::Num(n) => write!(f, "{n}"),
                Expr::Var(i) => f.write_str(names.get(*i).map_or("?", String::as_str)),
                Expr::Neg(inner) => {
                    f.write_str("(-")?;
                    go(inner, names, f)?;
                    f.write_str(")")
                }
                Expr::Bin(op, l, r) => {
                    f.write_str("(")?;
                    go(l, names, f)?;
                    write!(f, " {} ", op.symbol())?;
                    go(r, names, f)?;
                    f.write_str(")")
                }
            }
        }
        go(&self.expr, &self.names, f)
    }
}

/// One named query of a formula, as the API takes it.
#[derive(Clone, Debug)]
pub struct NamedQuery {
    pub name: String,
    pub query: MetricQuery,
}

/// A formula as the API takes it, before validation.
#[derive(Clone, Debug)]
pub struct FormulaQuery {
    pub queries: Vec<NamedQuery>,
    pub expression: String,
}

/// A validated formula: its expression and one plan per query, all made
/// at the same `now` so their buckets line up.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub formula: Formula,
    pub plans: Vec<Plan>,
    pub now: DateTime<Utc>,
}

/// Prefixes a query's own error field (`query.granularity`) with where the
/// query sits in the formula (`input.queries[1].query.granularity`).
fn under(prefix: &str, err: AppError) -> AppError {
    match err {
        AppError::BadInput { field, message } => AppError::BadInput {
            field: format!("{prefix}.{field}"),
            message,
        },
        other => other,
    }
}

/// Validates `q` before anything runs: names, expression, each query's
/// plan, and that the plans line up. Every error is a `BAD_USER_INPUT`
/// naming its field.
pub fn prepare(
    q: FormulaQuery,
    now: DateTime<Utc>,
    max_span: chrono::Duration,
) -> AppResult<Prepared> {
    if q.queries.is_empty() || q.queries.len() > MAX_QUERIES {
        return Err(AppError::bad_input(
            "input.queries",
            format!("1 to {MAX_QUERIES} queries"),
        ));
    }
    let mut names: Vec<String> = Vec::with_capacity(q.queries.len());
    for (i, nq) in q.queries.iter().enumerate() {
        let at = format!("input.queries[{i}].name");
        if nq.name.len() > MAX_NAME || !valid_name(&nq.name) {
            return Err(AppError::bad_input(
                at,
                format!(
                    "`{}` is not a name: [a-z][a-z0-9_]*, at most {MAX_NAME} characters",
                    nq.name
                ),
            ));
        }
        if names.contains(&nq.name) {
            return Err(AppError::bad_input(at, format!("repeats `{}`", nq.name)));
        }
        names.push(nq.name.clone());
    }
    let formula = Formula::parse(&q.expression, &names)?;
    if let Some(i) = (0..names.len()).find(|&i| !formula.uses(i)) {
        return Err(AppError::bad_input(
            format!("input.queries[{i}].name"),
            format!("`{}` is not used by the expression", names[i]),
        ));
    }

    let mut plans: Vec<Plan> = Vec::with_capacity(q.queries.len());
    for (i, nq) in q.queries.into_iter().enumerate() {
        let prefix = format!("input.queries[{i}]");
        let p = plan::plan(nq.query, now, max_span).map_err(|e| under(&prefix, e))?;
        if let Some(first) = plans.first() {
            let mismatch = |what: &str| {
                AppError::bad_input(
                    format!("{prefix}.query.{what}"),
                    "differs from input.queries[0]: the queries of a formula share granularity, range and timezone",
                )
            };
            if p.granularity != first.granularity {
                return Err(mismatch("granularity"));
            }
            if (p.from, p.to) != (first.from, first.to) {
                return Err(mismatch("range"));
            }
            if p.tz != first.tz {
                return Err(mismatch("timezone"));
            }
            let dims = |p: &Plan| {
                let mut d: Vec<String> = p.group_by.iter().map(plan::Field::name).collect();
                d.sort();
                d
            };
            if let Some(grouped) = plans.iter().find(|o| !o.group_by.is_empty())
                && !p.group_by.is_empty()
                && dims(&p) != dims(grouped)
            {
                return Err(AppError::bad_input(
                    format!("{prefix}.query.groupBy"),
                    "grouped queries of a formula group by the same dimensions (or a query has no groupBy)",
                ));
            }
        }
        plans.push(p);
    }
    Ok(Prepared {
        formula,
        plans,
        now,
    })
}

/// Runs a formula for the caller's tenant: every query concurrently, each
/// in its own read session bounded by `timeout`, then [`combine`]. Like
/// [`super::run`], callers run it on a detached task.
pub async fn run(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    q: FormulaQuery,
    timeout: Duration,
    max_span: chrono::Duration,
    services: &super::Services,
    memo: Option<&super::PlanMemo>,
) -> AppResult<MetricResult> {
    let prepared = prepare(q, memo.map_or_else(super::now, |m| m.now), max_span)?;
    let now = prepared.now;
    let results = futures_util::future::try_join_all(prepared.plans.iter().map(|p| async move {
        match memo {
            Some(memo) => memo.run(db, ctx, p, timeout, services).await,
            None => super::run_plan(db, ctx, p, now, timeout, services).await,
        }
    }))
    .await?;
    let inputs: Vec<Input> = prepared
        .plans
        .iter()
        .zip(results)
        .map(|(p, result)| Input {
            grouped: !p.group_by.is_empty(),
            zero_when_empty: p.measure.zero_when_empty(),
            result,
        })
        .collect();
    Ok(combine(&prepared.formula, inputs, now))
}

/// One query's answer, with what [`combine`] needs to know of its plan.
#[derive(Clone, Debug)]
pub struct Input {
    /// Whether the query had `groupBy` (else it is broadcast).
    pub grouped: bool,
    /// Whether a group it lacks reads 0 (else null).
    pub zero_when_empty: bool,
    pub result: MetricResult,
}

fn is_other(group: &Value) -> bool {
    group
        .as_object()
        .is_some_and(|g| !g.is_empty() && g.values().all(|v| v.as_str() == Some(OTHER)))
}

/// Evaluates `formula` over `inputs` (in the formula's name order), whose
/// buckets line up: per bucket and group, per series total, and overall
/// total. Series come like the engine's: total descending (nulls last),
/// `__other__` last.
pub fn combine(formula: &Formula, inputs: Vec<Input>, now: DateTime<Utc>) -> MetricResult {
    let mut groups: Vec<Value> = Vec::new();
    if inputs.iter().any(|i| i.grouped) {
        for s in inputs
            .iter()
            .filter(|i| i.grouped)
            .flat_map(|i| &i.result.series)
        {
            if !groups.contains(&s.group) {
                groups.push(s.group.clone());
            }
        }
    } else {
        groups.push(Value::Object(Map::new()));
    }

    let mut series: Vec<Series> = Vec::with_capacity(groups.len());
    for group in groups {
        // Each input's series for this group: its own, the broadcast one of
        // an ungrouped query, or none.
        let found: Vec<Option<&Series>> = inputs
            .iter()
            .map(|i| {
                if i.grouped {
                    i.result.series.iter().find(|s| s.group == group)
                } else {
                    i.result.series.first()
                }
            })
            .collect();
        let absent = |i: &Input| i.zero_when_empty.then_some(0.0);
        let Some(buckets) = found.iter().flatten().next().map(|s| &s.points) else {
            continue;
        };
        let points = buckets
            .iter()
            .enumerate()
            .map(|(b, (start, _))| {
                let values: Vec<Option<f64>> = inputs
                    .iter()
                    .zip(&found)
                    .map(|(i, s)| match s {
                        Some(s) => s.points.get(b).and_then(|p| p.1),
                        None => absent(i),
                    })
                    .collect();
                (*start, formula.eval(&values))
            })
            .collect();
        let totals: Vec<Option<f64>> = inputs
            .iter()
            .zip(&found)
            .map(|(i, s)| match s {
                Some(s) => s.total,
                None => absent(i),
            })
            .collect();
        series.push(Series {
            group,
            points,
            total: formula.eval(&totals),
        });
    }
    // Stable: equal totals keep the order the queries gave.
    series.sort_by(|a, b| {
        is_other(&a.group)
            .cmp(&is_other(&b.group))
            .then_with(|| match (a.total, b.total) {
                (Some(x), Some(y)) => y.total_cmp(&x),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            })
    });

    let totals: Vec<Option<f64>> = inputs.iter().map(|i| i.result.total).collect();
    MetricResult {
        series,
        total: formula.eval(&totals),
        computed_at: now,
        source: inputs
            .iter()
            .map(|i| i.result.source)
            .reduce(Source::union)
            .unwrap_or(Source::RAW),
        db_time: inputs.iter().map(|i| i.result.db_time).sum(),
        skipped: inputs.iter().map(|i| i.result.skipped).sum(),
        cache: cache_use(inputs.iter().map(|i| i.result.cache.as_ref())),
    }
}

/// A formula is served from the cache as far as all its queries are.
fn cache_use<'a>(
    inputs: impl Iterator<Item = Option<&'a super::cached::CacheUse>>,
) -> Option<super::cached::CacheUse> {
    let mut out = super::cached::CacheUse {
        complete: true,
        ..Default::default()
    };
    for used in inputs {
        let used = used?;
        out.complete &= used.complete;
        out.recomputed.extend(used.recomputed.iter().copied());
        out.oldest = match (out.oldest, used.oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    out.recomputed.sort();
    out.recomputed.dedup();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| (*s).to_owned()).collect()
    }

    fn err(text: &str, known: &[&str]) -> String {
        match Formula::parse(text, &names(known)) {
            Err(AppError::BadInput { field, message }) => {
                assert_eq!(field, FIELD);
                message
            }
            other => panic!("expected bad input for {text:?}, got {other:?}"),
        }
    }

    fn value(text: &str, known: &[&str], values: &[Option<f64>]) -> Option<f64> {
        Formula::parse(text, &names(known))
            .expect("parses")
            .eval(values)
    }

    #[test]
    fn precedence_and_associativity_follow_arithmetic() {
        let k = ["a", "b", "c"];
        let v = [Some(8.0), Some(4.0), Some(2.0)];
        assert_eq!(value("a - b - c", &k, &v), Some(2.0));
        assert_eq!(value("a / b / c", &k, &v), Some(1.0));
        assert_eq!(value("a + b * c", &k, &v), Some(16.0));
        assert_eq!(value("(a + b) * c", &k, &v), Some(24.0));
        assert_eq!(value("-a * b", &k, &v), Some(-32.0));
        assert_eq!(value("a - -b", &k, &v), Some(12.0));
        assert_eq!(value("a / b * 100", &k, &v), Some(200.0));
        assert_eq!(value("0.5 * a", &k, &v), Some(4.0));
    }

    #[test]
    fn nulls_and_division_by_zero_give_null() {
        let k = ["a", "b"];
        assert_eq!(value("a / b", &k, &[Some(1.0), Some(0.0)]), None);
        assert_eq!(value("a / b", &k, &[Some(0.0), Some(0.0)]), None);
        assert_eq!(value("a + b", &k, &[Some(1.0), None]), None);
        let zero = value("a * 0", &k, &[Some(-1.0), None]);
        assert_eq!(zero.map(f64::is_sign_positive), Some(true), "0, not -0");
        assert_eq!(value("a * b", &k, &[Some(1e200), Some(1e200)]), None);
        assert_eq!(value("a * 0 + b", &k, &[Some(-1.0), Some(0.0)]), Some(0.0));
    }

    #[test]
    fn errors_name_the_token_and_its_position() {
        let k = ["clicked", "delivered"];
        assert_eq!(err("clicked * * delivered", &k), "unexpected `*` at 11");
        assert_eq!(
            err("clicks / delivered", &k),
            "unknown name `clicks` at 1 (known: clicked, delivered)"
        );
        assert_eq!(
            err("(clicked / delivered", &k),
            "unbalanced parenthesis at 1"
        );
        assert_eq!(
            err("clicked / delivered)", &k),
            "unbalanced parenthesis at 20"
        );
        assert_eq!(err("clicked / ", &k), "unexpected end of expression at 11");
        assert_eq!(err("clicked % delivered", &k), "unexpected `%` at 9");
        assert_eq!(
            err("Clicked", &k),
            "unexpected `C` at 1 (names are lowercase)"
        );
        assert_eq!(err("clicked delivered", &k), "unexpected `delivered` at 9");
        assert_eq!(err("1. + clicked", &k), "expected a digit after `.` at 3");
        assert_eq!(err("   ", &k), "is empty");
        assert!(err(&"1".repeat(400), &k).contains("too large"));
        let at_limit = format!("{}11", "1+".repeat(MAX_LEN / 2 - 1));
        assert_eq!(at_limit.len(), MAX_LEN);
        assert!(Formula::parse(&at_limit, &names(&k)).is_ok());
        assert!(err(&format!("{at_limit} "), &k).contains("longer than 500"));
    }

    #[test]
    fn nesting_is_bounded() {
        let k = ["a"];
        let ok = format!("{}a{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(Formula::parse(&ok, &names(&k)).is_ok());
        let deep = format!(
            "{}a{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        assert!(err(&deep, &k).starts_with("nested deeper than 32"));
        assert!(err(&"-".repeat(200), &k).starts_with("nested deeper"));
    }

    fn nq(name: &str, q: MetricQuery) -> NamedQuery {
        NamedQuery {
            name: name.into(),
            query: q,
        }
    }

    fn daily() -> MetricQuery {
        MetricQuery {
            measure: Some(plan::Measure::Count),
            granularity: Some(super::super::Granularity::Day),
            from: "2026-01-01T00:00:00Z".parse().ok(),
            to: "2026-01-03T00:00:00Z".parse().ok(),
            ..MetricQuery::default()
        }
    }

    fn prepare_err(queries: Vec<NamedQuery>, expression: &str) -> String {
        let q = FormulaQuery {
            queries,
            expression: expression.into(),
        };
        match prepare(q, Utc::now(), plan::DEFAULT_MAX_SPAN) {
            Err(AppError::BadInput { field, .. }) => field,
            other => panic!("expected bad input, got {other:?}"),
        }
    }

    #[test]
    fn prepare_names_the_bad_field() {
        let two = |b: MetricQuery| vec![nq("a", daily()), nq("b", b)];
        let mut hourly = daily();
        hourly.granularity = Some(super::super::Granularity::Hour);
        assert_eq!(
            prepare_err(two(hourly), "a / b"),
            "input.queries[1].query.granularity"
        );
        let mut berlin = daily();
        berlin.timezone = Some("Europe/Berlin".into());
        assert_eq!(
            prepare_err(two(berlin), "a / b"),
            "input.queries[1].query.timezone"
        );
        let mut later = daily();
        later.to = "2026-01-04T00:00:00Z".parse().ok();
        assert_eq!(
            prepare_err(two(later), "a / b"),
            "input.queries[1].query.range"
        );
        let mut by_type = daily();
        by_type.group_by = vec!["type".into()];
        let mut by_plan = daily();
        by_plan.group_by = vec!["properties.plan".into()];
        assert_eq!(
            prepare_err(vec![nq("a", by_type), nq("b", by_plan)], "a / b"),
            "input.queries[1].query.groupBy"
        );
        let mut no_measure = daily();
        no_measure.measure = None;
        assert_eq!(
            prepare_err(two(no_measure), "a / b"),
            "input.queries[1].query.measure"
        );
        assert_eq!(
            prepare_err(vec![nq("a", daily()), nq("a", daily())], "a / a"),
            "input.queries[1].name"
        );
        assert_eq!(
            prepare_err(vec![nq("A", daily())], "1"),
            "input.queries[0].name"
        );
        assert_eq!(prepare_err(two(daily()), "a * 2"), "input.queries[1].name");
        assert_eq!(prepare_err(vec![], "1"), "input.queries");
        let seven = (0..7).map(|i| nq(&format!("q{i}"), daily())).collect();
        assert_eq!(prepare_err(seven, "q0"), "input.queries");
        assert_eq!(prepare_err(two(daily()), "a / c"), "input.expression");
    }

    fn series(group: Value, values: &[Option<f64>], total: Option<f64>) -> Series {
        let start: DateTime<Utc> = DateTime::from_timestamp(0, 0).unwrap_or_default();
        Series {
            group,
            points: values
                .iter()
                .enumerate()
                .map(|(i, v)| (start + chrono::Duration::days(i as i64), *v))
                .collect(),
            total,
        }
    }

    fn result(series: Vec<Series>, total: Option<f64>) -> MetricResult {
        MetricResult {
            series,
            total,
            computed_at: Utc::now(),
            source: Source::RAW,
            db_time: Duration::ZERO,
            skipped: 0,
            cache: None,
        }
    }

    fn values_of(s: &Series) -> Vec<Option<f64>> {
        s.points.iter().map(|p| p.1).collect()
    }

    #[test]
    fn groups_match_by_value_and_ungrouped_queries_broadcast() {
        let f = Formula::parse("rev / users", &names(&["rev", "users"])).expect("parses");
        let pro = serde_json::json!({"plan": "pro"});
        let team = serde_json::json!({"plan": "team"});
        let other = serde_json::json!({"plan": OTHER});
        let rev = Input {
            grouped: true,
            zero_when_empty: true,
            result: result(
                vec![
                    series(other.clone(), &[Some(100.0), Some(0.0)], Some(100.0)),
                    series(pro.clone(), &[Some(10.0), Some(0.0)], Some(10.0)),
                    series(team.clone(), &[Some(20.0), Some(40.0)], Some(60.0)),
                ],
                Some(170.0),
            ),
        };
        let users = Input {
            grouped: false,
            zero_when_empty: true,
            result: result(
                vec![series(
                    serde_json::json!({}),
                    &[Some(10.0), Some(0.0)],
                    Some(10.0),
                )],
                Some(10.0),
            ),
        };
        let out = combine(&f, vec![rev, users], Utc::now());
        let groups: Vec<&Value> = out.series.iter().map(|s| &s.group).collect();
        assert_eq!(
            groups,
            vec![&team, &pro, &other],
            "by total, __other__ last"
        );
        assert_eq!(values_of(&out.series[0]), vec![Some(2.0), None]);
        assert_eq!(out.series[0].total, Some(6.0));
        assert_eq!(out.total, Some(17.0));
    }

    #[test]
    fn a_missing_group_reads_zero_for_counts_and_null_otherwise() {
        let f = Formula::parse("a + b", &names(&["a", "b"])).expect("parses");
        let x = serde_json::json!({"c": "x"});
        let y = serde_json::json!({"c": "y"});
        let a = |zero| Input {
            grouped: true,
            zero_when_empty: zero,
            result: result(vec![series(x.clone(), &[Some(1.0)], Some(1.0))], Some(1.0)),
        };
        let b = Input {
            grouped: true,
            zero_when_empty: true,
            result: result(vec![series(y.clone(), &[Some(2.0)], Some(2.0))], Some(2.0)),
        };
        let counted = combine(&f, vec![a(true), b.clone()], Utc::now());
        assert_eq!(counted.series.len(), 2);
        assert_eq!(counted.series[0].group, y);
        assert_eq!(counted.series[0].total, Some(2.0));
        assert_eq!(counted.series[1].total, Some(1.0));
        let averaged = combine(&f, vec![a(false), b], Utc::now());
        assert_eq!(averaged.series[0].group, x, "y is null for an average");
        assert_eq!(averaged.series[1].total, None);
        assert_eq!(values_of(&averaged.series[1]), vec![None]);
    }

    // --- properties ---------------------------------------------------

    const NAMES: [&str; 3] = ["a", "b_2", "clicked"];

    fn arb_expr() -> impl Strategy<Value = Expr> {
        let leaf = prop_oneof![
            (0u32..1_000_000, 0u32..4)
                .prop_map(|(n, scale)| Expr::Num(f64::from(n) / f64::from(10u32.pow(scale)))),
            (0usize..NAMES.len()).prop_map(Expr::Var),
        ];
        leaf.prop_recursive(6, 24, 2, |inner| {
            prop_oneof![
                inner.clone().prop_map(|e| Expr::Neg(Box::new(e))),
                (
                    prop_oneof![Just(Op::Add), Just(Op::Sub), Just(Op::Mul), Just(Op::Div)],
                    inner.clone(),
                    inner
                )
                    .prop_map(|(op, l, r)| Expr::Bin(op, Box::new(l), Box::new(r))),
            ]
        })
    }

    fn prec(e: &Expr) -> u8 {
        match e {
            Expr::Bin(Op::Add | Op::Sub, ..) => 1,
            Expr::Bin(Op::Mul | Op::Div, ..) => 2,
            Expr::Neg(_) => 3,
            Expr::Num(_) | Expr::Var(_) => 4,
        }
    }

    /// Prints with the fewest parentheses the grammar needs, so that
    /// parsing it back tests precedence and left associativity.
    fn minimal(e: &Expr) -> String {
        match e {
            Expr::Num(n) => format!("{n}"),
            Expr::Var(i) => NAMES[*i].to_owned(),
            Expr::Neg(inner) if prec(inner) < 3 => format!("-({})", minimal(inner)),
            Expr::Neg(inner) => format!("-{}", minimal(inner)),
            Expr::Bin(op, l, r) => {
                let p = prec(e);
                let l = if prec(l) < p {
                    format!("({})", minimal(l))
                } else {
                    minimal(l)
                };
                let r = if prec(r) <= p {
                    format!("({})", minimal(r))
                } else {
                    minimal(r)
                };
                format!("{l} {} {r}", op.symbol())
            }
        }
    }

    /// The reference: plain f64 arithmetic, then the null rules applied
    /// once at each step, written independently of [`eval`].
    fn reference(e: &Expr, v: &[Option<f64>]) -> Option<f64> {
        let r = match e {
            Expr::Num(n) => Some(*n),
            Expr::Var(i) => v[*i],
            Expr::Neg(inner) => reference(inner, v).map(|x| 0.0 - x),
            Expr::Bin(op, l, r) => match (reference(l, v), reference(r, v)) {
                (Some(x), Some(y)) => match op {
                    Op::Add => Some(x + y),
                    Op::Sub => Some(x - y),
                    Op::Mul => Some(x * y),
                    Op::Div => (y != 0.0).then(|| x / y),
                },
                _ => None,
            },
        };
        r.filter(|x| x.is_finite())
    }

    fn known() -> Vec<String> {
        names(&NAMES)
    }

    proptest! {
        #[test]
        fn printing_and_parsing_back_gives_the_same_tree(e in arb_expr()) {
            let minimal_text = minimal(&e);
            prop_assume!(minimal_text.chars().count() <= MAX_LEN);
            let parsed = Formula::parse(&minimal_text, &known());
            prop_assert!(parsed.is_ok(), "{minimal_text}: {parsed:?}");
            let parsed = parsed.expect("checked");
            prop_assert_eq!(&parsed.expr, &e, "{}", minimal_text);
            let full = parsed.to_string();
            if full.chars().count() <= MAX_LEN {
                let again = Formula::parse(&full, &known()).expect("parses its own print");
                prop_assert_eq!(again.expr, e);
            }
        }

        #[test]
        fn evaluation_matches_the_reference(
            e in arb_expr(),
            v in proptest::collection::vec(
                proptest::option::of(prop_oneof![Just(0.0), -1e6f64..1e6]),
                NAMES.len(),
            ),
        ) {
            prop_assume!(minimal(&e).chars().count() <= MAX_LEN);
            let f = Formula::parse(&minimal(&e), &known()).expect("parses");
            let got = f.eval(&v);
            let want = reference(&e, &v);
            prop_assert_eq!(got.is_some(), want.is_some());
            if let (Some(g), Some(w)) = (got, want) {
                prop_assert!(g.is_finite());
                prop_assert!(g == w || (g == 0.0 && w == 0.0), "{} vs {}", g, w);
            }
        }

        #[test]
        fn division_by_zero_is_null(e in arb_expr(), v in proptest::collection::vec(proptest::option::of(-1e6f64..1e6), NAMES.len())) {
            let text = format!("({}) / (a - a)", minimal(&e));
            prop_assume!(text.chars().count() <= MAX_LEN);
            let values = [Some(v[0].unwrap_or(1.0)), v[1], v[2]];
            let f = Formula::parse(&text, &known()).expect("parses");
            prop_assert_eq!(f.eval(&values), None);
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,600}") {
            let _ = Formula::parse(&text, &known());
        }

        #[test]
        fn parse_never_panics_on_expression_like_text(text in "[a-c_0-9+*/(). -]{0,120}") {
            if let Ok(f) = Formula::parse(&text, &known()) {
                let _ = f.eval(&[Some(1.0), Some(0.0), None]);
            }
        }
    }
}
