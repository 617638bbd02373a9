//! DataLoaders: one `IN (…)` query per batch instead of one per row. Keys
//! are [`InTenant`], so a batch is split by tenant and each part runs in
//! that tenant's scoped transaction (row-level security included); a key
//! never reaches another tenant's rows. Loaders live in the schema's data
//! without a cache, so they batch what resolves together and never serve
//! a stale row to a later request.

use std::collections::{BTreeMap, HashMap};

use async_graphql::dataloader::{DataLoader, Loader};
use sea_orm::sea_query::{Alias, Asterisk, Expr, ExprTrait, Order, Query, WindowStatement};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, FromQueryResult, QueryFilter,
};
use uuid::Uuid;

use crate::auth::{InTenant, Role, TenantCtx};
use crate::db::scoped;
use crate::domain::page::Page;
use crate::entities::{dashboard_permission, dashboard_version, saved_query, user};

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
        policy: Default::default(),
    }
}

impl Loader<InTenant<Uuid>> for UserLoader {
    type Value = user::Model;
    type Error = async_graphql::Error;

    async fn load(
        &self,
        keys: &[InTenant<Uuid>],
    ) -> Result<HashMap<InTenant<Uuid>, user::Model>, Self::Error> {
        rows_by_id::<user::Entity>(
            &self.db,
            keys,
            user::Column::TenantId,
            user::Column::Id,
            |row| row.id,
        )
        .await
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
        let mut found: HashMap<InTenant<Uuid>, Self::Value> =
            keys.iter().map(|k| (*k, Vec::new())).collect();
        for (tenant, ids) in by_tenant(keys) {
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

/// Saved queries by id, e.g. those the widgets of a dashboard reference.
/// Rows are read without the caller's visibility rule (a batch may serve
/// several callers of one tenant); the resolver applies it to each row
/// ([`crate::domain::saved_queries::is_visible_to`]).
pub struct SavedQueryLoader {
    db: DatabaseConnection,
}

impl SavedQueryLoader {
    pub fn new(db: DatabaseConnection) -> DataLoader<SavedQueryLoader> {
        DataLoader::new(SavedQueryLoader { db }, tokio::spawn)
    }
}

impl Loader<InTenant<Uuid>> for SavedQueryLoader {
    type Value = saved_query::Model;
    type Error = async_graphql::Error;

    async fn load(
        &self,
        keys: &[InTenant<Uuid>],
    ) -> Result<HashMap<InTenant<Uuid>, Self::Value>, Self::Error> {
        rows_by_id::<saved_query::Entity>(
            &self.db,
            keys,
            saved_query::Column::TenantId,
            saved_query::Column::Id,
            |row| row.id,
        )
        .await
    }
}

/// The first page of a dashboard's kept versions, newest first: the key is
/// the dashboard and the page size (`first`); the loader fetches `first + 1`
/// per dashboard, so the page knows whether more follow. One statement per
/// tenant and page size, whatever the number of dashboards listed; later
/// pages (`after`) are a single dashboard's and read directly.
pub struct VersionLoader {
    db: DatabaseConnection,
}

impl VersionLoader {
    pub fn new(db: DatabaseConnection) -> DataLoader<VersionLoader> {
        DataLoader::new(VersionLoader { db }, tokio::spawn)
    }
}

impl Loader<InTenant<(Uuid, u64)>> for VersionLoader {
    type Value = Page<dashboard_version::Model>;
    type Error = async_graphql::Error;

    async fn load(
        &self,
        keys: &[InTenant<(Uuid, u64)>],
    ) -> Result<HashMap<InTenant<(Uuid, u64)>, Self::Value>, Self::Error> {
        let mut groups: BTreeMap<(Uuid, u64), Vec<Uuid>> = BTreeMap::new();
        for k in keys {
            groups.entry((k.tenant, k.key.1)).or_default().push(k.key.0);
        }
        let mut found = HashMap::new();
        for ((tenant, first), ids) in groups {
            let rows = scoped(&self.db, &reader_of(tenant), move |txn| {
                Box::pin(async move {
                    use dashboard_version::Column as V;
                    let rank = Alias::new("rank");
                    let numbered = Query::select()
                        .column(Asterisk)
                        .expr_window_as(
                            Expr::cust("ROW_NUMBER()"),
                            WindowStatement::partition_by(V::DashboardId)
                                .order_by(V::Id, Order::Desc)
                                .to_owned(),
                            rank.clone(),
                        )
                        .from(dashboard_version::Entity)
                        .and_where(V::TenantId.eq(tenant))
                        .and_where(V::DashboardId.is_in(ids))
                        .to_owned();
                    let page = Query::select()
                        .column(Asterisk)
                        .from_subquery(numbered, Alias::new("numbered"))
                        .and_where(Expr::col(rank).lte(first + 1))
                        .order_by(V::Id, Order::Desc)
                        .to_owned();
                    let backend = txn.get_database_backend();
                    Ok(
                        dashboard_version::Model::find_by_statement(backend.build(&page))
                            .all(txn)
                            .await?,
                    )
                })
            })
            .await?;
            let mut by_dashboard: HashMap<Uuid, Vec<dashboard_version::Model>> = HashMap::new();
            for row in rows {
                by_dashboard.entry(row.dashboard_id).or_default().push(row);
            }
            for (dashboard, rows) in by_dashboard {
                found.insert(
                    InTenant {
                        tenant,
                        key: (dashboard, first),
                    },
                    Page::from_overfetch(rows, first),
                );
            }
        }
        Ok(found)
    }
}

/// Keys grouped by tenant.
fn by_tenant(keys: &[InTenant<Uuid>]) -> BTreeMap<Uuid, Vec<Uuid>> {
    let mut groups: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
    for k in keys {
        groups.entry(k.tenant).or_default().push(k.key);
    }
    groups
}

/// Rows of `E` by id, one `IN (…)` statement per tenant of the batch, each
/// in that tenant's scoped transaction.
async fn rows_by_id<E>(
    db: &DatabaseConnection,
    keys: &[InTenant<Uuid>],
    tenant_column: E::Column,
    id_column: E::Column,
    id_of: fn(&E::Model) -> Uuid,
) -> Result<HashMap<InTenant<Uuid>, E::Model>, async_graphql::Error>
where
    E: EntityTrait,
    E::Model: Send + Sync + 'static,
    E::Column: Send + 'static,
{
    let mut found = HashMap::new();
    for (tenant, ids) in by_tenant(keys) {
        let rows = scoped(db, &reader_of(tenant), move |txn| {
            Box::pin(async move {
                Ok(E::find()
                    .filter(tenant_column.eq(tenant))
                    .filter(id_column.is_in(ids))
                    .all(txn)
                    .await?)
            })
        })
        .await?;
        for row in rows {
            found.insert(
                InTenant {
                    tenant,
                    key: id_of(&row),
                },
                row,
            );
        }
    }
    Ok(found)
}
