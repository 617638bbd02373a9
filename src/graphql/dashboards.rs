//! Dashboards: the `Dashboard` and `Widget` objects, CRUD, versions,
//! sharing and publishing, and each widget's data.
//!
//! A widget stores its query as JSON, like a saved query (see
//! `saved_queries`): the GraphQL input of its kind with `"$name"` where a
//! dashboard variable goes, or a saved query's id with parameter values.
//! Resolving `widgets { data }` binds the variables (their defaults, or a
//! viewer's values from `dashboard(id, variables)`), applies the
//! dashboard's filters, range and timezone, runs every distinct query once
//! and concurrently, and gives each widget its answer.

use std::collections::HashMap;

use async_graphql::connection::{Connection, Edge};
use async_graphql::dataloader::DataLoader;
use async_graphql::{Context, Enum, ID, InputObject, Json, Object, Result, SimpleObject, Union};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::guard::{RoleGuard, meta, state, tenant};
use super::loaders::{GrantLoader, SavedQueryLoader, UserLoader, VersionLoader};
use super::metrics::{
    FilterInput, FormulaInput, FunnelInput, FunnelResult, MetricQueryInput, MetricResult,
    RetentionInput, RetentionResult, TimeRangeInput, run_formula, run_funnel, run_metrics,
    run_retention,
};
use super::saved_queries::{self as saved, Bound, ParamTypeValue, read_as, stored};
use super::users::{User, parse_id};
use crate::auth::{InTenant, Role, TenantCtx};
use crate::domain::dashboards::{self, DashboardInput as Input, LinkRefusal, Permission};
use crate::domain::metrics::PlanMemo;
use crate::domain::page::{Page, PageRequest, encode_cursor};
use crate::domain::saved_queries::{self as saved_domain, Parameter};
use crate::entities::{dashboard_permission, dashboard_version, share_link, user};
use crate::error::AppError;
use crate::realtime::{DashboardChange, DashboardChanged, Topic};

#[derive(Enum, Copy, Clone, Debug, Eq, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WidgetKind {
    Line,
    Bar,
    Area,
    Pie,
    Metric,
    Table,
    Funnel,
    Retention,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(
    remote = "crate::domain::dashboards::Permission",
    name = "DashboardPermission"
)]
pub enum PermissionValue {
    View,
    Edit,
    Share,
    Admin,
}

/// A widget: exactly one of `query`, `formula`, `funnel`, `retention` or
/// `savedQueryId` (with `parameters` for the saved query's).
#[derive(InputObject)]
pub struct WidgetInput {
    pub title: String,
    pub kind: WidgetKind,
    pub query: Option<MetricQueryInput>,
    pub formula: Option<FormulaInput>,
    pub funnel: Option<FunnelInput>,
    pub retention: Option<RetentionInput>,
    pub saved_query_id: Option<ID>,
    /// Values for the saved query's parameters; `"$name"` takes a
    /// dashboard variable's.
    pub parameters: Option<Json<Value>>,
    /// Display options, kept as given.
    pub options: Option<Json<Value>>,
}

/// A variable widgets refer to as `"$name"`; a viewer may choose its value
/// per request (`dashboard(id, variables)`), among `allowed` when given.
#[derive(InputObject)]
pub struct DashboardVariableInput {
    pub name: String,
    #[graphql(name = "type")]
    pub ty: ParamTypeValue,
    pub default: Option<Json<Value>>,
    pub allowed: Option<Vec<Json<Value>>>,
}

#[derive(InputObject)]
pub struct DashboardInput {
    pub name: String,
    pub description: Option<String>,
    pub tags: Option<Vec<String>>,
    /// Visible (read-only) to every member of the tenant.
    pub is_public: Option<bool>,
    /// Grid positions, kept as given.
    pub layout: Option<Json<Value>>,
    pub widgets: Option<Vec<WidgetInput>>,
    pub variables: Option<Vec<DashboardVariableInput>>,
    /// Applied to every metric and funnel widget.
    pub filters: Option<Vec<FilterInput>>,
    /// Replaces every widget's range.
    pub range: Option<TimeRangeInput>,
    /// Replaces every widget's timezone.
    pub timezone: Option<String>,
    /// Seconds between refreshes a client should use (5 to 86400).
    pub refresh_interval: Option<i32>,
}

/// A widget as stored.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredWidget {
    id: Uuid,
    title: String,
    kind: WidgetKind,
    /// `query`, `funnel`, `retention` or `savedQuery`.
    source: String,
    #[serde(default)]
    definition: Value,
    #[serde(default)]
    saved_query_id: Option<Uuid>,
    #[serde(default)]
    parameters: Value,
    #[serde(default)]
    options: Value,
}

/// A variable as stored: a parameter plus its allowed values.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct StoredVariable {
    #[serde(flatten)]
    parameter: Parameter,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allowed: Option<Vec<Value>>,
}

