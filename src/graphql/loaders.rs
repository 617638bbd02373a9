//! DataLoaders: one `IN (…)` query per batch instead of one per row. Keys
//! are [`InTenant`], so a batch is split by tenant and each part runs in
//! that tenant's scoped transaction (row-level security included); a key
//! never reaches another tenant's rows. Loaders live in the schema's data
//! without a cache, so they batch what resolves together and never serve
//! a stale row to a later request.

use std::collections::{BTreeMap, HashMap};

use async_graphql::dataloader::{DataLoader, Loader};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use uuid::Uuid;

use crate::auth::{InTenant, Role, TenantCtx};
use crate::db::scoped;
use crate::entities::{dashboard_permission, user};

/// Users by id, e.g. the owners of listed saved queries.
pub struct UserLoader {
    db: DatabaseConnection,
}

impl UserLoader {
    pub fn new(db: DatabaseConnection) -> DataLoader<UserLoader> {
        DataLoader::new(UserLoader { db }, tokio::spawn)
    }
}

/// The context a loader reads one tenant's rows with: only the tenant
/// matters to the scoped transaction, and the keys all came from callers
/// of that tenant.
fn reader_of(tenant: Uuid) -> TenantCtx {
    TenantCtx {
        tenant_id: tenant,
        tenant_slug: String::new(),
        user_id: None,
        actor: "loader".into(),
        role: Role::Viewer,
    }
}

impl Loader<InTenant<Uuid>> for UserLoader {
    type Value = user::Model;
    type Error = async_graphql::Error;

    async fn load(
        &self,
        keys: &[InTenant<Uuid>],
    ) -> Result<HashMap<InTenant<Uuid>, user::Model>, Self::Error> {
        let mut by_tenant: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
        for k in keys {
            by_tenant.entry(k.tenant).or_default().push(k.key);
        }
        let mut found = HashMap::new();
        for (tenant, ids) in by_tenant {
            let rows = scoped(&self.db, &reader_of(tenant), move |txn| {
                Box::pin(async move {
                    Ok(user::Entity::find()
                        .filter(user::Column::TenantId.eq(tenant))
                        .filter(user::Column::Id.is_in(ids))
                        .all(txn)
                        .await?)
                })
            })
            .await?;
            for row in rows {
                found.insert(
                    InTenant {
                        tenant,
                        key: row.id,
                    },
                    row,
                );
            }
        }
        Ok(found)
    }
}

/// The grants on each dashboard, e.g. `permissions` of listed dashboards.
pub struct GrantLoader {
    db: DatabaseConnection,
}

impl GrantLoader {
    pub fn new(db: DatabaseConnection) -> DataLoader<GrantLoader> {
        DataLoader::new(GrantLoader { db }, tokio::spawn)
    }
}

impl Loader<InTenant<Uuid>> for GrantLoader {
    type Value = Vec<dashboard_permission::Model>;
    type Error = async_graphql::Error;

    async fn load(
        &self,
        keys: &[InTenant<Uuid>],
    ) -> Result<HashMap<InTenant<Uuid>, Self::Value>, Self::Error> {
        let mut by_tenant: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
        for k in keys {
            by_tenant.entry(k.tenant).or_default().push(k.key);
        }
        let mut found: HashMap<InTenant<Uuid>, Self::Value> =
            keys.iter().map(|k| (*k, Vec::new())).collect();
        for (tenant, ids) in by_tenant {
            let rows = scoped(&self.db, &reader_of(tenant), move |txn| {
                Box::pin(async move {
                    Ok(dashboard_permission::Entity::find()
                        .filter(dashboard_permission::Column::TenantId.eq(tenant))
                        .filter(dashboard_permission::Column::DashboardId.is_in(ids))
                        .all(txn)
                        .await?)
                })
            })
            .await?;
            for row in rows {
                found
                    .entry(InTenant {
                        tenant,
                        key: row.dashboard_id,
                    })
                    .or_default()
                    .push(row);
            }
        }
        Ok(found)
    }
}
