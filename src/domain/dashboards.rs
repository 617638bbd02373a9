//! Dashboards: who may see and change which, optimistic concurrency with
//! kept versions, grants, publishing and duplication. Widgets, variables
//! and filters are stored with the dashboard as JSON (the GraphQL layer
//! shapes them and resolves each widget's data).
//!
//! Access: the tenant's `ADMIN`s and the owner have every permission; a
//! grant (to a user, or to a role and the roles above it) gives `VIEW`,
//! `EDIT`, `SHARE` or `ADMIN`; `isPublic` gives every member `VIEW`. The
//! caller's role still bounds a grant: a `VIEWER` only ever views. Without
//! `VIEW`, a dashboard is `None`, exactly like one that does not exist.

use chrono::Utc;
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, DatabaseConnection,
    DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde_json::{Value, json};
use uuid::Uuid;

use super::audit::{self, Actor, Change};
use super::page::{Page, PageRequest};
use crate::auth::{RequestMeta, Role, TenantCtx};
use crate::db::{scoped, scoped_write};
use crate::entities::{dashboard, dashboard_permission, dashboard_version, share_link, user};
use crate::error::{AppError, AppResult};

/// What a grant allows, from least to most.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    View,
    Edit,
    Share,
    Admin,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::View => "VIEW",
            Permission::Edit => "EDIT",
            Permission::Share => "SHARE",
            Permission::Admin => "ADMIN",
        }
    }

    pub fn parse(raw: &str) -> Option<Permission> {
        [
            Permission::View,
            Permission::Edit,
            Permission::Share,
            Permission::Admin,
        ]
        .into_iter()
        .find(|p| p.as_str() == raw)
    }
}

/// The editable part of a dashboard, as clients send it.
#[derive(Clone, Debug)]
pub struct DashboardInput {
    pub name: String,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub is_public: bool,
    pub layout: Value,
    pub widgets: Value,
    pub variables: Value,
    pub filters: Value,
    pub default_range: Option<Value>,
    pub timezone: Option<String>,
    pub refresh_seconds: Option<i32>,
}

pub const MAX_WIDGETS: usize = 50;
pub const MAX_TAGS: usize = 20;
const MAX_JSON_BYTES: usize = 256 * 1024;

/// A dashboard and what the caller may do with it.
#[derive(Clone, Debug)]
pub struct Dashboard {
    pub model: dashboard::Model,
    pub access: Permission,
}

/// The caller's permission on `model`, given the dashboard's grants.
pub fn access(
    ctx: &TenantCtx,
    model: &dashboard::Model,
    grants: &[dashboard_permission::Model],
) -> Option<Permission> {
    if model.tenant_id != ctx.tenant_id {
        return None;
    }
    let full = ctx.role.at_least(Role::Admin)
        || (model.owner_id.is_some() && model.owner_id == ctx.user_id);
    let granted = grants
        .iter()
        .filter(|g| g.dashboard_id == model.id && applies(ctx, g))
        .filter_map(|g| Permission::parse(&g.permission))
        .max();
    let public = model.is_public.then_some(Permission::View);
    let best = if full {
        Some(Permission::Admin)
    } else {
        granted.max(public)
    };
    // The role bounds every grant: a VIEWER only ever views.
    best.map(|p| {
        if ctx.role.at_least(Role::Editor) {
            p
        } else {
            Permission::View
        }
    })
}

/// Whether a grant is the caller's: to them, or to a role they hold (or
/// one below it).
fn applies(ctx: &TenantCtx, g: &dashboard_permission::Model) -> bool {
    match (&g.user_id, &g.role) {
        (Some(user), _) => Some(*user) == ctx.user_id,
        (None, Some(role)) => role.parse::<Role>().is_ok_and(|r| ctx.role.at_least(r)),
        _ => false,
    }
}

/// The roles a grant may name for the caller to be covered by it.
fn roles_up_to(role: Role) -> Vec<&'static str> {
    [Role::Viewer, Role::Editor, Role::Admin, Role::SuperAdmin]
        .into_iter()
        .filter(|r| role.at_least(*r))
        .map(Role::as_str)
        .collect()
}