impl DashboardInput {
    fn into_domain(self) -> Result<Input, AppError> {
        let widgets = self
            .widgets
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, w)| widget(i, w))
            .collect::<Result<Vec<_>, _>>()?;
        let variables: Vec<StoredVariable> = self
            .variables
            .unwrap_or_default()
            .into_iter()
            .map(|v| StoredVariable {
                parameter: Parameter {
                    name: v.name,
                    ty: v.ty.into(),
                    default: v.default.map(|Json(d)| d),
                },
                allowed: v.allowed.map(|a| a.into_iter().map(|Json(x)| x).collect()),
            })
            .collect();
        // Variables follow the rules of saved-query parameters.
        let as_parameters: Vec<Parameter> = variables.iter().map(|v| v.parameter.clone()).collect();
        let every_widget = json!(
            widgets
                .iter()
                .map(|w| json!([w.definition, w.parameters]))
                .collect::<Vec<_>>()
        );
        saved_domain::check_declarations(&every_widget, &as_parameters, "input.variables")?;
        Ok(Input {
            name: self.name,
            description: self.description,
            tags: self.tags.unwrap_or_default(),
            is_public: self.is_public.unwrap_or(false),
            layout: self.layout.map_or(json!({}), |Json(v)| v),
            widgets: serde_json::to_value(&widgets).map_err(AppError::internal)?,
            variables: serde_json::to_value(&variables).map_err(AppError::internal)?,
            filters: stored(&self.filters.unwrap_or_default())?,
            default_range: self.range.as_ref().map(stored).transpose()?,
            timezone: self.timezone,
            refresh_seconds: self.refresh_interval,
        })
    }
}

fn widget(i: usize, w: WidgetInput) -> Result<StoredWidget, AppError> {
    let at = format!("input.widgets[{i}]");
    let title = w.title.trim().to_owned();
    if title.is_empty() || title.chars().count() > 200 {
        return Err(AppError::bad_input(
            format!("{at}.title"),
            "must be 1 to 200 characters",
        ));
    }
    let saved_query_id = w
        .saved_query_id
        .as_ref()
        .map(|id| parse_id(&format!("{at}.savedQueryId"), id))
        .transpose()?;
    let sources = [
        w.query.as_ref().map(|q| ("query", stored(q))),
        w.formula.as_ref().map(|q| ("formula", stored(q))),
        w.funnel.as_ref().map(|q| ("funnel", stored(q))),
        w.retention.as_ref().map(|q| ("retention", stored(q))),
        saved_query_id.map(|_| ("savedQuery", Ok(Value::Null))),
    ];
    let mut sources = sources.into_iter().flatten();
    let (source, definition) = match (sources.next(), sources.next()) {
        (Some(one), None) => one,
        _ => {
            return Err(AppError::bad_input(
                at,
                "give exactly one of query, formula, funnel, retention or savedQueryId",
            ));
        }
    };
    let fits = matches!(
        (source, w.kind),
        ("funnel", WidgetKind::Funnel) | ("retention", WidgetKind::Retention) | ("savedQuery", _)
    ) || (matches!(source, "query" | "formula")
        && !matches!(w.kind, WidgetKind::Funnel | WidgetKind::Retention));
    if !fits {
        return Err(AppError::bad_input(
            format!("{at}.kind"),
            "FUNNEL widgets show a funnel, RETENTION widgets retention, the others a metric query or formula",
        ));
    }
    Ok(StoredWidget {
        id: Uuid::now_v7(),
        title,
        kind: w.kind,
        source: source.to_owned(),
        definition: definition?,
        saved_query_id,
        parameters: w.parameters.map_or(Value::Null, |Json(v)| v),
        options: w.options.map_or(Value::Null, |Json(v)| v),
    })
}

/// What a widget shows.
#[derive(Union, Clone)]
pub enum WidgetData {
    Metric(MetricResult),
    Funnel(FunnelResult),
    Retention(RetentionResult),
}

pub struct Widget {
    stored: StoredWidget,
    data: Option<Result<WidgetData, async_graphql::Error>>,
}

#[Object]
impl Widget {
    async fn id(&self) -> ID {
        ID(self.stored.id.to_string())
    }
    async fn title(&self) -> &str {
        &self.stored.title
    }
    async fn kind(&self) -> WidgetKind {
        self.stored.kind
    }
    /// The stored query, with `"$name"` placeholders; null for a saved
    /// query's widget.
    async fn definition(&self) -> Option<Json<Value>> {
        (!self.stored.definition.is_null()).then(|| Json(self.stored.definition.clone()))
    }
    async fn saved_query_id(&self) -> Option<ID> {
        self.stored.saved_query_id.map(|id| ID(id.to_string()))
    }
    async fn options(&self) -> Json<Value> {
        Json(self.stored.options.clone())
    }
    /// The widget's answer, through the metric engine, with the
    /// dashboard's variables, filters, range and timezone.
    async fn data(&self) -> Result<WidgetData> {
        match &self.data {
            Some(Ok(data)) => Ok(data.clone()),
            Some(Err(e)) => Err(e.clone()),
            None => Err(AppError::internal(anyhow::anyhow!("widget data was not resolved")).into()),
        }
    }
}

#[derive(SimpleObject)]
pub struct DashboardGrant {
    /// The grantee user's id, or null for a role grant.
    user_id: Option<ID>,
    /// The role granted to (and the roles above it), or null.
    role: Option<String>,
    permission: Option<PermissionValue>,
    granted_at: DateTime<Utc>,
}

