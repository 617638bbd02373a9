//! Saved queries: a tenant's named analytic queries with typed parameters.
//!
//! What is stored is the query's input as JSON (the GraphQL input of its
//! kind, which the GraphQL layer turns back into a query when it runs) with
//! `"$name"` wherever a parameter's value goes. This module owns the rules
//! that do not depend on the query's shape: who sees and changes which
//! query, the parameters' declarations, and binding values to them.
//!
//! Visibility: a query is seen by its owner, by the tenant's `ADMIN`s, and
//! by every member when `isPublic`; anyone else gets `None`, exactly as for
//! an id that does not exist. Writing needs `EDITOR`, and changing or
//! deleting someone else's query needs `ADMIN`.

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, DatabaseConnection, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::audit::{self, Actor, Change};
use super::metrics::plan;
use super::page::{Page, PageRequest};
use crate::auth::{RequestMeta, Role, TenantCtx};
use crate::db::{scoped, scoped_write};
use crate::entities::saved_query;
use crate::error::{AppError, AppResult};

pub const MAX_PARAMETERS: usize = 20;
pub const MAX_DEFINITION_BYTES: usize = 64 * 1024;

/// What a saved query computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Metric,
    Formula,
    Funnel,
    Retention,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Metric => "METRIC",
            Kind::Formula => "FORMULA",
            Kind::Funnel => "FUNNEL",
            Kind::Retention => "RETENTION",
        }
    }

    pub fn parse(raw: &str) -> Option<Kind> {
        [Kind::Metric, Kind::Formula, Kind::Funnel, Kind::Retention]
            .into_iter()
            .find(|k| k.as_str() == raw)
    }
}

/// The type of a parameter's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ParamType {
    String,
    Number,
    Boolean,
    /// `{from, to}` or `{last}`; placed as `range: {last: "$name"}`, it
    /// stands for the whole range.
    TimeRange,
    StringList,
}

/// A declared parameter: `$campaign: STRING = "spring"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Parameter {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ParamType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
}

/// What a client saves.
#[derive(Clone, Debug)]
pub struct SavedQueryInput {
    pub name: String,
    pub description: Option<String>,
    pub is_public: bool,
    pub kind: Kind,
    pub definition: Value,
    pub parameters: Vec<Parameter>,
}

/// A saved query as it is read: the row, its declared parameters, and
/// whether its stored input still makes sense (see [`SavedQuery::problem`]).
#[derive(Clone, Debug)]
pub struct SavedQuery {
    pub model: saved_query::Model,
}

impl SavedQuery {
    pub fn kind(&self) -> Option<Kind> {
        Kind::parse(&self.model.kind)
    }

    /// The declared parameters; an unreadable declaration is reported by
    /// [`problem`](Self::problem) and reads as none.
    pub fn parameters(&self) -> Vec<Parameter> {
        serde_json::from_value(self.model.parameters.clone()).unwrap_or_default()
    }

    /// Why the stored query cannot run with its defaults as it is, if it
    /// cannot: a parameter without a value, an unknown placeholder, a kind
    /// this version does not know.
    pub fn binding_problem(&self) -> Option<String> {
        if self.kind().is_none() {
            return Some(format!("unknown kind `{}`", self.model.kind));
        }
        let declared: Vec<Parameter> = match serde_json::from_value(self.model.parameters.clone()) {
            Ok(p) => p,
            Err(e) => return Some(format!("unreadable parameters: {e}")),
        };
        bind(&self.model.definition, &declared, &Map::new())
            .err()
            .map(|e| e.to_string())
    }
}

fn validate_name(raw: &str, at: &str) -> AppResult<String> {
    let name = raw.trim().to_owned();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(AppError::bad_input(at, "must be 1 to 200 characters"));
    }
    Ok(name)
}

fn validate_parameters(parameters: &[Parameter]) -> AppResult<()> {
    validate_declarations(parameters, "input.parameters")
}

