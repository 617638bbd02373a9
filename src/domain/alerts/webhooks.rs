//! Webhook notifications: signed, retried with backoff, sent once.
//!
//! A transition's deliveries are rows written with it (see
//! [`super::schedule`]). A sender claims a due delivery with a lease
//! (`attempts` counts the claim), posts it, and records the result under
//! the same lease; a crash mid-send leaves the lease to expire and the
//! delivery to be tried again, so a receiver may see one delivery twice in
//! that case and should deduplicate on the body's `id` (also the
//! `X-Pulse-Delivery` header).
//!
//! The body is fixed when the transition is recorded; each attempt signs
//! it afresh: `X-Pulse-Timestamp` (Unix seconds) and `X-Pulse-Signature:
//! sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">` keyed by the
//! webhook's secret, so a receiver can refuse stale timestamps (replays).
//!
//! Targets are fetched without redirects, and, unless
//! `PULSE_WEBHOOK_ALLOW_PRIVATE` is set, only at public addresses: a
//! tenant's webhook must not reach the deployment's own network (the
//! check is on the resolved addresses, at connect time, so DNS cannot
//! swap them after the check).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::Rng;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use sha2::Sha256;
use uuid::Uuid;

use super::{Alert, Webhook};
use crate::db::transaction;
use crate::entities::{alert, alert_delivery, alert_history};
use crate::error::{AppError, AppResult};

/// Where a delivery (and, summed up, a transition's notification) stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pending,
    Sent,
    Failed,
    Silenced,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Sent => "SENT",
            Status::Failed => "FAILED",
            Status::Silenced => "SILENCED",
        }
    }

    pub fn parse(raw: &str) -> Option<Status> {
        [
            Status::Pending,
            Status::Sent,
            Status::Failed,
            Status::Silenced,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
    }

    /// A transition's notification from its deliveries' statuses: pending
    /// while any is, failed if any failed, sent if all were sent.
    pub fn summary(statuses: &[Status]) -> Status {
        if statuses.contains(&Status::Pending) {
            Status::Pending
        } else if statuses.contains(&Status::Failed) {
            Status::Failed
        } else if !statuses.is_empty() && statuses.iter().all(|s| *s == Status::Silenced) {
            Status::Silenced
        } else {
            Status::Sent
        }
    }
}

/// `sha256=<hex>` of HMAC-SHA256(`secret`, `"<timestamp>.<body>"`).
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// How deliveries are attempted (`PULSE_WEBHOOK_*`).
#[derive(Clone, Copy, Debug)]
pub struct DeliverySettings {
    /// Per attempt.
    pub timeout: Duration,
    /// Attempts before a delivery is given up as failed.
    pub max_attempts: u32,
    /// The wait before the first retry; doubled for each further one.
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// Whether targets may be loopback, private or link-local addresses.
    pub allow_private: bool,
}

impl DeliverySettings {
    /// The wait after failed attempt `attempt` (from 1): exponential,
    /// capped, with jitter (a random 50–100 % of it) so that many
    /// deliveries failing together do not retry together.
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        let doubled = self
            .backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let capped = doubled.min(self.backoff_max);
        capped.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

/// Whether an address is on the public internet (not loopback, private,
/// link-local, shared, multicast or unspecified).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// Resolves names for webhook requests, dropping non-public addresses
/// unless they are allowed.
struct GuardedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if found.is_empty() {
                return Err(format!("{} has no public address", name.as_str()).into());
            }
            Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// What one attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    Sent {
        status: u16,
    },
    Failed {
        status: Option<u16>,
        error: String,
        /// Whether trying again may help (timeouts, 5xx, 429; not 4xx).
        retry: bool,
    },
}

/// Posts deliveries.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    pub settings: DeliverySettings,
}

impl Sender {
    pub fn new(settings: DeliverySettings) -> AppResult<Sender> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver {
                allow_private: settings.allow_private,
            }))
            .user_agent(concat!("pulse-alerts/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(AppError::internal)?;
        Ok(Sender { client, settings })
    }

    /// One attempt of `delivery` to `hook`, signed at `now`.
    pub async fn attempt(
        &self,
        hook: &Webhook,
        delivery: &alert_delivery::Model,
        now: DateTime<Utc>,
    ) -> Attempt {
        let failed = |error: String, retry: bool| Attempt::Failed {
            status: None,
            error,
            retry,
        };
        let url = match reqwest::Url::parse(&hook.url) {
            Ok(u) => u,
            Err(e) => return failed(format!("invalid URL: {e}"), false),
        };
        // Names go through the guarded resolver; literal addresses are
        // checked here.
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal
            && !self.settings.allow_private
            && !is_public(ip)
        {
            return failed(format!("{ip} is not a public address"), false);
        }
        let body = match serde_json::to_vec(&delivery.payload) {
            Ok(b) => b,
            Err(e) => return failed(format!("cannot encode the body: {e}"), false),
        };
        let timestamp = now.timestamp();
        let mut request = self
            .client
            .post(url)
            .header("Content-Type", "application/json")
            .header("X-Pulse-Timestamp", timestamp.to_string())
            .header("X-Pulse-Delivery", delivery.id.to_string())
            .header("X-Pulse-Attempt", delivery.attempts.to_string());
        if let Some(secret) = &hook.secret {
            request = request.header("X-Pulse-Signature", signature(secret, timestamp, &body));
        }
        for (name, value) in &hook.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        match request.body(body).send().await {
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    Attempt::Sent {
                        status: status.as_u16(),
                    }
                } else {
                    Attempt::Failed {
                        status: Some(status.as_u16()),
                        error: format!("the receiver answered {status}"),
                        retry: status.is_server_error()
                            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                            || status == reqwest::StatusCode::REQUEST_TIMEOUT,
                    }
                }
            }
            Err(e) => {
                let what = if e.is_timeout() {
                    "timed out".to_owned()
                } else if e.is_connect() {
                    format!(
                        "cannot connect: {}",
                        std::error::Error::source(&e)
                            .map_or_else(|| e.to_string(), |s| s.to_string())
                    )
                } else {
                    e.to_string()
                };
                failed(what, true)
            }
        }
    }
}

