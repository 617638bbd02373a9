//! `tenants`: the one table not scoped by tenant.

use sea_orm::entity::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum TenantStatus {
    #[sea_orm(string_value = "ACTIVE")]
    Active,
    #[sea_orm(string_value = "SUSPENDED")]
    Suspended,
    #[sea_orm(string_value = "TRIAL")]
    Trial,
    #[sea_orm(string_value = "CANCELLED")]
    Cancelled,
}

impl TenantStatus {
    /// Suspended and cancelled tenants are refused on every call.
    pub fn is_usable(self) -> bool {
        matches!(self, TenantStatus::Active | TenantStatus::Trial)
    }
}

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tenants")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique)]
    pub slug: String,
    pub name: String,
    pub domain: Option<String>,
    pub status: TenantStatus,
    pub plan: String,
    pub max_users: i32,
    pub settings: Json,
    /// Enabled feature flags, a JSON array of strings.
    pub features: Json,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