/// Checks declarations (names, types, defaults), errors under `prefix`.
fn validate_declarations(parameters: &[Parameter], prefix: &str) -> AppResult<()> {
    if parameters.len() > MAX_PARAMETERS {
        return Err(AppError::bad_input(
            prefix,
            format!("at most {MAX_PARAMETERS} parameters"),
        ));
    }
    for (i, p) in parameters.iter().enumerate() {
        let at = format!("{prefix}[{i}]");
        let valid = p.name.len() <= 64
            && p.name.starts_with(|c: char| c.is_ascii_lowercase())
            && p.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(AppError::bad_input(
                format!("{at}.name"),
                format!("`{}` is not a name: [a-z][a-z0-9_]*, at most 64", p.name),
            ));
        }
        if parameters[..i].iter().any(|q| q.name == p.name) {
            return Err(AppError::bad_input(
                format!("{at}.name"),
                format!("`{}` is declared twice", p.name),
            ));
        }
        if let Some(default) = &p.default {
            check_type(p, default, &format!("{at}.default"))?;
        }
    }
    Ok(())
}

/// Checks that `value` fits `p`'s type; errors name `at`.
fn check_type(p: &Parameter, value: &Value, at: &str) -> AppResult<()> {
    let fits = match p.ty {
        ParamType::String => value.as_str().is_some_and(|s| s.len() <= 1_000),
        ParamType::Number => value.as_f64().is_some_and(f64::is_finite),
        ParamType::Boolean => value.is_boolean(),
        ParamType::StringList => value.as_array().is_some_and(|items| {
            items.len() <= plan::MAX_FILTER_VALUES && items.iter().all(Value::is_string)
        }),
        ParamType::TimeRange => match value.as_object() {
            Some(range) => {
                let keys: Vec<&str> = range.keys().map(String::as_str).collect();
                let strings = range.values().all(Value::is_string);
                strings
                    && (keys == ["last"]
                        || (keys.len() == 2
                            && range.contains_key("from")
                            && range.contains_key("to")))
            }
            None => false,
        },
    };
    if fits {
        Ok(())
    } else {
        let expected = match p.ty {
            ParamType::String => "a string",
            ParamType::Number => "a number",
            ParamType::Boolean => "true or false",
            ParamType::StringList => "a list of strings",
            ParamType::TimeRange => "a range, {\"last\": \"7d\"} or {\"from\": …, \"to\": …}",
        };
        Err(AppError::bad_input(
            at,
            format!("`${}` takes {expected}", p.name),
        ))
    }
}

/// The placeholder a string stands for, if it is one: `"$campaign"`.
fn placeholder(s: &str) -> Option<&str> {
    s.strip_prefix('$').filter(|n| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    })
}

/// Every placeholder used in `definition`.
pub fn placeholders(definition: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => {
                if let Some(name) = placeholder(s)
                    && !out.iter().any(|n| n == name)
                {
                    out.push(name.to_owned());
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            Value::Object(map) => map.values().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    walk(definition, &mut out);
    out
}

/// The stored definition with each placeholder replaced by its value:
/// `supplied` first, then the declared default. Errors name
/// `parameters.<name>` for a bad or missing value.
pub fn bind(
    definition: &Value,
    declared: &[Parameter],
    supplied: &Map<String, Value>,
) -> AppResult<Value> {
    for name in supplied.keys() {
        if !declared.iter().any(|p| &p.name == name) {
            return Err(AppError::bad_input(
                format!("parameters.{name}"),
                "is not a parameter of this query",
            ));
        }
    }
    let mut values = Map::new();
    for p in declared {
        let at = format!("parameters.{}", p.name);
        match supplied.get(&p.name).or(p.default.as_ref()) {
            Some(v) => {
                check_type(p, v, &at)?;
                values.insert(p.name.clone(), v.clone());
            }
            None => {
                if placeholders(definition).contains(&p.name) {
                    return Err(AppError::bad_input(at, "needs a value (it has no default)"));
                }
            }
        }
    }
    all_declared(definition, declared)?;
    Ok(substitute(definition, declared, &values))
}

/// Every placeholder of `definition` is a declared parameter.
fn all_declared(definition: &Value, declared: &[Parameter]) -> AppResult<()> {
    undeclared_under(definition, declared, "input.parameters")
}

fn undeclared_under(definition: &Value, declared: &[Parameter], at: &str) -> AppResult<()> {
    match placeholders(definition)
        .into_iter()
        .find(|name| !declared.iter().any(|p| &p.name == name))
    {
        Some(name) => Err(AppError::bad_input(
            at,
            format!("the query uses `${name}`, which is not declared"),
        )),
        None => Ok(()),
    }
}

/// Checks declared variables (as parameters: names, types, defaults) and
/// that every placeholder `uses` holds is one of them; errors under `at`.
/// Dashboards declare their variables this way.
pub fn check_declarations(uses: &Value, declared: &[Parameter], at: &str) -> AppResult<()> {
    validate_declarations(declared, at)?;
    undeclared_under(uses, declared, at)
}

fn substitute(v: &Value, declared: &[Parameter], values: &Map<String, Value>) -> Value {
    match v {
        Value::String(s) => match placeholder(s).and_then(|n| values.get(n)) {
            Some(value) => value.clone(),
            None => v.clone(),
        },
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| substitute(i, declared, values))
                .collect(),
        ),
        Value::Object(map) => {
            // `range: {last: "$r"}` with a TIME_RANGE `$r`: the whole range.
            if let Some(name) = map
                .get("last")
                .and_then(Value::as_str)
                .and_then(placeholder)
                && map.len() == 1
                && declared
                    .iter()
                    .any(|p| p.name == name && p.ty == ParamType::TimeRange)
                && let Some(range) = values.get(name)
            {
                return range.clone();
            }
            Value::Object(
                map.iter()
                    .map(|(k, i)| (k.clone(), substitute(i, declared, values)))
                    .collect(),
            )
        }
        other => other.clone(),
    }
}

