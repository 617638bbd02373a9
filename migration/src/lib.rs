//! Pulse's schema migrations, one module per migration, never edited once
//! landed. The app crate runs them on `serve` and `migrate`; this crate never
//! imports the app.

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_create_tenants;
mod m20261122_000002_create_users;
mod m20261122_000003_create_audit_log;
mod m20261122_000004_enable_row_level_security;
mod m20261122_000005_create_events;
mod m20261122_000006_create_analytics_aggregates;
mod m20261123_000007_create_saved_queries;
mod m20261123_000008_create_dashboards;
mod m20261123_000009_create_share_links;
mod m20261124_000010_create_persisted_operations;
mod m20261201_000011_create_alerts;
mod m20261201_000012_create_actor_bitmaps;
mod m20261201_000013_create_property_rollups;
mod m20261202_000014_all_types_actor_bitmaps;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_create_tenants::Migration),
            Box::new(m20261122_000002_create_users::Migration),
            Box::new(m20261122_000003_create_audit_log::Migration),
            Box::new(m20261122_000004_enable_row_level_security::Migration),
            Box::new(m20261122_000005_create_events::Migration),
            Box::new(m20261122_000006_create_analytics_aggregates::Migration),
            Box::new(m20261123_000007_create_saved_queries::Migration),
            Box::new(m20261123_000008_create_dashboards::Migration),
            Box::new(m20261123_000009_create_share_links::Migration),
            Box::new(m20261124_000010_create_persisted_operations::Migration),
            Box::new(m20261201_000011_create_alerts::Migration),
            Box::new(m20261201_000012_create_actor_bitmaps::Migration),
            Box::new(m20261201_000013_create_property_rollups::Migration),
            Box::new(m20261202_000014_all_types_actor_bitmaps::Migration),
        ]
    }
}
