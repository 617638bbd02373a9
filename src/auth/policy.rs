//! What a tenant's plan allows: request rates per kind of work, the query
//! budget, and whether only registered operations may run.
//!
//! A plan names defaults ([`Policy::for_plan`]); a tenant's `settings`
//! may override any of them under `limits` (set by a SUPER_ADMIN, never
//! by the tenant's own admins), and its admins may turn on the operation
//! allow-list (`allow_list`). The policy is read with the tenant on every
//! authentication, so a change holds from the next request on.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A rate: so many units per minute for the whole tenant and for each of
/// its users (a service token counts as a user). Bursts of up to a
/// minute's worth are allowed; the rate then refills evenly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub per_tenant: u64,
    pub per_user: u64,
}

/// The work a query may do, in estimated rows: for one query, and summed
/// over a minute for the tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub per_query: u64,
    pub per_minute: u64,
}

/// Largest value any limit may be set to (beyond it the rate arithmetic
/// in microseconds would lose precision; nobody needs more).
pub const MAX_LIMIT: u64 = 1 << 50;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// GraphQL query operations (and subscriptions started), per minute.
    pub queries: Quota,
    /// GraphQL mutations, per minute.
    pub mutations: Quota,
    /// Events accepted by `/v1/events` and `ingestEvents`, per minute.
    pub ingestion: Quota,
    pub budget: Budget,
    /// Only operations registered for the tenant run (ADMIN and up are
    /// exempt, so the list can be managed).
    pub allow_list: bool,
}

/// The `limits` object of a tenant's settings; every part optional.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsOverride {
    pub queries: Option<Quota>,
    pub mutations: Option<Quota>,
    pub ingestion: Option<Quota>,
    pub budget: Option<Budget>,
}

const fn quota(per_tenant: u64, per_user: u64) -> Quota {
    Quota {
        per_tenant,
        per_user,
    }
}

impl Policy {
    /// A plan's defaults. `trial` is the smallest; `team` (and any plan
    /// not named here) ten times that; `enterprise` ten times again.
    pub fn for_plan(plan: &str) -> Policy {
        let scale = match plan {
            "trial" => 1,
            "enterprise" => 100,
            _ => 10,
        };
        Policy {
            queries: quota(600 * scale, 300 * scale),
            mutations: quota(120 * scale, 60 * scale),
            ingestion: quota(60_000 * scale, 60_000 * scale),
            budget: Budget {
                per_query: 20_000_000 * scale,
                per_minute: 200_000_000 * scale,
            },
            allow_list: false,
        }
    }

    /// The plan's defaults with the tenant's settings applied. Settings are
    /// checked when written ([`LimitsOverride::parse`]); a part that no
    /// longer reads keeps the plan's value.
    pub fn of(plan: &str, settings: &Value) -> Policy {
        let mut policy = Policy::for_plan(plan);
        if let Some(limits) = settings.get("limits")
            && let Ok(o) = LimitsOverride::parse(limits)
        {
            policy.queries = o.queries.unwrap_or(policy.queries);
            policy.mutations = o.mutations.unwrap_or(policy.mutations);
            policy.ingestion = o.ingestion.unwrap_or(policy.ingestion);
            policy.budget = o.budget.unwrap_or(policy.budget);
        }
        policy.allow_list = settings
            .get("allow_list")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        policy
    }
}

impl Default for Policy {
    /// The defaults of a plan not named in [`Policy::for_plan`].
    fn default() -> Self {
        Policy::for_plan("")
    }
}

impl LimitsOverride {
    /// Reads and checks a `limits` object: every number from 1 to
    /// [`MAX_LIMIT`]. The error names the offending part.
    pub fn parse(value: &Value) -> Result<LimitsOverride, String> {
        let parsed: LimitsOverride = serde_json::from_value(value.clone()).map_err(|e| {
            format!("expected {{queries, mutations, ingestion: {{per_tenant, per_user}}, budget: {{per_query, per_minute}}}}: {e}")
        })?;
        let numbers = [
            (
                "queries",
                parsed.queries.map(|q| [q.per_tenant, q.per_user]),
            ),
            (
                "mutations",
                parsed.mutations.map(|q| [q.per_tenant, q.per_user]),
            ),
            (
                "ingestion",
                parsed.ingestion.map(|q| [q.per_tenant, q.per_user]),
            ),
            ("budget", parsed.budget.map(|b| [b.per_query, b.per_minute])),
        ];
        for (name, values) in numbers {
            if values
                .iter()
                .flatten()
                .any(|v| !(1..=MAX_LIMIT).contains(v))
            {
                return Err(format!("{name}: every limit is between 1 and {MAX_LIMIT}"));
            }
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plans_scale_their_defaults() {
        let trial = Policy::for_plan("trial");
        assert_eq!(trial.queries, quota(600, 300));
        assert_eq!(Policy::for_plan("team").queries, quota(6_000, 3_000));
        assert_eq!(Policy::for_plan("something-new"), Policy::for_plan("team"));
        assert_eq!(
            Policy::for_plan("enterprise").budget.per_minute,
            20_000_000_000
        );
    }

    #[test]
    fn settings_override_parts_of_the_plan() {
        let p = Policy::of(
            "trial",
            &json!({"limits": {"queries": {"per_tenant": 5, "per_user": 2}}, "allow_list": true}),
        );
        assert_eq!(p.queries, quota(5, 2));
        assert_eq!(p.mutations, Policy::for_plan("trial").mutations);
        assert!(p.allow_list);
    }

    #[test]
    fn bad_limits_are_refused_when_written_and_ignored_when_read() {
        for bad in [
            json!({"queries": {"per_tenant": 0, "per_user": 1}}),
            json!({"queries": {"per_tenant": 1}}),
            json!({"budget": {"per_query": -1, "per_minute": 1}}),
            json!({"speed": 1}),
            json!({"ingestion": {"per_tenant": MAX_LIMIT + 1, "per_user": 1}}),
        ] {
            assert!(LimitsOverride::parse(&bad).is_err(), "{bad}");
            assert_eq!(
                Policy::of("trial", &json!({ "limits": bad })),
                Policy::for_plan("trial")
            );
        }
    }
}
