//! Turning a client's batch into [`NewEvent`]s, all or nothing.
//!
//! Both entry points hand over JSON values (GraphQL inputs are converted),
//! so one set of rules applies. Every problem is collected (the first
//! [`MAX_PROBLEMS`] are reported) so a client fixes a batch in one round.

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::{NewEvent, RequestFacts};
use crate::domain::tenants::TenantSettings;
use crate::error::{AppError, Problem};

/// Most problems one rejection lists.
pub const MAX_PROBLEMS: usize = 20;
pub const MAX_TYPE_LEN: usize = 100;
pub const MAX_ID_LEN: usize = 256;
pub const MAX_PROPERTIES_BYTES: usize = 32 * 1024;
pub const MAX_PROPERTIES_DEPTH: usize = 8;
/// How far ahead of the server's clock a timestamp may be.
pub const MAX_FUTURE: Duration = Duration::hours(24);

/// One item of a batch as received.
pub struct Incoming {
    pub value: Value,
    /// The NDJSON line it came from.
    pub line: Option<usize>,
}

struct Problems {
    list: Vec<Problem>,
    total: usize,
}

impl Problems {
    fn add(&mut self, index: usize, line: Option<usize>, field: &str, message: impl Into<String>) {
        self.total += 1;
        if self.list.len() < MAX_PROBLEMS {
            self.list.push(Problem {
                index,
                line,
                field: field.to_owned(),
                message: message.into(),
            });
        }
    }
}

/// Validates a whole batch; one bad event rejects it.
pub fn validate_batch(
    items: Vec<Incoming>,
    max_events: usize,
    settings: &TenantSettings,
    facts: &RequestFacts,
    now: DateTime<Utc>,
) -> Result<Vec<NewEvent>, AppError> {
    if items.len() > max_events {
        return Err(AppError::InvalidBatch {
            message: format!(
                "a batch holds at most {max_events} events; this one has {}",
                items.len()
            ),
            problems: Vec::new(),
        });
    }
    let oldest = now - Duration::days(i64::from(settings.retention_days));
    let mut problems = Problems {
        list: Vec::new(),
        total: 0,
    };
    let mut events = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let line = item.line;
        let mut bad = |field: &str, message: String| problems.add(index, line, field, message);
        let Value::Object(mut fields) = item.value else {
            bad("event", "must be a JSON object".into());
            continue;
        };
        let mut ok = true;
        let mut fail = |field: &str, message: String| {
            ok = false;
            bad(field, message);
        };

        let id = match fields.remove("id") {
            None | Some(Value::Null) => Uuid::now_v7(),
            Some(Value::String(s)) => match Uuid::parse_str(&s) {
                Ok(id) => id,
                Err(_) => {
                    fail("id", "must be a UUID".into());
                    Uuid::nil()
                }
            },
            Some(_) => {
                fail("id", "must be a UUID string".into());
                Uuid::nil()
            }
        };

        let event_type = match fields.remove("type") {
            Some(Value::String(t)) => match check_type(&t) {
                Ok(()) => t,
                Err(m) => {
                    fail("type", m);
                    String::new()
                }
            },
            None | Some(Value::Null) => {
                fail("type", "is required".into());
                String::new()
            }
            Some(_) => {
                fail("type", "must be a string".into());
                String::new()
            }
        };

        let occurred_at = match fields.remove("timestamp") {
            None | Some(Value::Null) => now,
            Some(Value::String(s)) => match DateTime::parse_from_rfc3339(&s) {
                Ok(t) => {
                    let t = t.with_timezone(&Utc);
                    if t > now + MAX_FUTURE {
                        fail("timestamp", "is more than 24 hours in the future".into());
                    } else if t < oldest {
                        fail(
                            "timestamp",
                            format!(
                                "is older than the tenant's retention of {} days",
                                settings.retention_days
                            ),
                        );
                    }
                    t
                }
                Err(_) => {
                    fail("timestamp", "must be an RFC 3339 date-time".into());
                    now
                }
            },
            Some(_) => {
                fail("timestamp", "must be an RFC 3339 date-time string".into());
                now
            }
        };

        let mut optional_text = |key: &str, alias: &str| -> Option<String> {
            let value = fields.remove(key).or_else(|| fields.remove(alias));
            match value {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.is_empty() => None,
                Some(Value::String(s)) if s.chars().count() > MAX_ID_LEN => {
                    fail(key, format!("must be at most {MAX_ID_LEN} characters"));
                    None
                }
                Some(Value::String(s)) if s.contains('\0') => {
                    fail(key, "must not contain NUL characters".into());
                    None
                }
                Some(Value::String(s)) => Some(s),
                Some(_) => {
                    fail(key, "must be a string".into());
                    None
                }
            }
        };
        let user_id = optional_text("userId", "user_id");
        let session_id = optional_text("sessionId", "session_id");

        let properties = match fields.remove("properties") {
            None | Some(Value::Null) => Value::Object(Default::default()),
            Some(p @ Value::Object(_)) => {
                if let Err(m) = check_properties(&p) {
                    fail("properties", m);
                }
                p
            }
            Some(_) => {
                fail("properties", "must be a JSON object".into());
                Value::Null
            }
        };

        for unknown in fields.keys() {
            fail(
                unknown,
                "unknown field (expected id, type, timestamp, userId, sessionId, properties)"
                    .into(),
            );
        }

        if ok {
            events.push(NewEvent {
                id,
                event_type,
                occurred_at,
                user_id,
                session_id,
                properties,
                ip: facts.ip.clone(),
                user_agent: facts.user_agent.clone(),
                source: facts.source,
                received_at: now,
            });
        }
    }
    if problems.total > 0 {
        let shown = problems.list.len();
        let message = if problems.total > shown {
            format!(
                "the batch was rejected: {} problems (the first {shown} listed); nothing was stored",
                problems.total
            )
        } else {
            format!(
                "the batch was rejected: {} problem{}; nothing was stored",
                problems.total,
                if problems.total == 1 { "" } else { "s" }
            )
        };
        return Err(AppError::InvalidBatch {
            message,
            problems: problems.list,
        });
    }
    Ok(events)
}

