//! Rate limits that hold across instances: GCRA (the generic cell rate
//! algorithm) over a tenant's key and its user's key, checked and taken in
//! one step, in Redis by a Lua script or in-process for the embedded
//! default.
//!
//! GCRA keeps one number per key, the *theoretical arrival time* (TAT):
//! when the key would be idle again had every unit come at the steady
//! rate. A request of `cost` units moves it `cost × interval` on; it is
//! allowed while that lands no further than `tolerance` (a minute's worth
//! of units, the burst) ahead of now, and otherwise told how long until it
//! would. Both keys move together or neither does, so a refused request
//! costs nothing.
//!
//! The arithmetic is written twice, in [`gcra`] and in the script; a unit
//! test runs the same cases through both where Redis is configured (see
//! `tests/limits.rs`). With Redis unreachable the in-process limiter takes
//! over (limits then hold per instance), and a counter says so.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use uuid::Uuid;

use super::{Failures, bounded};
use crate::auth::policy::Quota;

const MINUTE_US: u64 = 60_000_000;

/// What is being limited; each kind has its own keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum Kind {
    Query,
    Mutation,
    Ingestion,
    /// Estimated rows of metric queries (the per-minute query budget).
    Budget,
}

impl Kind {
    fn segment(self) -> &'static str {
        match self {
            Kind::Query => "query",
            Kind::Mutation => "mutation",
            Kind::Ingestion => "ingestion",
            Kind::Budget => "budget",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: Kind,
}

/// Counters of what the limiter did, exported on `/metrics`.
#[derive(Clone, Default)]
pub struct RateCounters {
    /// Requests refused, by kind.
    pub rejected: Family<KindLabels, Counter>,
    /// Checks Redis could not answer (the in-process limiter answered).
    pub errors: Counter,
}

/// One limit to apply: a key's steady interval per unit and its burst
/// tolerance, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rate {
    interval_us: u64,
    tolerance_us: u64,
}

impl Rate {
    /// `per_minute` units a minute, bursts of up to a minute's worth.
    fn per_minute(per_minute: u64) -> Rate {
        let per_minute = per_minute.max(1);
        Rate {
            // Rounded down: at worst a little over the rate, never under.
            interval_us: (MINUTE_US / per_minute).max(1),
            tolerance_us: MINUTE_US,
        }
    }
}

/// One GCRA step: the key's new TAT when `cost` units fit, or how long
/// until they would. Times in microseconds.
fn gcra(tat: u64, now: u64, rate: Rate, cost: u64) -> Result<u64, u64> {
    let next = tat
        .max(now)
        .saturating_add(rate.interval_us.saturating_mul(cost));
    let ahead = next - now;
    if ahead > rate.tolerance_us {
        Err(ahead - rate.tolerance_us)
    } else {
        Ok(next)
    }
}

/// Checks every (key, rate), and takes `cost` from all of them only when
/// all allow it; the same steps as [`gcra`], atomically in Redis.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local wait = 0
local next = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i])
  local tolerance = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  next[i] = tat + interval * cost
  local over = next[i] - now - tolerance
  if over > wait then wait = over end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, string.format('%.0f', next[i]), 'PX', math.ceil((next[i] - now) / 1000) + 1)
end
return 0
";

#[derive(Clone)]
pub struct RateLimiter {
    redis: Option<(redis::aio::ConnectionManager, Arc<redis::Script>)>,
    /// The TATs in-process: the embedded default's store, and the fallback
    /// while Redis is away. Entries idle for a minute are dropped.
    local: Arc<Mutex<HashMap<String, u64>>>,
    counters: RateCounters,
    failures: Failures,
}