/// Dashboards the caller may view, as a condition on `dashboards`.
fn visible(ctx: &TenantCtx) -> Condition {
    let base = Condition::all().add(dashboard::Column::TenantId.eq(ctx.tenant_id));
    if ctx.role.at_least(Role::Admin) {
        return base;
    }
    let mut grantees =
        Condition::any().add(dashboard_permission::Column::Role.is_in(roles_up_to(ctx.role)));
    let mut who = Condition::any().add(dashboard::Column::IsPublic.eq(true));
    if let Some(me) = ctx.user_id {
        who = who.add(dashboard::Column::OwnerId.eq(me));
        grantees = grantees.add(dashboard_permission::Column::UserId.eq(me));
    }
    let granted = Query::select()
        .column(dashboard_permission::Column::DashboardId)
        .from(dashboard_permission::Entity)
        .cond_where(
            Condition::all()
                .add(dashboard_permission::Column::TenantId.eq(ctx.tenant_id))
                .add(grantees),
        )
        .to_owned();
    base.add(who.add(Expr::col((dashboard::Entity, dashboard::Column::Id)).in_subquery(granted)))
}

async fn grants_of(
    txn: &DatabaseTransaction,
    tenant: Uuid,
    dashboards: Vec<Uuid>,
) -> AppResult<Vec<dashboard_permission::Model>> {
    Ok(dashboard_permission::Entity::find()
        .filter(dashboard_permission::Column::TenantId.eq(tenant))
        .filter(dashboard_permission::Column::DashboardId.is_in(dashboards))
        .all(txn)
        .await?)
}

pub async fn list(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    page: PageRequest,
) -> AppResult<Page<Dashboard>> {
    let (condition, caller) = (visible(ctx), ctx.clone());
    scoped(db, ctx, move |txn| {
        Box::pin(async move {
            let mut query = dashboard::Entity::find()
                .filter(condition)
                .order_by_asc(dashboard::Column::Id)
                .limit(page.first + 1);
            if let Some(after) = page.after {
                query = query.filter(dashboard::Column::Id.gt(after));
            }
            let rows = query.all(txn).await?;
            let grants =
                grants_of(txn, caller.tenant_id, rows.iter().map(|d| d.id).collect()).await?;
            let page = Page::from_overfetch(rows, page.first);
            Ok(Page {
                items: page
                    .items
                    .into_iter()
                    .filter_map(|model| {
                        access(&caller, &model, &grants).map(|access| Dashboard { model, access })
                    })
                    .collect(),
                has_next: page.has_next,
            })
        })
    })
    .await
}

async fn load(
    txn: &DatabaseTransaction,
    ctx: &TenantCtx,
    id: Uuid,
) -> AppResult<Option<Dashboard>> {
    let Some(model) = dashboard::Entity::find_by_id(id)
        .filter(dashboard::Column::TenantId.eq(ctx.tenant_id))
        .one(txn)
        .await?
    else {
        return Ok(None);
    };
    let grants = grants_of(txn, ctx.tenant_id, vec![id]).await?;
    Ok(access(ctx, &model, &grants).map(|access| Dashboard { model, access }))
}

/// A dashboard the caller may view; `None` otherwise.
pub async fn find(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    id: Uuid,
) -> AppResult<Option<Dashboard>> {
    let caller = ctx.clone();
    scoped(db, ctx, move |txn| {
        Box::pin(async move { load(txn, &caller, id).await })
    })
    .await
}

/// Loads `id` for a change that needs `needed`: absent and invisible are
/// NOT_FOUND (indistinguishable), visible without the permission FORBIDDEN.
async fn load_for(
    txn: &DatabaseTransaction,
    ctx: &TenantCtx,
    id: Uuid,
    needed: Permission,
) -> AppResult<Dashboard> {
    let found = load(txn, ctx, id)
        .await?
        .ok_or(AppError::NotFound("dashboard"))?;
    if found.access < needed {
        return Err(AppError::Forbidden(format!(
            "needs {} permission on this dashboard",
            needed.as_str()
        )));
    }
    Ok(found)
}