/// Only the owner and the tenant's `ADMIN`s may change or delete a query.
fn may_change(ctx: &TenantCtx, model: &saved_query::Model) -> bool {
    ctx.role.at_least(Role::Admin) || (model.owner_id.is_some() && model.owner_id == ctx.user_id)
}

/// The rows `ctx` may see (see the module doc).
fn visible(ctx: &TenantCtx) -> Condition {
    let base = Condition::all().add(saved_query::Column::TenantId.eq(ctx.tenant_id));
    if ctx.role.at_least(Role::Admin) {
        return base;
    }
    let mut who = Condition::any().add(saved_query::Column::IsPublic.eq(true));
    if let Some(me) = ctx.user_id {
        who = who.add(saved_query::Column::OwnerId.eq(me));
    }
    base.add(who)
}

/// [`visible`] for a row already read: what a loader that reads a batch of
/// ids for several callers applies to each caller's row.
pub fn is_visible_to(m: &saved_query::Model, ctx: &TenantCtx) -> bool {
    m.tenant_id == ctx.tenant_id
        && (ctx.role.at_least(Role::Admin)
            || m.is_public
            || (ctx.user_id.is_some() && ctx.user_id == m.owner_id))
}

pub fn audit_image(m: &saved_query::Model) -> Value {
    json!({
        "id": m.id,
        "name": m.name,
        "description": m.description,
        "kind": m.kind,
        "definition": m.definition,
        "parameters": m.parameters,
        "isPublic": m.is_public,
        "ownerId": m.owner_id,
    })
}

pub async fn list(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    page: PageRequest,
) -> AppResult<Page<SavedQuery>> {
    let condition = visible(ctx);
    let rows = scoped(db, ctx, move |txn| {
        Box::pin(async move {
            let mut query = saved_query::Entity::find()
                .filter(condition)
                .order_by_asc(saved_query::Column::Id)
                .limit(page.first + 1);
            if let Some(after) = page.after {
                query = query.filter(saved_query::Column::Id.gt(after));
            }
            Ok(query.all(txn).await?)
        })
    })
    .await?;
    let page = Page::from_overfetch(rows, page.first);
    Ok(Page {
        items: page
            .items
            .into_iter()
            .map(|model| SavedQuery { model })
            .collect(),
        has_next: page.has_next,
    })
}

/// A query `ctx` may see; `None` for unknown ids, other tenants' and
/// private ones of others.
pub async fn find(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    id: Uuid,
) -> AppResult<Option<SavedQuery>> {
    let condition = visible(ctx);
    let found = scoped(db, ctx, move |txn| {
        Box::pin(async move {
            Ok(saved_query::Entity::find_by_id(id)
                .filter(condition)
                .one(txn)
                .await?)
        })
    })
    .await?;
    Ok(found.map(|model| SavedQuery { model }))
}

