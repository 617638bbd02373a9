//! Background work that `serve` runs beside the server: keeping event
//! partitions ahead of time, applying data expiry, merging actor-bitmap
//! deltas, and (in [`alerts`])
//! evaluating alerts and sending their webhooks. Each job is idempotent
//! and safe to run in several processes at once; a failed round is logged
//! and retried on the next tick.

pub mod alerts;
pub mod rollups;

use std::time::Duration;

use chrono::Utc;

use crate::app::AppState;
use crate::domain::events::{actors, expiry};

/// How many months of partitions are kept ready ahead of the current one.
pub const PARTITIONS_AHEAD: i32 = 2;
const PARTITION_EVERY: Duration = Duration::from_secs(6 * 3600);
const EXPIRY_EVERY: Duration = Duration::from_secs(3600);
const COMPACT_EVERY: Duration = Duration::from_secs(60);

/// Starts the jobs; abort the handles to stop them.
pub fn spawn(state: &AppState) -> Vec<tokio::task::JoinHandle<()>> {
    let partitions = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PARTITION_EVERY);
            loop {
                tick.tick().await;
                if let Err(e) = state
                    .event_store
                    .partitions()
                    .ensure_window(&state.db, PARTITIONS_AHEAD)
                    .await
                {
                    tracing::warn!(error = format!("{e:#}"), "cannot create event partitions");
                }
            }
        })
    };
    let expiry = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EXPIRY_EVERY);
            loop {
                tick.tick().await;
                if let Err(e) = expiry::run_once(&state.event_store, &state.cache, Utc::now()).await
                {
                    tracing::warn!(error = format!("{e:#}"), "data expiry failed");
                }
            }
        })
    };
    let compaction = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(COMPACT_EVERY);
            loop {
                tick.tick().await;
                // Keep merging while whole batches of keys come back.
                loop {
                    match actors::compact(&state.db).await {
                        Ok(n) if n >= 500 => continue,
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(
                                error = format!("{e:#}"),
                                "actor bitmap compaction failed"
                            );
                            break;
                        }
                    }
                }
            }
        })
    };
    vec![partitions, expiry, compaction]
}
