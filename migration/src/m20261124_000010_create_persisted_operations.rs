//! `persisted_operations`: the GraphQL documents a tenant's admins have
//! registered, by their SHA-256. In allow-list mode they are the only
//! operations the tenant's members below ADMIN may run. One row per
//! document and tenant; on PostgreSQL row-level security confines rows to
//! their tenant, as for `saved_queries`.

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
                    .table(PersistedOperations::Table)
                    .if_not_exists()
                    .col(uuid(PersistedOperations::Id).primary_key())
                    .col(uuid(PersistedOperations::TenantId))
                    .col(string_len(PersistedOperations::Name, 200))
                    // Lowercase hex of the document's SHA-256.
                    .col(string_len(PersistedOperations::Sha256Hash, 64))
                    .col(text(PersistedOperations::Document))
                    .col(uuid_null(PersistedOperations::CreatedBy))
                    // Who registered it as the audit trail names them (the
                    // user's email or `service:<name>`), kept when the user
                    // is deleted.
                    .col(string_len(PersistedOperations::Actor, 320))
                    .col(timestamp_with_time_zone(PersistedOperations::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_persisted_operations_tenant")
                            .from(PersistedOperations::Table, PersistedOperations::TenantId)
                            .to(Tenants::Table, Tenants::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_persisted_operations_created_by")
                            .from(PersistedOperations::Table, PersistedOperations::CreatedBy)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::SetNull),
                    )
                    .to_owned(),
            )
            .await?;
        // A document is registered once per tenant; the allow-list check
        // and hash-only requests look rows up by it.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_persisted_operations_hash")
                    .table(PersistedOperations::Table)
                    .col(PersistedOperations::TenantId)
                    .col(PersistedOperations::Sha256Hash)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // Listing pages through a tenant's rows by id.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_persisted_operations_tenant_id")
                    .table(PersistedOperations::Table)
                    .col(PersistedOperations::TenantId)
                    .col(PersistedOperations::Id)
                    .to_owned(),
            )
            .await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared(
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON persisted_operations TO pulse_app;
                     ALTER TABLE persisted_operations ENABLE ROW LEVEL SECURITY;
                     DROP POLICY IF EXISTS tenant_isolation ON persisted_operations;
                     CREATE POLICY tenant_isolation ON persisted_operations
                       USING (tenant_id = pulse_current_tenant())
                       WITH CHECK (tenant_id = pulse_current_tenant());",
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(PersistedOperations::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub enum PersistedOperations {
    Table,
    Id,
    TenantId,
    Name,
    Sha256Hash,
    Document,
    CreatedBy,
    Actor,
    CreatedAt,
}
