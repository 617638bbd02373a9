//! `saved_queries`: a tenant's named, parameterised analytic queries.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "saved_queries")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// `None` once the owner is deleted, or for a service token's query.
    pub owner_id: Option<Uuid>,
    pub name: String,
    pub description: Option<String>,
    /// `METRIC`, `FORMULA`, `FUNNEL` or `RETENTION`.
    pub kind: String,
    /// The GraphQL input of its kind, as JSON, with `"$name"` placeholders.
    pub definition: Json,
    /// `[{"name", "type", "default"}]`.
    pub parameters: Json,
    pub is_public: bool,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
