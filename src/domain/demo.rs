//! The demo data behind `pulse seed-demo` and the embedded first run.
//!
//! Idempotent: what exists is left alone, what is missing is created. Later
//! capabilities add their own demo data here.

use sea_orm::{ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use uuid::Uuid;

use super::tenants::{self, NewTenant};
use crate::auth::{Role, password};
use crate::entities::tenant::{self, TenantStatus};
use crate::entities::user::{self, UserStatus};
use crate::error::{AppError, AppResult};

/// The demo tenants: slug and display name.
pub const DEMO_TENANTS: &[(&str, &str)] =
    &[("acme", "Acme Corp"), ("globex", "Globex Corporation")];

/// One demo login.
#[derive(Clone, Debug)]
pub struct DemoAccount {
    pub tenant: String,
    pub email: String,
    pub role: Role,
    pub password: String,
}

/// What a seeding run did.
#[derive(Debug, Default)]
pub struct SeedReport {
    pub tenants_created: usize,
    pub users_created: usize,
    /// Every demo login, created now or before.
    pub accounts: Vec<DemoAccount>,
}

fn demo_accounts(slug: &str) -> Vec<DemoAccount> {
    let mut roles = vec![Role::Admin, Role::Editor, Role::Viewer];
    if slug == "acme" {
        // One platform operator, to try tenant administration.
        roles.insert(0, Role::SuperAdmin);
    }
    roles
        .into_iter()
        .map(|role| {
            let name = role.as_str().to_lowercase().replace('_', "-");
            DemoAccount {
                tenant: slug.to_owned(),
                email: format!("{name}@{slug}.example"),
                role,
                password: format!("demo-{name}-{slug}"),
            }
        })
        .collect()
}

pub async fn seed(db: &DatabaseConnection) -> AppResult<SeedReport> {
    let mut report = SeedReport::default();
    for (slug, name) in DEMO_TENANTS {
        let existing = tenant::Entity::find()
            .filter(tenant::Column::Slug.eq(*slug))
            .one(db)
            .await?;
        let tenant = match existing {
            Some(t) => t,
            None => {
                report.tenants_created += 1;
                tenants::insert(
                    db,
                    NewTenant {
                        slug: (*slug).into(),
                        name: (*name).into(),
                        domain: None,
                        plan: Some("demo".into()),
                        max_users: Some(50),
                        status: Some(TenantStatus::Active),
                        settings: None,
                        features: Some(vec!["dashboards".into(), "alerts".into()]),
                    },
                )
                .await?
            }
        };
        for account in demo_accounts(slug) {
            let exists = user::Entity::find()
                .filter(user::Column::TenantId.eq(tenant.id))
                .filter(user::Column::Email.eq(&account.email))
                .one(db)
                .await?
                .is_some();
            if !exists {
                let hash = password::hash(account.password.clone())
                    .await
                    .map_err(AppError::internal)?;
                let now = chrono::Utc::now();
                user::Entity::insert(user::ActiveModel {
                    id: Set(Uuid::now_v7()),
                    tenant_id: Set(tenant.id),
                    email: Set(account.email.clone()),
                    display_name: Set(None),
                    password_hash: Set(Some(hash)),
                    role: Set(account.role),
                    status: Set(UserStatus::Active),
                    last_login_at: Set(None),
                    created_at: Set(now),
                    updated_at: Set(now),
                })
                .exec_without_returning(db)
                .await?;
                report.users_created += 1;
            }
            report.accounts.push(account);
        }
    }
    Ok(report)
}

/// Whether the database has no tenants at all (a first run).
pub async fn is_empty(db: &DatabaseConnection) -> AppResult<bool> {
    Ok(tenant::Entity::find().one(db).await?.is_none())
}
