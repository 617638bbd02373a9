//! `dashboard_versions`: what a dashboard looked like at each version.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "dashboard_versions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub dashboard_id: Uuid,
    pub version: i32,
    /// The dashboard's editable fields at that version.
    pub snapshot: Json,
    pub created_by: Option<Uuid>,
    pub actor: String,
    pub created_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
