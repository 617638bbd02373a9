//! Live results for subscriptions.
//!
//! **Watchers.** Subscribers of one tenant asking the same metric query
//! (after normalization) share one watcher: a task that wakes on the
//! tenant's bus messages whose event types and time span can touch the
//! query, waits out a debounce window, recomputes through the metric
//! engine (and so through the hot cache: only changed buckets are read),
//! and publishes the result only when it differs from the last one, with
//! the next sequence number. One recomputation per change, whatever the
//! number of subscribers; the watcher ends with its last subscriber. While
//! the bus cannot promise other processes' messages (Redis lost), watchers
//! recompute on a timer instead, and once more when it comes back.
//!
//! **Tails.** `eventStream` subscribers read the committed events the
//! writer publishes for tailed tenants, filtered here, through a bounded
//! buffer: a consumer that falls behind it is told so and closed.
//!
//! **Limits.** Subscriptions per socket, sockets per tenant and
//! subscriptions per tenant are counted by guards that give their place
//! back when dropped.
//!
//! Every map here is keyed by [`InTenant`], every bus channel carries the
//! tenant: nothing one tenant does reaches another's subscribers.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::Stream;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use sea_orm::DatabaseConnection;
use tokio::sync::{broadcast, mpsc, watch};
use uuid::Uuid;

use crate::auth::{InTenant, Role, TenantCtx};
use crate::config::LiveConfig;
use crate::domain::events::TailEvent;
use crate::domain::events::query::EventFilter;
use crate::domain::metrics::{self, MetricQuery, MetricResult, gate::TenantGate, plan};
use crate::error::{AppError, AppResult};
use crate::realtime::{AlertTransition, Bus, EventsCommitted, Topic};

/// What `/metrics` shows of live work.
#[derive(Clone, Default)]
pub struct LiveCounters {
    /// Open GraphQL sockets.
    pub connections: Gauge,
    /// Active subscriptions of every kind.
    pub subscriptions: Gauge,
    /// Running metric watchers (distinct tenant × query).
    pub watchers: Gauge,
    /// Metric recomputations by watchers.
    pub recomputations: Counter,
    /// Messages handed to subscribers.
    pub messages: Counter,
    /// Subscribers closed for falling behind.
    pub slow_consumers: Counter,
}

/// One result of a watched query: the `sequence`-th distinct one.
#[derive(Debug)]
pub struct Update {
    /// 1 for the first result a watcher computes, one more for each
    /// result that differs from the one before.
    pub sequence: u64,
    pub result: MetricResult,
}

/// A watcher's latest word.
#[derive(Clone)]
enum Watched {
    /// The first result is being computed.
    Pending,
    Ready(Arc<Update>),
    /// The first computation failed: the watcher is gone.
    Failed(Arc<AppError>),
}

pub type Updates = Pin<Box<dyn Stream<Item = AppResult<Arc<Update>>> + Send>>;
pub type Tail = Pin<Box<dyn Stream<Item = AppResult<TailEvent>> + Send>>;

#[derive(Clone)]
pub struct Live(Arc<Inner>);

struct Inner {
    db: DatabaseConnection,
    bus: Bus,
    services: metrics::Services,
    gate: Arc<TenantGate>,
    config: LiveConfig,
    query_timeout: Duration,
    max_span: chrono::Duration,
    counters: LiveCounters,
    watchers: Mutex<HashMap<InTenant<String>, watch::Sender<Watched>>>,
    /// Sockets and subscriptions per tenant on this instance.
    usage: Mutex<HashMap<Uuid, Usage>>,
}

#[derive(Default)]
struct Usage {
    connections: usize,
    subscriptions: usize,
}

