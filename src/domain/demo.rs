//! The demo data behind `pulse seed-demo` and the embedded first run.
//!
//! Idempotent: what exists is left alone, what is missing is created. Later
//! capabilities add their own demo data here: accounts ([`seed`]) and
//! events ([`seed_events`]) so far.

use sea_orm::{ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use uuid::Uuid;

use super::events::{NewEvent, Source, Writer};
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

/// Demo events per tenant, spread over the last [`DEMO_DAYS`] days.
pub const DEMO_EVENTS: usize = 100_000;
pub const DEMO_DAYS: i64 = 30;

/// Seeds realistic events for each demo tenant that has none yet, through
/// the group-commit writer. Ids come from a seeded generator, so an
/// interrupted run resumes as duplicates, never doubles. Returns how many
/// events were stored.
pub async fn seed_events(db: &DatabaseConnection, writer: &Writer) -> AppResult<u64> {
    seed_n_events(db, writer, DEMO_EVENTS).await
}

/// [`seed_events`] with `per_tenant` events each (tests use fewer).
pub async fn seed_n_events(
    db: &DatabaseConnection,
    writer: &Writer,
    per_tenant: usize,
) -> AppResult<u64> {
    let mut stored = 0;
    for (slug, _) in DEMO_TENANTS {
        let Some(t) = tenant::Entity::find()
            .filter(tenant::Column::Slug.eq(*slug))
            .one(db)
            .await?
        else {
            continue;
        };
        if demo_event_count(db, t.id).await? >= per_tenant as u64 {
            continue;
        }
        let now = chrono::Utc::now();
        let mut generator = DemoEvents::new(slug, now, per_tenant);
        loop {
            let batch: Vec<NewEvent> = generator.by_ref().take(writer.max_batch()).collect();
            if batch.is_empty() {
                break;
            }
            stored += writer.submit(t.id, batch).await?.accepted;
        }
    }
    Ok(stored)
}

/// Demo events already stored: a complete set is left alone, a partial
/// one (an interrupted run) is completed.
async fn demo_event_count(db: &DatabaseConnection, tenant_id: Uuid) -> AppResult<u64> {
    use sea_orm::ConnectionTrait;
    use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
    let q = Query::select()
        .expr(Expr::col(Alias::new("id")).count())
        .from(Alias::new("events"))
        .and_where(Expr::col(Alias::new("tenant_id")).eq(tenant_id))
        .and_where(Expr::col(Alias::new("source")).eq(Source::Demo.as_str()))
        .to_owned();
    let count: i64 = match db.query_one(&q).await? {
        Some(row) => row.try_get_by_index(0)?,
        None => 0,
    };
    Ok(u64::try_from(count).unwrap_or(0))
}

const CAMPAIGNS: &[&str] = &["spring-launch", "weekly-digest", "winback", "onboarding"];
const MAILBOXES: &[&str] = &["sales@", "support@", "news@"];
const PAGES: &[&str] = &[
    "/",
    "/pricing",
    "/docs",
    "/blog",
    "/signup",
    "/checkout",
    "/features",
];
const PLANS: &[(&str, f64)] = &[("starter", 19.0), ("pro", 49.0), ("business", 199.0)];
const COUNTRIES: &[&str] = &["US", "DE", "GB", "FR", "BR", "IN", "JP"];
const BROWSERS: &[&str] = &["chrome", "firefox", "safari", "edge"];

/// A deterministic stream of plausible product and email events.
struct DemoEvents {
    rng: rand::rngs::StdRng,
    now: chrono::DateTime<chrono::Utc>,
    left: usize,
    users: u32,
}

impl DemoEvents {
    fn new(slug: &str, now: chrono::DateTime<chrono::Utc>, count: usize) -> Self {
        use rand::SeedableRng;
        let seed = slug.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        DemoEvents {
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            now,
            left: count,
            users: if slug == "acme" { 3_000 } else { 1_800 },
        }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        use rand::Rng;
        &items[self.rng.random_range(0..items.len())]
    }

    /// A moment in the window, busier in (UTC) working hours and growing
    /// towards the present.
    fn timestamp(&mut self) -> chrono::DateTime<chrono::Utc> {
        use chrono::Timelike;
        use rand::Rng;
        loop {
            let back = self.rng.random::<f64>().powf(1.3) * (DEMO_DAYS * 86_400) as f64;
            let t = self.now - chrono::Duration::seconds(back as i64);
            let busy = (8..20).contains(&t.hour());
            if busy || self.rng.random::<f64>() < 0.35 {
                return t;
            }
        }
    }
}

impl Iterator for DemoEvents {
    type Item = NewEvent;

    fn next(&mut self) -> Option<NewEvent> {
        use rand::Rng;
        use serde_json::json;
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let id = uuid::Builder::from_random_bytes(self.rng.random()).into_uuid();
        let user = self.rng.random_range(1..=self.users);
        let user_id = format!("user-{user:05}");
        let session_id = format!("sess-{user:05}-{}", self.rng.random_range(0..40));
        let occurred_at = self.timestamp();
        let roll = self.rng.random::<f64>();
        let (event_type, properties) = if roll < 0.55 {
            let path = *self.pick(PAGES);
            let country = *self.pick(COUNTRIES);
            let browser = *self.pick(BROWSERS);
            let load = self.rng.random_range(80..2_400);
            (
                "page_view".to_owned(),
                json!({ "path": path, "country": country, "browser": browser, "load_ms": load }),
            )
        } else if roll < 0.58 {
            let country = *self.pick(COUNTRIES);
            (
                "signup".to_owned(),
                json!({ "country": country, "referrer": *self.pick(&["google", "newsletter", "direct", "partner"]) }),
            )
        } else if roll < 0.63 {
            let (plan, price) = *self.pick(PLANS);
            let qty = self.rng.random_range(1..=3);
            let amount = (price * f64::from(qty) * 100.0).round() / 100.0;
            (
                "purchase".to_owned(),
                json!({ "plan": plan, "amount": amount, "currency": "USD", "quantity": qty, "country": *self.pick(COUNTRIES) }),
            )
        } else {
            let step = self.rng.random::<f64>();
            let kind = match step {
                s if s < 0.34 => "email.sent",
                s if s < 0.64 => "email.delivered",
                s if s < 0.82 => "email.opened",
                s if s < 0.92 => "email.clicked",
                s if s < 0.96 => "email.replied",
                _ => "email.bounced",
            };
            let campaign = *self.pick(CAMPAIGNS);
            let mailbox = format!("{}example.com", self.pick(MAILBOXES));
            (
                kind.to_owned(),
                json!({ "campaign": campaign, "mailbox": mailbox }),
            )
        };
        Some(NewEvent {
            id,
            event_type,
            occurred_at,
            user_id: Some(user_id),
            session_id: Some(session_id),
            properties,
            ip: None,
            user_agent: Some("pulse-demo".into()),
            source: Source::Demo,
            received_at: self.now,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_events_are_deterministic_and_inside_the_window() {
        let now = chrono::Utc::now();
        let a: Vec<NewEvent> = DemoEvents::new("acme", now, 500).collect();
        let b: Vec<NewEvent> = DemoEvents::new("acme", now, 500).collect();
        assert_eq!(a, b);
        let oldest = now - chrono::Duration::days(DEMO_DAYS);
        assert!(
            a.iter()
                .all(|e| e.occurred_at >= oldest && e.occurred_at <= now)
        );
        assert!(
            a.iter()
                .any(|e| e.event_type == "purchase" && e.properties["amount"].is_number())
        );
        assert!(a.iter().any(|e| e.event_type.starts_with("email.")));
        assert_eq!(
            DemoEvents::new("globex", now, DEMO_EVENTS).count(),
            DEMO_EVENTS
        );
    }
}
