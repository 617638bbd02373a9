//! The event bus: small messages that say what changed, per tenant.
//!
//! In-process (tokio broadcast) without Redis, Redis pub/sub with it, so
//! several `pulse serve` processes hear each other. Channel names are built
//! here and nowhere else, and always carry the tenant:
//! `pulse:{tenant_id}:{topic}`. A subscriber names its tenant; it cannot
//! hear another's.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

/// What a message is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic {
    /// Events were committed ([`EventsCommitted`]).
    Events,
}

impl Topic {
    fn as_str(self) -> &'static str {
        match self {
            Topic::Events => "events",
        }
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

pub type MessageStream = Pin<Box<dyn Stream<Item = String> + Send>>;

#[derive(Clone)]
pub enum Bus {
    Memory(MemoryBus),
    Redis(RedisBus),
}

fn channel(tenant: Uuid, topic: Topic) -> String {
    format!("pulse:{tenant}:{}", topic.as_str())
}

impl Bus {
    pub fn memory() -> Self {
        Bus::Memory(MemoryBus::default())
    }

    pub fn redis(client: redis::Client, conn: redis::aio::ConnectionManager) -> Self {
        Bus::Redis(RedisBus { client, conn })
    }

    /// Publishes `message` (JSON) to the tenant's channel for `topic`.
    pub async fn publish<T: Serialize>(
        &self,
        tenant: Uuid,
        topic: Topic,
        message: &T,
    ) -> anyhow::Result<()> {
        let payload = serde_json::to_string(message)?;
        let channel = channel(tenant, topic);
        match self {
            Bus::Memory(bus) => {
                bus.publish(&channel, payload);
                Ok(())
            }
            Bus::Redis(bus) => {
                let mut conn = bus.conn.clone();
                redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(payload)
                    .query_async::<i64>(&mut conn)
                    .await?;
                Ok(())
            }
        }
    }

    /// Raw JSON messages on the tenant's channel for `topic`, from now on.
    pub async fn subscribe(&self, tenant: Uuid, topic: Topic) -> anyhow::Result<MessageStream> {
        let channel = channel(tenant, topic);
        match self {
            Bus::Memory(bus) => Ok(bus.subscribe(&channel)),
            Bus::Redis(bus) => {
                let mut pubsub = bus.client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok(Box::pin(pubsub.into_on_message().filter_map(
                    |msg| async move { msg.get_payload::<String>().ok() },
                )))
            }
        }
    }

    /// Typed messages on the tenant's channel; malformed ones are skipped.
    pub async fn subscribe_to<T>(
        &self,
        tenant: Uuid,
        topic: Topic,
    ) -> anyhow::Result<Pin<Box<dyn Stream<Item = T> + Send>>>
    where
        T: for<'de> Deserialize<'de> + Send + 'static,
    {
        let raw = self.subscribe(tenant, topic).await?;
        Ok(Box::pin(raw.filter_map(|s| async move {
            serde_json::from_str::<T>(&s).ok()
        })))
    }
}

/// One broadcast channel per bus channel name, made on first use.
#[derive(Clone, Default)]
pub struct MemoryBus {
    channels: Arc<Mutex<HashMap<String, broadcast::Sender<String>>>>,
}

/// Messages a slow in-process subscriber may fall behind by before it
/// skips ahead (it then recomputes from the database anyway).
const MEMORY_BACKLOG: usize = 1024;

impl MemoryBus {
    fn sender(&self, channel: &str) -> broadcast::Sender<String> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Drop channels nobody listens to any more.
        channels.retain(|_, tx| tx.receiver_count() > 0);
        channels
            .entry(channel.to_owned())
            .or_insert_with(|| broadcast::channel(MEMORY_BACKLOG).0)
            .clone()
    }

    fn publish(&self, channel: &str, payload: String) {
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

    fn subscribe(&self, channel: &str) -> MessageStream {
        let rx = self.sender(channel).subscribe();
        Box::pin(
            tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|m| async move { m.ok() }),
        )
    }
}

#[derive(Clone)]
pub struct RedisBus {
    client: redis::Client,
    conn: redis::aio::ConnectionManager,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_subscribers_hear_only_their_tenant() {
        let bus = Bus::memory();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut sub_a = bus.subscribe(a, Topic::Events).await.expect("subscribe");
        let mut sub_b = bus.subscribe(b, Topic::Events).await.expect("subscribe");
        bus.publish(a, Topic::Events, &"for a")
            .await
            .expect("publish");
        bus.publish(b, Topic::Events, &"for b")
            .await
            .expect("publish");
        assert_eq!(sub_a.next().await.as_deref(), Some("\"for a\""));
        assert_eq!(sub_b.next().await.as_deref(), Some("\"for b\""));
    }
}