/// Checks everything but the query's shape, which the caller has checked.
fn validate(input: &SavedQueryInput) -> AppResult<(String, Option<String>)> {
    let name = validate_name(&input.name, "input.name")?;
    let description = match input.description.as_deref().map(str::trim) {
        Some(d) if d.chars().count() > 2_000 => {
            return Err(AppError::bad_input(
                "input.description",
                "at most 2000 characters",
            ));
        }
        Some("") | None => None,
        Some(d) => Some(d.to_owned()),
    };
    if input.definition.to_string().len() > MAX_DEFINITION_BYTES {
        return Err(AppError::bad_input(
            "input",
            format!("the stored query is larger than {MAX_DEFINITION_BYTES} bytes"),
        ));
    }
    validate_parameters(&input.parameters)?;
    // A parameter without a default is fine to save: it needs a value when
    // the query runs.
    all_declared(&input.definition, &input.parameters)?;
    Ok((name, description))
}

pub async fn create(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    input: SavedQueryInput,
) -> AppResult<SavedQuery> {
    require_editor(ctx)?;
    let (name, description) = validate(&input)?;
    let (caller, meta) = (ctx.clone(), meta.clone());
    let parameters = serde_json::to_value(&input.parameters).map_err(AppError::internal)?;
    let model = scoped_write(db, ctx, move |txn| {
        Box::pin(async move {
            let now = Utc::now();
            let created = saved_query::Entity::insert(saved_query::ActiveModel {
                id: Set(Uuid::now_v7()),
                tenant_id: Set(caller.tenant_id),
                owner_id: Set(caller.user_id),
                name: Set(name),
                description: Set(description),
                kind: Set(input.kind.as_str().to_owned()),
                definition: Set(input.definition),
                parameters: Set(parameters),
                is_public: Set(input.is_public),
                created_at: Set(now),
                updated_at: Set(now),
            })
            .exec_with_returning(txn)
            .await?;
            record(
                txn,
                &caller,
                &meta,
                "saved_query.create",
                None,
                Some(&created),
            )
            .await?;
            Ok(created)
        })
    })
    .await?;
    Ok(SavedQuery { model })
}

pub async fn update(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    id: Uuid,
    input: SavedQueryInput,
) -> AppResult<SavedQuery> {
    require_editor(ctx)?;
    let (name, description) = validate(&input)?;
    let (caller, meta) = (ctx.clone(), meta.clone());
    let parameters = serde_json::to_value(&input.parameters).map_err(AppError::internal)?;
    let condition = visible(ctx);
    let model = scoped_write(db, ctx, move |txn| {
        Box::pin(async move {
            let current = saved_query::Entity::find_by_id(id)
                .filter(condition)
                .one(txn)
                .await?
                .ok_or(AppError::NotFound("saved query"))?;
            if !may_change(&caller, &current) {
                return Err(AppError::Forbidden(
                    "only the owner or an ADMIN may change this saved query".into(),
                ));
            }
            let before = current.clone();
            let mut active: saved_query::ActiveModel = current.into();
            active.name = Set(name);
            active.description = Set(description);
            active.kind = Set(input.kind.as_str().to_owned());
            active.definition = Set(input.definition);
            active.parameters = Set(parameters);
            active.is_public = Set(input.is_public);
            active.updated_at = Set(Utc::now());
            let updated = active.update(txn).await?;
            record(
                txn,
                &caller,
                &meta,
                "saved_query.update",
                Some(&before),
                Some(&updated),
            )
            .await?;
            Ok(updated)
        })
    })
    .await?;
    Ok(SavedQuery { model })
}

pub async fn delete(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    id: Uuid,
) -> AppResult<bool> {
    require_editor(ctx)?;
    let (caller, meta) = (ctx.clone(), meta.clone());
    let condition = visible(ctx);
    scoped_write(db, ctx, move |txn| {
        Box::pin(async move {
            let Some(current) = saved_query::Entity::find_by_id(id)
                .filter(condition)
                .one(txn)
                .await?
            else {
                return Ok(false);
            };
            if !may_change(&caller, &current) {
                return Err(AppError::Forbidden(
                    "only the owner or an ADMIN may delete this saved query".into(),
                ));
            }
            saved_query::Entity::delete_by_id(current.id)
                .filter(saved_query::Column::TenantId.eq(caller.tenant_id))
                .exec(txn)
                .await?;
            record(
                txn,
                &caller,
                &meta,
                "saved_query.delete",
                Some(&current),
                None,
            )
            .await?;
            Ok(true)
        })
    })
    .await
}

