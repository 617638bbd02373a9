//! Fuzzing as a test: a seeded generator sends thousands of random and
//! mutated GraphQL documents, variable sets, `/v1/events` bodies and
//! WebSocket frames to a running server, and checks after every case that
//! the server answered as the contract says (no 5xx but the coded internal
//! error, which is still a failure here; no panic; no dropped connection;
//! no stall), and after the run that it is healthy and still counts right.
//!
//! The generator is grammar-aware: it builds valid operations from the
//! real schema, then pushes their values to extremes, swaps their types,
//! and mutates the text, so that most cases get past parsing and reach
//! resolvers and SQL, where the interesting failures live. Raw garbage
//! and byte-level mutations cover the parsers themselves.
//!
//! Replay: every case is generated from `(seed, index)` alone, so
//! `PULSE_FUZZ_SEED=<seed>` reproduces a run and `PULSE_FUZZ_ONLY=<index>`
//! sends just one case. `PULSE_FUZZ_CASES` sets the number of cases
//! (default 10 000), `PULSE_FUZZ_CONCURRENCY` how many are in flight.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use pulse::auth::Role;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::common::*;

/// Longer than any honest answer on a small tenant: past it, a case
/// counts as a stall (the server's own query timeout is 10 s too, so a
/// query that needs it is a stall either way).
const CASE_TIMEOUT: Duration = Duration::from_secs(10);

/// Codes that mean the server, not the input, failed. On fuzzed input each
/// one is a bug: an internal error, a pool or writer that gave up, or a
/// query that had to be cancelled.
const SERVER_FAULT_CODES: [&str; 3] = ["INTERNAL_SERVER_ERROR", "UNAVAILABLE", "QUERY_TIMEOUT"];

/// Close codes a GraphQL WebSocket server may end a socket with on bad
/// input: normal, protocol, unsupported data, invalid payload, policy,
/// too big, and the graphql-transport-ws codes (4400 bad message, 4401
/// unauthorised, 4403 forbidden, 4406 subprotocol, 4408 init timeout,
/// 4409 duplicate id, 4429 repeated init). 1011 and 4500 are server
/// faults and not listed.
const CLOSE_CODES: [u16; 15] = [
    1000, 1001, 1002, 1003, 1007, 1008, 1009, 4400, 4401, 4403, 4406, 4408, 4409, 4429, 4499,
];

/// Most distinct `operation` label values `/metrics` may hold after the
/// run. The fuzzer names about a third of its operations at random, so a
/// server that turns every client-chosen name into a label series (an
/// unbounded-cardinality leak) shows thousands; a bounded one, a few.
const MAX_OPERATION_LABELS: usize = 500;

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

// ---------------------------------------------------------------- cases

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    GraphqlPost,
    GraphqlOddType,
    GraphqlGet,
    Events,
    WebSocket,
}

#[derive(Clone, Copy, Debug)]
enum Auth {
    Viewer,
    Editor,
    Admin,
    None,
    Garbage(usize),
}

enum Case {
    Http {
        kind: Kind,
        method: reqwest::Method,
        /// Path and query string.
        target: String,
        headers: Vec<(String, String)>,
        auth: Auth,
        body: Vec<u8>,
        /// The server may refuse this body for its size (413) and close
        /// the connection before reading it all: a documented reason.
        oversize: bool,
    },
    Ws {
        protocol: String,
        frames: Vec<Frame>,
    },
}

#[derive(Clone)]
enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

/// The tokens a case may use, as placeholders the generator picks from;
/// the runner substitutes them, so generation stays a pure function of
/// the seed.
struct Tokens {
    viewer: String,
    editor: String,
    admin: String,
    garbage: Vec<String>,
}

impl Tokens {
    fn header(&self, auth: Auth) -> Option<String> {
        match auth {
            Auth::Viewer => Some(format!("Bearer {}", self.viewer)),
            Auth::Editor => Some(format!("Bearer {}", self.editor)),
            Auth::Admin => Some(format!("Bearer {}", self.admin)),
            Auth::None => None,
            Auth::Garbage(i) => Some(self.garbage[i % self.garbage.len()].clone()),
        }
    }

    /// Replaces `@@VIEWER@@`-style placeholders in WebSocket frames.
    fn fill(&self, text: &str) -> String {
        text.replace("@@VIEWER@@", &self.viewer)
            .replace("@@EDITOR@@", &self.editor)
            .replace("@@ADMIN@@", &self.admin)
    }
}

const GARBAGE_AUTH: usize = 8;

fn garbage_tokens(app: &TestApp, tenant: &TestTenant) -> Vec<String> {
    let other = app
        .state
        .keys
        .mint(
            &tenant.user(Role::Admin).id.to_string(),
            "no-such-tenant-fuzz",
            Role::Admin,
            Duration::from_secs(3600),
        )
        .expect("mint");
    let good = app.token(tenant, Role::Viewer);
    let mut tampered = good.clone().into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    vec![
        "Bearer not-a-jwt".into(),
        "Bearer ".into(),
        "Basic dXNlcjpwYXNz".into(),
        format!("Bearer {other}"),
        format!("Bearer {}", String::from_utf8_lossy(&tampered)),
        "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4IiwidGVuYW50IjoiZnV6eiIsInJvbGUiOiJBRE1JTiIsImV4cCI6OTk5OTk5OTk5OX0.".into(),
        format!("bearer {}", "x".repeat(4000)),
        format!("Bearer {good}.{good}"),
    ]
}

// ------------------------------------------------------------ generator

/// A GraphQL input value, rendered either as a literal in the document or
/// as JSON in the variables. Numbers keep their raw text so that values
/// past `i64` or `f64` reach the server as written.
#[derive(Clone, Debug)]
enum V {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Enum(String),
    List(Vec<V>),
    Obj(Vec<(String, V)>),
}

impl V {
    fn obj(fields: Vec<(&str, V)>) -> V {
        V::Obj(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    fn gql(&self, out: &mut String) {
        match self {
            V::Null => out.push_str("null"),
            V::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            V::Num(n) => out.push_str(n),
            V::Str(s) => out.push_str(&serde_json::to_string(s).unwrap_or_default()),
            V::Enum(e) => out.push_str(e),
            V::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.gql(out);
                }
                out.push(']');
            }
            V::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    out.push_str(k);
                    out.push_str(": ");
                    v.gql(out);
                }
                out.push('}');
            }
        }
    }

    fn json(&self, out: &mut String) {
        match self {
            V::Enum(e) => out.push_str(&serde_json::to_string(e).unwrap_or_default()),
            V::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k).unwrap_or_default());
                    out.push(':');
                    v.json(out);
                }
                out.push('}');
            }
            V::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.json(out);
                }
                out.push(']');
            }
            other => other.gql(out),
        }
    }

    fn to_json(&self) -> String {
        let mut s = String::new();
        self.json(&mut s);
        s
    }
}

const EXTREME_INTS: [&str; 16] = [
    "2147483647",
    "-2147483648",
    "2147483648",
    "-1",
    "0",
    "9223372036854775807",
    "-9223372036854775809",
    "99999999999999999999999999",
    "1e3",
    "1.5",
    "-0",
    "1e309",
    "-1e309",
    "0.0000000000000000001",
    "NaN",
    "Infinity",
];

const EXTREME_DATES: [&str; 16] = [
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "9999-12-31T00:00:00Z",
    "-262143-01-01T00:00:00Z",
    "+262142-12-31T23:59:59Z",
    "1970-01-01T00:00:00Z",
    "1969-12-31T23:59:59.999999999Z",
    "2026-13-45T99:99:99Z",
    "2026-02-30T00:00:00Z",
    "2026-11-23T00:00:00+14:00",
    "2026-11-23T00:00:00.123456789-12:00",
    "2026-11-23",
    "now",
    "",
    "1e12",
    "2026-11-23T00:00:00Z\u{0}",
];

const EXTREME_STRINGS: [&str; 18] = [
    "",
    " ",
    "\u{0}",
    "é",
    "👩‍👩‍👧‍👦",
    "\u{202e}evil",
    "'; DROP TABLE events; --",
    "%",
    "_",
    "\\",
    "\"",
    "properties.",
    "properties..a",
    "properties.a.b.c.d.e.f.g.h.i.j.k",
    "properties.\u{0}",
    "$where",
    "null",
    "properties.a'b",
];

const DURATIONS: [&str; 16] = [
    "30d",
    "1h",
    "15m",
    "2w",
    "0d",
    "-1d",
    "99999999999d",
    "9223372036854775807m",
    "2147483647w",
    "1y",
    "",
    "d",
    "1.5h",
    "7 d",
    "1e3d",
    "٣d",
];

const TIMEZONES: [&str; 10] = [
    "UTC",
    "Europe/Berlin",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "America/St_Johns",
    "",
    "Mars/Olympus",
    "+05:30",
    "Etc/GMT+12",
    "../../etc/passwd",
];