fn validate(input: &DashboardInput) -> AppResult<()> {
    let name = input.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(AppError::bad_input(
            "input.name",
            "must be 1 to 200 characters",
        ));
    }
    if input
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 2_000)
    {
        return Err(AppError::bad_input(
            "input.description",
            "at most 2000 characters",
        ));
    }
    if input.tags.len() > MAX_TAGS {
        return Err(AppError::bad_input(
            "input.tags",
            format!("at most {MAX_TAGS} tags"),
        ));
    }
    for (i, tag) in input.tags.iter().enumerate() {
        if tag.trim().is_empty() || tag.chars().count() > 50 {
            return Err(AppError::bad_input(
                format!("input.tags[{i}]"),
                "1 to 50 characters",
            ));
        }
    }
    if input
        .widgets
        .as_array()
        .is_none_or(|w| w.len() > MAX_WIDGETS)
    {
        return Err(AppError::bad_input(
            "input.widgets",
            format!("at most {MAX_WIDGETS} widgets"),
        ));
    }
    if !(input.layout.is_object() || input.layout.is_array() || Value::is_null(&input.layout)) {
        return Err(AppError::bad_input(
            "input.layout",
            "a JSON object or array",
        ));
    }
    if let Some(seconds) = input.refresh_seconds
        && !(5..=86_400).contains(&seconds)
    {
        return Err(AppError::bad_input(
            "input.refreshInterval",
            "between 5 seconds and a day",
        ));
    }
    let size = input.layout.to_string().len()
        + input.widgets.to_string().len()
        + input.variables.to_string().len()
        + input.filters.to_string().len();
    if size > MAX_JSON_BYTES {
        return Err(AppError::bad_input(
            "input",
            format!("layout, widgets, variables and filters exceed {MAX_JSON_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// The editable state a version keeps.
fn snapshot(m: &dashboard::Model) -> Value {
    json!({
        "name": m.name,
        "description": m.description,
        "tags": m.tags,
        "isPublic": m.is_public,
        "layout": m.layout,
        "widgets": m.widgets,
        "variables": m.variables,
        "filters": m.filters,
        "defaultRange": m.default_range,
        "timezone": m.timezone,
        "refreshSeconds": m.refresh_seconds,
    })
}

fn apply(active: &mut dashboard::ActiveModel, input: DashboardInput) {
    active.name = Set(input.name.trim().to_owned());
    active.description = Set(input.description.filter(|d| !d.trim().is_empty()));
    active.tags = Set(json!(input.tags));
    active.is_public = Set(input.is_public);
    active.layout = Set(input.layout);
    active.widgets = Set(input.widgets);
    active.variables = Set(input.variables);
    active.filters = Set(input.filters);
    active.default_range = Set(input.default_range);
    active.timezone = Set(input.timezone);
    active.refresh_seconds = Set(input.refresh_seconds);
}

/// A kept version's state back as input (for restoring).
fn from_snapshot(s: &Value) -> DashboardInput {
    let text = |k: &str| s.get(k).and_then(Value::as_str).map(str::to_owned);
    DashboardInput {
        name: text("name").unwrap_or_default(),
        description: text("description"),
        tags: s
            .get("tags")
            .and_then(Value::as_array)
            .map(|t| {
                t.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        is_public: s.get("isPublic").and_then(Value::as_bool).unwrap_or(false),
        layout: s.get("layout").cloned().unwrap_or(Value::Null),
        widgets: s.get("widgets").cloned().unwrap_or_else(|| json!([])),
        variables: s.get("variables").cloned().unwrap_or_else(|| json!([])),
        filters: s.get("filters").cloned().unwrap_or_else(|| json!([])),
        default_range: s.get("defaultRange").cloned().filter(|v| !v.is_null()),
        timezone: text("timezone"),
        refresh_seconds: s
            .get("refreshSeconds")
            .and_then(Value::as_i64)
            .and_then(|n| i32::try_from(n).ok()),
    }
}

async fn keep_version(
    txn: &DatabaseTransaction,
    ctx: &TenantCtx,
    m: &dashboard::Model,
) -> AppResult<()> {
    dashboard_version::Entity::insert(dashboard_version::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(m.tenant_id),
        dashboard_id: Set(m.id),
        version: Set(m.version),
        snapshot: Set(snapshot(m)),
        created_by: Set(ctx.user_id),
        actor: Set(ctx.actor.clone()),
        created_at: Set(Utc::now()),
    })
    .exec(txn)
    .await?;
    Ok(())
}

async fn record(
    txn: &DatabaseTransaction,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    action: &'static str,
    id: Uuid,
    before: Option<Value>,
    after: Option<Value>,
) -> AppResult<()> {
    audit::record(
        txn,
        ctx.tenant_id,
        &Actor::of(ctx),
        meta,
        Change {
            action,
            resource_type: "dashboard",
            resource_id: Some(id.to_string()),
            before,
            after,
        },
    )
    .await
}

fn require_editor(ctx: &TenantCtx) -> AppResult<()> {
    if ctx.role.at_least(Role::Editor) {
        Ok(())
    } else {
        Err(AppError::Forbidden("requires role EDITOR or higher".into()))
    }
}

pub async fn create(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    input: DashboardInput,
) -> AppResult<Dashboard> {
    require_editor(ctx)?;
    validate(&input)?;
    let (caller, meta) = (ctx.clone(), meta.clone());
    scoped_write(db, ctx, move |txn| {
        Box::pin(async move {
            let now = Utc::now();
            let mut active = dashboard::ActiveModel {
                id: Set(Uuid::now_v7()),
                tenant_id: Set(caller.tenant_id),
                owner_id: Set(caller.user_id),
                version: Set(1),
                published_at: Set(None),
                created_at: Set(now),
                updated_at: Set(now),
                ..Default::default()
            };
            apply(&mut active, input);
            let created = active.insert(txn).await?;
            keep_version(txn, &caller, &created).await?;
            record(
                txn,
                &caller,
                &meta,
                "dashboard.create",
                created.id,
                None,
                Some(snapshot(&created)),
            )
            .await?;
            Ok(Dashboard {
                model: created,
                access: Permission::Admin,
            })
        })
    })
    .await
}

/// Saves `input` if the dashboard is still at `expected_version`; otherwise
/// `VERSION_CONFLICT` with the current version.
pub async fn update(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    id: Uuid,
    input: DashboardInput,
    expected_version: i32,
) -> AppResult<Dashboard> {
    require_editor(ctx)?;
    validate(&input)?;
    save(
        db,
        ctx,
        meta,
        id,
        "dashboard.update",
        move |_| Ok(input),
        Some(expected_version),
    )
    .await
}

/// Makes version `version`'s state the newest version.
pub async fn restore(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    id: Uuid,
    version: i32,
) -> AppResult<Dashboard> {
    require_editor(ctx)?;
    let caller = ctx.clone();
    let kept = scoped(db, ctx, move |txn| {
        Box::pin(async move {
            Ok(dashboard_version::Entity::find()
                .filter(dashboard_version::Column::TenantId.eq(caller.tenant_id))
                .filter(dashboard_version::Column::DashboardId.eq(id))
                .filter(dashboard_version::Column::Version.eq(version))
                .one(txn)
                .await?)
        })
    })
    .await?;
    let kept =
        kept.ok_or_else(|| AppError::bad_input("version", "no such version of this dashboard"))?;
    let input = from_snapshot(&kept.snapshot);
    save(
        db,
        ctx,
        meta,
        id,
        "dashboard.restore",
        move |_| Ok(input),
        None,
    )
    .await
}

/// One save: checks the permission and (optionally) the version, writes
/// the new state as the next version, keeps it, and audits before/after.
async fn save(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    id: Uuid,
    action: &'static str,
    change: impl FnOnce(&dashboard::Model) -> AppResult<DashboardInput> + Send + 'static,
    expected_version: Option<i32>,
) -> AppResult<Dashboard> {
    let (caller, meta) = (ctx.clone(), meta.clone());
    scoped_write(db, ctx, move |txn| {
        Box::pin(async move {
            let current = load_for(txn, &caller, id, Permission::Edit).await?;
            if let Some(expected) = expected_version
                && expected != current.model.version
            {
                return Err(AppError::VersionConflict {
                    current: current.model.version,
                });
            }
            let input = change(&current.model)?;
            let before = snapshot(&current.model);
            let next = current.model.version + 1;
            // The version in the WHERE makes a concurrent save lose the
            // race instead of overwriting (the row may have moved on since
            // it was read).
            let mut active: dashboard::ActiveModel = current.model.clone().into();
            apply(&mut active, input);
            active.version = Set(next);
            active.updated_at = Set(Utc::now());
            let result = dashboard::Entity::update_many()
                .set(active)
                .filter(dashboard::Column::Id.eq(id))
                .filter(dashboard::Column::TenantId.eq(caller.tenant_id))
                .filter(dashboard::Column::Version.eq(current.model.version))
                .exec(txn)
                .await?;
            if result.rows_affected != 1 {
                return Err(AppError::VersionConflict {
                    current: current.model.version + 1,
                });
            }
            let updated = dashboard::Entity::find_by_id(id)
                .filter(dashboard::Column::TenantId.eq(caller.tenant_id))
                .one(txn)
                .await?
                .ok_or(AppError::NotFound("dashboard"))?;
            keep_version(txn, &caller, &updated).await?;
            record(
                txn,
                &caller,
                &meta,
                action,
                id,
                Some(before),
                Some(snapshot(&updated)),
            )
            .await?;
            Ok(Dashboard {
                model: updated,
                access: current.access,
            })
        })
    })
    .await
}

pub async fn delete(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    id: Uuid,
) -> AppResult<bool> {
    require_editor(ctx)?;
    let (caller, meta) = (ctx.clone(), meta.clone());
    scoped_write(db, ctx, move |txn| {
        Box::pin(async move {
            let Some(found) = load(txn, &caller, id).await? else {
                return Ok(false);
            };
            if found.access < Permission::Admin {
                return Err(AppError::Forbidden(
                    "needs ADMIN permission on this dashboard".into(),
                ));
            }
            dashboard::Entity::delete_by_id(id)
                .filter(dashboard::Column::TenantId.eq(caller.tenant_id))
                .exec(txn)
                .await?;
            record(
                txn,
                &caller,
                &meta,
                "dashboard.delete",
                id,
                Some(snapshot(&found.model)),
                None,
            )
            .await?;
            Ok(true)
        })
    })
    .await
}

/// Grants `permission` to the tenant's user with `email` (replacing an
/// earlier grant to them). Needs `SHARE`, and no one grants more than
/// they hold.
pub async fn share(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    id: Uuid,
    email: &str,
    permission: Permission,
) -> AppResult<Dashboard> {
    require_editor(ctx)?;
    let email = super::users::normalize_email(email)
        .map_err(|_| AppError::bad_input("userEmail", "not a valid email address"))?;
    let (caller, meta) = (ctx.clone(), meta.clone());
    scoped_write(db, ctx, move |txn| {
        Box::pin(async move {
            let found = load_for(txn, &caller, id, Permission::Share).await?;
            if permission > found.access {
                return Err(AppError::Forbidden(format!(
                    "cannot grant {} while holding {}",
                    permission.as_str(),
                    found.access.as_str()
                )));
            }
            let grantee = user::Entity::find()
                .filter(user::Column::TenantId.eq(caller.tenant_id))
                .filter(user::Column::Email.eq(&email))
                .one(txn)
                .await?
                .ok_or_else(|| {
                    AppError::bad_input("userEmail", "no user with this email in this tenant")
                })?;
            dashboard_permission::Entity::delete_many()
                .filter(dashboard_permission::Column::TenantId.eq(caller.tenant_id))
                .filter(dashboard_permission::Column::DashboardId.eq(id))
                .filter(dashboard_permission::Column::UserId.eq(grantee.id))
                .exec(txn)
                .await?;
            dashboard_permission::Entity::insert(dashboard_permission::ActiveModel {
                id: Set(Uuid::now_v7()),
                tenant_id: Set(caller.tenant_id),
                dashboard_id: Set(id),
                user_id: Set(Some(grantee.id)),
                role: Set(None),
                permission: Set(permission.as_str().to_owned()),
                granted_by: Set(caller.user_id),
                granted_at: Set(Utc::now()),
            })
            .exec(txn)
            .await?;
            record(
                txn,
                &caller,
                &meta,
                "dashboard.share",
                id,
                None,
                Some(json!({ "userEmail": email, "permission": permission.as_str() })),
            )
            .await?;
            Ok(found)
        })
    })
    .await
}

/// Marks the dashboard published now. Needs `EDIT`.
pub async fn publish(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    id: Uuid,
) -> AppResult<Dashboard> {
    require_editor(ctx)?;
    let (caller, meta) = (ctx.clone(), meta.clone());
    scoped_write(db, ctx, move |txn| {
        Box::pin(async move {
            let found = load_for(txn, &caller, id, Permission::Edit).await?;
            let mut active: dashboard::ActiveModel = found.model.clone().into();
            let now = Utc::now();
            active.published_at = Set(Some(now));
            let updated = active.update(txn).await?;
            record(
                txn,
                &caller,
                &meta,
                "dashboard.publish",
                id,
                Some(json!({ "publishedAt": found.model.published_at })),
                Some(json!({ "publishedAt": now })),
            )
            .await?;
            Ok(Dashboard {
                model: updated,
                access: found.access,
            })
        })
    })
    .await
}

/// A private copy of a dashboard the caller may view, owned by them.
pub async fn duplicate(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    id: Uuid,
    name: Option<String>,
) -> AppResult<Dashboard> {
    let source = find(db, ctx, id)
        .await?
        .ok_or(AppError::NotFound("dashboard"))?;
    let mut input = from_snapshot(&snapshot(&source.model));
    input.name = name.unwrap_or_else(|| format!("Copy of {}", source.model.name));
    input.is_public = false;
    create(db, ctx, meta, input).await
}

/// The kept versions of a dashboard the caller may view, newest first.
pub async fn versions(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    id: Uuid,
    page: PageRequest,
) -> AppResult<Page<dashboard_version::Model>> {
    let caller = ctx.clone();
    scoped(db, ctx, move |txn| {
        Box::pin(async move {
            if load(txn, &caller, id).await?.is_none() {
                return Err(AppError::NotFound("dashboard"));
            }
            let mut query = dashboard_version::Entity::find()
                .filter(dashboard_version::Column::TenantId.eq(caller.tenant_id))
                .filter(dashboard_version::Column::DashboardId.eq(id))
                .order_by_desc(dashboard_version::Column::Id)
                .limit(page.first + 1);
            if let Some(after) = page.after {
                query = query.filter(dashboard_version::Column::Id.lt(after));
            }
            Ok(Page::from_overfetch(query.all(txn).await?, page.first))
        })
    })
    .await
}

/// The most a share link may live.
pub const MAX_LINK_LIFETIME: std::time::Duration = std::time::Duration::from_secs(366 * 86_400);

/// Creates a share link to a dashboard (needs `SHARE`), locking
/// `locked` variable values; returns the link and its signed token.
pub async fn create_link(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    keys: &crate::auth::jwt::JwtKeys,
    meta: &RequestMeta,
    id: Uuid,
    expires_in: std::time::Duration,
    locked: serde_json::Map<String, Value>,
) -> AppResult<(share_link::Model, String)> {
    require_editor(ctx)?;
    if expires_in > MAX_LINK_LIFETIME {
        return Err(AppError::bad_input("expiresIn", "at most 366 days"));
    }
    let (caller, meta) = (ctx.clone(), meta.clone());
    let link = scoped_write(db, ctx, move |txn| {
        Box::pin(async move {
            let found = load_for(txn, &caller, id, Permission::Share).await?;
            let declared: Vec<Value> = found
                .model
                .variables
                .as_array()
                .cloned()
                .unwrap_or_default();
            for name in locked.keys() {
                if !declared
                    .iter()
                    .any(|v| v.get("name").and_then(Value::as_str) == Some(name))
                {
                    return Err(AppError::bad_input(
                        format!("lockedVariables.{name}"),
                        "is not a variable of this dashboard",
                    ));
                }
            }
            let now = Utc::now();
            let expires = now
                + chrono::Duration::from_std(expires_in)
                    .map_err(|_| AppError::bad_input("expiresIn", "too long"))?;
            let link = share_link::ActiveModel {
                id: Set(Uuid::now_v7()),
                tenant_id: Set(caller.tenant_id),
                dashboard_id: Set(id),
                locked_variables: Set(Value::Object(locked)),
                expires_at: Set(expires),
                revoked_at: Set(None),
                created_by: Set(caller.user_id),
                actor: Set(caller.actor.clone()),
                created_at: Set(now),
            }
            .insert(txn)
            .await?;
            record(
                txn,
                &caller,
                &meta,
                "dashboard.link.create",
                id,
                None,
                Some(json!({ "linkId": link.id, "expiresAt": link.expires_at,
                             "lockedVariables": link.locked_variables })),
            )
            .await?;
            Ok(link)
        })
    })
    .await?;
    let token = keys
        .mint_share(&crate::auth::jwt::ShareClaims {
            sub: format!("share:{}", link.id),
            tenant: ctx.tenant_slug.clone(),
            dashboard: id.to_string(),
            exp: u64::try_from(link.expires_at.timestamp()).unwrap_or(0),
        })
        .map_err(AppError::internal)?;
    Ok((link, token))
}

/// The links of a dashboard (needs `SHARE`), newest first.
pub async fn links(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    id: Uuid,
) -> AppResult<Vec<share_link::Model>> {
    let caller = ctx.clone();
    scoped(db, ctx, move |txn| {
        Box::pin(async move {
            load_for(txn, &caller, id, Permission::Share).await?;
            Ok(share_link::Entity::find()
                .filter(share_link::Column::TenantId.eq(caller.tenant_id))
                .filter(share_link::Column::DashboardId.eq(id))
                .order_by_desc(share_link::Column::Id)
                .all(txn)
                .await?)
        })
    })
    .await
}

/// Revokes a link (needs `SHARE` on its dashboard); false when unknown.
pub async fn revoke_link(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    link_id: Uuid,
) -> AppResult<bool> {
    require_editor(ctx)?;
    let (caller, meta) = (ctx.clone(), meta.clone());
    scoped_write(db, ctx, move |txn| {
        Box::pin(async move {
            let Some(link) = share_link::Entity::find_by_id(link_id)
                .filter(share_link::Column::TenantId.eq(caller.tenant_id))
                .one(txn)
                .await?
            else {
                return Ok(false);
            };
            match load(txn, &caller, link.dashboard_id).await? {
                None => return Ok(false),
                Some(d) if d.access < Permission::Share => {
                    return Err(AppError::Forbidden(
                        "needs SHARE permission on this dashboard".into(),
                    ));
                }
                Some(_) => {}
            }
            if link.revoked_at.is_none() {
                let dashboard = link.dashboard_id;
                let mut active: share_link::ActiveModel = link.into();
                active.revoked_at = Set(Some(Utc::now()));
                active.update(txn).await?;
                record(
                    txn,
                    &caller,
                    &meta,
                    "dashboard.link.revoke",
                    dashboard,
                    Some(json!({ "linkId": link_id })),
                    None,
                )
                .await?;
            }
            Ok(true)
        })
    })
    .await
}

/// Why a share link does not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkRefusal {
    Invalid,
    Expired,
    Revoked,
}

/// Opens a verified share link: the dashboard it names, the identity its
/// widgets run as (read-only, in the link's tenant, audited as
/// `share:<link id>`), and its locked variables. A named system path: the
/// tenant comes from the signed token, not from a caller.
pub async fn open_link(
    db: &DatabaseConnection,
    claims: &crate::auth::jwt::ShareClaims,
) -> AppResult<Result<(Dashboard, TenantCtx, serde_json::Map<String, Value>), LinkRefusal>> {
    let parsed = claims
        .sub
        .strip_prefix("share:")
        .and_then(|id| Uuid::parse_str(id).ok())
        .zip(Uuid::parse_str(&claims.dashboard).ok());
    let Some((link_id, dashboard_id)) = parsed else {
        return Ok(Err(LinkRefusal::Invalid));
    };
    let Some(tenant) = super::tenants::by_slug(db, &claims.tenant).await? else {
        return Ok(Err(LinkRefusal::Invalid));
    };
    if !tenant.status.is_usable() {
        return Err(AppError::TenantSuspended);
    }
    // A link's viewers spend the owning tenant's plan: its budget, and
    // (per link, as the "user") its rates.
    let policy = std::sync::Arc::new(crate::auth::policy::Policy::of(
        &tenant.plan,
        &tenant.settings,
    ));
    let viewer = TenantCtx {
        tenant_id: tenant.id,
        tenant_slug: tenant.slug,
        user_id: None,
        actor: format!("share:{link_id}"),
        role: Role::Viewer,
        policy,
    };
    let reader = viewer.clone();
    scoped(db, &viewer, move |txn| {
        Box::pin(async move {
            let Some(link) = share_link::Entity::find_by_id(link_id)
                .filter(share_link::Column::TenantId.eq(reader.tenant_id))
                .filter(share_link::Column::DashboardId.eq(dashboard_id))
                .one(txn)
                .await?
            else {
                return Ok(Err(LinkRefusal::Invalid));
            };
            if link.revoked_at.is_some() {
                return Ok(Err(LinkRefusal::Revoked));
            }
            if link.expires_at <= Utc::now() {
                return Ok(Err(LinkRefusal::Expired));
            }
            let Some(model) = dashboard::Entity::find_by_id(dashboard_id)
                .filter(dashboard::Column::TenantId.eq(reader.tenant_id))
                .one(txn)
                .await?
            else {
                return Ok(Err(LinkRefusal::Invalid));
            };
            let locked = match link.locked_variables {
                Value::Object(map) => map,
                _ => serde_json::Map::new(),
            };
            Ok(Ok((
                Dashboard {
                    model,
                    access: Permission::View,
                },
                reader,
                locked,
            )))
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(role: Role, user: Uuid, tenant: Uuid) -> TenantCtx {
        TenantCtx {
            tenant_id: tenant,
            tenant_slug: "t".into(),
            user_id: Some(user),
            actor: "a".into(),
            role,
            policy: Default::default(),
        }
    }

    fn board(tenant: Uuid, owner: Uuid, public: bool) -> dashboard::Model {
        let now = Utc::now();
        dashboard::Model {
            id: Uuid::now_v7(),
            tenant_id: tenant,
            owner_id: Some(owner),
            name: "d".into(),
            description: None,
            tags: json!([]),
            layout: json!({}),
            widgets: json!([]),
            variables: json!([]),
            filters: json!([]),
            default_range: None,
            timezone: None,
            refresh_seconds: None,
            is_public: public,
            version: 1,
            published_at: None,
            created_at: now,
            updated_at: now,
        }
    }

    fn grant(
        d: &dashboard::Model,
        user: Option<Uuid>,
        role: Option<Role>,
        p: Permission,
    ) -> dashboard_permission::Model {
        dashboard_permission::Model {
            id: Uuid::now_v7(),
            tenant_id: d.tenant_id,
            dashboard_id: d.id,
            user_id: user,
            role: role.map(|r| r.as_str().to_owned()),
            permission: p.as_str().to_owned(),
            granted_by: None,
            granted_at: Utc::now(),
        }
    }

    /// role × grant × isPublic, and another tenant.
    #[test]
    fn the_permission_matrix() {
        let (tenant, owner, me) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let private = board(tenant, owner, false);
        let public = board(tenant, owner, true);
        use Permission::*;
        for (role, grants, on_private, on_public) in [
            (Role::Viewer, vec![], None, Some(View)),
            (
                Role::Viewer,
                vec![(Some(me), None, Edit)],
                Some(View),
                Some(View),
            ),
            (Role::Editor, vec![], None, Some(View)),
            (
                Role::Editor,
                vec![(Some(me), None, Edit)],
                Some(Edit),
                Some(Edit),
            ),
            (
                Role::Editor,
                vec![(None, Some(Role::Editor), Share)],
                Some(Share),
                Some(Share),
            ),
            (
                Role::Editor,
                vec![(None, Some(Role::Admin), Share)],
                None,
                Some(View),
            ),
            (
                Role::Editor,
                vec![(None, Some(Role::Viewer), View)],
                Some(View),
                Some(View),
            ),
            (
                Role::Editor,
                vec![(Some(owner), None, Admin)],
                None,
                Some(View),
            ),
            (Role::Admin, vec![], Some(Admin), Some(Admin)),
            (Role::SuperAdmin, vec![], Some(Admin), Some(Admin)),
        ] {
            let c = ctx(role, me, tenant);
            for (board, expected) in [(&private, on_private), (&public, on_public)] {
                let gs: Vec<_> = grants
                    .iter()
                    .map(|(u, r, p)| grant(board, *u, *r, *p))
                    .collect();
                assert_eq!(
                    access(&c, board, &gs),
                    expected,
                    "{role:?} {grants:?} public={}",
                    board.is_public
                );
            }
        }
        let owner_ctx = ctx(Role::Editor, owner, tenant);
        assert_eq!(access(&owner_ctx, &private, &[]), Some(Admin));
        let stranger = ctx(Role::SuperAdmin, me, Uuid::now_v7());
        assert_eq!(access(&stranger, &public, &[]), None);
    }
}