/// What [`Live`] needs besides its limits.
pub struct LiveParts {
    pub db: DatabaseConnection,
    pub bus: Bus,
    pub services: metrics::Services,
    pub gate: Arc<TenantGate>,
    pub query_timeout: Duration,
    pub max_span: chrono::Duration,
    pub counters: LiveCounters,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Live {
    pub fn new(parts: LiveParts, config: LiveConfig) -> Self {
        Live(Arc::new(Inner {
            db: parts.db,
            bus: parts.bus,
            services: parts.services,
            gate: parts.gate,
            config,
            query_timeout: parts.query_timeout,
            max_span: parts.max_span,
            counters: parts.counters,
            watchers: Mutex::default(),
            usage: Mutex::default(),
        }))
    }

    pub fn config(&self) -> &LiveConfig {
        &self.0.config
    }

    pub fn counters(&self) -> &LiveCounters {
        &self.0.counters
    }

    /// Running watchers (for tests and `/metrics`).
    pub fn watchers(&self) -> usize {
        lock(&self.0.watchers).len()
    }

    /// A place for one more socket of the caller's tenant, or
    /// `LIMIT_EXCEEDED`; the place is given back when the guard drops.
    pub fn connect(&self, ctx: &TenantCtx) -> AppResult<ConnectionSlot> {
        let limit = self.0.config.connections_per_tenant;
        let mut usage = lock(&self.0.usage);
        let u = usage.entry(ctx.tenant_id).or_default();
        if u.connections >= limit {
            return Err(AppError::LimitExceeded(format!(
                "this tenant already has {limit} open sockets on this server"
            )));
        }
        u.connections += 1;
        self.0.counters.connections.inc();
        Ok(ConnectionSlot {
            live: self.clone(),
            tenant: ctx.tenant_id,
            subscriptions: Arc::default(),
        })
    }

    /// A place for one more subscription on `socket` (when it came over
    /// one) and of the tenant, or `LIMIT_EXCEEDED`.
    pub fn subscribe(
        &self,
        ctx: &TenantCtx,
        socket: Option<&ConnectionSlot>,
    ) -> AppResult<SubscriptionSlot> {
        let per_socket = self.0.config.per_connection;
        let per_tenant = self.0.config.subscriptions_per_tenant;
        let on_socket = socket.map(|s| s.subscriptions.clone());
        if let Some(count) = &on_socket
            && count.fetch_add(1, Ordering::SeqCst) >= per_socket
        {
            count.fetch_sub(1, Ordering::SeqCst);
            return Err(AppError::LimitExceeded(format!(
                "at most {per_socket} subscriptions per socket"
            )));
        }
        let mut usage = lock(&self.0.usage);
        let u = usage.entry(ctx.tenant_id).or_default();
        if u.subscriptions >= per_tenant {
            if let Some(count) = &on_socket {
                count.fetch_sub(1, Ordering::SeqCst);
            }
            return Err(AppError::LimitExceeded(format!(
                "this tenant already has {per_tenant} subscriptions on this server"
            )));
        }
        u.subscriptions += 1;
        self.0.counters.subscriptions.inc();
        Ok(SubscriptionSlot {
            live: self.clone(),
            tenant: ctx.tenant_id,
            on_socket,
        })
    }

    /// The results of `query` for the caller's tenant: the current one
    /// first, then each different one. Bad input fails here, before any
    /// watcher starts.
    pub fn metric(&self, ctx: &TenantCtx, query: MetricQuery) -> AppResult<Updates> {
        plan::plan(query.clone(), metrics::now(), self.0.max_span)?;
        let key = InTenant::of(ctx, normalized(&query));
        let rx = {
            let mut watchers = lock(&self.0.watchers);
            match watchers.get(&key) {
                Some(tx) => tx.subscribe(),
                None => {
                    let (tx, rx) = watch::channel(Watched::Pending);
                    watchers.insert(key.clone(), tx.clone());
                    self.0.counters.watchers.inc();
                    let watcher = Watcher {
                        live: self.clone(),
                        key,
                        ctx: watcher_ctx(ctx),
                        query,
                        tx,
                    };
                    tokio::spawn(watcher.run());
                    rx
                }
            }
        };
        Ok(updates(rx, self.0.counters.messages.clone()))
    }

    /// The caller's tenant's events matching `filter`, as they are
    /// committed, through a buffer of `stream_buffer` events.
    pub fn tail(&self, ctx: &TenantCtx, filter: EventFilter) -> Tail {
        let tenant = ctx.tenant_id;
        let bus = self.0.bus.clone();
        let mut chunks = bus.receiver(tenant, Topic::Stream);
        bus.announce(tenant, Topic::Stream);
        let (tx, rx) = mpsc::channel::<TailEvent>(self.0.config.stream_buffer);
        let slow = Arc::new(AtomicBool::new(false));
        let pump = {
            let slow = slow.clone();
            let counters = self.0.counters.clone();
            async move {
                let mut announce = tokio::time::interval(crate::realtime::INTEREST_EVERY);
                announce.tick().await;
                loop {
                    let chunk = tokio::select! {
                        () = tx.closed() => return,
                        _ = announce.tick() => {
                            bus.announce(tenant, Topic::Stream);
                            continue;
                        }
                        chunk = chunks.recv() => chunk,
                    };
                    let chunk = match chunk {
                        Ok(chunk) => chunk,
                        Err(broadcast::error::RecvError::Closed) => return,
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            slow.store(true, Ordering::SeqCst);
                            counters.slow_consumers.inc();
                            return;
                        }
                    };
                    let Ok(events) = serde_json::from_str::<Vec<TailEvent>>(&chunk) else {
                        continue;
                    };
                    for event in events.into_iter().filter(|e| matches(&filter, e)) {
                        if tx.try_send(event).is_err() {
                            slow.store(true, Ordering::SeqCst);
                            counters.slow_consumers.inc();
                            return;
                        }
                    }
                }
            }
        };
        tokio::spawn(pump);
        let buffer = self.0.config.stream_buffer;
        let messages = self.0.counters.messages.clone();
        Box::pin(futures_util::stream::unfold(
            (rx, slow, false),
            move |(mut rx, slow, done)| {
                let messages = messages.clone();
                async move {
                    if done {
                        return None;
                    }
                    // A consumer past its buffer hears so at once, not
                    // after the backlog it could not keep up with.
                    if slow.load(Ordering::SeqCst) {
                        return Some((Err(slow_consumer(buffer)), (rx, slow, true)));
                    }
                    match rx.recv().await {
                        Some(event) => {
                            messages.inc();
                            Some((Ok(event), (rx, slow, false)))
                        }
                        None if slow.load(Ordering::SeqCst) => {
                            Some((Err(slow_consumer(buffer)), (rx, slow, true)))
                        }
                        None => None,
                    }
                }
            },
        ))
    }
}

