//! Events: validation, the group-commit writer, storage, actor numbers
//! and bitmaps, reading, and data expiry.
//!
//! Both entry points (`POST /v1/events` and the `ingestEvents` mutation)
//! call [`ingest`]: validate the whole batch, then hand it to the
//! [`writer::Writer`], which answers only after the events are committed.
//!
//! Storage differs by backend (see the `events` migration): PostgreSQL
//! keeps timestamps as `timestamptz` in monthly partitions, SQLite as
//! integer microseconds. Events therefore have no sea-orm entity; `store`
//! and `query` speak to each backend directly, behind one interface.

pub mod actors;
pub mod expiry;
pub mod query;
pub mod rollup_fields;
pub mod store;
pub mod validate;
pub mod writer;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::auth::{Role, TenantCtx};
use crate::cache::rate::{Kind, RateLimiter};
use crate::domain::{limits, tenants};
use crate::error::{AppError, AppResult};
use validate::Incoming;
pub use writer::{IngestCounts, Writer};

/// How events arrived, stored in `events.source`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Http,
    Graphql,
    Demo,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::Graphql => "graphql",
            Source::Demo => "demo",
        }
    }
}

/// What the request tells about where events came from.
#[derive(Clone, Debug)]
pub struct RequestFacts {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub source: Source,
}

/// A validated event, ready to store.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub id: Uuid,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    /// Always a JSON object.
    pub properties: Value,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub source: Source,
    pub received_at: DateTime<Utc>,
}

/// A committed event as live tails carry it over the bus
/// (`realtime::Topic::Stream`): what `eventStream` subscribers see.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TailEvent {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub properties: Value,
    pub received_at: DateTime<Utc>,
    pub source: String,
}

impl From<&NewEvent> for TailEvent {
    fn from(e: &NewEvent) -> Self {
        TailEvent {
            id: e.id,
            event_type: e.event_type.clone(),
            occurred_at: e.occurred_at,
            user_id: e.user_id.clone(),
            session_id: e.session_id.clone(),
            properties: e.properties.clone(),
            received_at: e.received_at,
            source: e.source.as_str().to_owned(),
        }
    }
}

/// Validates a batch for the caller's tenant and commits it. Answers only
/// once the events are durable.
pub async fn ingest(
    db: &sea_orm::DatabaseConnection,
    writer: &Writer,
    limiter: &RateLimiter,
    ctx: &TenantCtx,
    mut facts: RequestFacts,
    items: Vec<Incoming>,
) -> AppResult<IngestCounts> {
    if !ctx.role.at_least(Role::Editor) {
        return Err(AppError::Forbidden("requires role EDITOR or higher".into()));
    }
    // Every event sent counts, valid or not: a refused batch still cost
    // its parsing.
    limits::admit(limiter, ctx, Kind::Ingestion, items.len() as u64).await?;
    let settings = tenants::settings(db, ctx).await?;
    if settings.truncate_ip {
        facts.ip = facts.ip.as_deref().map(truncate_ip);
    }
    let received = items.len() as u64;
    let events =
        match validate::validate_batch(items, writer.max_batch(), &settings, &facts, Utc::now()) {
            Ok(events) => events,
            Err(e) => {
                // All or nothing: every event of a rejected batch counts.
                writer.record_rejected(received);
                return Err(e);
            }
        };
    writer.submit(ctx.tenant_id, events).await
}

/// Keeps the network part of an address: IPv4 /24, IPv6 /48.
pub fn truncate_ip(ip: &str) -> String {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => {
            let [a, b, c, _] = v4.octets();
            std::net::Ipv4Addr::new(a, b, c, 0).to_string()
        }
        Ok(std::net::IpAddr::V6(v6)) => {
            let s = v6.segments();
            std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0).to_string()
        }
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_truncate_to_their_network() {
        assert_eq!(truncate_ip("203.0.113.77"), "203.0.113.0");
        assert_eq!(truncate_ip("2001:db8:abcd:12::1"), "2001:db8:abcd::");
        assert_eq!(truncate_ip("garbage"), "");
    }
}
