//! Business rules, one module per capability. Functions that touch tenant
//! data take `&TenantCtx` first and scope every query by its tenant; none
//! accepts a tenant id from client input. No GraphQL or HTTP types here.

pub mod alerts;
pub mod audit;
pub mod auth;
pub mod dashboards;
pub mod demo;
pub mod events;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod page;
pub mod persisted;
pub mod saved_queries;
pub mod tenants;
pub mod users;