impl Live {
    /// The tenant's alert transitions from now on, optionally of one
    /// alert: what the alert evaluator publishes (`Topic::Alerts`) and the
    /// `alertEvents` subscription streams. A subscriber more than the bus
    /// backlog behind gets `SLOW_CONSUMER`.
    pub fn alert_events(
        &self,
        ctx: &TenantCtx,
        alert: Option<Uuid>,
    ) -> Pin<Box<dyn Stream<Item = AppResult<AlertTransition>> + Send>> {
        let rx = self.0.bus.receiver(ctx.tenant_id, Topic::Alerts);
        let slow = self.0.counters.slow_consumers.clone();
        Box::pin(futures_util::stream::unfold(
            (rx, false),
            move |(mut rx, done)| {
                let slow = slow.clone();
                async move {
                    if done {
                        return None;
                    }
                    loop {
                        match rx.recv().await {
                            Ok(raw) => {
                                let Ok(t) = serde_json::from_str::<AlertTransition>(&raw) else {
                                    continue;
                                };
                                if alert.is_none_or(|id| id == t.alert_id) {
                                    return Some((Ok(t), (rx, false)));
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                slow.inc();
                                return Some((Err(slow_consumer(n as usize)), (rx, true)));
                            }
                            Err(broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                }
            },
        ))
    }
}

fn slow_consumer(buffer: usize) -> AppError {
    AppError::SlowConsumer(format!(
        "this subscriber fell more than {buffer} events behind and was closed; subscribe again"
    ))
}

/// Whether a tailed event passes an `eventStream` filter (the same parts
/// as the `events` listing's).
fn matches(f: &EventFilter, e: &TailEvent) -> bool {
    f.types
        .as_ref()
        .is_none_or(|types| types.contains(&e.event_type))
        && f.from.is_none_or(|from| e.occurred_at >= from)
        && f.to.is_none_or(|to| e.occurred_at < to)
        && f.user_id
            .as_ref()
            .is_none_or(|u| e.user_id.as_ref() == Some(u))
        && f.session_id
            .as_ref()
            .is_none_or(|s| e.session_id.as_ref() == Some(s))
        && f.properties
            .iter()
            .flatten()
            .all(|(key, value)| e.properties.get(key) == Some(value))
}

/// A socket's place in its tenant's count, and its subscriptions' count.
pub struct ConnectionSlot {
    live: Live,
    tenant: Uuid,
    subscriptions: Arc<AtomicUsize>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut usage = lock(&self.live.0.usage);
        if let Some(u) = usage.get_mut(&self.tenant) {
            u.connections = u.connections.saturating_sub(1);
            if u.connections == 0 && u.subscriptions == 0 {
                usage.remove(&self.tenant);
            }
        }
        self.live.0.counters.connections.dec();
    }
}

/// A subscription's place in its socket's and tenant's counts.
pub struct SubscriptionSlot {
    live: Live,
    tenant: Uuid,
    on_socket: Option<Arc<AtomicUsize>>,
}

impl Drop for SubscriptionSlot {
    fn drop(&mut self) {
        if let Some(count) = &self.on_socket {
            count.fetch_sub(1, Ordering::SeqCst);
        }
        let mut usage = lock(&self.live.0.usage);
        if let Some(u) = usage.get_mut(&self.tenant) {
            u.subscriptions = u.subscriptions.saturating_sub(1);
            if u.connections == 0 && u.subscriptions == 0 {
                usage.remove(&self.tenant);
            }
        }
        self.live.0.counters.subscriptions.dec();
    }
}

/// The query as a watcher key: the same question asked with its lists in
/// another order maps to the same watcher.
fn normalized(query: &MetricQuery) -> String {
    let mut q = query.clone();
    if let Some(types) = q.event_types.as_mut() {
        types.sort();
        types.dedup();
    }
    q.filters.sort_by_cached_key(|f| format!("{f:?}"));
    if q.timezone.as_deref() == Some("UTC") {
        q.timezone = None;
    }
    format!("{q:?}")
}

/// Whether two results of one watcher say the same: the same totals and
/// series, bucket for bucket, where the first bucket may start at another
/// instant (a relative range's first bucket starts where the window does,
/// which moves every second without changing what it shows).
fn same_answer(a: &MetricResult, b: &MetricResult) -> bool {
    a.total == b.total
        && a.series.len() == b.series.len()
        && a.series.iter().zip(&b.series).all(|(x, y)| {
            x.group == y.group
                && x.total == y.total
                && x.points.len() == y.points.len()
                && x.points
                    .iter()
                    .zip(&y.points)
                    .enumerate()
                    .all(|(i, (p, q))| p.1 == q.1 && (i == 0 || p.0 == q.0))
        })
}

/// How often a watcher of a relative range (`last: 24h`) recomputes with
/// no commit, as its window slides past its oldest events: a hundredth
/// of the span, between 1 s and 60 s. `None` for a fixed range.
fn slide_every(query: &MetricQuery) -> Option<Duration> {
    let span = crate::duration::parse(query.last.as_deref()?).ok()?;
    Some((span / 100).clamp(Duration::from_secs(1), Duration::from_secs(60)))
}

/// Whom a watcher computes as: the tenant, with a reader's rights and no
/// user, so that it serves every subscriber alike and outlives the one
/// who started it.
fn watcher_ctx(ctx: &TenantCtx) -> TenantCtx {
    TenantCtx {
        user_id: None,
        actor: "live-watcher".into(),
        role: Role::Viewer,
        ..ctx.clone()
    }
}

/// A subscriber's view of a watcher: the latest result now, then each
/// newer one. A subscriber that is slow to read skips to the newest (the
/// sequence numbers show what it missed); memory stays one result per
/// watcher, however slow its subscribers.
fn updates(rx: watch::Receiver<Watched>, messages: Counter) -> Updates {
    Box::pin(futures_util::stream::unfold(
        (rx, 0u64, false),
        move |(mut rx, seen, done)| {
            let messages = messages.clone();
            async move {
                if done {
                    return None;
                }
                loop {
                    let current = rx.borrow_and_update().clone();
                    match current {
                        Watched::Ready(update) if update.sequence > seen => {
                            messages.inc();
                            let seen = update.sequence;
                            return Some((Ok(update), (rx, seen, false)));
                        }
                        Watched::Failed(e) => {
                            return Some((Err(e.duplicate()), (rx, seen, true)));
                        }
                        _ => {}
                    }
                    if rx.changed().await.is_err() {
                        return None;
                    }
                }
            }
        },
    ))
}

struct Watcher {
    live: Live,
    key: InTenant<String>,
    ctx: TenantCtx,
    query: MetricQuery,
    tx: watch::Sender<Watched>,
}

/// How long a watcher waits before retrying a recomputation the tenant's
/// limits refused or the database failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl Watcher {
    async fn run(self) {
        let inner = self.live.0.clone();
        // Listen before the first computation, so that nothing committed
        // while it runs goes unheard.
        let mut events = inner.bus.receiver(self.ctx.tenant_id, Topic::Events);
        let mut health = inner.bus.health();
        health.borrow_and_update();
        let mut health_alive = true;
        let mut last = match self.compute().await {
            Ok(result) => {
                self.tx.send_replace(Watched::Ready(Arc::new(Update {
                    sequence: 1,
                    result: result.clone(),
                })));
                result
            }
            Err(e) => {
                self.tx.send_replace(Watched::Failed(Arc::new(e)));
                self.forget(true);
                return;
            }
        };
        let mut sequence = 1;
        let mut fallback = tokio::time::interval(inner.config.fallback_every);
        fallback.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        fallback.tick().await;
        let mut retry = false;
        // A relative range moves with the clock: its oldest events leave
        // it with no commit to say so. Recompute on a timer as well (the
        // result is sent only if it changed).
        let slide_every = slide_every(&self.query);
        let mut slide = tokio::time::interval(slide_every.unwrap_or(Duration::from_secs(3600)));
        slide.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        slide.tick().await;
        loop {
            let wake = tokio::select! {
                () = self.tx.closed() => {
                    if self.forget(false) {
                        return;
                    }
                    false
                }
                msg = events.recv() => match msg {
                    Ok(msg) => self.touched_by(&msg),
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => false,
                },
                changed = health.changed(), if health_alive => {
                    // Lost: recompute on the timer from now on. Back: once
                    // now, for what was missed meanwhile.
                    health_alive = changed.is_ok();
                    health_alive
                }
                _ = fallback.tick() => !*health.borrow(),
                _ = slide.tick(), if slide_every.is_some() => true,
                () = tokio::time::sleep(RETRY_AFTER), if retry => true,
            };
            if !wake {
                continue;
            }
            // Gather what else arrives within the window: one
            // recomputation for a burst of commits.
            tokio::time::sleep(inner.config.debounce).await;
            while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) = events.try_recv() {}
            match self.compute().await {
                Ok(result) => {
                    retry = false;
                    if !same_answer(&result, &last) {
                        sequence += 1;
                        self.tx.send_replace(Watched::Ready(Arc::new(Update {
                            sequence,
                            result: result.clone(),
                        })));
                        last = result;
                    }
                }
                Err(e) => {
                    retry = true;
                    tracing::warn!(tenant = %self.ctx.tenant_id, code = e.code(), error = %e, "live: recomputation failed; retrying");
                }
            }
        }
    }

    /// Whether committed events can change this watcher's answer: a type
    /// it counts, inside its range (a relative range is placed at now).
    fn touched_by(&self, raw: &str) -> bool {
        let Ok(msg) = serde_json::from_str::<EventsCommitted>(raw) else {
            return false;
        };
        if let Some(types) = &self.query.event_types
            && !types.is_empty()
            && !msg.types.iter().any(|t| types.contains(t))
        {
            return false;
        }
        match plan::plan(self.query.clone(), metrics::now(), self.live.0.max_span) {
            Ok(p) => msg.to >= p.from && msg.from < p.to,
            Err(_) => true,
        }
    }

    async fn compute(&self) -> AppResult<MetricResult> {
        let inner = self.live.0.clone();
        let pass = inner.gate.enter(self.ctx.tenant_id).await?;
        inner.counters.recomputations.inc();
        let (ctx, query) = (self.ctx.clone(), self.query.clone());
        crate::db::detached(async move {
            let result = metrics::run(
                &inner.db,
                &ctx,
                query,
                inner.query_timeout,
                inner.max_span,
                &inner.services,
                None,
            )
            .await;
            drop(pass);
            result
        })
        .await
    }

    /// Removes this watcher if nobody subscribes any more (or `always`);
    /// under the map's lock, so a subscriber arriving meanwhile either
    /// finds it still there or starts a new one.
    fn forget(&self, always: bool) -> bool {
        let mut watchers = lock(&self.live.0.watchers);
        if !always && self.tx.receiver_count() > 0 {
            return false;
        }
        if watchers
            .get(&self.key)
            .is_some_and(|tx| tx.same_channel(&self.tx))
        {
            watchers.remove(&self.key);
            self.live.0.counters.watchers.dec();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(kind: &str, props: serde_json::Value) -> TailEvent {
        TailEvent {
            id: Uuid::now_v7(),
            event_type: kind.into(),
            occurred_at: chrono::Utc::now(),
            user_id: Some("u1".into()),
            session_id: None,
            properties: props,
            received_at: chrono::Utc::now(),
            source: "http".into(),
        }
    }

    #[test]
    fn relative_ranges_slide_on_a_timer_bounded_both_ways() {
        let last = |l: &str| MetricQuery {
            last: Some(l.into()),
            ..Default::default()
        };
        assert_eq!(slide_every(&last("1m")), Some(Duration::from_secs(1)));
        assert_eq!(slide_every(&last("1h")), Some(Duration::from_secs(36)));
        assert_eq!(slide_every(&last("30d")), Some(Duration::from_secs(60)));
        assert_eq!(slide_every(&MetricQuery::default()), None);
    }

    #[test]
    fn the_same_question_in_another_order_is_one_watcher() {
        let a = MetricQuery {
            event_types: Some(vec!["b".into(), "a".into(), "a".into()]),
            timezone: Some("UTC".into()),
            ..Default::default()
        };
        let b = MetricQuery {
            event_types: Some(vec!["a".into(), "b".into()]),
            ..Default::default()
        };
        assert_eq!(normalized(&a), normalized(&b));
        let c = MetricQuery {
            event_types: Some(vec!["a".into()]),
            ..Default::default()
        };
        assert_ne!(normalized(&a), normalized(&c));
    }

    #[tokio::test]
    async fn alert_events_reach_only_their_tenant_and_the_alert_asked_for() {
        use futures_util::StreamExt as _;
        let bus = Bus::memory();
        let db = sea_orm::DatabaseConnection::default();
        let m = crate::telemetry::Telemetry::new();
        let services = metrics::Services {
            cache: None,
            flights: crate::cache::flight::Flights::new(m.flights.clone()),
            answers: metrics::cached::answers(),
            prepared: metrics::cached::prepared_set(),
            budgets: metrics::budget::Budgets {
                limiter: crate::cache::rate::RateLimiter::memory(m.rates.clone()),
                counters: m.budget_counters(),
            },
        };
        let live = Live::new(
            LiveParts {
                db,
                bus: bus.clone(),
                services,
                gate: Arc::new(TenantGate::new(1, Duration::from_secs(1))),
                query_timeout: Duration::from_secs(1),
                max_span: chrono::Duration::days(1),
                counters: LiveCounters::default(),
            },
            crate::config::Config::from_lookup(|_| None)
                .expect("defaults")
                .live,
        );
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let ctx = |tenant| TenantCtx {
            tenant_id: tenant,
            tenant_slug: "t".into(),
            user_id: None,
            actor: "test".into(),
            role: Role::Viewer,
            policy: Arc::default(),
        };
        let (watched, other) = (Uuid::now_v7(), Uuid::now_v7());
        let mut all_of_a = live.alert_events(&ctx(a), None);
        let mut one_of_a = live.alert_events(&ctx(a), Some(watched));
        let mut all_of_b = live.alert_events(&ctx(b), None);
        let transition = |alert| AlertTransition {
            alert_id: alert,
            from: "OK".into(),
            to: "FIRING".into(),
            value: Some(1.0),
            at: chrono::Utc::now(),
        };
        bus.publish(a, Topic::Alerts, &transition(other))
            .expect("publish");
        bus.publish(a, Topic::Alerts, &transition(watched))
            .expect("publish");
        let first = all_of_a.next().await.expect("one").expect("ok");
        assert_eq!(first.alert_id, other);
        let only = one_of_a.next().await.expect("one").expect("ok");
        assert_eq!(only.alert_id, watched);
        let quiet = tokio::time::timeout(Duration::from_millis(100), all_of_b.next()).await;
        assert!(quiet.is_err(), "tenant b heard tenant a's alert");
    }

    #[test]
    fn tail_filters_combine_with_and() {
        let f = EventFilter {
            types: Some(vec!["click".into()]),
            user_id: Some("u1".into()),
            properties: json!({"plan": "pro"}).as_object().cloned(),
            ..Default::default()
        };
        assert!(matches(&f, &event("click", json!({"plan": "pro", "x": 1}))));
        assert!(!matches(&f, &event("view", json!({"plan": "pro"}))));
        assert!(!matches(&f, &event("click", json!({"plan": "free"}))));
        assert!(matches(&EventFilter::default(), &event("any", json!({}))));
    }
}
