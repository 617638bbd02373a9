//! The group-commit writer.
//!
//! Requests queue their validated batch and wait. Writer tasks take
//! everything queued (up to a group size) and commit it in one go, so
//! under load many requests share one statement and one fsync; when idle a
//! lone batch commits at once, without a linger delay. Each request is
//! answered only after the commit that holds its events.
//!
//! Memory is bounded by a semaphore counting queued events: when it is
//! exhausted, a request waits up to the configured bound and then gets
//! `UNAVAILABLE` (HTTP 503 with Retry-After).
//!
//! Idempotency: ids are deduplicated within the group in memory (the first
//! copy, in queue order, wins) and against the database by the insert
//! itself (`ON CONFLICT DO NOTHING`); whatever is not stored is reported as
//! a duplicate to the request that sent it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use uuid::Uuid;

use super::store::{Row, Store};
use super::{NewEvent, TailEvent};
use crate::cache::{HotCache, Mark};
use crate::error::{AppError, AppResult};
use crate::realtime::{Bus, EventsCommitted, Topic};
use crate::telemetry::Telemetry;

/// What one request's batch came to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IngestCounts {
    pub accepted: u64,
    pub duplicates: u64,
}

/// Writer settings (see `config::IngestConfig`).
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Most events in one batch (one request).
    pub max_batch: usize,
    /// Most events committed in one group.
    pub max_group: usize,
    /// Most events queued or being committed at once.
    pub queue_events: usize,
    /// How long a request waits for queue space before `UNAVAILABLE`.
    pub queue_wait: Duration,
    /// Concurrent writer tasks.
    pub writers: usize,
}

struct Job {
    tenant_id: Uuid,
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<IngestCounts, String>>,
    _permit: OwnedSemaphorePermit,
}

/// The handle requests use; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    inner: Arc<Inner>,
}

struct Inner {
    config: WriterConfig,
    /// `None` once closed.
    tx: std::sync::Mutex<Option<mpsc::UnboundedSender<Job>>>,
    space: Arc<Semaphore>,
    telemetry: Arc<Telemetry>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer tasks.
    pub fn start(
        config: WriterConfig,
        store: Arc<Store>,
        bus: Bus,
        cache: HotCache,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        let tasks = (0..config.writers.max(1))
            .map(|_| {
                let worker = Worker {
                    rx: rx.clone(),
                    store: store.clone(),
                    bus: bus.clone(),
                    cache: cache.clone(),
                    telemetry: telemetry.clone(),
                    max_group: config.max_group,
                };
                tokio::spawn(worker.run())
            })
            .collect();
        Writer {
            inner: Arc::new(Inner {
                space: Arc::new(Semaphore::new(config.queue_events)),
                config,
                tx: std::sync::Mutex::new(Some(tx)),
                telemetry,
                tasks: Mutex::new(tasks),
            }),
        }
    }

    pub fn max_batch(&self) -> usize {
        self.inner.config.max_batch
    }

    pub fn record_rejected(&self, events: u64) {
        self.inner.telemetry.events_rejected.inc_by(events);
    }

    /// Queues a tenant's validated events and waits for their commit.
    pub async fn submit(&self, tenant_id: Uuid, events: Vec<NewEvent>) -> AppResult<IngestCounts> {
        if events.is_empty() {
            return Ok(IngestCounts::default());
        }
        let inner = &self.inner;
        // A batch larger than the whole queue takes all of it.
        let want = events.len().min(inner.config.queue_events) as u32;
        let permit = tokio::time::timeout(
            inner.config.queue_wait,
            inner.space.clone().acquire_many_owned(want),
        )
        .await
        .map_err(|_| {
            inner.telemetry.ingest_saturated.inc();
            AppError::Unavailable("ingestion is saturated; retry shortly".into())
        })?
        .map_err(|_| AppError::Unavailable("ingestion is shutting down".into()))?;
        let (reply, answer) = oneshot::channel();
        let tx = inner
            .tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(|| AppError::Unavailable("ingestion is shutting down".into()))?;
        tx.send(Job {
            tenant_id,
            events,
            reply,
            _permit: permit,
        })
        .map_err(|_| AppError::Unavailable("ingestion is shutting down".into()))?;
        match answer.await {
            Ok(Ok(counts)) => Ok(counts),
            Ok(Err(cause)) => Err(AppError::internal(anyhow::anyhow!(
                "committing events: {cause}"
            ))),
            Err(_) => Err(AppError::Unavailable(
                "ingestion stopped before the commit".into(),
            )),
        }
    }

    /// Stops taking batches, commits everything already queued, and waits
    /// for the writer tasks to finish.
    pub async fn close(&self) {
        // Waiting submissions fail fast; queued jobs keep their permits.
        self.inner.space.close();
        // Dropping the only sender lets the workers drain the queue and stop.
        drop(
            self.inner
                .tx
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
        let tasks = std::mem::take(&mut *self.inner.tasks.lock().await);
        for task in tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "an event writer task failed");
            }
        }
    }
}

struct Worker {
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>,
    store: Arc<Store>,
    bus: Bus,
    cache: HotCache,
    telemetry: Arc<Telemetry>,
    max_group: usize,
}

impl Worker {
    async fn run(self) {
        loop {
            let Some(jobs) = self.take_group().await else {
                return;
            };
            self.commit(jobs).await;
        }
    }

