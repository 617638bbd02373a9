//! The event bus: small messages that say what changed, per tenant.
//!
//! Every message is delivered in-process at once (tokio broadcast, one
//! channel per tenant and topic). With Redis, each message is also
//! published there, and one pub/sub connection per process (a pattern
//! subscription, not one connection per subscriber) relays the other
//! processes' messages into the same in-process channels, so several
//! `pulse serve` processes hear each other. A message carries its origin,
//! so a process does not hear its own twice.
//!
//! Losing Redis is not an outage: local delivery goes on, [`Bus::health`]
//! says the relay is down (subscribers then recompute on a timer instead of
//! waiting for messages that may not come), and the relay reconnects by
//! itself.
//!
//! Channel names are built here and nowhere else, and always carry the
//! tenant: `pulse:{tenant_id}:{topic}`. A subscriber names its tenant; it
//! cannot hear another's.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, watch};
use uuid::Uuid;

/// What a message is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic {
    /// Events were committed ([`EventsCommitted`]).
    Events,
    /// A dashboard changed: a new version, its grants, or it went away
    /// ([`DashboardChanged`]).
    Dashboards,
    /// An alert changed state ([`AlertTransition`]).
    Alerts,
    /// The committed events themselves, for live tails: published only
    /// while some process tails the tenant ([`Bus::heard`]).
    Stream,
    /// "This process tails the tenant": lets writers elsewhere know that
    /// [`Topic::Stream`] has listeners ([`Bus::announce`]).
    Interest,
}

impl Topic {
    const ALL: [Topic; 5] = [
        Topic::Events,
        Topic::Dashboards,
        Topic::Alerts,
        Topic::Stream,
        Topic::Interest,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Topic::Events => "events",
            Topic::Dashboards => "dashboards",
            Topic::Alerts => "alerts",
            Topic::Stream => "stream",
            Topic::Interest => "interest",
        }
    }

    fn parse(s: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Published by the ingestion writer after each commit, once per tenant in
/// the committed group: which event types, over which time span.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventsCommitted {
    pub tenant_id: Uuid,
    pub types: Vec<String>,
    /// Earliest and latest event timestamps in the batch.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub count: u64,
}

/// Published after a dashboard's change is committed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DashboardChanged {
    pub dashboard_id: Uuid,
    /// The version after the change (unchanged by a change of grants).
    pub version: i32,
    /// Edited, restored, grants changed, deleted.
    pub change: DashboardChange,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DashboardChange {
    Edited,
    Permissions,
    Deleted,
}

/// Published by the alert evaluator after a transition is recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertTransition {
    pub alert_id: Uuid,
    pub from: String,
    pub to: String,
    pub value: Option<f64>,
    pub at: DateTime<Utc>,
}

/// Raw JSON messages of one tenant and topic.
pub type MessageStream = Pin<Box<dyn Stream<Item = Arc<str>> + Send>>;

/// What a subscriber receives: a message, or word that it fell behind by
/// `n` messages (it should then treat everything as changed).
pub type Delivery = Result<Arc<str>, broadcast::error::RecvError>;

fn channel(tenant: Uuid, topic: Topic) -> String {
    format!("pulse:{tenant}:{}", topic.as_str())
}

/// The tenant and topic of a channel name made by [`channel`].
fn parse_channel(name: &str) -> Option<(Uuid, Topic)> {
    let rest = name.strip_prefix("pulse:")?;
    let (tenant, topic) = rest.split_once(':')?;
    Some((tenant.parse().ok()?, Topic::parse(topic)?))
}

#[derive(Clone)]
pub struct Bus {
    local: MemoryBus,
    /// `None` without Redis.
    relay: Option<Relay>,
    /// Whether messages of other processes reach this one; always true
    /// without Redis (there are none).
    health: watch::Receiver<bool>,
    /// Topics other processes listen to, per tenant, and until when (they
    /// say so again every [`INTEREST_EVERY`]).
    interest: Interest,
}

type Interest = Arc<Mutex<HashMap<(Uuid, String), std::time::Instant>>>;

/// How often a process repeats that it listens to a tenant's topic; an
/// interest not repeated for three times as long is forgotten.
pub const INTEREST_EVERY: Duration = Duration::from_secs(10);

/// Messages published while Redis is slow wait here, in order; past this
/// many the newest are dropped (local subscribers have them already, and
/// the other processes fall back to their periodic recompute).
const RELAY_QUEUE: usize = 10_000;

/// How long one Redis `PUBLISH` may take before the relay moves on.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(250);

