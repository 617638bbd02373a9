//! Dashboards (seed 001's `dashboards` and `dashboard_permissions`), their
//! kept versions, and share links. Widgets, variables and filters live in
//! the dashboard row as JSON: they are read and written with it, always
//! whole, and versioned with it. Every table is tenant-scoped (row-level
//! security on PostgreSQL).

use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261122_000001_create_tenants::Tenants;
use crate::m20261122_000002_create_users::Users;

#[derive(DeriveMigrationName)]
pub struct Migration;

fn tenant_fk(
    table: impl IntoIden + Copy,
    column: impl IntoIden,
    name: &str,
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(name)
        .from(table, column)
        .to(Tenants::Table, Tenants::Id)
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Dashboards::Table)
                    .if_not_exists()
                    .col(uuid(Dashboards::Id).primary_key())
                    .col(uuid(Dashboards::TenantId))
                    .col(uuid_null(Dashboards::OwnerId))
                    .col(string_len(Dashboards::Name, 200))
                    .col(text_null(Dashboards::Description))
                    .col(json_binary(Dashboards::Tags))
                    .col(json_binary(Dashboards::Layout))
                    .col(json_binary(Dashboards::Widgets))
                    .col(json_binary(Dashboards::Variables))
                    .col(json_binary(Dashboards::Filters))
                    .col(json_binary_null(Dashboards::DefaultRange))
                    .col(string_len_null(Dashboards::Timezone, 64))
                    .col(integer_null(Dashboards::RefreshSeconds))
                    .col(boolean(Dashboards::IsPublic).default(false))
                    .col(integer(Dashboards::Version))
                    .col(timestamp_with_time_zone_null(Dashboards::PublishedAt))
                    .col(timestamp_with_time_zone(Dashboards::CreatedAt))
                    .col(timestamp_with_time_zone(Dashboards::UpdatedAt))
                    .foreign_key(&mut tenant_fk(
                        Dashboards::Table,
                        Dashboards::TenantId,
                        "fk_dashboards_tenant",
                    ))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_dashboards_owner")
                            .from(Dashboards::Table, Dashboards::OwnerId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::SetNull),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_dashboards_tenant_id")
                    .table(Dashboards::Table)
                    .col(Dashboards::TenantId)
                    .col(Dashboards::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(DashboardVersions::Table)
                    .if_not_exists()
                    .col(uuid(DashboardVersions::Id).primary_key())
                    .col(uuid(DashboardVersions::TenantId))
                    .col(uuid(DashboardVersions::DashboardId))
                    .col(integer(DashboardVersions::Version))
                    .col(json_binary(DashboardVersions::Snapshot))
                    .col(uuid_null(DashboardVersions::CreatedBy))
                    .col(string_len(DashboardVersions::Actor, 320))
                    .col(timestamp_with_time_zone(DashboardVersions::CreatedAt))
                    .foreign_key(&mut tenant_fk(
                        DashboardVersions::Table,
                        DashboardVersions::TenantId,
                        "fk_dashboard_versions_tenant",
                    ))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_dashboard_versions_dashboard")
                            .from(DashboardVersions::Table, DashboardVersions::DashboardId)
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
                    .unique()
                    .name("idx_dashboard_versions_dashboard_version")
                    .table(DashboardVersions::Table)
                    .col(DashboardVersions::DashboardId)
                    .col(DashboardVersions::Version)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(DashboardPermissions::Table)
                    .if_not_exists()
                    .col(uuid(DashboardPermissions::Id).primary_key())
                    .col(uuid(DashboardPermissions::TenantId))
                    .col(uuid(DashboardPermissions::DashboardId))
                    // Exactly one of user and role.
                    .col(uuid_null(DashboardPermissions::UserId))
                    .col(string_len_null(DashboardPermissions::Role, 16))
                    // VIEW, EDIT, SHARE or ADMIN.
                    .col(string_len(DashboardPermissions::Permission, 8))
                    .col(uuid_null(DashboardPermissions::GrantedBy))
                    .col(timestamp_with_time_zone(DashboardPermissions::GrantedAt))
                    .foreign_key(&mut tenant_fk(
                        DashboardPermissions::Table,
                        DashboardPermissions::TenantId,
                        "fk_dashboard_permissions_tenant",
                    ))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_dashboard_permissions_dashboard")
                            .from(
                                DashboardPermissions::Table,
                                DashboardPermissions::DashboardId,
                            )
                            .to(Dashboards::Table, Dashboards::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_dashboard_permissions_user")
                            .from(DashboardPermissions::Table, DashboardPermissions::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_dashboard_permissions_dashboard")
                    .table(DashboardPermissions::Table)
                    .col(DashboardPermissions::TenantId)
                    .col(DashboardPermissions::DashboardId)
                    .to_owned(),
            )
            .await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            for table in ["dashboards", "dashboard_versions", "dashboard_permissions"] {
                manager
                    .get_connection()
                    .execute_unprepared(&format!(
                        "GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO pulse_app;
                         ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
                         DROP POLICY IF EXISTS tenant_isolation ON {table};
                         CREATE POLICY tenant_isolation ON {table}
                           USING (tenant_id = pulse_current_tenant())
                           WITH CHECK (tenant_id = pulse_current_tenant());"
                    ))
                    .await?;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            DashboardPermissions::Table.into_iden(),
            DashboardVersions::Table.into_iden(),
            Dashboards::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden, Clone, Copy)]
pub enum Dashboards {
    Table,
    Id,
    TenantId,
    OwnerId,
    Name,
    Description,
    Tags,
    Layout,
    Widgets,
    Variables,
    Filters,
    DefaultRange,
    Timezone,
    RefreshSeconds,
    IsPublic,
    Version,
    PublishedAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
pub enum DashboardVersions {
    Table,
    Id,
    TenantId,
    DashboardId,
    Version,
    Snapshot,
    CreatedBy,
    Actor,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
pub enum DashboardPermissions {
    Table,
    Id,
    TenantId,
    DashboardId,
    UserId,
    Role,
    Permission,
    GrantedBy,
    GrantedAt,
}
