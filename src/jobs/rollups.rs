//! Backfills of new numeric-rollup series (`domain::events::rollup_fields`):
//! while any series waits, one chunk after another, resting
//! `PULSE_ROLLUP_BACKFILL_PAUSE_MS` between them; then a look every second.

use std::time::Duration;

use uuid::Uuid;

use crate::app::AppState;
use crate::domain::events::rollup_fields;
use crate::domain::tenants;

const IDLE_POLL: Duration = Duration::from_secs(1);

pub fn spawn(state: &AppState) -> tokio::task::JoinHandle<()> {
    let state = state.clone();
    tokio::spawn(async move {
        let config = state.config.rollups.clone();
        loop {
            match round(&state, &config).await {
                Ok(true) => tokio::time::sleep(config.pause).await,
                Ok(false) => tokio::time::sleep(IDLE_POLL).await,
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "rollup backfill failed");
                    tokio::time::sleep(IDLE_POLL).await;
                }
            }
        }
    })
}

/// One chunk; false when nothing waits.
async fn round(state: &AppState, config: &crate::config::RollupsConfig) -> anyhow::Result<bool> {
    let scope: Option<Vec<Uuid>> = match &config.tenants {
        None => None,
        Some(slugs) => {
            let mut ids = Vec::with_capacity(slugs.len());
            for slug in slugs {
                if let Some(t) = tenants::by_slug(&state.db, slug).await? {
                    ids.push(t.id);
                }
            }
            Some(ids)
        }
    };
    rollup_fields::backfill_step(&state.db, config.chunk_hours, scope.as_deref()).await
}
