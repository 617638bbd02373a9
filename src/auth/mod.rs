//! Who is calling: roles, the verified [`TenantCtx`], JWTs and passwords.
//!
//! A leaf module: it knows nothing of GraphQL or HTTP. The GraphQL guards
//! that check roles live in `graphql::guard`, beside the fields they guard.

pub mod jwt;
pub mod password;
pub mod policy;

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// A caller's role, ordered from least to most privileged.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    EnumIter,
    DeriveActiveEnum,
    Serialize,
    Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    #[sea_orm(string_value = "VIEWER")]
    Viewer,
    #[sea_orm(string_value = "EDITOR")]
    Editor,
    #[sea_orm(string_value = "ADMIN")]
    Admin,
    #[sea_orm(string_value = "SUPER_ADMIN")]
    SuperAdmin,
}

impl Role {
    pub fn at_least(self, required: Role) -> bool {
        self >= required
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "VIEWER",
            Role::Editor => "EDITOR",
            Role::Admin => "ADMIN",
            Role::SuperAdmin => "SUPER_ADMIN",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().replace('-', "_").as_str() {
            "VIEWER" => Ok(Role::Viewer),
            "EDITOR" => Ok(Role::Editor),
            "ADMIN" => Ok(Role::Admin),
            "SUPER_ADMIN" => Ok(Role::SuperAdmin),
            _ => Err(format!(
                "unknown role `{s}` (expected VIEWER, EDITOR, ADMIN or SUPER_ADMIN)"
            )),
        }
    }
}

/// The identity of one request, built once from a verified token and a
/// check that its tenant and user exist and may act. Every domain function
/// that touches tenant data takes it first.
#[derive(Clone, Debug)]
pub struct TenantCtx {
    pub tenant_id: Uuid,
    pub tenant_slug: String,
    /// The signed-in user; `None` for a service token (`sub: "service:<name>"`).
    pub user_id: Option<Uuid>,
    /// Who acts, as the audit trail names them: the user's email, or
    /// `service:<name>`.
    pub actor: String,
    /// The role in force: the token's, but never more than the user's
    /// current role.
    pub role: Role,
    /// What the tenant's plan allows, as read with the tenant.
    pub policy: std::sync::Arc<policy::Policy>,
}

/// The `sub` prefix of service tokens: tokens that act for a tenant
/// without a user (scripts, `pulse token` without `--user`).
pub const SERVICE_PREFIX: &str = "service:";

/// A key that cannot exist without its tenant: loaders (and later cache
/// keys and bus channels) are keyed by it, so nothing keyed by a bare id
/// can be read across tenants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InTenant<K> {
    pub tenant: Uuid,
    pub key: K,
}

impl<K> InTenant<K> {
    pub fn of(ctx: &TenantCtx, key: K) -> Self {
        InTenant {
            tenant: ctx.tenant_id,
            key,
        }
    }
}

/// Facts about the HTTP request that the audit trail records.
#[derive(Clone, Debug, Default)]
pub struct RequestMeta {
    pub request_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_by_privilege() {
        assert!(Role::SuperAdmin.at_least(Role::Admin));
        assert!(Role::Admin.at_least(Role::Admin));
        assert!(!Role::Editor.at_least(Role::Admin));
        assert!(Role::Editor.at_least(Role::Viewer));
    }

    #[test]
    fn roles_parse_case_insensitively() {
        assert_eq!("super_admin".parse::<Role>(), Ok(Role::SuperAdmin));
        assert_eq!("Viewer".parse::<Role>(), Ok(Role::Viewer));
        assert!("owner".parse::<Role>().is_err());
    }
}