/// A read-only link to a dashboard, until it expires or is revoked.
#[derive(SimpleObject)]
pub struct ShareLink {
    id: ID,
    /// The variable values a viewer of the link cannot change.
    locked_variables: Json<Value>,
    expires_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
    /// Who created it.
    actor: String,
    created_at: DateTime<Utc>,
}

fn link(l: share_link::Model) -> ShareLink {
    ShareLink {
        id: ID(l.id.to_string()),
        locked_variables: Json(l.locked_variables),
        expires_at: l.expires_at,
        revoked_at: l.revoked_at,
        actor: l.actor,
        created_at: l.created_at,
    }
}

/// A new share link and its token (shown once: only its signature is
/// checked later, the token is not stored).
#[derive(SimpleObject)]
pub struct ShareLinkPayload {
    token: String,
    link: ShareLink,
}

#[derive(SimpleObject)]
pub struct DashboardVersion {
    version: i32,
    /// The dashboard's editable fields at that version.
    snapshot: Json<Value>,
    actor: String,
    created_at: DateTime<Utc>,
}

pub struct Dashboard {
    inner: dashboards::Dashboard,
    /// The viewer's variable values for this request (a share link's
    /// locked values).
    variables: Map<String, Value>,
    /// Set when seen through a share link: who the widgets' queries run as
    /// (the link, read-only, in the dashboard's tenant); `None`: the
    /// request's caller.
    shared: Option<TenantCtx>,
    /// Loaded for a whole page at once by `dashboards` (one batch each,
    /// whatever the timing of the fields' resolution).
    preloaded: Preloaded,
}

#[derive(Default)]
struct Preloaded {
    owner: Option<Option<user::Model>>,
    grants: Option<Vec<dashboard_permission::Model>>,
    /// The first page of versions, with the page size it was read for.
    versions: Option<(u64, Page<dashboard_version::Model>)>,
}

