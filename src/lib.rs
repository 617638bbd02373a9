//! Pulse: a multi-tenant GraphQL analytics gateway.
//!
//! Where things live:
//! - [`config`]: every setting, read and validated once at start-up.
//! - [`app`]: shared state, start-up (connect, migrate, bind) and graceful
//!   shutdown; tests spawn the same [`app::Application`] `pulse serve` runs.
//! - [`http`]: the router, GraphQL over HTTP and WebSocket, health,
//!   readiness and metrics.
//! - [`graphql`]: schema assembly and thin resolvers per capability.
//! - [`domain`]: business rules per capability, always scoped by tenant.
//! - [`auth`]: roles, JWTs, passwords and the verified `TenantCtx`.
//! - [`entities`]: sea-orm entities, one per table; [`db`]: connections,
//!   migrations and tenant-scoped transactions.
//! - [`duration`]: the one duration syntax (`30s`, `5m`, `30d`, `8w`).
//! - [`error`]: the one error type and its `extensions.code`s;
//!   [`telemetry`]: logs and Prometheus metrics.

pub mod app;
pub mod auth;
pub mod cache;
pub mod config;
pub mod db;
pub mod domain;
pub mod duration;
pub mod entities;
pub mod error;
pub mod graphql;
pub mod http;
pub mod jobs;
pub mod realtime;
pub mod telemetry;
