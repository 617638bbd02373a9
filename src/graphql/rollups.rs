//! Declared numeric properties and dimensions: `rollups` (every member
//! reads them) and `declareRollupField` / `dropRollupField` (ADMIN and
//! up). See `domain::events::rollup_fields` for what a declaration starts.

use async_graphql::{Context, Enum, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

use super::guard::{RoleGuard, meta, state, tenant};
use crate::auth::Role;
use crate::domain::events::rollup_fields::{self, Role as FieldRole};

/// What a declared property is for.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum RollupRole {
    /// Summed, averaged, min'd and max'd from hourly rollups.
    Numeric,
    /// Grouped by, from the same rollups.
    Dimension,
}

impl From<RollupRole> for FieldRole {
    fn from(r: RollupRole) -> Self {
        match r {
            RollupRole::Numeric => FieldRole::Numeric,
            RollupRole::Dimension => FieldRole::Dimension,
        }
    }
}

/// A declared property.
#[derive(SimpleObject)]
pub struct RollupField {
    /// The field as queries name it, e.g. `properties.amount`.
    field: String,
    role: RollupRole,
    declared_at: DateTime<Utc>,
    declared_by: String,
    /// A dimension's most distinct values per hour answered from rollups;
    /// a query over an hour with more reads raw events.
    max_values_per_hour: Option<i32>,
}

/// One numeric property, by one dimension or none: what a query of that
/// shape reads once `ready`.
#[derive(SimpleObject)]
pub struct RollupSeries {
    /// E.g. `properties.amount`.
    field: String,
    /// E.g. `properties.plan`; null for the series without a dimension.
    dimension: Option<String>,
    created_at: DateTime<Utc>,
    /// Whether its backfill is done; until then queries read raw events.
    ready: bool,
    /// Share of the backfill done, 0 to 1.
    progress: f64,
    /// Hours of earlier events filled so far, of how many.
    hours_done: i64,
    hours_total: i64,
    ready_at: Option<DateTime<Utc>>,
}

/// A tenant's declarations and the series they imply.
#[derive(SimpleObject)]
pub struct Rollups {
    fields: Vec<RollupField>,
    series: Vec<RollupSeries>,
}

fn field_name(path: &str) -> String {
    format!("properties.{path}")
}

impl From<rollup_fields::Rollups> for Rollups {
    fn from(r: rollup_fields::Rollups) -> Self {
        Rollups {
            fields: r
                .fields
                .into_iter()
                .map(|f| RollupField {
                    field: field_name(&f.name),
                    role: match f.role {
                        FieldRole::Numeric => RollupRole::Numeric,
                        FieldRole::Dimension => RollupRole::Dimension,
                    },
                    declared_at: f.declared_at,
                    declared_by: f.declared_by,
                    max_values_per_hour: f.max_values,
                })
                .collect(),
            series: r
                .series
                .into_iter()
                .map(|s| RollupSeries {
                    field: field_name(&s.property),
                    dimension: s.dimension.as_deref().map(field_name),
                    created_at: s.created_at,
                    ready: s.ready_at.is_some(),
                    progress: s.progress(),
                    hours_done: s.hours_done,
                    hours_total: s.hours_total,
                    ready_at: s.ready_at,
                })
                .collect(),
        }
    }
}

#[derive(Default)]
pub struct RollupQuery;

#[Object]
impl RollupQuery {
    /// The tenant's declared numeric properties and dimensions, and how
    /// far each series' backfill is.
    #[graphql(guard = "RoleGuard::new(Role::Viewer)")]
    async fn rollups(&self, ctx: &Context<'_>) -> Result<Rollups> {
        let found = rollup_fields::list(&state(ctx)?.db, tenant(ctx)?).await?;
        Ok(found.into())
    }
}

#[derive(Default)]
pub struct RollupMutation;

#[Object]
impl RollupMutation {
    /// Declares a property (`amount` or `properties.amount`) as NUMERIC or
    /// as a DIMENSION (ADMIN and up). Pulse keeps hourly count, sum, min
    /// and max of each numeric property per event type, overall and per
    /// value of each dimension, from now on, and fills them from earlier
    /// events in the background (`rollups.series`); queries read raw
    /// events until that is done. At most 10 of each role.
    #[graphql(guard = "RoleGuard::new(Role::Admin)")]
    async fn declare_rollup_field(
        &self,
        ctx: &Context<'_>,
        field: String,
        role: RollupRole,
        max_values_per_hour: Option<i32>,
    ) -> Result<Rollups> {
        let app = state(ctx)?;
        let found = rollup_fields::declare(
            &app.db,
            tenant(ctx)?,
            meta(ctx),
            &field,
            role.into(),
            max_values_per_hour,
            app.config.rollups.max_dimension_values,
        )
        .await?;
        Ok(found.into())
    }

    /// Drops a declaration with its series and their rollups (ADMIN and
    /// up); false when it was not declared.
    #[graphql(guard = "RoleGuard::new(Role::Admin)")]
    async fn drop_rollup_field(
        &self,
        ctx: &Context<'_>,
        field: String,
        role: RollupRole,
    ) -> Result<bool> {
        let app = state(ctx)?;
        Ok(
            rollup_fields::drop_field(&app.db, tenant(ctx)?, meta(ctx), &field, role.into())
                .await?,
        )
    }
}