#[Object]
impl Dashboard {
    async fn id(&self) -> ID {
        ID(self.inner.model.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.inner.model.name
    }
    async fn description(&self) -> Option<&str> {
        self.inner.model.description.as_deref()
    }
    async fn tags(&self) -> Vec<String> {
        serde_json::from_value(self.inner.model.tags.clone()).unwrap_or_default()
    }
    async fn is_public(&self) -> bool {
        self.inner.model.is_public
    }
    /// Bumped by every save; `updateDashboard` names the one it edits.
    async fn version(&self) -> i32 {
        self.inner.model.version
    }
    async fn published_at(&self) -> Option<DateTime<Utc>> {
        self.inner.model.published_at
    }
    async fn layout(&self) -> Json<Value> {
        Json(self.inner.model.layout.clone())
    }
    async fn variables(&self) -> Json<Value> {
        Json(self.inner.model.variables.clone())
    }
    async fn filters(&self) -> Json<Value> {
        Json(self.inner.model.filters.clone())
    }
    /// The range every widget uses, if the dashboard sets one.
    async fn range(&self) -> Option<Json<Value>> {
        self.inner.model.default_range.clone().map(Json)
    }
    async fn timezone(&self) -> Option<&str> {
        self.inner.model.timezone.as_deref()
    }
    async fn refresh_interval(&self) -> Option<i32> {
        self.inner.model.refresh_seconds
    }
    /// What the caller may do with it.
    async fn my_permission(&self) -> PermissionValue {
        self.inner.access.into()
    }
    async fn owner(&self, ctx: &Context<'_>) -> Result<User> {
        let owner = self
            .inner
            .model
            .owner_id
            .ok_or_else(|| AppError::NotFound("owner"))?;
        let found = match &self.preloaded.owner {
            Some(found) => found.clone(),
            None => {
                let loader = ctx.data::<DataLoader<UserLoader>>()?;
                let key = InTenant {
                    tenant: self.inner.model.tenant_id,
                    key: owner,
                };
                loader.load_one(key).await?
            }
        };
        Ok(User(found.ok_or(AppError::NotFound("owner"))?))
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.inner.model.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.inner.model.updated_at
    }
    /// Who holds a grant on this dashboard.
    async fn permissions(&self, ctx: &Context<'_>) -> Result<Vec<DashboardGrant>> {
        self.not_shared()?;
        let grants = match &self.preloaded.grants {
            Some(grants) => grants.clone(),
            None => {
                let loader = ctx.data::<DataLoader<GrantLoader>>()?;
                let key = InTenant {
                    tenant: self.inner.model.tenant_id,
                    key: self.inner.model.id,
                };
                loader.load_one(key).await?.unwrap_or_default()
            }
        };
        Ok(grants.into_iter().map(grant).collect())
    }
    /// The dashboard's share links (SHARE permission).
    async fn share_links(&self, ctx: &Context<'_>) -> Result<Vec<ShareLink>> {
        self.not_shared()?;
        let links = dashboards::links(&state(ctx)?.db, tenant(ctx)?, self.inner.model.id).await?;
        Ok(links.into_iter().map(link).collect())
    }
    /// Kept versions, newest first.
    #[graphql(complexity = "super::page_complexity(first, child_complexity)")]
    async fn versions(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, DashboardVersion>> {
        self.not_shared()?;
        let page = PageRequest::new(first, after.as_deref())?;
        let found = if let Some((_, found)) = self
            .preloaded
            .versions
            .as_ref()
            .filter(|(size, _)| page.after.is_none() && *size == page.first)
        {
            found.clone()
        } else if page.after.is_none() {
            // The first page, batched across the dashboards that resolve
            // together.
            let key = InTenant::of(tenant(ctx)?, (self.inner.model.id, page.first));
            ctx.data::<DataLoader<VersionLoader>>()?
                .load_one(key)
                .await?
                .unwrap_or(Page {
                    items: Vec::new(),
                    has_next: false,
                })
        } else {
            dashboards::versions(&state(ctx)?.db, tenant(ctx)?, self.inner.model.id, page).await?
        };
        let mut conn = Connection::new(page.after.is_some(), found.has_next);
        conn.edges.extend(
            found
                .items
                .into_iter()
                .map(|v| Edge::new(encode_cursor(v.id), version(v))),
        );
        Ok(conn)
    }
    /// Each widget's data resolves only when selected; identical queries
    /// (after variables) run once, all of them concurrently.
    async fn widgets(&self, ctx: &Context<'_>) -> Result<Vec<Widget>> {
        let stored: Vec<StoredWidget> =
            serde_json::from_value(self.inner.model.widgets.clone()).unwrap_or_default();
        if !ctx.look_ahead().field("data").exists() {
            return Ok(stored
                .into_iter()
                .map(|stored| Widget { stored, data: None })
                .collect());
        }
        // Bound together, so the saved queries they reference load in one
        // batch.
        let bound: Vec<Result<(String, Bound), async_graphql::Error>> =
            futures_util::future::join_all(stored.iter().map(|w| async move {
                self.bind(ctx, w).await.map_err(async_graphql::Error::from)
            }))
            .await;
        // One run per distinct query.
        let mut distinct: HashMap<String, usize> = HashMap::new();
        let mut runs = Vec::new();
        for b in bound.iter().flatten() {
            if !distinct.contains_key(&b.0) {
                distinct.insert(b.0.clone(), runs.len());
                runs.push(&b.1);
            }
        }
        let caller = self.caller(ctx)?;
        // One `now` for the whole dashboard, so that a query shared by
        // several widgets (a formula's `delivered` and a `delivered`
        // widget) is one plan and runs once.
        let memo = PlanMemo::new(crate::domain::metrics::now());
        let answers =
            futures_util::future::join_all(runs.into_iter().map(|b| run(ctx, &caller, b, &memo)))
                .await;
        Ok(stored
            .into_iter()
            .zip(bound)
            .map(|(stored, bound)| {
                let data = bound.and_then(|(key, _)| answers[distinct[&key]].clone());
                Widget {
                    stored,
                    data: Some(data),
                }
            })
            .collect())
    }
}

fn grant(g: dashboard_permission::Model) -> DashboardGrant {
    DashboardGrant {
        user_id: g.user_id.map(|u| ID(u.to_string())),
        role: g.role,
        permission: Permission::parse(&g.permission).map(Into::into),
        granted_at: g.granted_at,
    }
}

fn version(v: dashboard_version::Model) -> DashboardVersion {
    DashboardVersion {
        version: v.version,
        snapshot: Json(v.snapshot),
        actor: v.actor,
        created_at: v.created_at,
    }
}

async fn run(
    ctx: &Context<'_>,
    caller: &TenantCtx,
    bound: &Bound,
    memo: &PlanMemo,
) -> Result<WidgetData, async_graphql::Error> {
    // Each distinct query runs once; `read_as(stored(..))` is its copy.
    // Metric queries, alone or in formulas, also share through `memo`.
    let memo = Some(memo.clone());
    Ok(match bound {
        Bound::Metric(q) => {
            WidgetData::Metric(run_metrics(ctx, caller, read_as(stored(q)?)?, memo).await?)
        }
        Bound::Formula(q) => {
            WidgetData::Metric(run_formula(ctx, caller, read_as(stored(q)?)?, memo).await?)
        }
        Bound::Funnel(q) => {
            WidgetData::Funnel(run_funnel(ctx, caller, read_as(stored(q)?)?).await?)
        }
        Bound::Retention(q) => {
            WidgetData::Retention(run_retention(ctx, caller, read_as(stored(q)?)?).await?)
        }
    })
}

impl Dashboard {
    fn caller(&self, ctx: &Context<'_>) -> Result<TenantCtx, AppError> {
        match &self.shared {
            Some(link) => Ok(link.clone()),
            None => Ok(tenant(ctx).map_err(gql_internal)?.clone()),
        }
    }

    /// Grants, versions and links are not for a share link's viewers.
    fn not_shared(&self) -> Result<(), AppError> {
        match self.shared {
            Some(_) => Err(AppError::Forbidden(
                "not available through a share link".into(),
            )),
            None => Ok(()),
        }
    }

    /// The variables' declarations and this request's values (checked
    /// against `allowed`).
    fn variable_values(&self) -> Result<(Vec<Parameter>, Map<String, Value>), AppError> {
        let declared: Vec<StoredVariable> =
            serde_json::from_value(self.inner.model.variables.clone()).unwrap_or_default();
        for (name, value) in &self.variables {
            let Some(v) = declared.iter().find(|v| &v.parameter.name == name) else {
                return Err(AppError::bad_input(
                    format!("variables.{name}"),
                    "is not a variable of this dashboard",
                ));
            };
            if let Some(allowed) = &v.allowed
                && !allowed.contains(value)
            {
                return Err(AppError::bad_input(
                    format!("variables.{name}"),
                    "is not one of the allowed values",
                ));
            }
        }
        Ok((
            declared.into_iter().map(|v| v.parameter).collect(),
            self.variables.clone(),
        ))
    }

    /// A widget's query, with variables bound and the dashboard's filters,
    /// range and timezone applied; keyed by its canonical JSON.
    async fn bind(&self, ctx: &Context<'_>, w: &StoredWidget) -> Result<(String, Bound), AppError> {
        let (declared, values) = self.variable_values()?;
        let rename = |e: AppError| match e {
            AppError::BadInput { field, message } => AppError::BadInput {
                field: field.replacen("parameters.", "variables.", 1),
                message,
            },
            other => other,
        };
        let (kind, definition) = if w.source == "savedQuery" {
            let id = w.saved_query_id.ok_or(AppError::NotFound("saved query"))?;
            let caller = tenant(ctx).map_err(gql_internal)?;
            let model = ctx
                .data::<DataLoader<SavedQueryLoader>>()
                .map_err(gql_internal)?
                .load_one(InTenant::of(caller, id))
                .await
                .map_err(gql_internal)?
                .filter(|m| saved_domain::is_visible_to(m, caller))
                .ok_or(AppError::NotFound("saved query"))?;
            let query = saved_domain::SavedQuery { model };
            let given = saved_domain::bind(&w.parameters, &declared, &values).map_err(rename)?;
            let supplied = match given {
                Value::Object(map) => map,
                _ => Map::new(),
            };
            match saved::bind(&query, &supplied)? {
                Bound::Metric(q) => ("query", stored(&q)?),
                Bound::Formula(q) => ("formula", stored(&q)?),
                Bound::Funnel(q) => ("funnel", stored(&q)?),
                Bound::Retention(q) => ("retention", stored(&q)?),
            }
        } else {
            let bound = saved_domain::bind(&w.definition, &declared, &values).map_err(rename)?;
            (w.source.as_str(), bound)
        };
        let definition = self.apply_dashboard(kind, definition);
        let key = format!("{kind}:{definition}");
        let bound = match kind {
            "query" => Bound::Metric(read_as::<MetricQueryInput>(definition)?),
            "formula" => Bound::Formula(read_as::<FormulaInput>(definition)?),
            "funnel" => Bound::Funnel(read_as::<FunnelInput>(definition)?),
            _ => Bound::Retention(read_as::<RetentionInput>(definition)?),
        };
        Ok((key, bound))
    }

    /// The dashboard's filters (metric and funnel widgets), range and
    /// timezone (all), over a widget's bound query; a formula's to each
    /// of its queries.
    fn apply_dashboard(&self, kind: &str, mut definition: Value) -> Value {
        if kind == "formula" {
            if let Some(queries) = definition.get_mut("queries").and_then(Value::as_array_mut) {
                for named in queries.iter_mut() {
                    if let Some(query) = named.get_mut("query") {
                        *query = self.apply_dashboard("query", query.take());
                    }
                }
            }
            return definition;
        }
        let m = &self.inner.model;
        let Some(query) = definition.as_object_mut() else {
            return definition;
        };
        if let Some(range) = &m.default_range {
            query.insert("range".into(), range.clone());
        }
        if let Some(tz) = &m.timezone {
            query.insert("timezone".into(), json!(tz));
        }
        let extra = m.filters.as_array().cloned().unwrap_or_default();
        if !extra.is_empty() {
            let add = |filters: &mut Value| {
                let mut all = filters.as_array().cloned().unwrap_or_default();
                all.extend(extra.iter().cloned());
                *filters = Value::Array(all);
            };
            match kind {
                "query" => add(query.entry("filters").or_insert(Value::Null)),
                "funnel" => {
                    if let Some(steps) = query.get_mut("steps").and_then(Value::as_array_mut) {
                        for step in steps.iter_mut().filter_map(Value::as_object_mut) {
                            add(step.entry("filters").or_insert(Value::Null));
                        }
                    }
                }
                _ => {}
            }
        }
        definition
    }
}

fn gql_internal(e: async_graphql::Error) -> AppError {
    AppError::internal(anyhow::anyhow!(e.message))
}

#[derive(Default)]
pub struct DashboardQuery;

#[Object]
impl DashboardQuery {
    /// The dashboards the caller may view.
    #[graphql(
        guard = "RoleGuard::new(Role::Viewer)",
        complexity = "super::page_complexity(first, child_complexity)"
    )]
    async fn dashboards(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, Dashboard>> {
        let page = PageRequest::new(first, after.as_deref())?;
        let found = dashboards::list(&state(ctx)?.db, tenant(ctx)?, page).await?;
        // The page's owners and grants in one batch each, when selected.
        let node = ctx.look_ahead().field("edges").field("node");
        let owners = if node.field("owner").exists() {
            let keys = found.items.iter().filter_map(|d| {
                d.model.owner_id.map(|key| InTenant {
                    tenant: d.model.tenant_id,
                    key,
                })
            });
            Some(
                ctx.data::<DataLoader<UserLoader>>()?
                    .load_many(keys)
                    .await?,
            )
        } else {
            None
        };
        let grants = if node.field("permissions").exists() {
            let keys = found.items.iter().map(|d| InTenant {
                tenant: d.model.tenant_id,
                key: d.model.id,
            });
            Some(
                ctx.data::<DataLoader<GrantLoader>>()?
                    .load_many(keys)
                    .await?,
            )
        } else {
            None
        };
        // The first page of versions too, when every `versions` selection
        // asks for the same first page.
        let version_page = node
            .field("versions")
            .selection_fields()
            .iter()
            .map(|f| {
                let args = f.arguments()?;
                let arg = |name: &str| args.iter().find(|(n, _)| n.as_str() == name);
                let first = match arg("first").map(|(_, v)| v) {
                    Some(async_graphql::Value::Number(n)) => n.as_i64().map(|n| n as i32),
                    _ => None,
                };
                Ok((arg("after").is_some(), first))
            })
            .collect::<async_graphql::ServerResult<Vec<_>>>()
            .ok()
            .and_then(|fields| match fields.as_slice() {
                [(false, first), rest @ ..] if rest.iter().all(|(a, f)| !a && f == first) => {
                    PageRequest::new(*first, None).ok()
                }
                _ => None,
            });
        let versions = match version_page {
            Some(vp) => {
                let keys = found.items.iter().map(|d| InTenant {
                    tenant: d.model.tenant_id,
                    key: (d.model.id, vp.first),
                });
                Some((
                    vp.first,
                    ctx.data::<DataLoader<VersionLoader>>()?
                        .load_many(keys)
                        .await?,
                ))
            }
            None => None,
        };
        let mut conn = Connection::new(page.after.is_some(), found.has_next);
        conn.edges.extend(found.items.into_iter().map(|d| {
            let in_tenant = |key| InTenant {
                tenant: d.model.tenant_id,
                key,
            };
            let preloaded = Preloaded {
                owner: owners.as_ref().map(|o| {
                    d.model
                        .owner_id
                        .and_then(|id| o.get(&in_tenant(id)).cloned())
                }),
                grants: grants
                    .as_ref()
                    .map(|g| g.get(&in_tenant(d.model.id)).cloned().unwrap_or_default()),
                versions: versions.as_ref().map(|(first, pages)| {
                    let page = pages
                        .get(&InTenant {
                            tenant: d.model.tenant_id,
                            key: (d.model.id, *first),
                        })
                        .cloned()
                        .unwrap_or(Page {
                            items: Vec::new(),
                            has_next: false,
                        });
                    (*first, page)
                }),
            };
            Edge::new(
                encode_cursor(d.model.id),
                Dashboard {
                    inner: d,
                    variables: Map::new(),
                    shared: None,
                    preloaded,
                },
            )
        }));
        Ok(conn)
    }

    /// Null when absent, in another tenant, or not visible to the caller.
    /// `variables` (`{"name": value}`) override the variables' defaults
    /// for this request.
    #[graphql(guard = "RoleGuard::new(Role::Viewer)")]
    async fn dashboard(
        &self,
        ctx: &Context<'_>,
        id: ID,
        variables: Option<Json<Value>>,
    ) -> Result<Option<Dashboard>> {
        let Ok(id) = parse_id("id", &id) else {
            return Ok(None);
        };
        let variables = match variables {
            None => Map::new(),
            Some(Json(Value::Object(map))) => map,
            Some(_) => {
                return Err(AppError::bad_input("variables", "an object of name → value").into());
            }
        };
        Ok(dashboards::find(&state(ctx)?.db, tenant(ctx)?, id)
            .await?
            .map(|inner| Dashboard {
                inner,
                variables,
                shared: None,
                preloaded: Preloaded::default(),
            }))
    }
}

fn plain(inner: dashboards::Dashboard) -> Dashboard {
    Dashboard {
        inner,
        variables: Map::new(),
        shared: None,
        preloaded: Preloaded::default(),
    }
}

/// Opens a share link's dashboard, or says why not (`UNAUTHENTICATED`:
/// invalid or tampered, expired, revoked).
async fn open_shared(ctx: &Context<'_>, token: &str) -> Result<Dashboard, AppError> {
    let app = state(ctx).map_err(gql_internal)?;
    let claims = app.keys.verify_share(token.trim()).map_err(|e| match e {
        crate::auth::jwt::TokenError::Expired => {
            AppError::Unauthenticated("share link expired".into())
        }
        crate::auth::jwt::TokenError::Invalid => {
            AppError::Unauthenticated("invalid share link".into())
        }
    })?;
    match dashboards::open_link(&app.db, &claims).await? {
        // A public link spends the owning tenant's query rate, the link
        // counting as its user, as a logged-in viewer's request would.
        Ok((inner, viewer, locked)) => {
            crate::domain::limits::admit(&app.limiter, &viewer, crate::cache::rate::Kind::Query, 1)
                .await?;
            Ok(Dashboard {
                inner,
                variables: locked,
                shared: Some(viewer),
                preloaded: Preloaded::default(),
            })
        }
        Err(refusal) => Err(AppError::Unauthenticated(
            match refusal {
                LinkRefusal::Invalid => "invalid share link",
                LinkRefusal::Expired => "share link expired",
                LinkRefusal::Revoked => "share link revoked",
            }
            .into(),
        )),
    }
}

#[derive(Default)]
pub struct SharedDashboardQuery;

#[Object]
impl SharedDashboardQuery {
    /// A dashboard through its share link: no login needed, read-only, the
    /// link's locked variable values and no others.
    async fn shared_dashboard(&self, ctx: &Context<'_>, token: String) -> Result<Dashboard> {
        Ok(open_shared(ctx, &token).await?)
    }
}

#[derive(Default)]
pub struct DashboardMutation;

#[Object]
impl DashboardMutation {
    #[graphql(guard = "RoleGuard::new(Role::Editor)")]
    async fn create_dashboard(
        &self,
        ctx: &Context<'_>,
        input: DashboardInput,
    ) -> Result<Dashboard> {
        let caller = tenant(ctx)?;
        if caller.user_id.is_none() {
            return Err(AppError::Forbidden(
                "a dashboard needs an owner: create it with a user's token".into(),
            )
            .into());
        }
        let created =
            dashboards::create(&state(ctx)?.db, caller, meta(ctx), input.into_domain()?).await?;
        Ok(plain(created))
    }

