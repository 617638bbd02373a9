//! `dashboards`: a tenant's dashboards, widgets and variables included.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "dashboards")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub owner_id: Option<Uuid>,
    pub name: String,
    pub description: Option<String>,
    /// `["growth", "email"]`.
    pub tags: Json,
    /// Grid positions, as the client keeps them.
    pub layout: Json,
    /// `[{id, title, kind, query | funnel | retention | savedQueryId,
    /// parameters, options}]`.
    pub widgets: Json,
    /// `[{name, type, default, allowed}]`.
    pub variables: Json,
    /// `[FilterInput]`, applied to every metric widget.
    pub filters: Json,
    /// `{from, to}` or `{last}`: replaces every widget's range.
    pub default_range: Option<Json>,
    pub timezone: Option<String>,
    pub refresh_seconds: Option<i32>,
    pub is_public: bool,
    /// Bumped by every save; `updateDashboard` must name the current one.
    pub version: i32,
    pub published_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