#[derive(Clone)]
struct Relay {
    /// This process, so that its own messages coming back are skipped.
    origin: Uuid,
    outbox: mpsc::Sender<(String, String)>,
}

impl Bus {
    pub fn memory() -> Self {
        let (_, health) = watch::channel(true);
        Bus {
            local: MemoryBus::default(),
            relay: None,
            health,
            interest: Interest::default(),
        }
    }

    /// A bus relayed through Redis; spawns the relay's two tasks (the
    /// publisher and the one pattern subscription), which end when the
    /// last clone of the bus is gone.
    pub fn redis(client: redis::Client, conn: redis::aio::ConnectionManager) -> Self {
        let origin = Uuid::now_v7();
        let local = MemoryBus::default();
        let (outbox, queue) = mpsc::channel(RELAY_QUEUE);
        let (health_tx, health) = watch::channel(false);
        let interest = Interest::default();
        tokio::spawn(publisher(conn, queue));
        tokio::spawn(listener(
            client,
            local.clone(),
            origin,
            health_tx,
            interest.clone(),
        ));
        Bus {
            local,
            relay: Some(Relay { origin, outbox }),
            health,
            interest,
        }
    }

    /// Publishes `message` (JSON) to the tenant's channel for `topic`:
    /// delivered here at once, and handed to Redis without waiting for it.
    pub fn publish<T: Serialize>(
        &self,
        tenant: Uuid,
        topic: Topic,
        message: &T,
    ) -> anyhow::Result<()> {
        let payload = serde_json::to_string(message)?;
        let channel = channel(tenant, topic);
        if let Some(relay) = &self.relay
            && relay
                .outbox
                .try_send((channel.clone(), format!("{} {payload}", relay.origin)))
                .is_err()
        {
            tracing::warn!(%tenant, "the bus relay is behind; a message stays in this process");
        }
        self.local.publish(&channel, payload.into());
        Ok(())
    }

    /// Raw deliveries on the tenant's channel for `topic`, from now on,
    /// with word of any that were missed.
    pub fn receiver(&self, tenant: Uuid, topic: Topic) -> broadcast::Receiver<Arc<str>> {
        self.local.sender(&channel(tenant, topic)).subscribe()
    }

    /// Raw JSON messages on the tenant's channel for `topic`, from now on;
    /// missed ones are skipped.
    pub fn subscribe(&self, tenant: Uuid, topic: Topic) -> MessageStream {
        let rx = self.receiver(tenant, topic);
        Box::pin(
            tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|m| async move { m.ok() }),
        )
    }

    /// Typed messages on the tenant's channel; malformed ones are skipped.
    pub fn subscribe_to<T>(
        &self,
        tenant: Uuid,
        topic: Topic,
    ) -> Pin<Box<dyn Stream<Item = T> + Send>>
    where
        T: for<'de> Deserialize<'de> + Send + 'static,
    {
        Box::pin(
            self.subscribe(tenant, topic)
                .filter_map(|s| async move { serde_json::from_str::<T>(&s).ok() }),
        )
    }

    /// True while other processes' messages reach this one; changes when
    /// the Redis relay is lost or comes back.
    pub fn health(&self) -> watch::Receiver<bool> {
        self.health.clone()
    }

    /// Whether anyone listens to the tenant's `topic`: here, or (as far
    /// as their announcements tell) in another process. Lets a publisher
    /// skip building messages nobody would read.
    pub fn heard(&self, tenant: Uuid, topic: Topic) -> bool {
        if self.local.listeners(&channel(tenant, topic)) > 0 {
            return true;
        }
        let interest = self
            .interest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        interest
            .get(&(tenant, topic.as_str().to_owned()))
            .is_some_and(|until| *until > std::time::Instant::now())
    }

    /// Tells the other processes that this one listens to the tenant's
    /// `topic`; repeat every [`INTEREST_EVERY`] while it does.
    pub fn announce(&self, tenant: Uuid, topic: Topic) {
        if self.relay.is_some() {
            let _ = self.publish(tenant, Topic::Interest, &topic.as_str());
        }
    }

    /// Whether this bus relays through Redis.
    pub fn is_shared(&self) -> bool {
        self.relay.is_some()
    }
}