const FIELDS: [&str; 9] = [
    "userId",
    "sessionId",
    "type",
    "properties.amount",
    "properties.ms",
    "properties.plan",
    "properties.nested.source",
    "timestamp",
    "id",
];

const EVENT_TYPES: [&str; 6] = [
    "page_view",
    "purchase",
    "signup",
    "email.opened",
    "a:b-c_d.e",
    "x",
];

struct Gen {
    rng: StdRng,
    /// Probability that any one value is pushed to an extreme or replaced
    /// by one of the wrong type; 0 makes valid operations.
    chaos: f64,
    /// Variables declared so far for the operation being built.
    vars: Vec<(String, String, V)>,
    /// Whether arguments go inline or in variables, per operation.
    use_vars: bool,
    /// Huge values (thousands of items, deep nesting, long strings) left
    /// for this case: one, so that a case stays within the body limit
    /// and the generator's own memory stays small.
    huge: u8,
}

impl Gen {
    fn new(seed: u64, index: usize) -> Gen {
        let mixed = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut rng = StdRng::seed_from_u64(mixed);
        let chaos = *pick(&mut rng, &[0.0, 0.0, 0.03, 0.1, 0.3, 0.7]);
        Gen {
            rng,
            chaos,
            vars: Vec::new(),
            use_vars: false,
            huge: 1,
        }
    }

    fn p(&mut self, p: f64) -> bool {
        self.rng.random_bool(p.clamp(0.0, 1.0))
    }

    /// Whether this value may be huge (spends the case's one allowance).
    fn go_huge(&mut self, p: f64) -> bool {
        if self.huge > 0 && self.wild() && self.p(p) {
            self.huge -= 1;
            true
        } else {
            false
        }
    }

    fn wild(&mut self) -> bool {
        let c = self.chaos;
        self.p(c)
    }

