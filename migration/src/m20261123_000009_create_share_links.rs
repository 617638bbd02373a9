//! `share_links`: revocable, expiring read-only links to one dashboard,
//! with the variable values they lock. The token itself is signed and not
//! stored; the row is what revocation and expiry are checked against.

use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261122_000001_create_tenants::Tenants;
use crate::m20261123_000008_create_dashboards::Dashboards;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ShareLinks::Table)
                    .if_not_exists()
                    .col(uuid(ShareLinks::Id).primary_key())
                    .col(uuid(ShareLinks::TenantId))
                    .col(uuid(ShareLinks::DashboardId))
                    .col(json_binary(ShareLinks::LockedVariables))
                    .col(timestamp_with_time_zone(ShareLinks::ExpiresAt))
                    .col(timestamp_with_time_zone_null(ShareLinks::RevokedAt))
                    .col(uuid_null(ShareLinks::CreatedBy))
                    .col(string_len(ShareLinks::Actor, 320))
                    .col(timestamp_with_time_zone(ShareLinks::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_share_links_tenant")
                            .from(ShareLinks::Table, ShareLinks::TenantId)
                            .to(Tenants::Table, Tenants::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_share_links_dashboard")
                            .from(ShareLinks::Table, ShareLinks::DashboardId)
                            .to(Dashboards::Table, Dashboards::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_share_links_dashboard")
                    .table(ShareLinks::Table)
                    .col(ShareLinks::TenantId)
                    .col(ShareLinks::DashboardId)
                    .to_owned(),
            )
            .await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared(
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON share_links TO pulse_app;
                     ALTER TABLE share_links ENABLE ROW LEVEL SECURITY;
                     DROP POLICY IF EXISTS tenant_isolation ON share_links;
                     CREATE POLICY tenant_isolation ON share_links
                       USING (tenant_id = pulse_current_tenant())
                       WITH CHECK (tenant_id = pulse_current_tenant());",
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ShareLinks::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub enum ShareLinks {
    Table,
    Id,
    TenantId,
    DashboardId,
    LockedVariables,
    ExpiresAt,
    RevokedAt,
    CreatedBy,
    Actor,
    CreatedAt,
}