/// Sends the outbox to Redis in order; a failed or slow `PUBLISH` loses
/// that message for the other processes only (logged once per outage).
async fn publisher(
    mut conn: redis::aio::ConnectionManager,
    mut queue: mpsc::Receiver<(String, String)>,
) {
    let mut failing = false;
    while let Some((channel, payload)) = queue.recv().await {
        let sent = tokio::time::timeout(
            PUBLISH_TIMEOUT,
            redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(payload)
                .query_async::<i64>(&mut conn),
        )
        .await;
        match sent {
            Ok(Ok(_)) if failing => {
                failing = false;
                tracing::info!("bus: publishing to Redis again");
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "bus: cannot publish to Redis; other processes fall back to periodic recomputes");
            }
            Err(_) if !failing => {
                failing = true;
                tracing::warn!(
                    "bus: Redis publish timed out; other processes fall back to periodic recomputes"
                );
            }
            _ => {}
        }
    }
}

/// The pattern subscription: relays other processes' messages into the
/// local channels, and reconnects (with backoff) whenever it is lost.
/// Ends once every clone of the bus (every sender of `health`'s
/// receivers) is gone.
async fn listener(
    client: redis::Client,
    local: MemoryBus,
    origin: Uuid,
    health: watch::Sender<bool>,
    interest: Interest,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if health.is_closed() {
            return;
        }
        let connected = tokio::time::timeout(Duration::from_secs(2), async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.psubscribe("pulse:*").await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        let pubsub = match connected {
            Ok(Ok(p)) => p,
            Ok(Err(_)) | Err(_) => {
                health.send_if_modified(|h| std::mem::replace(h, false));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        if health.send_if_modified(|h| !std::mem::replace(h, true)) {
            tracing::info!("bus: listening to Redis");
        }
        let mut messages = pubsub.into_on_message();
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else { break };
                    let Ok(payload) = msg.get_payload::<String>() else { continue };
                    let Some((from, body)) = payload.split_once(' ') else { continue };
                    if from.parse::<Uuid>().ok() == Some(origin) {
                        continue;
                    }
                    let name = msg.get_channel_name();
                    match parse_channel(name) {
                        Some((tenant, Topic::Interest)) => {
                            if let Ok(topic) = serde_json::from_str::<String>(body) {
                                let until = std::time::Instant::now() + INTEREST_EVERY * 3;
                                interest
                                    .lock()
                                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                                    .insert((tenant, topic), until);
                            }
                        }
                        Some(_) => local.publish(name, body.into()),
                        None => {}
                    }
                }
                () = health.closed() => return,
            }
        }
        tracing::warn!("bus: lost Redis; subscribers recompute periodically until it is back");
        health.send_if_modified(|h| std::mem::replace(h, false));
    }
}

/// One broadcast channel per bus channel name, made on first use.
#[derive(Clone, Default)]
pub struct MemoryBus {
    channels: Arc<Mutex<HashMap<String, broadcast::Sender<Arc<str>>>>>,
}

/// Messages a slow in-process subscriber may fall behind by before it
/// is told it missed some (it then recomputes from the database anyway).
const MEMORY_BACKLOG: usize = 1024;

impl MemoryBus {
    fn sender(&self, channel: &str) -> broadcast::Sender<Arc<str>> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(tx) = channels.get(channel) {
            return tx.clone();
        }
        // Drop channels nobody listens to any more.
        channels.retain(|_, tx| tx.receiver_count() > 0);
        channels
            .entry(channel.to_owned())
            .or_insert_with(|| broadcast::channel(MEMORY_BACKLOG).0)
            .clone()
    }

    fn listeners(&self, channel: &str) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(channel)
            .map_or(0, broadcast::Sender::receiver_count)
    }

    fn publish(&self, channel: &str, payload: Arc<str>) {
        let tx = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(channel)
            .cloned();
        if let Some(tx) = tx {
            // No receivers is not an error: nobody is listening.
            let _ = tx.send(payload);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_subscribers_hear_only_their_tenant() {
        let bus = Bus::memory();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut sub_a = bus.subscribe(a, Topic::Events);
        let mut sub_b = bus.subscribe(b, Topic::Events);
        bus.publish(a, Topic::Events, &"for a").expect("publish");
        bus.publish(b, Topic::Events, &"for b").expect("publish");
        assert_eq!(sub_a.next().await.as_deref(), Some("\"for a\""));
        assert_eq!(sub_b.next().await.as_deref(), Some("\"for b\""));
    }

    #[test]
    fn channel_names_carry_tenant_and_topic_and_parse_back() {
        let t = Uuid::now_v7();
        for topic in Topic::ALL {
            assert_eq!(parse_channel(&channel(t, topic)), Some((t, topic)));
        }
        assert_eq!(parse_channel("pulse:not-a-uuid:events"), None);
        assert_eq!(parse_channel(&format!("pulse:{t}:nonsense")), None);
        assert_eq!(parse_channel(&format!("other:{t}:events")), None);
    }
}