    fn below(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n.max(1))
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        pick(&mut self.rng, xs)
    }

    fn uuid(&mut self) -> String {
        uuid::Uuid::from_u128(self.rng.random()).to_string()
    }

    fn ident(&mut self) -> String {
        let len = 1 + self.below(12);
        let mut s = String::new();
        for i in 0..len {
            let c = if i == 0 {
                *self.pick(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
            } else {
                *self.pick(b"abcdefghijklmnopqrstuvwxyz0123456789_")
            };
            s.push(c as char);
        }
        s
    }

    /// Any value of any shape: what a wrong-typed input looks like.
    fn any(&mut self, depth: usize) -> V {
        let top = if depth > 3 { 5 } else { 8 };
        match self.below(top) {
            0 => V::Null,
            1 => V::Bool(self.p(0.5)),
            2 => V::Num(self.pick(&EXTREME_INTS).to_string()),
            3 => V::Num(self.rng.random_range(-1000i64..1000).to_string()),
            4 => self.text(),
            5 => V::Enum(
                self.pick(&["COUNT", "DAY", "ADMIN", "BOGUS", "true"])
                    .to_string(),
            ),
            6 => {
                let n = self.below(4);
                V::List((0..n).map(|_| self.any(depth + 1)).collect())
            }
            _ => {
                let n = self.below(4);
                V::Obj(
                    (0..n)
                        .map(|_| (self.ident(), self.any(depth + 1)))
                        .collect(),
                )
            }
        }
    }

    /// A free-form string, sometimes extreme.
    fn text(&mut self) -> V {
        if self.wild() {
            return V::Str(self.extreme_string());
        }
        V::Str(self.ident())
    }

    fn extreme_string(&mut self) -> String {
        match self.below(10) {
            0 => "a".repeat(*self.pick(&[255, 256, 1024])),
            1 if self.go_huge(1.0) => "é".repeat(*self.pick(&[5000, 100_000])),
            2 => {
                let n = 1 + self.below(64);
                (0..n)
                    .map(|_| char::from_u32(self.rng.random_range(1..0x11_0000)).unwrap_or('?'))
                    .collect()
            }
            _ => self.pick(&EXTREME_STRINGS).to_string(),
        }
    }

    /// A value meant to be of one type: usually `good`, with chaos an
    /// extreme or a wrong type.
    fn or_wild(&mut self, good: V) -> V {
        if self.wild() {
            if self.p(0.5) {
                self.any(0)
            } else {
                self.text()
            }
        } else {
            good
        }
    }

    fn int(&mut self, lo: i64, hi: i64) -> V {
        if self.wild() {
            return if self.p(0.8) {
                V::Num(self.pick(&EXTREME_INTS).to_string())
            } else {
                self.any(0)
            };
        }
        V::Num(self.rng.random_range(lo..=hi).to_string())
    }

    fn date(&mut self) -> V {
        if self.wild() || self.p(0.1) {
            return V::Str(self.pick(&EXTREME_DATES).to_string());
        }
        let secs = chrono::Utc::now().timestamp() - self.rng.random_range(-3_600i64..40 * 86_400);
        let t = chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default();
        V::Str(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    }

    fn duration(&mut self) -> V {
        if self.wild() {
            return V::Str(self.pick(&DURATIONS).to_string());
        }
        V::Str(self.pick(&DURATIONS[..4]).to_string())
    }

    fn timezone(&mut self) -> V {
        if self.wild() {
            let tz = V::Str(self.pick(&TIMEZONES).to_string());
            return self.or_wild(tz);
        }
        V::Str(self.pick(&TIMEZONES[..5]).to_string())
    }

    fn field_name(&mut self) -> V {
        if self.wild() {
            let s = V::Str(self.extreme_string());
            return self.or_wild(s);
        }
        V::Str(self.pick(&FIELDS).to_string())
    }

    fn event_type(&mut self) -> V {
        if self.wild() {
            let s = V::Str(self.extreme_string());
            return self.or_wild(s);
        }
        V::Str(self.pick(&EVENT_TYPES).to_string())
    }

    fn enum_of(&mut self, values: &[&str]) -> V {
        if self.wild() {
            let wrong = [
                V::Enum("BOGUS".into()),
                V::Str(values[0].to_owned()),
                V::Enum(values[0].to_lowercase()),
                V::Num("0".into()),
                V::Null,
            ];
            return self.pick(&wrong).clone();
        }
        V::Enum(self.pick(values).to_string())
    }

    /// A list of `n` items from `item`; with chaos sometimes thousands.
    fn list(&mut self, max: usize, item: impl Fn(&mut Gen) -> V) -> V {
        let n = if self.go_huge(0.3) {
            *self.pick(&[0, 1000, 5000])
        } else {
            self.below(max + 1)
        };
        V::List((0..n).map(|_| item(self)).collect())
    }

    /// Builds an input object: optional fields are sometimes left out,
    /// and with chaos required ones too, and unknown ones added.
    fn object(&mut self, fields: Vec<(&str, bool, V)>) -> V {
        let mut out = Vec::new();
        for (name, required, value) in fields {
            let keep = if required {
                !(self.wild() && self.p(0.2))
            } else {
                self.p(0.6)
            };
            if keep {
                out.push((name.to_owned(), value));
            }
        }
        if self.wild() && self.p(0.2) {
            out.push((self.ident(), self.any(1)));
        }
        if self.wild() && self.p(0.1) && !out.is_empty() {
            // A field given twice.
            let dup = out[0].clone();
            out.push(dup);
        }
        V::Obj(out)
    }

    fn json_scalar(&mut self, depth: usize) -> V {
        if self.go_huge(0.05) {
            // Deep nesting inside a JSON scalar.
            let mut v = V::Num("1".into());
            for _ in 0..*self.pick(&[9, 64, 200, 2000]) {
                v = if self.p(0.5) {
                    V::List(vec![v])
                } else {
                    V::obj(vec![("a", v)])
                };
            }
            return v;
        }
        if depth > 2 {
            return V::Num(self.rng.random_range(0..500).to_string());
        }
        match self.below(6) {
            0 => V::Str(self.pick(&["pro", "team", "/", "ads"]).to_string()),
            1 => V::Num(self.rng.random_range(-100..1000).to_string()),
            2 => V::Num(format!("{:.3}", self.rng.random_range(-10.0..10.0))),
            3 => self.any(depth + 1),
            4 => V::List(
                (0..self.below(4))
                    .map(|_| self.json_scalar(depth + 1))
                    .collect(),
            ),
            _ => V::Obj(
                (0..self.below(4))
                    .map(|_| {
                        let k = self.pick(&["plan", "amount", "ms", "path", "nested"]);
                        (k.to_string(), self.json_scalar(depth + 1))
                    })
                    .collect(),
            ),
        }
    }

    fn range(&mut self) -> V {
        match self.below(8) {
            0 if self.chaos > 0.0 => V::obj(vec![
                ("from", V::Str("0001-01-01T00:00:00Z".into())),
                ("to", V::Str("9999-12-31T00:00:00Z".into())),
            ]),
            1 => {
                let (from, to) = (self.date(), self.date());
                self.object(vec![("from", true, from), ("to", true, to)])
            }
            2 if self.chaos > 0.0 => {
                let (from, to, last) = (self.date(), self.date(), self.duration());
                self.object(vec![
                    ("from", false, from),
                    ("to", false, to),
                    ("last", false, last),
                ])
            }
            3 if self.chaos > 0.0 => V::Obj(vec![]),
            _ => {
                let last = self.duration();
                self.object(vec![("last", true, last)])
            }
        }
    }

    fn filter(&mut self) -> V {
        let op = self.enum_of(&[
            "EQ", "NEQ", "IN", "NOT_IN", "GT", "GTE", "LT", "LTE", "CONTAINS", "EXISTS",
        ]);
        let long_in = matches!(&op, V::Enum(e) if e == "IN" || e == "NOT_IN") && self.go_huge(1.0);
        let value = if long_in {
            let n = *self.pick(&[100, 1000, 10_000]);
            V::List((0..n).map(|i| V::Str(format!("v{i}"))).collect())
        } else {
            self.json_scalar(0)
        };
        let field = self.field_name();
        self.object(vec![
            ("field", true, field),
            ("op", true, op),
            ("value", false, value),
        ])
    }

    fn metric_query(&mut self) -> V {
        let measure = self.enum_of(&[
            "COUNT",
            "COUNT_DISTINCT",
            "SUM",
            "AVG",
            "MIN",
            "MAX",
            "P50",
            "P90",
            "P95",
            "P99",
        ]);
        let field = self.field_name();
        let types = self.list(3, |g| g.event_type());
        let filters = self.list(3, |g| g.filter());
        let group_by = self.list(4, |g| g.field_name());
        let granularity = self.enum_of(&["MINUTE", "HOUR", "DAY", "WEEK", "MONTH"]);
        let range = self.range();
        let tz = self.timezone();
        let limit = self.int(0, 200);
        self.object(vec![
            ("measure", true, measure),
            ("field", false, field),
            ("eventTypes", false, types),
            ("filters", false, filters),
            ("groupBy", false, group_by),
            ("granularity", false, granularity),
            ("range", true, range),
            ("timezone", false, tz),
            ("limit", false, limit),
        ])
    }

    fn funnel_input(&mut self) -> V {
        let steps = self.list(11, |g| {
            let t = g.event_type();
            let f = g.list(2, |g| g.filter());
            g.object(vec![("eventType", true, t), ("filters", false, f)])
        });
        let window = self.duration();
        let range = self.range();
        let tz = self.timezone();
        let count_by = self.or_wild(V::Str("userId".into()));
        let breakdown = self.or_wild(V::Str("properties.plan".into()));
        self.object(vec![
            ("steps", true, steps),
            ("conversionWindow", true, window),
            ("range", true, range),
            ("timezone", false, tz),
            ("countBy", false, count_by),
            ("breakdown", false, breakdown),
        ])
    }

    fn retention_input(&mut self) -> V {
        let (start, ret) = (self.event_type(), self.event_type());
        let period = self.enum_of(&["DAY", "WEEK", "MONTH", "HOUR", "MINUTE"]);
        let periods = self.int(0, 20);
        let range = self.range();
        let tz = self.timezone();
        let count_by = self.or_wild(V::Str("sessionId".into()));
        self.object(vec![
            ("startEvent", true, start),
            ("returnEvent", true, ret),
            ("period", true, period),
            ("periods", false, periods),
            ("range", true, range),
            ("timezone", false, tz),
            ("countBy", false, count_by),
        ])
    }

    fn event_filter(&mut self) -> V {
        let types = self.list(3, |g| g.event_type());
        let (from, to) = (self.date(), self.date());
        let (user, session) = (self.text(), self.text());
        let props = self.json_scalar(0);
        self.object(vec![
            ("types", false, types),
            ("from", false, from),
            ("to", false, to),
            ("userId", false, user),
            ("sessionId", false, session),
            ("properties", false, props),
        ])
    }

    fn event_input(&mut self) -> V {
        let id = if self.p(0.3) {
            // Repeated ids: duplicates within and across batches.
            let fixed = self.pick(&[
                "00000000-0000-0000-0000-000000000001",
                "not-a-uuid",
                "00000000-0000-0000-0000-000000000000",
            ]);
            V::Str(fixed.to_string())
        } else {
            V::Str(self.uuid())
        };
        let id = self.or_wild(id);
        let t = self.event_type();
        let ts = self.date();
        let (user, session) = (self.text(), self.text());
        let props = self.json_scalar(0);
        self.object(vec![
            ("id", false, id),
            ("type", true, t),
            ("timestamp", false, ts),
            ("userId", false, user),
            ("sessionId", false, session),
            ("properties", false, props),
        ])
    }

    /// An argument: inline, or as a variable of `ty` (with chaos, a
    /// variable declared with the wrong type, left undefined, or unused).
    fn arg(&mut self, name: &str, ty: &str, value: V) -> String {
        if !self.use_vars {
            let mut s = format!("{name}: ");
            value.gql(&mut s);
            return s;
        }
        let var = format!("v{}", self.vars.len());
        let declared = if self.wild() && self.p(0.2) {
            self.pick(&["Int", "String!", "[String]", "JSON", "Bogus"])
                .to_string()
        } else {
            ty.to_owned()
        };
        self.vars.push((var.clone(), declared, value));
        format!("{name}: ${var}")
    }

    fn page_args(&mut self) -> Vec<String> {
        let mut args = Vec::new();
        if self.p(0.6) {
            let first = if self.wild() {
                V::Num(self.pick(&["2147483647", "-1", "0", "100000"]).to_string())
            } else {
                self.int(1, 50)
            };
            args.push(self.arg("first", "Int", first));
        }
        if self.p(0.3) {
            let after = if self.p(0.5) {
                V::Str(
                    self.pick(&["MA==", "eyJ4IjoxfQ==", "////", "0", ""])
                        .to_string(),
                )
            } else {
                self.text()
            };
            args.push(self.arg("after", "String", after));
        }
        args
    }

    /// One root field of a query or mutation.
    fn root_field(&mut self, mutation: bool) -> String {
        let (name, args, selection): (&str, Vec<String>, &str) = if mutation {
            match self.below(10) {
                0..=5 => {
                    let events = self.list(8, |g| g.event_input());
                    let a = self.arg("events", "[EventInput!]!", events);
                    ("ingestEvents", vec![a], "{ accepted duplicates }")
                }
                6 => {
                    let (t, e, p) = (self.text(), self.text(), self.text());
                    let args = vec![
                        self.arg("tenant", "String!", t),
                        self.arg("email", "String!", e),
                        self.arg("password", "String!", p),
                    ];
                    ("login", args, "{ token user { id email role } }")
                }
                7 => {
                    let retention = self.int(1, 3650);
                    let truncate = V::Bool(self.p(0.5));
                    let truncate = self.or_wild(truncate);
                    // Retention stays wide so the final check's events
                    // (minutes old) are never pruned.
                    let retention = match retention {
                        V::Num(n) if n.parse::<i64>().is_ok_and(|d| (1..30).contains(&d)) => {
                            V::Num("400".into())
                        }
                        other => other,
                    };
                    let input = self.object(vec![
                        ("retentionDays", false, retention),
                        ("truncateIp", false, truncate),
                    ]);
                    let a = self.arg("input", "TenantSettingsInput!", input);
                    ("updateTenantSettings", vec![a], "{ id slug settings }")
                }
                8 => {
                    let email = V::Str(format!("fz{}@fuzz.test", self.ident()));
                    let email = self.or_wild(email);
                    // No password: an argon2 hash per case would dominate.
                    let role = self.enum_of(&["VIEWER", "EDITOR", "ADMIN", "SUPER_ADMIN"]);
                    let name = self.text();
                    let input = self.object(vec![
                        ("email", true, email),
                        ("role", true, role),
                        ("displayName", false, name),
                    ]);
                    let a = self.arg("input", "UserInput!", input);
                    ("createUser", vec![a], "{ id email role status }")
                }
                _ => {
                    let (slug, status) = (self.text(), self.enum_of(&["ACTIVE", "SUSPENDED"]));
                    // Only a SUPER_ADMIN may; the fuzzer never has one.
                    let args = vec![
                        self.arg("slug", "String!", slug),
                        self.arg("status", "TenantStatus!", status),
                    ];
                    ("setTenantStatus", args, "{ slug status }")
                }
            }
        } else {
            match self.below(16) {
                0 | 1 => (
                    "me",
                    vec![],
                    "{ user { id email role status } tenant { id slug name status plan settings features } role }",
                ),
                2..=5 => {
                    let q = self.metric_query();
                    let a = self.arg("query", "MetricQueryInput!", q);
                    (
                        "metrics",
                        vec![a],
                        "{ total cached computedAt series { group total points { bucket value } } }",
                    )
                }
                6 | 7 => {
                    let f = self.funnel_input();
                    let a = self.arg("input", "FunnelInput!", f);
                    (
                        "funnel",
                        vec![a],
                        "{ steps { eventType count conversionFromStart conversionFromPrevious medianSecondsToConvert } breakdowns { value steps { count } } }",
                    )
                }
                8 | 9 => {
                    let r = self.retention_input();
                    let a = self.arg("input", "RetentionInput!", r);
                    (
                        "retention",
                        vec![a],
                        "{ cohorts { start size returned rates } }",
                    )
                }
                10 | 11 => {
                    let mut args = self.page_args();
                    if self.p(0.7) {
                        let f = self.event_filter();
                        args.push(self.arg("filter", "EventFilterInput", f));
                    }
                    (
                        "events",
                        args,
                        "{ edges { cursor node { id type timestamp userId sessionId properties receivedAt source ip userAgent } } pageInfo { hasNextPage endCursor } }",
                    )
                }
                12 => {
                    let args = self.page_args();
                    (
                        "users",
                        args,
                        "{ edges { cursor node { id email role status lastLoginAt } } pageInfo { hasNextPage endCursor } }",
                    )
                }
                13 => {
                    let mut args = self.page_args();
                    if self.p(0.4) {
                        let (a, r) = (self.text(), self.text());
                        let f = self.object(vec![("action", false, a), ("resourceType", false, r)]);
                        args.push(self.arg("filter", "AuditFilterInput", f));
                    }
                    (
                        "auditLog",
                        args,
                        "{ edges { node { id action actor before after ip } } pageInfo { hasNextPage } }",
                    )
                }
                14 => {
                    let id = V::Str(self.uuid());
                    let id = self.or_wild(id);
                    let a = self.arg("id", "ID!", id);
                    ("user", vec![a], "{ id email }")
                }
                _ => ("tenants", vec![], "{ slug status }"),
            }
        };
        let mut selection = selection.to_owned();
        if self.wild() && self.p(0.3) {
            selection = match self.below(4) {
                0 => String::new(),
                1 => selection.replacen('{', "{ bogusField ", 1),
                2 => selection.replacen('{', "{ __typename ", 1),
                _ => "{ __typename }".to_owned(),
            };
        }
        let mut field = String::from(name);
        if self.wild() && self.p(0.2) {
            field = format!("{}: {name}", self.ident());
        }
        if self.wild() && self.p(0.2) {
            field = self.ident();
        }
        let mut args = args;
        if self.wild() && self.p(0.2) {
            let extra = self.any(0);
            let mut s = format!("{}: ", self.ident());
            extra.gql(&mut s);
            args.push(s);
        }
        if !args.is_empty() {
            field = format!("{field}({})", args.join(", "));
        }
        if self.wild() && self.p(0.2) {
            let directive = *self.pick(&[
                " @skip(if: false)",
                " @include(if: true)",
                " @skip(if: \"yes\")",
                " @include",
                " @bogus",
                " @skip(if: false) @skip(if: true)",
                " @deprecated",
            ]);
            field.push_str(directive);
        }
        format!("{field} {selection}")
    }

    /// A whole operation from the schema, valid when chaos is 0.
    fn operation(&mut self) -> (String, Option<String>, Option<String>) {
        self.vars.clear();
        self.use_vars = self.p(0.5);
        let mutation = self.p(0.2);
        let fields: Vec<String> = (0..1 + self.below(3))
            .map(|i| {
                let f = self.root_field(mutation);
                // Two root fields of one name need aliases.
                if i > 0 { format!("r{i}: {f}") } else { f }
            })
            .collect();
        let name = if self.p(0.35) {
            Some(format!("Op_{}", self.rng.random::<u32>()))
        } else {
            None
        };
        let keyword = if mutation { "mutation" } else { "query" };
        let keyword = if self.wild() && self.p(0.1) {
            "subscription"
        } else {
            keyword
        };
        let decls: Vec<String> = self
            .vars
            .iter()
            .map(|(n, ty, _)| format!("${n}: {ty}"))
            .collect();
        let mut doc = String::from(keyword);
        if let Some(n) = &name {
            doc.push(' ');
            doc.push_str(n);
        }
        if !decls.is_empty() {
            doc.push_str(&format!("({})", decls.join(", ")));
        }
        doc.push_str(" { ");
        doc.push_str(&fields.join(" "));
        doc.push_str(" }");
        let mut vars: Vec<(String, V)> = self
            .vars
            .iter()
            .map(|(n, _, v)| (n.clone(), v.clone()))
            .collect();
        if self.wild() && !vars.is_empty() {
            match self.below(3) {
                0 => {
                    vars.remove(0);
                }
                1 => vars[0].1 = self.any(0),
                _ => vars.push((self.ident(), self.any(0))),
            }
        }
        let variables = (!vars.is_empty() || self.p(0.2)).then(|| V::Obj(vars).to_json());
        let op_name = match &name {
            Some(n) if self.p(0.5) => Some(n.clone()),
            _ if self.wild() && self.p(0.3) => {
                Some(self.pick(&["Nope", "", "a b", "ü"]).to_string())
            }
            _ => None,
        };
        (doc, variables, op_name)
    }

    /// Documents of odd shapes: introspection, alias floods, depth,
    /// fragments, directives, several operations, garbage.
    fn special_document(&mut self) -> String {
        match self.below(12) {
            0 => "query IntrospectionQuery { __schema { queryType { name } mutationType { name } subscriptionType { name } types { name kind fields(includeDeprecated: true) { name args { name defaultValue type { name kind ofType { name kind ofType { name } } } } } inputFields { name } enumValues { name } } directives { name locations args { name } } } }".into(),
            1 => {
                let name = self.pick(&["Query", "Mutation", "MetricQueryInput", "Bogus", ""]);
                format!("{{ __type(name: \"{name}\") {{ name kind fields {{ name }} inputFields {{ name type {{ name }} }} }} __typename }}")
            }
            2 => {
                let n = *self.pick(&[1000, 5000, 20_000]);
                let inner = self.pick(&["__typename", "me { role }", "tenants { slug }"]);
                let mut s = String::from("{ ");
                for i in 0..n {
                    s.push_str(&format!("a{i}: {inner} "));
                }
                s.push('}');
                s
            }
            3 => {
                let depth = *self.pick(&[16, 100, 1000, 5000]);
                let mut s = String::from("{ __schema { types { fields { type ");
                for _ in 0..depth {
                    s.push_str("{ ofType ");
                }
                s.push_str("{ name }");
                for _ in 0..depth {
                    s.push_str(" }");
                }
                s.push_str(" } } } }");
                s
            }
            4 => {
                let depth = *self.pick(&[100, 1000, 10_000]);
                format!("{}{}", "{ a ".repeat(depth), "}".repeat(depth))
            }
            5 => {
                let depth = *self.pick(&[100, 1000, 10_000]);
                format!(
                    "{{ metrics(query: {{measure: COUNT, range: {{last: \"1d\"}}, filters: [{{field: \"type\", op: IN, value: {}1{}}}]}}) {{ total }} }}",
                    "[".repeat(depth),
                    "]".repeat(depth)
                )
            }
            6 => self
                .pick(&[
                    "fragment A on Query { ...B } fragment B on Query { ...A } { ...A }",
                    "fragment A on Query { ...A } { ...A }",
                    "{ ...Missing }",
                    "fragment F on Bogus { x } { ...F }",
                    "fragment F on Viewer { role } { me { ...F ...F ... on Viewer { role } } }",
                    "{ ... on Query { me { role } } ... on Mutation { x } }",
                    "fragment F on Query { me { role } } fragment F on Query { me { role } } { ...F }",
                ])
                .to_string(),
            7 => self
                .pick(&[
                    "query @skip(if: true) { me { role } }",
                    "query ($s: Boolean!) { me @skip(if: $s) { role } }",
                    "{ me @include(if: true) @include(if: false) { role } }",
                    "{ me @specifiedBy(url: \"x\") { role } }",
                    "query A { me { role } } query A { me { role } }",
                    "query A { me { role } } query B { tenants { slug } }",
                    "{ me { role } } { tenants { slug } }",
                    "subscription { metricUpdated { total } }",
                    "subscription S { __typename }",
                    "mutation { __typename }",
                    "query ($a: Int = \"x\", $a: Int) { __typename }",
                    "query ($q: MetricQueryInput! = {measure: COUNT, range: {last: \"1d\"}}) { metrics(query: $q) { total } }",
                ])
                .to_string(),
            8 => {
                let n = *self.pick(&[10, 300, 3000]);
                let mut s = String::from("query (");
                for i in 0..n {
                    s.push_str(&format!("$v{i}: Int "));
                }
                s.push_str(") { __typename }");
                s
            }
            9 => {
                let n = 1 + self.below(200);
                (0..n)
                    .map(|_| *self.pick(&["{", "}", "(", ")", "...", "$", "\"", "\"\"\"", "#", "@", ":", "[", "]", "query", "me", "!", "=", "\n", "\\u0000", "1e999", "&"]))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
            10 => {
                let n = 1 + self.below(300);
                String::from_utf8_lossy(&(0..n).map(|_| self.rng.random::<u8>()).collect::<Vec<_>>()).into_owned()
            }
            _ => format!("# {}\n{{ me {{ role }} }}", "x".repeat(self.below(1000))),
        }
    }

    /// Flips, truncates or splices the text of a document.
    fn mutate_text(&mut self, doc: String) -> String {
        let mut bytes = doc.into_bytes();
        for _ in 0..1 + self.below(4) {
            if bytes.is_empty() {
                break;
            }
            let at = self.below(bytes.len());
            match self.below(5) {
                0 => bytes[at] ^= 1 << self.below(8),
                1 => bytes.truncate(at),
                2 => {
                    let token = self.pick(&[
                        "{",
                        "}",
                        "(",
                        ")",
                        "...",
                        "$v0",
                        "\"",
                        "@skip(if:true)",
                        ":",
                        "[",
                        "]",
                        "null",
                        "-",
                        "\u{fffd}",
                    ]);
                    bytes.splice(at..at, token.bytes());
                }
                3 => {
                    let end = (at + self.below(64)).min(bytes.len());
                    let chunk = bytes[at..end].to_vec();
                    let to = self.below(bytes.len());
                    bytes.splice(to..to, chunk);
                }
                _ => {
                    let end = (at + self.below(16)).min(bytes.len());
                    bytes.drain(at..end);
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// A GraphQL request as (query, variables JSON, operationName).
    fn graphql_request(&mut self) -> (String, Option<String>, Option<String>) {
        let (mut doc, vars, name) = if self.p(0.8) {
            self.operation()
        } else {
            (self.special_document(), None, None)
        };
        if self.chaos > 0.0 && self.p(0.15) {
            doc = self.mutate_text(doc);
        }
        (doc, vars, name)
    }

    fn envelope(&mut self) -> String {
        let (query, vars, name) = self.graphql_request();
        let mut parts = Vec::new();
        let q = serde_json::to_string(&query).unwrap_or_default();
        if self.wild() && self.p(0.1) {
            parts.push(format!(
                "\"query\":{}",
                self.pick(&["null", "1", "[]", "{}", "\"\""])
            ));
        } else if !(self.wild() && self.p(0.05)) {
            parts.push(format!("\"query\":{q}"));
        }
        if let Some(v) = vars {
            let v = if self.wild() && self.p(0.15) {
                self.pick(&["\"{}\"", "[]", "1", "null", "\"x\"", "{\"v0\":"])
                    .to_string()
            } else {
                v
            };
            parts.push(format!("\"variables\":{v}"));
        }
        if let Some(n) = name {
            parts.push(format!(
                "\"operationName\":{}",
                serde_json::to_string(&n).unwrap_or_default()
            ));
        }
        if self.wild() && self.p(0.1) {
            parts.push(format!("\"extensions\":{}", self.any(0).to_json()));
        }
        format!("{{{}}}", parts.join(","))
    }

    /// The body of a POST to `/graphql`.
    fn graphql_body(&mut self) -> Vec<u8> {
        let roll = self.below(100);
        let body = if roll < 8 {
            // Batches, up to and past the limit of 20.
            let n = *self.pick(&[0, 1, 2, 5, 20, 21, 25, 100]);
            let items: Vec<String> = (0..n).map(|_| self.envelope()).collect();
            format!("[{}]", items.join(","))
        } else if roll < 11 {
            let garbage: [&[u8]; 10] = [
                b"",
                b"null",
                b"{}",
                b"[]",
                b"\"query\"",
                b"{\"query\": \"{ me { role } }\"",
                b"\xff\xfe{\"query\":1}",
                b"{\"query\":\"\\ud800\"}",
                b"{\"query\":\"{ me { role } }\",\"query\":\"{ tenants { slug } }\"}",
                b"{\"query\":\"{ me { role } }\"}garbage",
            ];
            return self.pick(&garbage).to_vec();
        } else {
            self.envelope()
        };
        if self.chaos > 0.0 && self.p(0.08) {
            return self.mutate_text(body).into_bytes();
        }
        body.into_bytes()
    }

    fn auth(&mut self) -> Auth {
        match self.below(20) {
            0..=5 => Auth::Viewer,
            6..=10 => Auth::Editor,
            11..=14 => Auth::Admin,
            15 | 16 => Auth::None,
            _ => Auth::Garbage(self.below(GARBAGE_AUTH)),
        }
    }

    // ----------------------------------------------------- events bodies

    /// One event as JSON text (raw numbers survive as written).
    fn event_text(&mut self) -> String {
        self.event_input().to_json()
    }

    fn events_case(&mut self) -> Case {
        let ndjson = self.p(0.35);
        let mut content_type = if ndjson {
            self.pick(&[
                "application/x-ndjson",
                "application/ndjson",
                "application/jsonl",
            ])
            .to_string()
        } else {
            "application/json".to_owned()
        };
        if self.wild() && self.p(0.15) {
            content_type = self
                .pick(&[
                    "",
                    "text/plain",
                    "application/json; charset=utf-16",
                    "APPLICATION/JSON",
                    "application/x-www-form-urlencoded",
                    "multipart/form-data; boundary=x",
                    "application/xml",
                ])
                .to_string();
        }
        let mut n = self.below(20);
        let mut oversize = false;
        if self.wild() && self.p(0.05) {
            n = *self.pick(&[1000, 10_001]);
        }
        let items: Vec<String> = if n > 100 {
            (0..n)
                .map(|i| format!("{{\"type\":\"bulk\",\"userId\":\"u{i}\"}}"))
                .collect()
        } else {
            (0..n).map(|_| self.event_text()).collect()
        };
        let mut body = if ndjson {
            let sep = if self.wild() && self.p(0.2) {
                "\r\n"
            } else {
                "\n"
            };
            let mut s = items.join(sep);
            if self.p(0.5) {
                s.push('\n');
            }
            s
        } else {
            format!("[{}]", items.join(","))
        }
        .into_bytes();
        if self.wild() && self.p(0.15) {
            body = self
                .mutate_text(String::from_utf8_lossy(&body).into_owned())
                .into_bytes();
        }
        if self.wild() && self.p(0.05) {
            let garbage: [&[u8]; 9] = [
                b"",
                b"{}",
                b"{\"type\":\"x\"}",
                b"null",
                b"[null, 1, \"x\", []]",
                b"\xff\xfe\x00",
                b"[{\"type\":\"x\"}",
                b"\n\n\n",
                b"[{\"type\":\"x\",\"properties\":{\"a\":1e999}}]",
            ];
            body = self.pick(&garbage).to_vec();
        }
        let mut headers = vec![];
        if !content_type.is_empty() || self.p(0.5) {
            headers.push(("content-type".to_owned(), content_type));
        }
        if self.p(0.3) {
            let level = flate2::Compression::new(self.below(10) as u32);
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), level);
            let _ = enc.write_all(&body);
            body = enc.finish().unwrap_or_default();
            if self.wild() && self.p(0.3) {
                // Truncated or corrupted gzip.
                let at = self.below(body.len());
                if self.p(0.5) {
                    body.truncate(at);
                } else {
                    body[at] ^= 0x55;
                }
            }
            let encoding = if self.wild() && self.p(0.1) {
                "x-gzip"
            } else {
                "gzip"
            };
            headers.push(("content-encoding".to_owned(), encoding.to_owned()));
        } else if self.wild() && self.p(0.1) {
            let encoding = self.pick(&["gzip", "br", "deflate", "identity", "gzip, gzip"]);
            headers.push(("content-encoding".to_owned(), encoding.to_string()));
        }
        if self.wild() && self.p(0.01) {
            // A gzip bomb: small on the wire, past the limit inflated.
            body = gzip_bomb().to_vec();
            headers.retain(|(k, _)| k != "content-encoding");
            headers.push(("content-encoding".to_owned(), "gzip".to_owned()));
        } else if self.wild() && self.p(0.005) {
            body = vec![b' '; (5 << 20) + 1];
            oversize = true;
        }
        Case::Http {
            kind: Kind::Events,
            method: reqwest::Method::POST,
            target: "/v1/events".into(),
            headers,
            auth: self.auth(),
            body,
            oversize,
        }
    }

    // ------------------------------------------------------ GraphQL HTTP

    fn graphql_case(&mut self) -> Case {
        let roll = self.below(100);
        let auth = self.auth();
        if roll < 12 {
            let (query, vars, name) = self.graphql_request();
            let mut pairs = url::form_urlencoded::Serializer::new(String::new());
            if !(self.wild() && self.p(0.1)) {
                pairs.append_pair("query", &query);
            }
            if let Some(v) = vars {
                pairs.append_pair("variables", &v);
            }
            if let Some(n) = name {
                pairs.append_pair("operationName", &n);
            }
            let mut qs = pairs.finish();
            // Past 64 KiB a URI cannot even be sent; a cut query is one
            // more mutation.
            qs.truncate(32_000);
            if self.wild() && self.p(0.1) {
                qs = self
                    .pick(&["%zz", "query=%7B&query=%7D", "&&==&", "query=%00", ""])
                    .to_string();
            }
            let mut headers = vec![];
            if self.p(0.3) {
                let accept = self.pick(&[
                    "application/json",
                    "application/graphql-response+json",
                    "*/*",
                ]);
                headers.push(("accept".to_owned(), accept.to_string()));
            }
            return Case::Http {
                kind: Kind::GraphqlGet,
                method: reqwest::Method::GET,
                target: format!("/graphql?{qs}"),
                headers,
                auth,
                body: vec![],
                oversize: false,
            };
        }
        let body = self.graphql_body();
        let mut headers = vec![];
        let kind = if roll < 22 {
            let ct = self.pick(&[
                "",
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "application/graphql",
                "text/html",
            ]);
            if !ct.is_empty() {
                headers.push(("content-type".to_owned(), ct.to_string()));
            }
            Kind::GraphqlOddType
        } else {
            let ct = if self.p(0.1) {
                self.pick(&[
                    "application/json; charset=utf-8",
                    "application/graphql-response+json",
                    "Application/JSON",
                ])
            } else {
                &"application/json"
            };
            headers.push(("content-type".to_owned(), ct.to_string()));
            Kind::GraphqlPost
        };
        if self.p(0.3) {
            let accept = self.pick(&[
                "application/graphql-response+json",
                "application/json",
                "*/*",
                "text/html",
            ]);
            headers.push(("accept".to_owned(), accept.to_string()));
        }
        Case::Http {
            kind,
            method: reqwest::Method::POST,
            target: "/graphql".into(),
            headers,
            auth,
            body,
            oversize: false,
        }
    }

    // --------------------------------------------------------- WebSocket

    fn ws_payload(&mut self) -> String {
        let (query, vars, name) = self.graphql_request();
        let mut parts = vec![format!(
            "\"query\":{}",
            serde_json::to_string(&query).unwrap_or_default()
        )];
        if let Some(v) = vars {
            parts.push(format!("\"variables\":{v}"));
        }
        if let Some(n) = name {
            parts.push(format!(
                "\"operationName\":{}",
                serde_json::to_string(&n).unwrap_or_default()
            ));
        }
        format!("{{{}}}", parts.join(","))
    }

    fn ws_case(&mut self) -> Case {
        let protocol = if self.p(0.05) {
            self.pick(&[
                "bogus",
                "graphql-transport-ws, graphql-ws",
                "graphql-ws, bogus",
                "",
            ])
            .to_string()
        } else if self.p(0.5) {
            "graphql-transport-ws".to_owned()
        } else {
            "graphql-ws".to_owned()
        };
        let legacy = protocol == "graphql-ws";
        let mut frames = Vec::new();
        let ids = [
            "1",
            "2",
            "1",
            "",
            "a-very-long-id-a-very-long-id-a-very-long-id-a-very-long-id",
        ];
        // Usually a proper init first, so that later frames reach the
        // executor; sometimes none, or a bad one.
        if self.p(0.8) {
            let token = self
                .pick(&["@@VIEWER@@", "@@EDITOR@@", "@@ADMIN@@"])
                .to_string();
            let payload = if self.wild() && self.p(0.5) {
                self.pick(&[
                    "{}".to_owned(),
                    "null".to_owned(),
                    "\"Bearer x\"".to_owned(),
                    "{\"authorization\":\"Bearer not-a-jwt\"}".to_owned(),
                    format!("{{\"authorization\":\"{token}\"}}"),
                    format!("{{\"Authorization\":\"Bearer {token}\"}}"),
                    "{\"authorization\":42}".to_owned(),
                ])
                .clone()
            } else {
                format!("{{\"authorization\":\"Bearer {token}\"}}")
            };
            frames.push(Frame::Text(format!(
                "{{\"type\":\"connection_init\",\"payload\":{payload}}}"
            )));
        }
        for _ in 0..self.below(7) {
            let id = *self.pick(&ids);
            let frame = match self.below(14) {
                0..=5 => {
                    let ty = if legacy ^ (self.wild() && self.p(0.2)) { "start" } else { "subscribe" };
                    let payload = if self.wild() && self.p(0.2) {
                        self.any(0).to_json()
                    } else {
                        self.ws_payload()
                    };
                    Frame::Text(format!("{{\"id\":\"{id}\",\"type\":\"{ty}\",\"payload\":{payload}}}"))
                }
                6 => Frame::Text(format!("{{\"id\":\"{id}\",\"type\":\"{}\"}}", self.pick(&["complete", "stop"]))),
                7 => Frame::Text(
                    self.pick(&[
                        "{\"type\":\"ping\"}",
                        "{\"type\":\"pong\"}",
                        "{\"type\":\"connection_terminate\"}",
                        "{\"type\":\"connection_init\"}",
                        "{\"type\":\"bogus\"}",
                        "{}",
                        "[]",
                        "null",
                        "{\"type\":null,\"id\":1}",
                        "{\"type\":\"subscribe\",\"id\":7,\"payload\":{\"query\":\"{ me { role } }\"}}",
                    ])
                    .to_string(),
                ),
                8 => {
                    let n = self.below(200);
                    Frame::Binary((0..n).map(|_| self.rng.random()).collect())
                }
                9 => Frame::Binary(
                    format!("{{\"id\":\"{id}\",\"type\":\"subscribe\",\"payload\":{}}}", self.ws_payload()).into_bytes(),
                ),
                10 => {
                    let text = format!("{{\"id\":\"{id}\",\"type\":\"subscribe\",\"payload\":{}}}", self.ws_payload());
                    Frame::Text(self.mutate_text(text))
                }
                11 => {
                    let n = 1 + self.below(300);
                    Frame::Text(
                        String::from_utf8_lossy(&(0..n).map(|_| self.rng.random::<u8>()).collect::<Vec<_>>())
                            .into_owned(),
                    )
                }
                12 => Frame::Text(format!("{{\"type\":\"connection_init\",\"payload\":{}}}", self.any(0).to_json())),
                _ => Frame::Text(self.extreme_string()),
            };
            frames.push(frame);
        }
        Case::Ws { protocol, frames }
    }

    fn case(&mut self) -> Case {
        let roll = self.below(100);
        if roll < 60 {
            self.graphql_case()
        } else if roll < 85 {
            self.events_case()
        } else {
            self.ws_case()
        }
    }
}

fn pick<'a, T>(rng: &mut StdRng, xs: &'a [T]) -> &'a T {
    &xs[rng.random_range(0..xs.len())]
}

/// 6 MiB of spaces, gzipped once per process: past the 5 MiB ingestion
/// limit once inflated.
fn gzip_bomb() -> &'static [u8] {
    static BOMB: OnceLock<Vec<u8>> = OnceLock::new();
    BOMB.get_or_init(|| {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..6 {
            enc.write_all(&chunk).expect("gzip");
        }
        enc.finish().expect("gzip")
    })
}

fn generate(seed: u64, index: usize) -> Case {
    Gen::new(seed, index).case()
}

// --------------------------------------------------------------- oracle

struct Outcome {
    kind: Kind,
    /// `None`: the case passed; else the complaint and the full report.
    failure: Option<(String, String)>,
}

fn describe(case: &Case, tokens: &Tokens) -> String {
    const MAX: usize = 3000;
    let cut = |s: &str| -> String {
        if s.len() <= MAX {
            s.to_owned()
        } else {
            let mut end = MAX;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}… ({} bytes in all)", &s[..end], s.len())
        }
    };
    match case {
        Case::Http {
            method,
            target,
            headers,
            auth,
            body,
            ..
        } => {
            let mut s = format!("{method} {}\n", cut(target));
            if let Some(a) = tokens.header(*auth) {
                s.push_str(&format!("authorization: {:?} {}\n", auth, cut(&a)));
            }
            for (k, v) in headers {
                s.push_str(&format!("{k}: {v}\n"));
            }
            let gz = headers
                .iter()
                .any(|(k, v)| k == "content-encoding" && v.contains("gzip"));
            if gz {
                let mut inflated = Vec::new();
                let _ = std::io::Read::read_to_end(
                    &mut std::io::Read::take(flate2::read::GzDecoder::new(&body[..]), 8192),
                    &mut inflated,
                );
                s.push_str(&format!(
                    "\n<{} bytes gzip; inflates to (start)>: {}",
                    body.len(),
                    cut(&String::from_utf8_lossy(&inflated))
                ));
            } else {
                s.push('\n');
                s.push_str(&cut(&String::from_utf8_lossy(body)));
            }
            s
        }
        Case::Ws { protocol, frames } => {
            let mut s = format!("WebSocket /graphql/ws, subprotocol {protocol:?}\n");
            for f in frames {
                match f {
                    Frame::Text(t) => s.push_str(&format!("text: {}\n", cut(t))),
                    Frame::Binary(b) => {
                        s.push_str(&format!("binary: {:?}\n", &b[..b.len().min(200)]))
                    }
                }
            }
            s
        }
    }
}

