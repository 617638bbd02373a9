//! The integration suite: one binary, one module per capability, each
//! driving real Pulse servers over HTTP and WebSocket (see `common`).

mod common;

mod audit;
mod auth;
mod cli;
mod events;
mod golden;
mod http;
mod isolation;
mod journeys;
mod metrics;
mod plans;
mod rls;
mod tenants;
mod users;
mod websocket;
