//! `audit_log`: who did what to which resource, with before/after images.
//! Rows are only ever inserted.

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
                    .table(AuditLog::Table)
                    .if_not_exists()
                    .col(uuid(AuditLog::Id).primary_key())
                    .col(uuid(AuditLog::TenantId))
                    .col(uuid_null(AuditLog::ActorUserId))
                    // Kept beside the id so the trail stays readable after
                    // the user is gone.
                    .col(string_len(AuditLog::Actor, 320))
                    .col(string_len(AuditLog::Action, 100))
                    .col(string_len(AuditLog::ResourceType, 50))
                    .col(string_len_null(AuditLog::ResourceId, 100))
                    .col(json_binary_null(AuditLog::Before))
                    .col(json_binary_null(AuditLog::After))
                    .col(string_len_null(AuditLog::Ip, 45))
                    .col(string_len_null(AuditLog::UserAgent, 512))
                    .col(string_len_null(AuditLog::RequestId, 64))
                    .col(timestamp_with_time_zone(AuditLog::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_audit_log_tenant")
                            .from(AuditLog::Table, AuditLog::TenantId)
                            .to(Tenants::Table, Tenants::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_audit_log_actor")
                            .from(AuditLog::Table, AuditLog::ActorUserId)
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
                    .name("idx_audit_log_tenant_id")
                    .table(AuditLog::Table)
                    .col(AuditLog::TenantId)
                    .col(AuditLog::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_audit_log_tenant_resource")
                    .table(AuditLog::Table)
                    .col(AuditLog::TenantId)
                    .col(AuditLog::ResourceType)
                    .col(AuditLog::ResourceId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(AuditLog::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub enum AuditLog {
    Table,
    Id,
    TenantId,
    ActorUserId,
    Actor,
    Action,
    ResourceType,
    ResourceId,
    Before,
    After,
    Ip,
    UserAgent,
    RequestId,
    CreatedAt,
}
