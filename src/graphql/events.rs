//! Events: `ingestEvents`, `events`, and the `Event` object.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, ID, InputObject, Json, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::guard::{RoleGuard, meta, state, tenant};
use crate::auth::Role;
use crate::domain::events::query::{self, EventFilter, EventRecord};
use crate::domain::events::validate::Incoming;
use crate::domain::events::{self, RequestFacts, Source};
use crate::domain::page::{DEFAULT_PAGE, MAX_PAGE};
use crate::error::AppError;

/// One event to ingest.
#[derive(InputObject)]
pub struct EventInput {
    /// Client-chosen idempotency key (a UUID); a repeat is a duplicate, not
    /// a second event. Omitted: the server makes one.
    pub id: Option<ID>,
    /// 1 to 100 characters of A-Z, a-z, 0-9 and `_ . : -`, e.g. `email.opened`.
    #[graphql(name = "type")]
    pub event_type: String,
    /// Default: now. At most 24 h ahead, and within the tenant's retention.
    pub timestamp: Option<DateTime<Utc>>,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    /// A JSON object, at most 32 KiB and 8 levels deep.
    pub properties: Option<Json<Value>>,
}

impl EventInput {
    /// The same shape `/v1/events` receives, so one validator serves both.
    fn into_json(self) -> Value {
        let mut map = Map::new();
        if let Some(id) = self.id {
            map.insert("id".into(), Value::String(id.0));
        }
        map.insert("type".into(), Value::String(self.event_type));
        if let Some(t) = self.timestamp {
            map.insert("timestamp".into(), Value::String(t.to_rfc3339()));
        }
        if let Some(u) = self.user_id {
            map.insert("userId".into(), Value::String(u));
        }
        if let Some(s) = self.session_id {
            map.insert("sessionId".into(), Value::String(s));
        }
        if let Some(Json(p)) = self.properties {
            map.insert("properties".into(), p);
        }
        Value::Object(map)
    }
}

#[derive(SimpleObject)]
pub struct IngestResult {
    /// Events stored by this call.
    accepted: i32,
    /// Events whose id was seen before (or twice in this call): not stored again.
    duplicates: i32,
}

/// Narrows `events`; parts combine with AND.
#[derive(InputObject, Default)]
pub struct EventFilterInput {
    pub types: Option<Vec<String>>,
    /// Inclusive.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive.
    pub to: Option<DateTime<Utc>>,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    /// Top-level property equality, e.g. `{"plan": "pro", "amount": 42}`.
    pub properties: Option<Json<Value>>,
}

impl EventFilterInput {
    pub(crate) fn into_domain(self) -> Result<EventFilter, AppError> {
        let properties = match self.properties {
            None | Some(Json(Value::Null)) => None,
            Some(Json(Value::Object(map))) => Some(map),
            Some(_) => {
                return Err(AppError::bad_input(
                    "filter.properties",
                    "must be a JSON object of property values",
                ));
            }
        };
        Ok(EventFilter {
            types: self.types,
            from: self.from,
            to: self.to,
            user_id: self.user_id,
            session_id: self.session_id,
            properties,
        })
    }
}

/// A stored event.
pub struct Event(pub EventRecord);

#[Object]
impl Event {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    #[graphql(name = "type")]
    async fn event_type(&self) -> &str {
        &self.0.event_type
    }
    async fn timestamp(&self) -> DateTime<Utc> {
        self.0.occurred_at
    }
    async fn user_id(&self) -> Option<&str> {
        self.0.user_id.as_deref()
    }
    async fn session_id(&self) -> Option<&str> {
        self.0.session_id.as_deref()
    }
    async fn properties(&self) -> Json<&Value> {
        Json(&self.0.properties)
    }
    /// When Pulse committed it.
    async fn received_at(&self) -> DateTime<Utc> {
        self.0.received_at
    }
    /// `http`, `graphql` or `demo`.
    async fn source(&self) -> &str {
        &self.0.source
    }
    /// The sender's address (truncated when the tenant asks for it).
    async fn ip(&self) -> Option<&str> {
        self.0.ip.as_deref().filter(|ip| !ip.is_empty())
    }
    async fn user_agent(&self) -> Option<&str> {
        self.0.user_agent.as_deref()
    }
}

#[derive(Default)]
pub struct EventQuery;

#[Object]
impl EventQuery {
    /// The tenant's events, newest first.
    #[graphql(
        guard = "RoleGuard::new(Role::Viewer)",
        complexity = "super::page_complexity(first, child_complexity)"
    )]
    async fn events(
        &self,
        ctx: &Context<'_>,
        filter: Option<EventFilterInput>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, Event>> {
        let first = match first {
            None => DEFAULT_PAGE,
            Some(n) if (0..=MAX_PAGE as i32).contains(&n) => n as u64,
            Some(_) => {
                return Err(
                    AppError::bad_input("first", format!("must be 0 to {MAX_PAGE}")).into(),
                );
            }
        };
        let filter = filter.unwrap_or_default().into_domain()?;
        let page = query::list(
            &state(ctx)?.db,
            tenant(ctx)?,
            &filter,
            first,
            after.as_deref(),
        )
        .await?;
        let mut conn = Connection::new(after.is_some(), page.has_next);
        conn.edges.extend(
            page.items
                .into_iter()
                .map(|e| Edge::new(e.cursor(), Event(e))),
        );
        Ok(conn)
    }
}

#[derive(Default)]
pub struct EventMutation;

#[Object]
impl EventMutation {
    /// Stores a batch of events, all or nothing; answers after they are
    /// durable.
    #[graphql(guard = "RoleGuard::new(Role::Editor)")]
    async fn ingest_events(
        &self,
        ctx: &Context<'_>,
        events: Vec<EventInput>,
    ) -> Result<IngestResult> {
        let app = state(ctx)?;
        let meta = meta(ctx);
        let facts = RequestFacts {
            ip: meta.ip.clone(),
            user_agent: meta.user_agent.clone(),
            source: Source::Graphql,
        };
        let items = events
            .into_iter()
            .map(|e| Incoming {
                value: e.into_json(),
                line: None,
            })
            .collect();
        let counts = events::ingest(
            &app.db,
            &app.writer,
            &app.limiter,
            tenant(ctx)?,
            facts,
            items,
        )
        .await?;
        Ok(IngestResult {
            accepted: i32::try_from(counts.accepted).unwrap_or(i32::MAX),
            duplicates: i32::try_from(counts.duplicates).unwrap_or(i32::MAX),
        })
    }
}
