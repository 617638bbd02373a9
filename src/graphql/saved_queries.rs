//! Saved queries: the `SavedQuery` object, listing, CRUD and
//! `runSavedQuery`.
//!
//! The stored query is the GraphQL input of its kind (`MetricQueryInput`,
//! `FunnelInput`, `RetentionInput`) turned into JSON; running it binds the
//! parameters (domain) and reads that JSON back through the same input
//! type, so a saved query is validated exactly as the field it stands for.

use async_graphql::connection::{Connection, Edge};
use async_graphql::dataloader::DataLoader;
use async_graphql::{
    Context, Enum, ID, InputObject, InputType, Json, Object, Result, SimpleObject, Union,
};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::guard::{RoleGuard, meta, state, tenant};
use super::loaders::UserLoader;
use super::metrics::{
    FormulaInput, FunnelInput, FunnelResult, MetricQueryInput, MetricResult, RetentionInput,
    RetentionResult, run_formula, run_funnel, run_metrics, run_retention,
};
use super::users::{User, parse_id};
use crate::auth::{InTenant, Role};
use crate::domain::metrics::plan;
use crate::domain::page::{PageRequest, encode_cursor};
use crate::domain::saved_queries::{self, Kind, Parameter, SavedQueryInput as Input};
use crate::error::AppError;

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(name = "SavedQueryKind")]
pub enum KindValue {
    Metric,
    Formula,
    Funnel,
    Retention,
}

impl From<Kind> for KindValue {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Metric => KindValue::Metric,
            Kind::Formula => KindValue::Formula,
            Kind::Funnel => KindValue::Funnel,
            Kind::Retention => KindValue::Retention,
        }
    }
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(
    remote = "crate::domain::saved_queries::ParamType",
    name = "ParameterType"
)]
pub enum ParamTypeValue {
    String,
    Number,
    Boolean,
    /// `{from, to}` or `{last}`; written as `range: {last: "$name"}` it
    /// stands for the whole range.
    TimeRange,
    StringList,
}

/// A parameter: `"$name"` in the stored query is replaced by its value.
#[derive(InputObject)]
#[graphql(name = "QueryParameterInput")]
pub struct QueryParameterInput {
    /// `[a-z][a-z0-9_]*`.
    pub name: String,
    #[graphql(name = "type")]
    pub ty: ParamTypeValue,
    /// Used when a run gives no value; without one, every run must.
    pub default: Option<Json<Value>>,
}

#[derive(SimpleObject)]
pub struct QueryParameter {
    name: String,
    #[graphql(name = "type")]
    ty: ParamTypeValue,
    default: Option<Json<Value>>,
}

/// A saved query: exactly one of `query`, `formula`, `funnel` or
/// `retention`.
#[derive(InputObject)]
pub struct SavedQueryInput {
    pub name: String,
    pub description: Option<String>,
    /// Visible to every member of the tenant; default: only the owner and
    /// ADMINs.
    pub is_public: Option<bool>,
    pub query: Option<MetricQueryInput>,
    pub formula: Option<FormulaInput>,
    pub funnel: Option<FunnelInput>,
    pub retention: Option<RetentionInput>,
    pub parameters: Option<Vec<QueryParameterInput>>,
}

impl SavedQueryInput {
    fn into_domain(self) -> Result<Input, AppError> {
        let chosen = [
            self.query.as_ref().map(|q| (Kind::Metric, stored(q))),
            self.formula.as_ref().map(|q| (Kind::Formula, stored(q))),
            self.funnel.as_ref().map(|q| (Kind::Funnel, stored(q))),
            self.retention
                .as_ref()
                .map(|q| (Kind::Retention, stored(q))),
        ];
        let mut chosen = chosen.into_iter().flatten();
        let (kind, value) = match (chosen.next(), chosen.next()) {
            (Some(one), None) => one,
            _ => {
                return Err(AppError::bad_input(
                    "input",
                    "give exactly one of query, formula, funnel or retention",
                ));
            }
        };
        let definition = value?;
        Ok(Input {
            name: self.name,
            description: self.description,
            is_public: self.is_public.unwrap_or(false),
            kind,
            definition,
            parameters: self
                .parameters
                .unwrap_or_default()
                .into_iter()
                .map(|p| Parameter {
                    name: p.name,
                    ty: p.ty.into(),
                    default: p.default.map(|Json(v)| v),
                })
                .collect(),
        })
    }
}