/// Deliveries a sender may claim: pending, due, and not leased by
/// another sender.
fn claimable(now: DateTime<Utc>) -> Condition {
    Condition::all()
        .add(alert_delivery::Column::Status.eq(Status::Pending.as_str()))
        .add(alert_delivery::Column::NextAttemptAt.lte(now))
        .add(
            Condition::any()
                .add(alert_delivery::Column::LeaseUntil.is_null())
                .add(alert_delivery::Column::LeaseUntil.lt(now)),
        )
}

/// A claimed delivery and the webhook it goes to (`None` when the alert
/// no longer has that webhook).
pub struct Claimed {
    pub delivery: alert_delivery::Model,
    pub hook: Option<Webhook>,
}

/// Claims up to `limit` due deliveries for `owner` (of `tenants` only,
/// when given) for one attempt each.
pub async fn claim_due(
    db: &DatabaseConnection,
    owner: Uuid,
    tenants: Option<Vec<Uuid>>,
    now: DateTime<Utc>,
    lease: Duration,
    limit: u64,
) -> AppResult<Vec<Claimed>> {
    let until = now + chrono::Duration::from_std(lease).map_err(AppError::internal)?;
    transaction(db, move |txn| {
        Box::pin(async move {
            let mut due = alert_delivery::Entity::find()
                .filter(claimable(now))
                .order_by_asc(alert_delivery::Column::NextAttemptAt)
                .limit(limit);
            if let Some(tenants) = tenants {
                due = due.filter(alert_delivery::Column::TenantId.is_in(tenants));
            }
            let mut claimed = Vec::new();
            for candidate in due.all(txn).await? {
                let won = alert_delivery::Entity::update_many()
                    .col_expr(alert_delivery::Column::LeaseOwner, Expr::value(owner))
                    .col_expr(alert_delivery::Column::LeaseUntil, Expr::value(until))
                    .col_expr(
                        alert_delivery::Column::Attempts,
                        sea_orm::sea_query::ExprTrait::add(
                            Expr::col(alert_delivery::Column::Attempts),
                            1,
                        ),
                    )
                    .filter(alert_delivery::Column::Id.eq(candidate.id))
                    .filter(claimable(now))
                    .exec(txn)
                    .await?
                    .rows_affected
                    == 1;
                if !won {
                    continue;
                }
                let hook = alert::Entity::find_by_id(candidate.alert_id)
                    .filter(alert::Column::TenantId.eq(candidate.tenant_id))
                    .one(txn)
                    .await?
                    .and_then(|model| {
                        Alert { model }
                            .webhooks()
                            .into_iter()
                            .find(|h| h.id == candidate.webhook_id)
                    });
                let mut delivery = candidate;
                delivery.attempts += 1;
                delivery.lease_owner = Some(owner);
                delivery.lease_until = Some(until);
                claimed.push(Claimed { delivery, hook });
            }
            Ok(claimed)
        })
    })
    .await
}