    /// Saves if the dashboard is still at `expectedVersion`; otherwise
    /// VERSION_CONFLICT with `extensions.currentVersion`.
    #[graphql(guard = "RoleGuard::new(Role::Editor)")]
    async fn update_dashboard(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: DashboardInput,
        expected_version: i32,
    ) -> Result<Dashboard> {
        let id = parse_id("id", &id)?;
        let updated = dashboards::update(
            &state(ctx)?.db,
            tenant(ctx)?,
            meta(ctx),
            id,
            input.into_domain()?,
            expected_version,
        )
        .await?;
        changed(ctx, &updated, DashboardChange::Edited);
        Ok(plain(updated))
    }

    /// Owner, grant ADMIN or tenant ADMIN; false when there was nothing.
    #[graphql(guard = "RoleGuard::new(Role::Editor)")]
    async fn delete_dashboard(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let Ok(id) = parse_id("id", &id) else {
            return Ok(false);
        };
        let deleted = dashboards::delete(&state(ctx)?.db, tenant(ctx)?, meta(ctx), id).await?;
        if deleted {
            let message = DashboardChanged {
                dashboard_id: id,
                version: 0,
                change: DashboardChange::Deleted,
            };
            let _ = state(ctx)?
                .bus
                .publish(tenant(ctx)?.tenant_id, Topic::Dashboards, &message);
        }
        Ok(deleted)
    }