/// An input as it is stored: its JSON (serde, which keeps `JSON` scalars
/// as they were given, unlike `InputType::to_value`) without the absent
/// fields.
pub(crate) fn stored(input: &impl serde::Serialize) -> Result<Value, AppError> {
    serde_json::to_value(input)
        .map(strip_nulls)
        .map_err(|e| AppError::internal(anyhow::anyhow!("storing a query: {e}")))
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

/// The first key of `given` that `read` (the same input after a round trip
/// through its type) lacks: a field the type does not have, which GraphQL
/// input parsing would silently drop (a renamed field must not quietly
/// widen a stored query).
fn unknown_field(given: &Value, read: &Value, at: &str) -> Option<String> {
    match (given, read) {
        (Value::Object(g), Value::Object(r)) => g.iter().find_map(|(k, v)| match r.get(k) {
            None => Some(format!("{at}.{k}")),
            Some(rv) => unknown_field(v, rv, &format!("{at}.{k}")),
        }),
        (Value::Array(g), Value::Array(r)) => g
            .iter()
            .zip(r)
            .enumerate()
            .find_map(|(i, (gv, rv))| unknown_field(gv, rv, &format!("{at}[{i}]"))),
        _ => None,
    }
}

/// Reads bound JSON as the input type `T`, strictly (see [`unknown_field`]).
pub(crate) fn read_as<T: InputType + serde::Serialize>(bound: Value) -> Result<T, AppError> {
    let stale = |e: String| {
        AppError::bad_input(
            "savedQuery",
            format!("the stored query no longer validates: {e}"),
        )
    };
    let value = async_graphql::Value::from_json(bound.clone()).map_err(|e| stale(e.to_string()))?;
    let input = T::parse(Some(value))
        .map_err(|e| stale(e.into_server_error(Default::default()).message))?;
    if let Some(field) = unknown_field(&bound, &stored(&input)?, "query") {
        return Err(stale(format!(
            "`{field}` is not a field of {}",
            T::type_name()
        )));
    }
    Ok(input)
}

/// What a saved query computes.
#[derive(Union, Clone)]
pub enum QueryResult {
    Metric(MetricResult),
    Funnel(FunnelResult),
    Retention(RetentionResult),
}

/// A stored query, bound to its parameters' values and read back through
/// its input type: what a run executes.
pub(crate) enum Bound {
    Metric(MetricQueryInput),
    Formula(FormulaInput),
    Funnel(FunnelInput),
    Retention(RetentionInput),
}

/// Binds `supplied` values and reads the result back as the kind's input;
/// every problem is a `BAD_USER_INPUT`, never an internal error.
pub(crate) fn bind(
    saved: &saved_queries::SavedQuery,
    supplied: &Map<String, Value>,
) -> Result<Bound, AppError> {
    let kind = saved.kind().ok_or_else(|| {
        AppError::bad_input("savedQuery", format!("unknown kind `{}`", saved.model.kind))
    })?;
    let declared: Vec<Parameter> = serde_json::from_value(saved.model.parameters.clone())
        .map_err(|e| AppError::bad_input("savedQuery.parameters", format!("unreadable: {e}")))?;
    let bound = saved_queries::bind(&saved.model.definition, &declared, supplied)?;
    Ok(match kind {
        Kind::Metric => Bound::Metric(read_as(bound)?),
        Kind::Funnel => Bound::Funnel(read_as(bound)?),
        Kind::Retention => Bound::Retention(read_as(bound)?),
        Kind::Formula => Bound::Formula(read_as(bound)?),
    })
}

pub struct SavedQuery(pub(crate) saved_queries::SavedQuery);

#[Object]
impl SavedQuery {
    async fn id(&self) -> ID {
        ID(self.0.model.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.model.name
    }
    async fn description(&self) -> Option<&str> {
        self.0.model.description.as_deref()
    }
    async fn kind(&self) -> Option<KindValue> {
        self.0.kind().map(Into::into)
    }
    async fn is_public(&self) -> bool {
        self.0.model.is_public
    }
    /// The stored input, with `"$name"` placeholders.
    async fn definition(&self) -> Json<Value> {
        Json(self.0.model.definition.clone())
    }
    async fn parameters(&self) -> Vec<QueryParameter> {
        self.0
            .parameters()
            .into_iter()
            .map(|p| QueryParameter {
                name: p.name,
                ty: p.ty.into(),
                default: p.default.map(Json),
            })
            .collect()
    }
    /// Null when the stored query runs with its defaults; otherwise why
    /// not (a parameter without a value, an input that no longer
    /// validates), so a client can show it before anyone runs it.
    async fn problem(&self, ctx: &Context<'_>) -> Result<Option<String>> {
        if let Some(problem) = self.0.binding_problem() {
            // A parameter without a default is not a problem of the query.
            if !problem.contains("needs a value") {
                return Ok(Some(problem));
            }
            return Ok(None);
        }
        match bind(&self.0, &Map::new()) {
            Err(e) => Ok(Some(e.to_string())),
            Ok(Bound::Metric(q)) => {
                let app = state(ctx)?;
                Ok(
                    plan::plan(q.into_domain(), Utc::now(), app.config.analytics.max_range)
                        .err()
                        .map(|e| e.to_string()),
                )
            }
            Ok(_) => Ok(None),
        }
    }
    /// Null when the owner is gone (or the query was saved by a service).
    async fn owner(&self, ctx: &Context<'_>) -> Result<Option<User>> {
        let Some(owner) = self.0.model.owner_id else {
            return Ok(None);
        };
        let loader = ctx.data::<DataLoader<UserLoader>>()?;
        let key = InTenant {
            tenant: self.0.model.tenant_id,
            key: owner,
        };
        Ok(loader.load_one(key).await?.map(User))
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.model.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.model.updated_at
    }
}

#[derive(Default)]
pub struct SavedQueryQuery;

#[Object]
impl SavedQueryQuery {
    /// The saved queries the caller may see: their own, public ones, all
    /// for ADMINs.
    #[graphql(
        guard = "RoleGuard::new(Role::Viewer)",
        complexity = "super::page_complexity(first, child_complexity)"
    )]
    async fn saved_queries(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, SavedQuery>> {
        let page = PageRequest::new(first, after.as_deref())?;
        let found = saved_queries::list(&state(ctx)?.db, tenant(ctx)?, page).await?;
        let mut conn = Connection::new(page.after.is_some(), found.has_next);
        conn.edges.extend(
            found
                .items
                .into_iter()
                .map(|q| Edge::new(encode_cursor(q.model.id), SavedQuery(q))),
        );
        Ok(conn)
    }

    /// Null when absent, in another tenant, or private to someone else.
    #[graphql(guard = "RoleGuard::new(Role::Viewer)")]
    async fn saved_query(&self, ctx: &Context<'_>, id: ID) -> Result<Option<SavedQuery>> {
        let Ok(id) = parse_id("id", &id) else {
            return Ok(None);
        };
        Ok(saved_queries::find(&state(ctx)?.db, tenant(ctx)?, id)
            .await?
            .map(SavedQuery))
    }

    /// Runs a saved query with `parameters` (`{"name": value}`) over its
    /// defaults.
    #[graphql(
        guard = "RoleGuard::new(Role::Viewer)",
        complexity = "super::JOURNEY_COST + child_complexity"
    )]
    async fn run_saved_query(
        &self,
        ctx: &Context<'_>,
        id: ID,
        parameters: Option<Json<Value>>,
    ) -> Result<QueryResult> {
        let id = parse_id("id", &id)?;
        let saved = saved_queries::find(&state(ctx)?.db, tenant(ctx)?, id)
            .await?
            .ok_or(AppError::NotFound("saved query"))?;
        let supplied = match parameters {
            None => Map::new(),
            Some(Json(Value::Object(map))) => map,
            Some(_) => {
                return Err(AppError::bad_input("parameters", "an object of name → value").into());
            }
        };
        Ok(match bind(&saved, &supplied)? {
            Bound::Metric(q) => QueryResult::Metric(run_metrics(ctx, tenant(ctx)?, q, None).await?),
            Bound::Formula(q) => {
                QueryResult::Metric(run_formula(ctx, tenant(ctx)?, q, None).await?)
            }
            Bound::Funnel(q) => QueryResult::Funnel(run_funnel(ctx, tenant(ctx)?, q).await?),
            Bound::Retention(q) => {
                QueryResult::Retention(run_retention(ctx, tenant(ctx)?, q).await?)
            }
        })
    }
}

