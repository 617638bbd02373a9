//! Fair share of the database between tenants: each tenant may run a few
//! analytic queries at once; more wait briefly in line, then are refused
//! with `RATE_LIMITED`, so a flood from one tenant queues behind itself
//! while the others keep being served.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::error::{AppError, AppResult};

/// One semaphore per tenant, created on first use.
pub struct TenantGate {
    per_tenant: usize,
    wait: Duration,
    slots: Mutex<HashMap<Uuid, Arc<Semaphore>>>,
}

/// A running query's place; dropping it frees the place.
pub type Pass = OwnedSemaphorePermit;

impl TenantGate {
    pub fn new(per_tenant: usize, wait: Duration) -> Self {
        TenantGate {
            per_tenant: per_tenant.max(1),
            wait,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Waits up to the configured time for one of `tenant`'s places.
    pub async fn enter(&self, tenant: Uuid) -> AppResult<Pass> {
        let semaphore = {
            // A poisoned map only means another request panicked while
            // inserting; the map itself is still sound.
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots
                .entry(tenant)
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant)))
                .clone()
        };
        match tokio::time::timeout(self.wait, semaphore.acquire_owned()).await {
            Ok(Ok(pass)) => Ok(pass),
            // The semaphore is never closed.
            Ok(Err(_)) | Err(_) => Err(AppError::RateLimited {
                message: format!(
                    "this tenant already runs {} analytic queries; retry shortly",
                    self.per_tenant
                ),
                retry_after: Duration::from_secs(1),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_tenant_waits_then_is_refused_while_others_enter() {
        let gate = TenantGate::new(2, Duration::from_millis(50));
        let (busy, calm) = (Uuid::now_v7(), Uuid::now_v7());
        let _a = gate.enter(busy).await.expect("first place");
        let b = gate.enter(busy).await.expect("second place");
        let refused = gate
            .enter(busy)
            .await
            .expect_err("third must wait, then fail");
        assert_eq!(refused.code(), "RATE_LIMITED");
        let _calm = gate
            .enter(calm)
            .await
            .expect("another tenant is not held up");
        drop(b);
        let _again = gate.enter(busy).await.expect("a freed place is taken");
    }
}
