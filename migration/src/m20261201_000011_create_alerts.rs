//! Alerts (seed 001: `alerts`, `alert_history`), their evaluation lease,
//! and the webhook deliveries each transition owes.
//!
//! - `alerts`: the definition (an inline metric query or a saved query
//!   with parameter values, a reducer, a condition, timings, webhooks) and
//!   the state machine's current state. The scheduler's lease lives on the
//!   row (`lease_owner`, `lease_until`): an instance evaluates an alert
//!   only while it holds an unexpired lease, and writes its result only if
//!   it still does.
//! - `alert_history`: every transition (time, from, to, value, threshold,
//!   error) and what became of its notification.
//! - `alert_deliveries`: one row per transition and webhook, written in the
//!   transition's transaction (so exactly once), claimed by one sender at a
//!   time, retried with backoff until sent or given up.
//!
//! All three are tenant tables under row-level security on PostgreSQL.

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
                    .table(Alerts::Table)
                    .if_not_exists()
                    .col(uuid(Alerts::Id).primary_key())
                    .col(uuid(Alerts::TenantId))
                    .col(uuid_null(Alerts::OwnerId))
                    .col(string_len(Alerts::Name, 200))
                    .col(text_null(Alerts::Description))
                    // Exactly one of an inline query (the GraphQL input as
                    // JSON) and a saved query (with `parameters`). No
                    // foreign key to `saved_queries`: like a widget's, a
                    // deleted saved query makes the alert fail (`ERROR`,
                    // which notifies) rather than blocking the deletion.
                    .col(json_null(Alerts::Query))
                    .col(uuid_null(Alerts::SavedQueryId))
                    .col(json_null(Alerts::Parameters))
                    .col(string_len(Alerts::Reducer, 16))
                    .col(string_len(Alerts::Condition, 24))
                    .col(double(Alerts::Threshold))
                    .col(big_integer(Alerts::EvaluateEverySecs))
                    .col(big_integer(Alerts::ForSecs))
                    .col(big_integer(Alerts::KeepFiringForSecs))
                    .col(string_len(Alerts::NoData, 16))
                    .col(boolean(Alerts::IsActive))
                    .col(json(Alerts::Labels))
                    // `[{id, url, headers, secret}]`; secrets never leave
                    // through the API.
                    .col(json(Alerts::Webhooks))
                    .col(uuid_null(Alerts::DashboardId))
                    .col(string_len(Alerts::State, 16))
                    .col(timestamp_with_time_zone(Alerts::StateSince))
                    .col(double_null(Alerts::LastValue))
                    .col(text_null(Alerts::LastError))
                    .col(timestamp_with_time_zone_null(Alerts::LastEvaluatedAt))
                    .col(timestamp_with_time_zone_null(Alerts::LastTriggeredAt))
                    .col(timestamp_with_time_zone(Alerts::NextEvaluationAt))
                    .col(uuid_null(Alerts::LeaseOwner))
                    .col(timestamp_with_time_zone_null(Alerts::LeaseUntil))
                    .col(timestamp_with_time_zone_null(Alerts::SilencedUntil))
                    .col(text_null(Alerts::SilenceReason))
                    .col(timestamp_with_time_zone(Alerts::CreatedAt))
                    .col(timestamp_with_time_zone(Alerts::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_alerts_tenant")
                            .from(Alerts::Table, Alerts::TenantId)
                            .to(Tenants::Table, Tenants::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_alerts_owner")
                            .from(Alerts::Table, Alerts::OwnerId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::SetNull),
                    )
                    .to_owned(),
            )
            .await?;
        // Listing a tenant's alerts by id.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_alerts_tenant_id")
                    .table(Alerts::Table)
                    .col(Alerts::TenantId)
                    .col(Alerts::Id)
                    .to_owned(),
            )
            .await?;
        // The scheduler's scan: alerts due, across tenants.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_alerts_next_evaluation")
                    .table(Alerts::Table)
                    .col(Alerts::NextEvaluationAt)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(AlertHistory::Table)
                    .if_not_exists()
                    .col(uuid(AlertHistory::Id).primary_key())
                    .col(uuid(AlertHistory::TenantId))
                    .col(uuid(AlertHistory::AlertId))
                    .col(timestamp_with_time_zone(AlertHistory::At))
                    .col(string_len(AlertHistory::FromState, 16))
                    .col(string_len(AlertHistory::ToState, 16))
                    .col(double_null(AlertHistory::Value))
                    .col(double(AlertHistory::Threshold))
                    .col(text_null(AlertHistory::Error))
                    // NONE, PENDING, SENT, FAILED or SILENCED.
                    .col(string_len(AlertHistory::Notification, 16))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_alert_history_alert")
                            .from(AlertHistory::Table, AlertHistory::AlertId)
                            .to(Alerts::Table, Alerts::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // An alert's history, newest first, by (UUIDv7) id.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_alert_history_alert_id")
                    .table(AlertHistory::Table)
                    .col(AlertHistory::AlertId)
                    .col(AlertHistory::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(AlertDeliveries::Table)
                    .if_not_exists()
                    .col(uuid(AlertDeliveries::Id).primary_key())
                    .col(uuid(AlertDeliveries::TenantId))
                    .col(uuid(AlertDeliveries::AlertId))
                    .col(uuid(AlertDeliveries::HistoryId))
                    .col(uuid(AlertDeliveries::WebhookId))
                    .col(text(AlertDeliveries::Url))
                    // The body as first built: every attempt sends the same.
                    .col(json(AlertDeliveries::Payload))
                    // PENDING, SENT, FAILED or SILENCED.
                    .col(string_len(AlertDeliveries::Status, 16))
                    .col(integer(AlertDeliveries::Attempts))
                    .col(timestamp_with_time_zone(AlertDeliveries::NextAttemptAt))
                    .col(integer_null(AlertDeliveries::ResponseStatus))
                    .col(text_null(AlertDeliveries::LastError))
                    .col(timestamp_with_time_zone_null(AlertDeliveries::SentAt))
                    .col(uuid_null(AlertDeliveries::LeaseOwner))
                    .col(timestamp_with_time_zone_null(AlertDeliveries::LeaseUntil))
                    .col(timestamp_with_time_zone(AlertDeliveries::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_alert_deliveries_history")
                            .from(AlertDeliveries::Table, AlertDeliveries::HistoryId)
                            .to(AlertHistory::Table, AlertHistory::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // The sender's scan: deliveries due, across tenants.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_alert_deliveries_due")
                    .table(AlertDeliveries::Table)
                    .col(AlertDeliveries::Status)
                    .col(AlertDeliveries::NextAttemptAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_alert_deliveries_history")
                    .table(AlertDeliveries::Table)
                    .col(AlertDeliveries::HistoryId)
                    .to_owned(),
            )
            .await?;

        if manager.get_database_backend() == DbBackend::Postgres {
            for table in ["alerts", "alert_history", "alert_deliveries"] {
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
            AlertDeliveries::Table.into_iden(),
            AlertHistory::Table.into_iden(),
            Alerts::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
pub enum Alerts {
    Table,
    Id,
    TenantId,
    OwnerId,
    Name,
    Description,
    Query,
    SavedQueryId,
    Parameters,
    Reducer,
    Condition,
    Threshold,
    EvaluateEverySecs,
    ForSecs,
    KeepFiringForSecs,
    NoData,
    IsActive,
    Labels,
    Webhooks,
    DashboardId,
    State,
    StateSince,
    LastValue,
    LastError,
    LastEvaluatedAt,
    LastTriggeredAt,
    NextEvaluationAt,
    LeaseOwner,
    LeaseUntil,
    SilencedUntil,
    SilenceReason,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
pub enum AlertHistory {
    Table,
    Id,
    TenantId,
    AlertId,
    At,
    FromState,
    ToState,
    Value,
    Threshold,
    Error,
    Notification,
}

#[derive(DeriveIden)]
pub enum AlertDeliveries {
    Table,
    Id,
    TenantId,
    AlertId,
    HistoryId,
    WebhookId,
    Url,
    Payload,
    Status,
    Attempts,
    NextAttemptAt,
    ResponseStatus,
    LastError,
    SentAt,
    LeaseOwner,
    LeaseUntil,
    CreatedAt,
}
