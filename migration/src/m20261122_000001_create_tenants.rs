//! `tenants`: the one global table. Every other table hangs off a tenant.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Tenants::Table)
                    .if_not_exists()
                    .col(uuid(Tenants::Id).primary_key())
                    .col(string_len_uniq(Tenants::Slug, 64))
                    .col(string_len(Tenants::Name, 200))
                    .col(string_len_null(Tenants::Domain, 253).unique_key())
                    .col(string_len(Tenants::Status, 16))
                    .col(string_len(Tenants::Plan, 32).default("trial"))
                    .col(integer(Tenants::MaxUsers).default(10))
                    .col(json_binary(Tenants::Settings))
                    .col(json_binary(Tenants::Features))
                    .col(timestamp_with_time_zone(Tenants::CreatedAt))
                    .col(timestamp_with_time_zone(Tenants::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_tenants_status")
                    .table(Tenants::Table)
                    .col(Tenants::Status)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Tenants::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub enum Tenants {
    Table,
    Id,
    Slug,
    Name,
    Domain,
    Status,
    Plan,
    MaxUsers,
    Settings,
    Features,
    CreatedAt,
    UpdatedAt,
}