    /// Grants a user of the tenant a permission (needs SHARE; no one
    /// grants more than they hold).
    #[graphql(guard = "RoleGuard::new(Role::Editor)")]
    async fn share_dashboard(
        &self,
        ctx: &Context<'_>,
        id: ID,
        user_email: String,
        permission: PermissionValue,
    ) -> Result<Dashboard> {
        let id = parse_id("id", &id)?;
        let shared = dashboards::share(
            &state(ctx)?.db,
            tenant(ctx)?,
            meta(ctx),
            id,
            &user_email,
            permission.into(),
        )
        .await?;
        changed(ctx, &shared, DashboardChange::Permissions);
        Ok(plain(shared))
    }

    #[graphql(guard = "RoleGuard::new(Role::Editor)")]
    async fn publish_dashboard(&self, ctx: &Context<'_>, id: ID) -> Result<Dashboard> {
        let id = parse_id("id", &id)?;
        let published = dashboards::publish(&state(ctx)?.db, tenant(ctx)?, meta(ctx), id).await?;
        changed(ctx, &published, DashboardChange::Edited);
        Ok(plain(published))
    }

    /// A private copy, owned by the caller.
    #[graphql(guard = "RoleGuard::new(Role::Editor)")]
    async fn duplicate_dashboard(
        &self,
        ctx: &Context<'_>,
        id: ID,
        name: Option<String>,
    ) -> Result<Dashboard> {
        let id = parse_id("id", &id)?;
        Ok(plain(
            dashboards::duplicate(&state(ctx)?.db, tenant(ctx)?, meta(ctx), id, name).await?,
        ))
    }