/// Problems with the errors of one GraphQL response.
fn check_errors(response: &Value) -> Result<(), String> {
    let Some(errors) = response.get("errors") else {
        return Ok(());
    };
    if errors.is_null() {
        return Ok(());
    }
    let Some(errors) = errors.as_array() else {
        return Err(format!("`errors` is not a list: {errors}"));
    };
    for e in errors {
        match e["extensions"]["code"].as_str() {
            None => return Err(format!("an error without extensions.code: {e}")),
            Some(code) if SERVER_FAULT_CODES.contains(&code) => {
                return Err(format!("server fault {code}: {e}"));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn check_graphql_response(r: &Value) -> Result<(), String> {
    let Some(obj) = r.as_object() else {
        return Err(format!("a response that is not an object: {r}"));
    };
    let has_data = obj.contains_key("data");
    let has_errors = obj
        .get("errors")
        .and_then(Value::as_array)
        .is_some_and(|e| !e.is_empty());
    if !has_data && !has_errors {
        return Err(format!("neither `data` nor `errors`: {r}"));
    }
    check_errors(r)
}

fn check_http(
    kind: Kind,
    content_type: Option<&str>,
    accept_html: bool,
    status: u16,
    body: &[u8],
) -> Result<(), String> {
    let text = String::from_utf8_lossy(body);
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    if status >= 500 {
        let code = parsed.as_ref().and_then(|v| {
            v["errors"][0]["extensions"]["code"]
                .as_str()
                .or_else(|| v["code"].as_str())
                .map(str::to_owned)
        });
        return Err(match (status, code.as_deref()) {
            (500, Some("INTERNAL_SERVER_ERROR")) => format!("coded internal error 500: {text}"),
            _ => format!("HTTP {status}: {text}"),
        });
    }
    match kind {
        Kind::Events => {
            let Some(v) = parsed else {
                return Err(format!("HTTP {status} with a non-JSON body: {text}"));
            };
            if status == 202 {
                let ok = v["accepted"].is_u64() && v["duplicates"].is_u64();
                let ct = content_type.map(|c| {
                    c.split(';')
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_ascii_lowercase()
                });
                let known = matches!(
                    ct.as_deref(),
                    Some(
                        "application/json"
                            | "application/x-ndjson"
                            | "application/ndjson"
                            | "application/jsonl"
                    )
                );
                if !ok {
                    return Err(format!("202 without counts: {v}"));
                }
                if !known {
                    return Err(format!("202 for Content-Type {content_type:?}: {v}"));
                }
            } else if !(400..500).contains(&status) || !v["code"].is_string() {
                return Err(format!("HTTP {status} without a code: {v}"));
            }
            Ok(())
        }
        _ => {
            if accept_html && kind == Kind::GraphqlGet && status == 200 {
                return Ok(());
            }
            let Some(v) = parsed else {
                return Err(format!("HTTP {status} with a non-JSON body: {text}"));
            };
            if kind == Kind::GraphqlOddType && status < 400 {
                return Err(format!(
                    "POST /graphql with Content-Type {content_type:?} was executed (HTTP {status}); \
                     GraphQL over HTTP takes application/json only (a text/plain or form POST is a \
                     CSRF-able simple request): {text}"
                ));
            }
            if !(200..500).contains(&status) {
                return Err(format!("HTTP {status}: {text}"));
            }
            match &v {
                Value::Array(items) => {
                    for item in items {
                        check_graphql_response(item)?;
                    }
                    Ok(())
                }
                other => check_graphql_response(other),
            }
        }
    }
}

async fn run_http(
    client: &reqwest::Client,
    base: &str,
    case: &Case,
    tokens: &Tokens,
) -> Result<(), String> {
    let Case::Http {
        kind,
        method,
        target,
        headers,
        auth,
        body,
        oversize,
    } = case
    else {
        unreachable!("an HTTP case");
    };
    let mut req = client.request(method.clone(), format!("{base}{target}"));
    let mut content_type = None;
    let mut accept_html = false;
    for (k, v) in headers {
        if k == "content-type" {
            content_type = Some(v.as_str());
        }
        if k == "accept" && v.contains("text/html") {
            accept_html = true;
        }
        req = req.header(k, v);
    }
    if let Some(a) = tokens.header(*auth) {
        req = req.header("authorization", a);
    }
    if !body.is_empty() || *method == reqwest::Method::POST {
        req = req.body(body.clone());
    }
    let response = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return Err(format!("stalled: no answer within {CASE_TIMEOUT:?}"));
        }
        Err(_) if *oversize => return Ok(()),
        Err(e) if e.is_builder() => {
            return Err(format!("the test could not build the request: {e:?}"));
        }
        Err(e) => return Err(format!("connection dropped: {e:?}")),
    };
    let status = response.status().as_u16();
    let bytes = match response.bytes().await {
        Ok(b) => b,
        Err(e) if e.is_timeout() => {
            return Err(format!("stalled reading the body (HTTP {status})"));
        }
        Err(e) => {
            return Err(format!(
                "connection dropped mid-body (HTTP {status}): {e:?}"
            ));
        }
    };
    if *oversize && status == 413 {
        return Ok(());
    }
    check_http(*kind, content_type, accept_html, status, &bytes)
}

/// Whether a WebSocket text message is well-formed and carries no server
/// fault.
fn check_ws_message(text: &str) -> Result<(), String> {
    let v: Value = serde_json::from_str(text).map_err(|_| format!("a non-JSON message: {text}"))?;
    let Some(ty) = v["type"].as_str() else {
        return Err(format!("a message without `type`: {text}"));
    };
    match ty {
        "next" | "data" => check_errors(&v["payload"]),
        "error" => match &v["payload"] {
            Value::Array(errors) => check_errors(&json!({ "errors": errors })),
            other => check_errors(&json!({ "errors": [other] })),
        },
        _ => Ok(()),
    }
}

async fn run_ws(addr: std::net::SocketAddr, case: &Case, tokens: &Tokens) -> Result<(), String> {
    let Case::Ws { protocol, frames } = case else {
        unreachable!("a WebSocket case");
    };
    let mut request = format!("ws://{addr}/graphql/ws")
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    if let Ok(v) = protocol.parse() {
        request.headers_mut().insert("sec-websocket-protocol", v);
    }
    let offered_graphql = protocol
        .split(',')
        .any(|p| matches!(p.trim(), "graphql-ws" | "graphql-transport-ws"));
    let mut socket = match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => socket,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) if !offered_graphql => {
            let status = resp.status().as_u16();
            return if (400..500).contains(&status) {
                Ok(())
            } else {
                Err(format!("upgrade refused with HTTP {status}"))
            };
        }
        Err(e) => return Err(format!("upgrade failed: {e}")),
    };
    if !offered_graphql {
        return Err("a socket without a GraphQL subprotocol was accepted".into());
    }
    let mut closed: Option<u16> = None;
    let mut failure: Option<String> = None;
    for frame in frames {
        let msg = match frame {
            Frame::Text(t) => Message::text(tokens.fill(t)),
            Frame::Binary(b) => Message::binary(b.clone()),
        };
        if socket.send(msg).await.is_err() {
            break;
        }
        // Take what is ready without waiting, so a close the server sent
        // is seen before the next frame.
        let mut ended = false;
        while let Ok(Some(m)) = tokio::time::timeout(Duration::ZERO, socket.next()).await {
            if note(m, &mut closed, &mut failure) {
                ended = true;
                break;
            }
        }
        if ended {
            break;
        }
    }
    if closed.is_none() && failure.is_none() {
        // Our close; the server must answer it with its own close frame.
        let _ = socket
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
        loop {
            match socket.next().await {
                Some(m) => {
                    if note(m, &mut closed, &mut failure) {
                        break;
                    }
                }
                None => {
                    if closed.is_none() {
                        failure.get_or_insert("the socket ended without a close frame".into());
                    }
                    break;
                }
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    match closed {
        Some(code) if !CLOSE_CODES.contains(&code) => Err(format!("closed with code {code}")),
        _ => Ok(()),
    }
}

/// Records one message from the server; true when the socket is done
/// (a close frame, or an error, which before a close frame is a drop).
fn note(
    m: Result<Message, tokio_tungstenite::tungstenite::Error>,
    closed: &mut Option<u16>,
    failure: &mut Option<String>,
) -> bool {
    match m {
        Ok(Message::Text(t)) => {
            if let Err(e) = check_ws_message(&t) {
                failure.get_or_insert(e);
            }
            false
        }
        Ok(Message::Close(frame)) => {
            *closed = Some(frame.map(|f| u16::from(f.code)).unwrap_or(1005));
            true
        }
        Ok(_) => false,
        Err(e) => {
            if closed.is_none() {
                failure.get_or_insert(format!("socket dropped without a close frame: {e}"));
            }
            true
        }
    }
}

async fn run_case(
    app_addr: std::net::SocketAddr,
    client: &reqwest::Client,
    case: &Case,
    tokens: &Tokens,
) -> Result<(), String> {
    let base = format!("http://{app_addr}");
    let work = async {
        match case {
            Case::Http { .. } => run_http(client, &base, case, tokens).await,
            Case::Ws { .. } => run_ws(app_addr, case, tokens).await,
        }
    };
    match tokio::time::timeout(CASE_TIMEOUT + Duration::from_secs(1), work).await {
        Ok(r) => r,
        Err(_) => Err(format!("stalled: no answer within {CASE_TIMEOUT:?}")),
    }
}

fn kind_of(case: &Case) -> Kind {
    match case {
        Case::Http { kind, .. } => *kind,
        Case::Ws { .. } => Kind::WebSocket,
    }
}

/// Panics on the server's own threads (the runtime below names them), as
/// a panic hook sees them: tower-http has no catch-panic layer here, so a
/// panicking handler also drops its connection, but a panic in a spawned
/// task would not show on the wire.
static SERVER_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
const FUZZ_THREAD: &str = "pulse-fuzz";

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            if thread.name().is_some_and(|n| n.starts_with(FUZZ_THREAD))
                && let Ok(mut panics) = SERVER_PANICS.lock()
            {
                panics.push(info.to_string());
            }
            previous(info);
        }));
    });
}