/// The keys one check moves: the tenant's and its user's.
fn keys(tenant: Uuid, user: &str, kind: Kind) -> [String; 2] {
    let kind = kind.segment();
    [
        format!("pulse:{tenant}:rate:{kind}"),
        format!("pulse:{tenant}:rate:{kind}:user:{user}"),
    ]
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl RateLimiter {
    pub fn memory(counters: RateCounters) -> Self {
        RateLimiter {
            redis: None,
            local: Arc::default(),
            failures: Failures::new(
                counters.errors.clone(),
                "rate limits",
                "limiting in-process until it answers",
            ),
            counters,
        }
    }

    pub fn redis(conn: redis::aio::ConnectionManager, counters: RateCounters) -> Self {
        RateLimiter {
            redis: Some((conn, Arc::new(redis::Script::new(SCRIPT)))),
            ..RateLimiter::memory(counters)
        }
    }

    /// Takes `cost` units of `kind` for `user` (a user id or a service
    /// name) in `tenant`, or says how long until they would fit. A cost
    /// past the burst can never fit and is refused with a minute's wait.
    pub async fn take(
        &self,
        tenant: Uuid,
        user: &str,
        kind: Kind,
        quota: Quota,
        cost: u64,
    ) -> Result<(), Duration> {
        if cost == 0 {
            return Ok(());
        }
        let keys = keys(tenant, user, kind);
        let rates = [
            Rate::per_minute(quota.per_tenant),
            Rate::per_minute(quota.per_user),
        ];
        // More than a burst can never fit: refused without asking.
        let never = rates
            .iter()
            .any(|r| r.interval_us.saturating_mul(cost) > r.tolerance_us);
        let verdict = if never {
            Err(MINUTE_US)
        } else {
            match &self.redis {
                Some((conn, script)) => {
                    match self.take_redis(conn, script, &keys, rates, cost).await {
                        Ok(verdict) => verdict,
                        Err(e) => {
                            self.failures.record("check a rate", &e);
                            self.take_local(&keys, rates, cost)
                        }
                    }
                }
                None => self.take_local(&keys, rates, cost),
            }
        };
        verdict.map_err(|wait_us| {
            self.counters
                .rejected
                .get_or_create(&KindLabels { kind })
                .inc();
            Duration::from_micros(wait_us.min(MINUTE_US))
        })
    }

    fn take_local(&self, keys: &[String; 2], rates: [Rate; 2], cost: u64) -> Result<(), u64> {
        let now = now_us();
        let mut tats = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if tats.len() > 100_000 {
            tats.retain(|_, tat| *tat > now);
        }
        let mut next = [0u64; 2];
        let mut wait = 0u64;
        for (i, (key, rate)) in keys.iter().zip(rates).enumerate() {
            let tat = tats.get(key).copied().unwrap_or(0);
            match gcra(tat, now, rate, cost) {
                Ok(n) => next[i] = n,
                Err(w) => wait = wait.max(w),
            }
        }
        if wait > 0 {
            return Err(wait);
        }
        for (key, n) in keys.iter().zip(next) {
            tats.insert(key.clone(), n);
        }
        Ok(())
    }

    async fn take_redis(
        &self,
        conn: &redis::aio::ConnectionManager,
        script: &redis::Script,
        keys: &[String; 2],
        rates: [Rate; 2],
        cost: u64,
    ) -> anyhow::Result<Result<(), u64>> {
        let mut invocation = script.key(&keys[0]);
        invocation.key(&keys[1]).arg(cost);
        for rate in rates {
            invocation.arg(rate.interval_us).arg(rate.tolerance_us);
        }
        let mut conn = conn.clone();
        let wait: u64 = bounded(invocation.invoke_async::<u64>(&mut conn)).await?;
        Ok(if wait == 0 { Ok(()) } else { Err(wait) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn a_burst_of_a_minute_then_the_steady_rate() {
        let rate = Rate::per_minute(60); // one a second
        let mut tat = 0;
        let now = 1_000 * S;
        for _ in 0..60 {
            tat = gcra(tat, now, rate, 1).expect("within the burst");
        }
        assert_eq!(gcra(tat, now, rate, 1), Err(S), "the 61st waits a second");
        assert!(
            gcra(tat, now + S, rate, 1).is_ok(),
            "a second later it fits"
        );
    }

    #[test]
    fn a_cost_past_the_burst_never_fits() {
        let rate = Rate::per_minute(100);
        assert!(gcra(0, S, rate, 100).is_ok());
        assert!(gcra(0, S, rate, 101).is_err());
    }

    #[test]
    fn huge_costs_and_rates_do_not_overflow() {
        let rate = Rate::per_minute(u64::MAX);
        assert_eq!(rate.interval_us, 1);
        assert!(gcra(u64::MAX - 5, S, Rate::per_minute(1), u64::MAX).is_err());
    }

    #[tokio::test]
    async fn a_refusal_takes_nothing_and_users_share_the_tenant() {
        let limiter = RateLimiter::memory(RateCounters::default());
        let tenant = Uuid::now_v7();
        let q = Quota {
            per_tenant: 3,
            per_user: 2,
        };
        assert!(limiter.take(tenant, "a", Kind::Query, q, 2).await.is_ok());
        // a's own limit is spent; the tenant's has one left.
        assert!(limiter.take(tenant, "a", Kind::Query, q, 1).await.is_err());
        assert!(limiter.take(tenant, "b", Kind::Query, q, 1).await.is_ok());
        // Now the tenant's is spent too, for everyone.
        assert!(limiter.take(tenant, "c", Kind::Query, q, 1).await.is_err());
        // Another kind and another tenant are untouched.
        assert!(
            limiter
                .take(tenant, "a", Kind::Mutation, q, 1)
                .await
                .is_ok()
        );
        assert!(
            limiter
                .take(Uuid::now_v7(), "a", Kind::Query, q, 2)
                .await
                .is_ok()
        );
    }
}