    /// A read-only link to the dashboard (SHARE permission) for `expiresIn`
    /// (`"7d"`, at most 366 days), with `lockedVariables` fixed for its
    /// viewers.
    #[graphql(guard = "RoleGuard::new(Role::Editor)")]
    async fn create_share_link(
        &self,
        ctx: &Context<'_>,
        dashboard_id: ID,
        expires_in: String,
        locked_variables: Option<Json<Value>>,
    ) -> Result<ShareLinkPayload> {
        let id = parse_id("dashboardId", &dashboard_id)?;
        let expires_in =
            crate::duration::parse(&expires_in).map_err(|e| AppError::bad_input("expiresIn", e))?;
        let locked = match locked_variables {
            None => Map::new(),
            Some(Json(Value::Object(map))) => map,
            Some(_) => {
                return Err(
                    AppError::bad_input("lockedVariables", "an object of name → value").into(),
                );
            }
        };
        let app = state(ctx)?;
        let (created, token) = dashboards::create_link(
            &app.db,
            tenant(ctx)?,
            &app.keys,
            meta(ctx),
            id,
            expires_in,
            locked,
        )
        .await?;
        Ok(ShareLinkPayload {
            token,
            link: link(created),
        })
    }

    /// Revokes a share link (SHARE permission on its dashboard).
    #[graphql(guard = "RoleGuard::new(Role::Editor)")]
    async fn revoke_share_link(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let Ok(id) = parse_id("id", &id) else {
            return Ok(false);
        };
        Ok(dashboards::revoke_link(&state(ctx)?.db, tenant(ctx)?, meta(ctx), id).await?)
    }

