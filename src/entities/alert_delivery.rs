//! `alert_deliveries`: a transition's notification to one webhook, and
//! how its attempts went.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "alert_deliveries")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub alert_id: Uuid,
    pub history_id: Uuid,
    pub webhook_id: Uuid,
    pub url: String,
    pub payload: Json,
    /// `PENDING`, `SENT`, `FAILED` or `SILENCED`.
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: DateTimeUtc,
    pub response_status: Option<i32>,
    pub last_error: Option<String>,
    pub sent_at: Option<DateTimeUtc>,
    pub lease_owner: Option<Uuid>,
    pub lease_until: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