fn require_editor(ctx: &TenantCtx) -> AppResult<()> {
    if ctx.role.at_least(Role::Editor) {
        Ok(())
    } else {
        Err(AppError::Forbidden("requires role EDITOR or higher".into()))
    }
}

async fn record(
    txn: &sea_orm::DatabaseTransaction,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    action: &'static str,
    before: Option<&saved_query::Model>,
    after: Option<&saved_query::Model>,
) -> AppResult<()> {
    let id = after.or(before).map(|m| m.id.to_string());
    audit::record(
        txn,
        ctx.tenant_id,
        &Actor::of(ctx),
        meta,
        Change {
            action,
            resource_type: "saved_query",
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

    fn param(name: &str, ty: ParamType, default: Option<Value>) -> Parameter {
        Parameter {
            name: name.into(),
            ty,
            default,
        }
    }

    #[test]
    fn placeholders_bind_supplied_values_then_defaults() {
        let definition = json!({
            "measure": "COUNT",
            "filters": [{ "field": "properties.campaign", "op": "EQ", "value": "$campaign" }],
            "range": { "last": "$range" },
            "note": "$$not a placeholder"
        });
        let declared = [
            param("campaign", ParamType::String, Some(json!("spring"))),
            param("range", ParamType::TimeRange, Some(json!({ "last": "7d" }))),
        ];
        let bound = bind(&definition, &declared, &Map::new()).expect("defaults");
        assert_eq!(bound["filters"][0]["value"], "spring");
        assert_eq!(bound["range"], json!({ "last": "7d" }));
        assert_eq!(bound["note"], "$$not a placeholder");
        let mut supplied = Map::new();
        supplied.insert("campaign".into(), json!("autumn"));
        supplied.insert(
            "range".into(),
            json!({ "from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z" }),
        );
        let bound = bind(&definition, &declared, &supplied).expect("supplied");
        assert_eq!(bound["filters"][0]["value"], "autumn");
        assert_eq!(bound["range"]["from"], "2026-01-01T00:00:00Z");
    }

    #[test]
    fn bad_missing_and_unknown_parameters_are_named() {
        let definition = json!({ "value": "$campaign", "other": "$undeclared" });
        let declared = [param("campaign", ParamType::String, None)];
        let err = bind(&definition, &declared, &Map::new()).expect_err("missing");
        assert!(
            matches!(err, AppError::BadInput { ref field, .. } if field == "parameters.campaign")
        );
        let mut supplied = Map::new();
        supplied.insert("campaign".into(), json!(7));
        let err = bind(&definition, &declared, &supplied).expect_err("wrong type");
        assert!(err.to_string().contains("takes a string"));
        supplied.insert("campaign".into(), json!("x"));
        let err = bind(&definition, &declared, &supplied).expect_err("undeclared");
        assert!(err.to_string().contains("$undeclared"));
        supplied.insert("nope".into(), json!("x"));
        let err = bind(&json!({}), &declared, &supplied).expect_err("unknown supplied");
        assert!(matches!(err, AppError::BadInput { ref field, .. } if field == "parameters.nope"));
    }

    #[test]
    fn declarations_are_checked() {
        for bad in [
            vec![param("Campaign", ParamType::String, None)],
            vec![param("1x", ParamType::String, None)],
            vec![
                param("a", ParamType::String, None),
                param("a", ParamType::Number, None),
            ],
            vec![param("a", ParamType::Number, Some(json!("7")))],
            vec![param("r", ParamType::TimeRange, Some(json!({ "last": 7 })))],
        ] {
            assert!(validate_parameters(&bad).is_err(), "{bad:?}");
        }
        let many: Vec<Parameter> = (0..=MAX_PARAMETERS)
            .map(|i| param(&format!("p{i}"), ParamType::Boolean, None))
            .collect();
        assert!(validate_parameters(&many[..MAX_PARAMETERS]).is_ok());
        assert!(validate_parameters(&many).is_err());
    }
}
