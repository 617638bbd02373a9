//! The integration suite: one binary, one module per capability, each
//! driving real Pulse servers over HTTP and WebSocket (see `common`).

mod common;

mod alerts;
mod audit;
mod auth;
mod cache;
mod cli;
mod dashboards;
mod events;
mod formulas;
mod fuzz;
mod golden;
mod graphiql;
mod hardening;
mod http;
mod isolation;
mod journeys;
mod limits;
mod live;
mod metrics;
mod node_client;
mod persisted;
mod plans;
mod rls;
mod rollups;
mod saved_queries;
mod tenants;
mod users;
mod websocket;
