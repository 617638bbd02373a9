//! Registered operations: the GraphQL documents a tenant's ADMINs list by
//! name, and the allow-list check built on them.
//!
//! A registered operation is a document and its SHA-256 (computed here,
//! never taken from the client), once per tenant. Clients may run it by
//! hash alone, like an automatic persisted query. When the tenant's policy
//! has `allow_list` on, a caller below ADMIN may run only documents whose
//! hash is registered; ADMINs and up are exempt, so that they can manage
//! the list and explore in GraphiQL.
//!
//! The check runs on every request of such a caller, so each instance
//! keeps a tenant's set of hashes ([`OperationSets`]), tagged with the
//! tenant's *stamp* as read before loading it (see
//! `cache::persisted`). Registering or deleting gives the tenant a new
//! stamp after its commit, so the next request on any instance that reads
//! the stamp (all of them, through Redis; this one, without) reloads the
//! set. A cached set lives at most [`SET_TTL`]: the bound on staleness when
//! the new stamp could not be written or read.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::audit::{self, Actor, Change};
use super::page::{Page, PageRequest};
use crate::auth::{RequestMeta, Role, TenantCtx};
use crate::cache::persisted::PersistedQueries;
use crate::db::{scoped, scoped_write};
use crate::entities::persisted_operation;
use crate::error::{AppError, AppResult};

/// Most operations one tenant may register.
pub const MAX_OPERATIONS: u64 = 2_000;
/// Largest document that may be registered.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// Longest a cached set of hashes is trusted without a matching stamp.
pub const SET_TTL: Duration = Duration::from_secs(60);

