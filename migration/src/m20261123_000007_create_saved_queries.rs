//! `saved_queries`: named, parameterised analytic queries a tenant keeps
//! (seed 001's `saved_queries`). The stored query is the GraphQL input of
//! its kind as JSON, with `"$name"` where a parameter goes; on PostgreSQL
//! row-level security confines rows to their tenant, as for `users`.

use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261122_000001_create_tenants::Tenants;
use crate::m20261122_000002_create_users::Users;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SavedQueries::Table)
                    .if_not_exists()
                    .col(uuid(SavedQueries::Id).primary_key())
                    .col(uuid(SavedQueries::TenantId))
                    .col(uuid_null(SavedQueries::OwnerId))
                    .col(string_len(SavedQueries::Name, 200))
                    .col(text_null(SavedQueries::Description))
                    // METRIC, FORMULA, FUNNEL or RETENTION.
                    .col(string_len(SavedQueries::Kind, 16))
                    .col(json_binary(SavedQueries::Definition))
                    .col(json_binary(SavedQueries::Parameters))
                    .col(boolean(SavedQueries::IsPublic).default(false))
                    .col(timestamp_with_time_zone(SavedQueries::CreatedAt))
                    .col(timestamp_with_time_zone(SavedQueries::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_saved_queries_tenant")
                            .from(SavedQueries::Table, SavedQueries::TenantId)
                            .to(Tenants::Table, Tenants::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_saved_queries_owner")
                            .from(SavedQueries::Table, SavedQueries::OwnerId)
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
                    .name("idx_saved_queries_tenant_id")
                    .table(SavedQueries::Table)
                    .col(SavedQueries::TenantId)
                    .col(SavedQueries::Id)
                    .to_owned(),
            )
            .await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared(
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON saved_queries TO pulse_app;
                     ALTER TABLE saved_queries ENABLE ROW LEVEL SECURITY;
                     DROP POLICY IF EXISTS tenant_isolation ON saved_queries;
                     CREATE POLICY tenant_isolation ON saved_queries
                       USING (tenant_id = pulse_current_tenant())
                       WITH CHECK (tenant_id = pulse_current_tenant());",
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(SavedQueries::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub enum SavedQueries {
    Table,
    Id,
    TenantId,
    OwnerId,
    Name,
    Description,
    Kind,
    Definition,
    Parameters,
    IsPublic,
    CreatedAt,
    UpdatedAt,
}