/// Records an attempt's result under the lease: sent, retried later, or
/// failed for good; then the transition's summary in its history row.
/// Returns the delivery's new status, `None` if the lease was lost.
pub async fn finish(
    db: &DatabaseConnection,
    owner: Uuid,
    delivery: &alert_delivery::Model,
    attempt: &Attempt,
    settings: &DeliverySettings,
    now: DateTime<Utc>,
) -> AppResult<Option<Status>> {
    let (status, next, response, error, sent_at) = match attempt {
        Attempt::Sent { status } => (Status::Sent, now, Some(*status), None, Some(now)),
        Attempt::Failed {
            status,
            error,
            retry,
        } => {
            let again = *retry && (delivery.attempts as u32) < settings.max_attempts;
            let error = if again || !*retry {
                error.clone()
            } else {
                format!("{error} (gave up after {} attempts)", delivery.attempts)
            };
            let next = if again {
                now + chrono::Duration::from_std(settings.backoff_after(delivery.attempts as u32))
                    .unwrap_or_default()
            } else {
                now
            };
            let status_after = if again {
                Status::Pending
            } else {
                Status::Failed
            };
            (status_after, next, *status, Some(error), None)
        }
    };
    let (id, history_id, tenant) = (delivery.id, delivery.history_id, delivery.tenant_id);
    transaction(db, move |txn| {
        Box::pin(async move {
            let written = alert_delivery::Entity::update_many()
                .col_expr(alert_delivery::Column::Status, Expr::value(status.as_str()))
                .col_expr(alert_delivery::Column::NextAttemptAt, Expr::value(next))
                .col_expr(
                    alert_delivery::Column::ResponseStatus,
                    Expr::value(response.map(i32::from)),
                )
                .col_expr(alert_delivery::Column::LastError, Expr::value(error))
                .col_expr(alert_delivery::Column::SentAt, Expr::value(sent_at))
                .col_expr(
                    alert_delivery::Column::LeaseOwner,
                    Expr::value(Option::<Uuid>::None),
                )
                .col_expr(
                    alert_delivery::Column::LeaseUntil,
                    Expr::value(Option::<DateTime<Utc>>::None),
                )
                .filter(alert_delivery::Column::Id.eq(id))
                .filter(alert_delivery::Column::LeaseOwner.eq(owner))
                .exec(txn)
                .await?
                .rows_affected
                == 1;
            if !written {
                return Ok(None);
            }
            // Deliveries of one transition finish concurrently; without
            // this lock two finishers each read the other's as pending and
            // the summary stays PENDING for good. Under it, the read below
            // (a fresh snapshot per statement) sees every earlier finisher.
            // SQLite's IMMEDIATE transactions are serialized already.
            if txn.get_database_backend() == sea_orm::DbBackend::Postgres {
                alert_history::Entity::find()
                    .filter(alert_history::Column::Id.eq(history_id))
                    .filter(alert_history::Column::TenantId.eq(tenant))
                    .lock_exclusive()
                    .one(txn)
                    .await?;
            }
            let statuses: Vec<Status> = alert_delivery::Entity::find()
                .select_only()
                .column(alert_delivery::Column::Status)
                .filter(alert_delivery::Column::HistoryId.eq(history_id))
                .filter(alert_delivery::Column::TenantId.eq(tenant))
                .into_tuple::<String>()
                .all(txn)
                .await?
                .iter()
                .filter_map(|s| Status::parse(s))
                .collect();
            alert_history::Entity::update_many()
                .col_expr(
                    alert_history::Column::Notification,
                    Expr::value(Status::summary(&statuses).as_str()),
                )
                .filter(alert_history::Column::Id.eq(history_id))
                .filter(alert_history::Column::TenantId.eq(tenant))
                .exec(txn)
                .await?;
            Ok(Some(status))
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        let sig = signature("key", 1_700_000_000, b"{}");
        assert!(sig.starts_with("sha256="));
        assert_eq!(sig.len(), "sha256=".len() + 64);
        assert_ne!(sig, signature("key", 1_700_000_001, b"{}"));
        assert_ne!(sig, signature("other", 1_700_000_000, b"{}"));
        assert_eq!(
            signature("key", 1, b"x"),
            format!("sha256={}", hex_of_reference())
        );
    }

    /// HMAC-SHA256(key = "key", message = "1.x"), computed by hand from
    /// the definition with SHA-256 alone (not through the `hmac` crate).
    fn hex_of_reference() -> String {
        use sha2::Digest;
        let mut key = [0u8; 64];
        key[..3].copy_from_slice(b"key");
        let ipad: Vec<u8> = key.iter().map(|b| b ^ 0x36).collect();
        let opad: Vec<u8> = key.iter().map(|b| b ^ 0x5c).collect();
        let inner = Sha256::new()
            .chain_update(&ipad)
            .chain_update(b"1.x")
            .finalize();
        let outer = Sha256::new()
            .chain_update(&opad)
            .chain_update(inner)
            .finalize();
        hex::encode(outer)
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let s = DeliverySettings {
            timeout: Duration::from_secs(5),
            max_attempts: 6,
            backoff: Duration::from_secs(2),
            backoff_max: Duration::from_secs(20),
            allow_private: false,
        };
        for (attempt, full) in [(1, 2), (2, 4), (3, 8), (4, 16), (5, 20), (30, 20)] {
            let wait = s.backoff_after(attempt);
            let full = Duration::from_secs(full);
            assert!(
                wait <= full && wait >= full / 2,
                "attempt {attempt}: {wait:?}"
            );
        }
    }

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(private.parse().expect("ip")), "{private}");
        }
        for public in ["93.184.216.34", "2606:2800:220:1::1"] {
            assert!(is_public(public.parse().expect("ip")), "{public}");
        }
    }

    #[test]
    fn a_transitions_notification_sums_up_its_deliveries() {
        use Status::*;
        assert_eq!(Status::summary(&[Sent, Pending]), Pending);
        assert_eq!(Status::summary(&[Sent, Failed]), Failed);
        assert_eq!(Status::summary(&[Sent, Sent]), Sent);
        assert_eq!(Status::summary(&[Silenced, Silenced]), Silenced);
    }
}