    /// Waits for one job, then takes whatever else is queued, up to the
    /// group size.
    async fn take_group(&self) -> Option<Vec<Job>> {
        let mut rx = self.rx.lock().await;
        let first = rx.recv().await?;
        let mut size = first.events.len();
        let mut jobs = vec![first];
        while size < self.max_group {
            match rx.try_recv() {
                Ok(job) => {
                    size += job.events.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        Some(jobs)
    }

    async fn commit(&self, jobs: Vec<Job>) {
        let started = Instant::now();
        // In-memory dedup across the whole group: first copy wins.
        let mut seen = HashSet::new();
        let mut rows = Vec::new();
        let mut owners = Vec::new();
        let mut counts = vec![IngestCounts::default(); jobs.len()];
        for (j, job) in jobs.iter().enumerate() {
            for event in &job.events {
                if seen.insert((job.tenant_id, event.id)) {
                    rows.push(Row {
                        tenant_id: job.tenant_id,
                        event,
                    });
                    owners.push(j);
                } else {
                    counts[j].duplicates += 1;
                }
            }
        }
        let result = self.store.insert(&rows).await;
        let elapsed = started.elapsed();
        let stored = match result {
            Ok(stored) => stored,
            Err(e) => {
                let cause = format!("{e:#}");
                tracing::error!(error = %cause, events = rows.len(), "event commit failed");
                for job in jobs {
                    let _ = job.reply.send(Err(cause.clone()));
                }
                return;
            }
        };
        let mut touched: HashMap<Uuid, Touched> = HashMap::new();
        for (row, &j) in rows.iter().zip(&owners) {
            if stored.contains(&(row.tenant_id, row.event.id)) {
                counts[j].accepted += 1;
                touched
                    .entry(row.tenant_id)
                    .or_insert_with(|| Touched::new(row.event.occurred_at))
                    .add(row.event);
            } else {
                counts[j].duplicates += 1;
            }
        }
        let accepted: u64 = counts.iter().map(|c| c.accepted).sum();
        let duplicates: u64 = counts.iter().map(|c| c.duplicates).sum();
        self.telemetry.events_accepted.inc_by(accepted);
        self.telemetry.events_duplicate.inc_by(duplicates);
        self.telemetry
            .ingest_group_events
            .observe(rows.len() as f64);
        self.telemetry
            .ingest_commit_seconds
            .observe(elapsed.as_secs_f64());
        // The cache's generations move before anyone hears "accepted": a
        // query that starts after the answer cannot be served a bucket
        // computed without these events (see `cache`). A failure is logged
        // and counted there; the events are committed either way.
        for (tenant_id, t) in &touched {
            let marks: Vec<Mark> = t.marks.iter().cloned().collect();
            let _ = self.cache.bump(*tenant_id, &marks).await;
        }
        // Live tails read the events themselves, which the replies below
        // give back to their requests.
        self.publish_tails(&rows, &stored);
        for (job, c) in jobs.into_iter().zip(counts) {
            let _ = job.reply.send(Ok(c));
        }
        // After the commit, never before: subscribers may read at once.
        for (tenant_id, t) in touched {
            let message = EventsCommitted {
                tenant_id,
                types: t.types.into_iter().collect(),
                from: t.from,
                to: t.to,
                count: t.count,
            };
            if let Err(e) = self.bus.publish(tenant_id, Topic::Events, &message) {
                tracing::warn!(error = %e, %tenant_id, "cannot publish committed events");
            }
        }
    }
}

impl Worker {
    /// The committed events themselves, in commit order, for the tenants
    /// some process tails (`eventStream`); nothing is built for the rest.
    fn publish_tails(&self, rows: &[Row<'_>], stored: &HashSet<(Uuid, Uuid)>) {
        let mut tails: HashMap<Uuid, Vec<TailEvent>> = HashMap::new();
        let mut heard: HashMap<Uuid, bool> = HashMap::new();
        for row in rows {
            let tenant = row.tenant_id;
            let listened = *heard
                .entry(tenant)
                .or_insert_with(|| self.bus.heard(tenant, Topic::Stream));
            if listened && stored.contains(&(tenant, row.event.id)) {
                tails
                    .entry(tenant)
                    .or_default()
                    .push(TailEvent::from(row.event));
            }
        }
        for (tenant, events) in tails {
            for chunk in events.chunks(TAIL_CHUNK) {
                if let Err(e) = self.bus.publish(tenant, Topic::Stream, &chunk) {
                    tracing::warn!(error = %e, %tenant, "cannot publish the event tail");
                }
            }
        }
    }
}

/// Events per tail message: keeps each message small for Redis.
const TAIL_CHUNK: usize = 500;

struct Touched {
    types: BTreeSet<String>,
    /// The cache generations the events move: each UTC day, alone and
    /// with each type.
    marks: BTreeSet<Mark>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    count: u64,
}

impl Touched {
    fn new(at: DateTime<Utc>) -> Self {
        Touched {
            types: BTreeSet::new(),
            marks: BTreeSet::new(),
            from: at,
            to: at,
            count: 0,
        }
    }

    fn add(&mut self, e: &NewEvent) {
        if !self.types.contains(&e.event_type) {
            self.types.insert(e.event_type.clone());
        }
        let day = e.occurred_at.date_naive();
        self.marks.insert(Mark {
            day,
            event_type: None,
        });
        self.marks.insert(Mark {
            day,
            event_type: Some(e.event_type.clone()),
        });
        self.from = self.from.min(e.occurred_at);
        self.to = self.to.max(e.occurred_at);
        self.count += 1;
    }
}
