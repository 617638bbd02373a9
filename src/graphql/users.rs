//! Users: the `User` object, `users`, `user` and `createUser`.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Enum, ID, InputObject, Object, Result};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::guard::{RoleGuard, meta, state, tenant};
use crate::auth::Role;
use crate::domain::page::{PageRequest, encode_cursor};
use crate::domain::users::{self, NewUser};
use crate::entities::user;
use crate::error::AppError;

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "crate::auth::Role", name = "Role")]
pub enum RoleValue {
    Viewer,
    Editor,
    Admin,
    SuperAdmin,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "crate::entities::user::UserStatus", name = "UserStatus")]
pub enum UserStatusValue {
    Active,
    Inactive,
    Invited,
    Suspended,
}

/// A person who can sign in to one tenant.
pub struct User(pub user::Model);

#[Object]
impl User {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn email(&self) -> &str {
        &self.0.email
    }
    async fn display_name(&self) -> Option<&str> {
        self.0.display_name.as_deref()
    }
    /// The role stored for the user; a token may grant a different one.
    async fn role(&self) -> RoleValue {
        self.0.role.into()
    }
    async fn status(&self) -> UserStatusValue {
        self.0.status.into()
    }
    async fn last_login_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_login_at
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

#[derive(InputObject)]
pub struct UserInput {
    pub email: String,
    /// 8 to 1024 characters; without one the user is INVITED and cannot
    /// sign in with a password.
    pub password: Option<String>,
    pub role: RoleValue,
    pub display_name: Option<String>,
}

pub(crate) fn parse_id(field: &str, id: &ID) -> Result<Uuid, AppError> {
    Uuid::parse_str(id.as_str()).map_err(|_| AppError::bad_input(field, "not a valid id"))
}

#[derive(Default)]
pub struct UserQuery;

#[Object]
impl UserQuery {
    /// The tenant's users, oldest first.
    #[graphql(
        guard = "RoleGuard::new(Role::Admin)",
        complexity = "super::page_complexity(first, child_complexity)"
    )]
    async fn users(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, User>> {
        let page = PageRequest::new(first, after.as_deref())?;
        let found = users::list(&state(ctx)?.db, tenant(ctx)?, page).await?;
        let mut conn = Connection::new(page.after.is_some(), found.has_next);
        conn.edges.extend(
            found
                .items
                .into_iter()
                .map(|u| Edge::new(encode_cursor(u.id), User(u))),
        );
        Ok(conn)
    }

    /// A user of the caller's tenant; null when absent or in another tenant.
    #[graphql(guard = "RoleGuard::new(Role::Admin)")]
    async fn user(&self, ctx: &Context<'_>, id: ID) -> Result<Option<User>> {
        let id = parse_id("id", &id)?;
        Ok(users::find(&state(ctx)?.db, tenant(ctx)?, id)
            .await?
            .map(User))
    }
}

#[derive(Default)]
pub struct UserMutation;

#[Object]
impl UserMutation {
    /// Adds a user to the caller's tenant. Nobody can grant a role above
    /// their own.
    #[graphql(guard = "RoleGuard::new(Role::Admin)")]
    async fn create_user(&self, ctx: &Context<'_>, input: UserInput) -> Result<User> {
        let created = users::create(
            &state(ctx)?.db,
            tenant(ctx)?,
            meta(ctx),
            NewUser {
                email: input.email,
                password: input.password,
                role: input.role.into(),
                display_name: input.display_name,
            },
        )
        .await?;
        Ok(User(created))
    }
}
