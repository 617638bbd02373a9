//! `alert_history`: one row per state transition of an alert.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "alert_history")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub alert_id: Uuid,
    pub at: DateTimeUtc,
    pub from_state: String,
    pub to_state: String,
    pub value: Option<f64>,
    pub threshold: f64,
    pub error: Option<String>,
    /// `NONE`, `PENDING`, `SENT`, `FAILED` or `SILENCED`.
    pub notification: String,
}

impl ActiveModelBehavior for ActiveModel {}
