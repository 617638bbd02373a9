//! `alerts`: a tenant's alert definitions and each one's current state and
//! evaluation lease (see the migration for the columns' meaning).

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "alerts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// `None` once the owner is deleted, or for a service token's alert.
    pub owner_id: Option<Uuid>,
    pub name: String,
    pub description: Option<String>,
    /// The inline `MetricQueryInput`, as JSON.
    pub query: Option<Json>,
    pub saved_query_id: Option<Uuid>,
    /// Values for the saved query's parameters.
    pub parameters: Option<Json>,
    /// `LAST`, `SUM`, `AVG`, `MAX` or `MIN`.
    pub reducer: String,
    /// `ABOVE`, `BELOW`, `CHANGE_PCT_ABOVE` or `CHANGE_PCT_BELOW`.
    pub condition: String,
    pub threshold: f64,
    pub evaluate_every_secs: i64,
    pub for_secs: i64,
    pub keep_firing_for_secs: i64,
    /// `OK`, `NO_DATA` or `KEEP_LAST`.
    pub no_data: String,
    pub is_active: bool,
    /// `{name: value}`, strings.
    pub labels: Json,
    /// `[{id, url, headers, secret}]`.
    pub webhooks: Json,
    pub dashboard_id: Option<Uuid>,
    pub state: String,
    pub state_since: DateTimeUtc,
    pub last_value: Option<f64>,
    pub last_error: Option<String>,
    pub last_evaluated_at: Option<DateTimeUtc>,
    pub last_triggered_at: Option<DateTimeUtc>,
    pub next_evaluation_at: DateTimeUtc,
    pub lease_owner: Option<Uuid>,
    pub lease_until: Option<DateTimeUtc>,
    pub silenced_until: Option<DateTimeUtc>,
    pub silence_reason: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