    /// Makes an earlier version the newest one (a new version).
    #[graphql(guard = "RoleGuard::new(Role::Editor)")]
    async fn restore_dashboard_version(
        &self,
        ctx: &Context<'_>,
        id: ID,
        version: i32,
    ) -> Result<Dashboard> {
        let id = parse_id("id", &id)?;
        let restored =
            dashboards::restore(&state(ctx)?.db, tenant(ctx)?, meta(ctx), id, version).await?;
        changed(ctx, &restored, DashboardChange::Edited);
        Ok(plain(restored))
    }
}

/// Tells `dashboardUpdated` subscribers (on every instance) of a change.
fn changed(ctx: &Context<'_>, d: &dashboards::Dashboard, change: DashboardChange) {
    let message = DashboardChanged {
        dashboard_id: d.model.id,
        version: d.model.version,
        change,
    };
    if let Ok(app) = state(ctx)
        && let Err(e) = app
            .bus
            .publish(d.model.tenant_id, Topic::Dashboards, &message)
    {
        tracing::warn!(error = %e, "cannot publish a dashboard change");
    }
}

/// `dashboardUpdated`: the dashboard now, then again after each edit and
/// each commit of events its widgets read (debounced); ends with
/// `NOT_FOUND` once it is deleted or no longer visible to the caller
/// (checked again whenever its grants change).
pub(super) async fn updated(
    ctx: &Context<'_>,
    id: ID,
) -> Result<impl futures_util::Stream<Item = Result<Dashboard>> + use<>> {
    use futures_util::StreamExt as _;
    let caller = tenant(ctx)?.clone();
    let app = state(ctx)?.clone();
    let id = parse_id("id", &id)?;
    let first = dashboards::find(&app.db, &caller, id)
        .await?
        .ok_or(AppError::NotFound("dashboard"))?;
    let slot = app.live.subscribe(
        &caller,
        ctx.data_opt::<crate::domain::live::ConnectionSlot>(),
    )?;
    let debounce = app.config.live.debounce;
    let mut edits = app.bus.receiver(caller.tenant_id, Topic::Dashboards);
    let mut events = app.bus.receiver(caller.tenant_id, Topic::Events);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Dashboard>>(1);
    let watcher = async move {
        let _held = slot;
        let mut types = read_types(&first);
        if tx.send(Ok(plain(first))).await.is_err() {
            return;
        }
        loop {
            let wake = tokio::select! {
                () = tx.closed() => return,
                msg = edits.recv() => match msg {
                    Ok(raw) => serde_json::from_str::<DashboardChanged>(&raw)
                        .is_ok_and(|m| m.dashboard_id == id),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(_) => return,
                },
                msg = events.recv() => match msg {
                    Ok(raw) => serde_json::from_str::<crate::realtime::EventsCommitted>(&raw)
                        .is_ok_and(|m| types.as_ref().is_none_or(|t| m.types.iter().any(|x| t.contains(x)))),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(_) => return,
                },
            };
            if !wake {
                continue;
            }
            tokio::time::sleep(debounce).await;
            let found = dashboards::find(&app.db, &caller, id).await;
            let next = match found {
                Ok(Some(d)) => {
                    types = read_types(&d);
                    Ok(plain(d))
                }
                Ok(None) => Err(AppError::NotFound("dashboard").into()),
                Err(e) => Err(e.into()),
            };
            let last = next.is_err();
            if tx.send(next).await.is_err() || last {
                return;
            }
        }
    };
    tokio::spawn(watcher);
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
}

/// The event types a dashboard's widgets read, or `None` when some
/// widget may read any (no type filter, or a saved query's).
fn read_types(d: &dashboards::Dashboard) -> Option<Vec<String>> {
    let widgets: Vec<StoredWidget> =
        serde_json::from_value(d.model.widgets.clone()).unwrap_or_default();
    let mut types = Vec::new();
    for w in &widgets {
        if w.saved_query_id.is_some() || !collect_types(&w.definition, &mut types) {
            return None;
        }
    }
    Some(types)
}

/// Adds the event types `definition` names to `out`; false when some
/// metric query in it names none (it reads every type).
fn collect_types(definition: &Value, out: &mut Vec<String>) -> bool {
    match definition {
        Value::Object(map) => {
            let mut bounded = true;
            if map.contains_key("measure") && !map.contains_key("eventTypes") {
                bounded = false;
            }
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("eventTypes", Value::Array(items)) => {
                        out.extend(items.iter().filter_map(Value::as_str).map(str::to_owned))
                    }
                    ("eventTypes", Value::Null) => bounded = false,
                    ("eventType" | "startEvent" | "returnEvent", Value::String(s)) => {
                        out.push(s.clone());
                    }
                    _ => bounded &= collect_types(value, out),
                }
            }
            bounded
        }
        Value::Array(items) => items.iter().all(|v| collect_types(v, out)),
        _ => true,
    }
}
