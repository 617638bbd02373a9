//! `persisted_operations`: GraphQL documents a tenant's admins registered,
//! by SHA-256 (the operation allow-list).

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "persisted_operations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    /// Lowercase hex of the document's SHA-256, computed by Pulse.
    pub sha256_hash: String,
    pub document: String,
    /// `None` for a service token, or once the user is deleted.
    pub created_by: Option<Uuid>,
    /// Who registered it: the user's email or `service:<name>`.
    pub actor: String,
    pub created_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
