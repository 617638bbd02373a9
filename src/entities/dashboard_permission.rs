//! `dashboard_permissions`: grants on one dashboard to a user or a role.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "dashboard_permissions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub dashboard_id: Uuid,
    /// Exactly one of `user_id` and `role` is set.
    pub user_id: Option<Uuid>,
    pub role: Option<String>,
    /// `VIEW`, `EDIT`, `SHARE` or `ADMIN`.
    pub permission: String,
    pub granted_by: Option<Uuid>,
    pub granted_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