#[derive(Default)]
pub struct SavedQueryMutation;

#[Object]
impl SavedQueryMutation {
    #[graphql(guard = "RoleGuard::new(Role::Editor)")]
    async fn create_saved_query(
        &self,
        ctx: &Context<'_>,
        input: SavedQueryInput,
    ) -> Result<SavedQuery> {
        let app = state(ctx)?;
        let created =
            saved_queries::create(&app.db, tenant(ctx)?, meta(ctx), input.into_domain()?).await?;
        Ok(SavedQuery(created))
    }

    /// The owner or an ADMIN.
    #[graphql(guard = "RoleGuard::new(Role::Editor)")]
    async fn update_saved_query(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: SavedQueryInput,
    ) -> Result<SavedQuery> {
        let id = parse_id("id", &id)?;
        let app = state(ctx)?;
        let updated =
            saved_queries::update(&app.db, tenant(ctx)?, meta(ctx), id, input.into_domain()?)
                .await?;
        Ok(SavedQuery(updated))
    }

    /// The owner or an ADMIN; false when there was nothing to delete.
    #[graphql(guard = "RoleGuard::new(Role::Editor)")]
    async fn delete_saved_query(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let Ok(id) = parse_id("id", &id) else {
            return Ok(false);
        };
        let app = state(ctx)?;
        Ok(saved_queries::delete(&app.db, tenant(ctx)?, meta(ctx), id).await?)
    }
}