fn check_type(t: &str) -> Result<(), String> {
    let len = t.chars().count();
    if len == 0 || len > MAX_TYPE_LEN {
        return Err(format!("must be 1 to {MAX_TYPE_LEN} characters"));
    }
    if !t
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
    {
        return Err("may hold only A-Z, a-z, 0-9 and _ . : -".into());
    }
    Ok(())
}

fn check_properties(p: &Value) -> Result<(), String> {
    let depth = depth(p);
    if depth > MAX_PROPERTIES_DEPTH {
        return Err(format!(
            "nest at most {MAX_PROPERTIES_DEPTH} levels deep (found {depth})"
        ));
    }
    let size = serde_json::to_vec(p).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_PROPERTIES_BYTES {
        return Err(format!(
            "must be at most {MAX_PROPERTIES_BYTES} bytes as JSON (found {size})"
        ));
    }
    if has_nul(p) {
        // PostgreSQL's JSONB and text cannot store U+0000.
        return Err("must not contain NUL characters".into());
    }
    Ok(())
}

/// Nesting depth: `{}` is 1, `{"a": {"b": 1}}` is 2.
fn depth(v: &Value) -> usize {
    match v {
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        Value::Array(items) => items.iter().any(has_nul),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::events::Source;

    fn facts() -> RequestFacts {
        RequestFacts {
            ip: None,
            user_agent: None,
            source: Source::Http,
        }
    }

    fn run(values: Vec<Value>) -> Result<Vec<NewEvent>, AppError> {
        let items = values
            .into_iter()
            .map(|value| Incoming { value, line: None })
            .collect();
        validate_batch(items, 10, &TenantSettings::default(), &facts(), Utc::now())
    }

    fn problems(values: Vec<Value>) -> Vec<(usize, String)> {
        match run(values) {
            Err(AppError::InvalidBatch { problems, .. }) => {
                problems.into_iter().map(|p| (p.index, p.field)).collect()
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    fn nested(levels: usize) -> Value {
        (1..levels).fold(json!({}), |inner, _| json!({ "a": inner }))
    }

    #[test]
    fn a_minimal_event_gets_an_id_and_the_current_time() {
        let events = run(vec![json!({ "type": "page_view" })]).expect("valid");
        assert_eq!(events[0].event_type, "page_view");
        assert!(!events[0].id.is_nil());
        assert_eq!(events[0].properties, json!({}));
    }

    #[test]
    fn type_names_are_checked_at_and_past_their_limits() {
        assert!(run(vec![json!({ "type": "a".repeat(100) })]).is_ok());
        assert!(run(vec![json!({ "type": "email.opened:v2-x_y" })]).is_ok());
        for bad in [
            json!(""),
            json!("a".repeat(101)),
            json!("has space"),
            json!("é"),
            json!(5),
        ] {
            assert_eq!(
                problems(vec![json!({ "type": bad })]),
                [(0, "type".to_owned())]
            );
        }
    }

    #[test]
    fn properties_are_checked_for_shape_depth_size_and_nul() {
        assert!(run(vec![json!({ "type": "t", "properties": nested(8) })]).is_ok());
        assert_eq!(
            problems(vec![json!({ "type": "t", "properties": nested(9) })]),
            [(0, "properties".to_owned())]
        );
        // 32 KiB exactly: {"k":"…"} is 8 bytes of framing.
        let at = json!({ "k": "x".repeat(MAX_PROPERTIES_BYTES - 8) });
        assert_eq!(
            serde_json::to_vec(&at).expect("json").len(),
            MAX_PROPERTIES_BYTES
        );
        assert!(run(vec![json!({ "type": "t", "properties": at })]).is_ok());
        let past = json!({ "k": "x".repeat(MAX_PROPERTIES_BYTES - 7) });
        assert_eq!(
            problems(vec![json!({ "type": "t", "properties": past })]).len(),
            1
        );
        for bad in [json!([1]), json!("x"), json!({ "k": "a\u{0}b" })] {
            assert_eq!(
                problems(vec![json!({ "type": "t", "properties": bad })]).len(),
                1
            );
        }
    }

    #[test]
    fn timestamps_are_bounded_by_the_future_and_the_retention() {
        let now = Utc::now();
        let ts = |t: DateTime<Utc>| json!({ "type": "t", "timestamp": t.to_rfc3339() });
        assert!(run(vec![ts(now + Duration::hours(23))]).is_ok());
        assert!(run(vec![ts(now - Duration::days(399))]).is_ok());
        assert_eq!(problems(vec![ts(now + Duration::hours(25))]).len(), 1);
        assert_eq!(problems(vec![ts(now - Duration::days(401))]).len(), 1);
        assert_eq!(
            problems(vec![json!({ "type": "t", "timestamp": "yesterday" })]).len(),
            1
        );
    }

    #[test]
    fn every_problem_is_reported_by_index_up_to_the_cap() {
        let bad = problems(vec![
            json!({ "type": "ok" }),
            json!({ "type": "bad type", "id": "nope" }),
            json!("not an object"),
            json!({ "type": "ok", "colour": "red" }),
        ]);
        assert_eq!(
            bad,
            [
                (1, "id".to_owned()),
                (1, "type".to_owned()),
                (2, "event".to_owned()),
                (3, "colour".to_owned())
            ]
        );
        let many: Vec<Value> = (0..10)
            .map(|_| json!({ "type": "" , "id": 1, "userId": 2 }))
            .collect();
        let Err(AppError::InvalidBatch { problems, message }) = run(many) else {
            panic!("rejected");
        };
        assert_eq!(problems.len(), MAX_PROBLEMS);
        assert!(message.contains("30 problems"), "{message}");
    }

    #[test]
    fn a_batch_past_the_event_limit_is_refused() {
        let eleven: Vec<Value> = (0..11).map(|_| json!({ "type": "t" })).collect();
        assert!(matches!(run(eleven), Err(AppError::InvalidBatch { .. })));
        let ten: Vec<Value> = (0..10).map(|_| json!({ "type": "t" })).collect();
        assert_eq!(run(ten).expect("valid").len(), 10);
    }
}