#[test]
fn fuzzed_requests_never_break_the_server() {
    install_panic_hook();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name(FUZZ_THREAD)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(fuzz());
}

async fn fuzz() {
    let seed = env_number("PULSE_FUZZ_SEED").unwrap_or_else(rand::random);
    let cases = env_number("PULSE_FUZZ_CASES").unwrap_or(10_000) as usize;
    let concurrency = env_number("PULSE_FUZZ_CONCURRENCY").unwrap_or(16).max(1) as usize;
    let only = env_number("PULSE_FUZZ_ONLY").map(|i| i as usize);
    eprintln!(
        "fuzz: seed {seed}, {cases} cases, {concurrency} in flight (replay: PULSE_FUZZ_SEED={seed}{})",
        only.map(|i| format!(" PULSE_FUZZ_ONLY={i}"))
            .unwrap_or_default()
    );

    // The production pool size: the suite's smaller default would make
    // sixteen cases in flight queue for connections on debug builds and
    // answer UNAVAILABLE, which is overload, not a fault of the input.
    let app = spawn_app_with(|s| {
        s.set("PULSE_DB_MAX_CONNECTIONS", "16");
    })
    .await;
    let tenant = app.tenant("fuzz").await;
    let tokens = Arc::new(Tokens {
        viewer: app.token(&tenant, Role::Viewer),
        editor: app.token(&tenant, Role::Editor),
        admin: app.token(&tenant, Role::Admin),
        garbage: garbage_tokens(&app, &tenant),
    });
    let client = reqwest::Client::builder()
        .timeout(CASE_TIMEOUT)
        .build()
        .expect("client");
    let addr = app.addr;
    let started = Instant::now();
    let indices: Vec<usize> = match only {
        Some(i) => vec![i],
        None => (0..cases).collect(),
    };
    let done = Arc::new(AtomicUsize::new(0));
    let outcomes: Vec<(usize, Outcome)> = futures_util::stream::iter(indices)
        .map(|index| {
            let (client, tokens, done) = (client.clone(), tokens.clone(), done.clone());
            async move {
                let case = generate(seed, index);
                let result = run_case(addr, &client, &case, &tokens).await;
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n % 2000 == 0 {
                    eprintln!("fuzz: {n} cases in {:.1?}", started.elapsed());
                }
                let failure = result.err().map(|why| {
                    let report = format!(
                        "case {index} (PULSE_FUZZ_SEED={seed} PULSE_FUZZ_ONLY={index}): {why}\n--- request ---\n{}",
                        describe(&case, &tokens)
                    );
                    (why, report)
                });
                (
                    index,
                    Outcome {
                        kind: kind_of(&case),
                        failure,
                    },
                )
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();

    let mut per_kind: BTreeMap<Kind, (usize, usize)> = BTreeMap::new();
    let mut failures: Vec<(usize, (String, String))> = Vec::new();
    for (index, o) in outcomes {
        let entry = per_kind.entry(o.kind).or_default();
        entry.0 += 1;
        if let Some(f) = o.failure {
            entry.1 += 1;
            failures.push((index, f));
        }
    }
    failures.sort_by_key(|(i, _)| *i);
    eprintln!(
        "fuzz: {} cases in {elapsed:.1?} (seed {seed})",
        per_kind.values().map(|c| c.0).sum::<usize>()
    );
    for (kind, (n, failed)) in &per_kind {
        eprintln!("fuzz:   {kind:?}: {n} cases, {failed} failed");
    }

    // After the storm: alive, ready, and still counting right.
    let mut after = Vec::new();
    let health = app
        .http
        .get(app.url("/healthz"))
        .send()
        .await
        .map(|r| r.status().as_u16());
    if !matches!(health, Ok(200)) {
        after.push(format!("/healthz answered {health:?}"));
    }
    let ready = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .map(|r| r.status().as_u16());
    if !matches!(ready, Ok(200)) {
        after.push(format!("/readyz answered {ready:?}"));
    }
    let check_type = format!("fuzzcheck_{}", short_id());
    let known: Vec<Value> = (0..7)
        .map(|i| json!({ "type": check_type, "userId": format!("c{i}"), "timestamp": (chrono::Utc::now() - chrono::Duration::minutes(i + 1)).to_rfc3339() }))
        .collect();
    let editor = app.token(&tenant, Role::Editor);
    let ingest = app
        .http
        .post(app.url("/v1/events"))
        .bearer_auth(&editor)
        .json(&known)
        .send()
        .await;
    match ingest {
        Ok(r) if r.status() == 202 => {}
        Ok(r) => after.push(format!(
            "ingesting the known events: HTTP {}: {:?}",
            r.status(),
            r.text().await
        )),
        Err(e) => after.push(format!("ingesting the known events: {e}")),
    }
    let viewer = app.token(&tenant, Role::Viewer);
    let query = "query($q: MetricQueryInput!) { metrics(query: $q) { total series { total } } }";
    let vars = json!({ "q": { "measure": "COUNT", "eventTypes": [check_type], "range": { "last": "1d" } } });
    let answer = tokio::time::timeout(CASE_TIMEOUT, app.post_gql(Some(&viewer), query, vars)).await;
    match answer {
        Ok((200, body)) if body["data"]["metrics"]["total"].as_f64() == Some(7.0) => {}
        Ok((status, body)) => after.push(format!(
            "the known count: expected total 7, got HTTP {status}: {body}"
        )),
        Err(_) => after.push("the known count: no answer within 10 s".into()),
    }
    match app.http.get(app.url("/metrics")).send().await {
        Ok(r) if r.status() == 200 => {
            let text = r.text().await.unwrap_or_default();
            let labels: std::collections::HashSet<&str> = text
                .lines()
                .filter(|l| l.contains("graphql_requests"))
                .filter_map(|l| l.split("operation=\"").nth(1))
                .filter_map(|rest| rest.split('"').next())
                .collect();
            if labels.len() > MAX_OPERATION_LABELS {
                let sample: Vec<&&str> = labels.iter().take(5).collect();
                after.push(format!(
                    "/metrics holds {} distinct `operation` label values (more than {MAX_OPERATION_LABELS}): \
                     client-chosen operation names become label series without bound, e.g. {sample:?}",
                    labels.len()
                ));
            }
        }
        other => after.push(format!("/metrics answered {:?}", other.map(|r| r.status()))),
    }
    let panics = SERVER_PANICS.lock().map(|p| p.clone()).unwrap_or_default();

    if failures.is_empty() && after.is_empty() && panics.is_empty() {
        return;
    }
    let mut report = format!(
        "fuzz failed (seed {seed}; replay with PULSE_FUZZ_SEED={seed}): {} failing cases, {} server panics, {} failed checks after the run\n",
        failures.len(),
        panics.len(),
        after.len()
    );
    for p in panics.iter().take(10) {
        report.push_str(&format!("\nserver panic: {p}\n"));
    }
    for a in &after {
        report.push_str(&format!("\nafter the run: {a}\n"));
    }
    // The first few failures of each kind of complaint.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (_, (why, f)) in &failures {
        let class: String = why.chars().take(48).collect();
        let n = seen.entry(class).or_default();
        *n += 1;
        if *n <= 2 {
            report.push_str(&format!("\n{f}\n"));
        }
    }
    report.push_str("\nfailures by complaint:\n");
    for (class, n) in &seen {
        report.push_str(&format!("  {n:5} × {class}\n"));
    }
    panic!("{report}");
}