/// Lowercase hex of the SHA-256 of `text`: what Apollo's persisted-query
/// protocol names a document by.
pub fn digest(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `hash` looks like a [`digest`] (64 hex digits).
pub fn is_digest(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether the allow-list applies to `ctx`'s requests.
pub fn is_restricted(ctx: &TenantCtx) -> bool {
    ctx.policy.allow_list && !ctx.role.at_least(Role::Admin)
}

fn require_admin(ctx: &TenantCtx) -> AppResult<()> {
    if ctx.role.at_least(Role::Admin) {
        Ok(())
    } else {
        Err(AppError::Forbidden("requires role ADMIN or higher".into()))
    }
}

pub fn audit_image(m: &persisted_operation::Model) -> Value {
    json!({
        "id": m.id,
        "name": m.name,
        "sha256Hash": m.sha256_hash,
        "document": m.document,
    })
}

/// Registers `document` under `name`; the caller has checked that it
/// parses. Registering a document the tenant already has returns that
/// operation unchanged (so a deploy script may register its whole list
/// every time).
pub async fn register(
    db: &DatabaseConnection,
    store: &PersistedQueries,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    name: &str,
    document: String,
) -> AppResult<persisted_operation::Model> {
    require_admin(ctx)?;
    let name = name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(AppError::bad_input("name", "must be 1 to 200 characters"));
    }
    if document.trim().is_empty() {
        return Err(AppError::bad_input("document", "must not be empty"));
    }
    if document.len() > MAX_DOCUMENT_BYTES {
        return Err(AppError::bad_input(
            "document",
            format!("at most {MAX_DOCUMENT_BYTES} bytes"),
        ));
    }
    let hash = digest(&document);
    let (caller, meta) = (ctx.clone(), meta.clone());
    let (model, created) = scoped_write(db, ctx, move |txn| {
        Box::pin(async move {
            let existing = persisted_operation::Entity::find()
                .filter(persisted_operation::Column::TenantId.eq(caller.tenant_id))
                .filter(persisted_operation::Column::Sha256Hash.eq(hash.as_str()))
                .one(txn)
                .await?;
            if let Some(existing) = existing {
                return Ok((existing, false));
            }
            let count = persisted_operation::Entity::find()
                .filter(persisted_operation::Column::TenantId.eq(caller.tenant_id))
                .count(txn)
                .await?;
            if count >= MAX_OPERATIONS {
                return Err(AppError::QuotaExceeded(format!(
                    "a tenant may register at most {MAX_OPERATIONS} operations; delete unused ones first"
                )));
            }
            let created = persisted_operation::Entity::insert(persisted_operation::ActiveModel {
                id: Set(Uuid::now_v7()),
                tenant_id: Set(caller.tenant_id),
                name: Set(name),
                sha256_hash: Set(hash),
                document: Set(document),
                created_by: Set(caller.user_id),
                actor: Set(caller.actor.clone()),
                created_at: Set(Utc::now()),
            })
            .exec_with_returning(txn)
            .await?;
            record(
                txn,
                &caller,
                &meta,
                "persisted_operation.register",
                None,
                Some(&created),
            )
            .await?;
            Ok((created, true))
        })
    })
    .await?;
    if created {
        // After the commit: a reader that sees the new stamp loads a set
        // that includes the row.
        store.restamp(ctx.tenant_id).await;
    }
    Ok(model)
}

/// The tenant's registered operations, oldest first.
pub async fn list(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    page: PageRequest,
) -> AppResult<Page<persisted_operation::Model>> {
    require_admin(ctx)?;
    let tenant_id = ctx.tenant_id;
    let rows = scoped(db, ctx, move |txn| {
        Box::pin(async move {
            let mut query = persisted_operation::Entity::find()
                .filter(persisted_operation::Column::TenantId.eq(tenant_id))
                .order_by_asc(persisted_operation::Column::Id)
                .limit(page.first + 1);
            if let Some(after) = page.after {
                query = query.filter(persisted_operation::Column::Id.gt(after));
            }
            Ok(query.all(txn).await?)
        })
    })
    .await?;
    Ok(Page::from_overfetch(rows, page.first))
}

/// Deletes a registered operation; false when there was none with `id`.
pub async fn delete(
    db: &DatabaseConnection,
    store: &PersistedQueries,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    id: Uuid,
) -> AppResult<bool> {
    require_admin(ctx)?;
    let (caller, meta) = (ctx.clone(), meta.clone());
    let deleted = scoped_write(db, ctx, move |txn| {
        Box::pin(async move {
            let Some(current) = persisted_operation::Entity::find_by_id(id)
                .filter(persisted_operation::Column::TenantId.eq(caller.tenant_id))
                .one(txn)
                .await?
            else {
                return Ok(false);
            };
            persisted_operation::Entity::delete_by_id(current.id)
                .filter(persisted_operation::Column::TenantId.eq(caller.tenant_id))
                .exec(txn)
                .await?;
            record(
                txn,
                &caller,
                &meta,
                "persisted_operation.delete",
                Some(&current),
                None,
            )
            .await?;
            Ok(true)
        })
    })
    .await?;
    if deleted {
        store.restamp(ctx.tenant_id).await;
    }
    Ok(deleted)
}

/// The document registered under `hash`, if any.
async fn document(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    hash: &str,
) -> AppResult<Option<String>> {
    let (tenant_id, hash) = (ctx.tenant_id, hash.to_owned());
    scoped(db, ctx, move |txn| {
        Box::pin(async move {
            Ok(persisted_operation::Entity::find()
                .select_only()
                .column(persisted_operation::Column::Document)
                .filter(persisted_operation::Column::TenantId.eq(tenant_id))
                .filter(persisted_operation::Column::Sha256Hash.eq(hash))
                .into_tuple::<String>()
                .one(txn)
                .await?)
        })
    })
    .await
}

/// Every hash the tenant has registered.
async fn hashes(db: &DatabaseConnection, ctx: &TenantCtx) -> AppResult<HashSet<String>> {
    let tenant_id = ctx.tenant_id;
    let rows = scoped(db, ctx, move |txn| {
        Box::pin(async move {
            Ok(persisted_operation::Entity::find()
                .select_only()
                .column(persisted_operation::Column::Sha256Hash)
                .filter(persisted_operation::Column::TenantId.eq(tenant_id))
                .into_tuple::<String>()
                .all(txn)
                .await?)
        })
    })
    .await?;
    Ok(rows.into_iter().collect())
}

/// A tenant's registered hashes as one instance last loaded them.
struct Listed {
    /// The stamp read before loading; `None` when it could not be read.
    stamp: Option<String>,
    hashes: HashSet<String>,
}

/// Each tenant's registered hashes, cached per instance (see the module
/// doc). Bounded by the number of hashes held.
#[derive(Clone)]
pub struct OperationSets {
    sets: moka::sync::Cache<Uuid, Arc<Listed>>,
}

impl Default for OperationSets {
    fn default() -> Self {
        OperationSets {
            sets: moka::sync::Cache::builder()
                .weigher(|_: &Uuid, l: &Arc<Listed>| {
                    u32::try_from(l.hashes.len() + 1).unwrap_or(u32::MAX)
                })
                .max_capacity(1_000_000)
                .time_to_live(SET_TTL)
                .build(),
        }
    }
}

impl OperationSets {
    /// Whether `hash` is registered for `ctx`'s tenant.
    pub async fn contains(
        &self,
        db: &DatabaseConnection,
        store: &PersistedQueries,
        ctx: &TenantCtx,
        hash: &str,
    ) -> AppResult<bool> {
        let stamp = store.stamp(ctx.tenant_id).await;
        if let Some(listed) = self.sets.get(&ctx.tenant_id) {
            // Unreadable stamp: trust what was loaded, for at most SET_TTL.
            let current = stamp.is_none() || listed.stamp == stamp;
            if current {
                return Ok(listed.hashes.contains(hash));
            }
        }
        let listed = Arc::new(Listed {
            hashes: hashes(db, ctx).await?,
            stamp,
        });
        let found = listed.hashes.contains(hash);
        self.sets.insert(ctx.tenant_id, listed);
        Ok(found)
    }

    /// The registered document named by `hash`, if the tenant has one.
    pub async fn document(
        &self,
        db: &DatabaseConnection,
        store: &PersistedQueries,
        ctx: &TenantCtx,
        hash: &str,
    ) -> AppResult<Option<String>> {
        // The set answers "no" without a query, so probing random hashes
        // costs no database work.
        if !self.contains(db, store, ctx, hash).await? {
            return Ok(None);
        }
        document(db, ctx, hash).await
    }
}

async fn record(
    txn: &sea_orm::DatabaseTransaction,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    action: &'static str,
    before: Option<&persisted_operation::Model>,
    after: Option<&persisted_operation::Model>,
) -> AppResult<()> {
    let id = after.or(before).map(|m| m.id.to_string());
    audit::record(
        txn,
        ctx.tenant_id,
        &Actor::of(ctx),
        meta,
        Change {
            action,
            resource_type: "persisted_operation",
            resource_id: id,
            before: before.map(audit_image),
            after: after.map(audit_image),
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_lowercase_sha256_hex() {
        // The SHA-256 of the empty string.
        assert_eq!(
            digest(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(is_digest(&digest("{ me { role } }")));
        assert!(!is_digest("abc"));
        assert!(!is_digest(&"g".repeat(64)));
    }
}
