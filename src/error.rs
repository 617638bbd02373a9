//! One error type for everything a client can be told.
//!
//! Policy: domain code returns specific [`AppError`] variants; each maps to
//! an `extensions.code` from API.md. Unknown failures (database, I/O) become
//! [`AppError::Internal`]: the cause chain is logged with the request id and
//! the client gets an opaque message carrying only that id. SQL text, stack
//! traces and driver messages never reach a response.

use async_graphql::ErrorExtensions;
use sea_orm::{DbErr, SqlErr};

tokio::task_local! {
    /// The id of the request being served, for opaque internal errors.
    pub static REQUEST_ID: String;
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("tenant is suspended")]
    TenantSuspended,
    #[error("{field}: {message}")]
    BadInput { field: String, message: String },
    /// A batch rejected as a whole, with its first problems.
    #[error("{message}")]
    InvalidBatch {
        message: String,
        problems: Vec<Problem>,
    },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("{0}")]
    Unavailable(String),
    /// Over a rate or concurrency limit; retry after the given time.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: std::time::Duration,
    },
    /// A query's estimated cost is over the tenant's budget, per query or
    /// (with a wait) per minute.
    #[error("{message}")]
    QueryTooExpensive {
        message: String,
        /// Estimated rows the query would touch.
        estimate: u64,
        /// The budget it is over.
        limit: u64,
        retry_after: Option<std::time::Duration>,
    },
    /// Someone saved in between: the client's expected version is stale.
    #[error(
        "the dashboard was saved by someone else in the meantime; it is now at version {current}"
    )]
    VersionConflict { current: i32 },
    /// A query ran past its statement timeout and was cancelled.
    #[error("{0}")]
    QueryTimeout(String),
    /// A persisted-query hash this tenant's store does not hold. The
    /// message is the one Apollo clients look for before resending the
    /// full document.
    #[error("PersistedQueryNotFound")]
    PersistedQueryNotFound,
    /// A persisted query whose document does not have the hash it claims.
    #[error("provided sha does not match query")]
    PersistedQueryHashMismatch,
    /// In allow-list mode, a document that is not registered.
    #[error("{0}")]
    NotInAllowList(String),
    /// Over a limit on open things (sockets, subscriptions): close one
    /// first.
    #[error("{0}")]
    LimitExceeded(String),
    /// A subscriber that fell too far behind and was closed.
    #[error("{0}")]
    SlowConsumer(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// One thing wrong with one item of a batch.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// Position in the batch, from 0.
    pub index: usize,
    /// Line of an NDJSON body, from 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

impl AppError {
    pub fn bad_input(field: impl Into<String>, message: impl Into<String>) -> Self {
        AppError::BadInput {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        AppError::Internal(err.into())
    }

    /// The `extensions.code` clients switch on.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::Unauthenticated(_) => "UNAUTHENTICATED",
            AppError::Forbidden(_) => "FORBIDDEN",
            AppError::TenantSuspended => "TENANT_SUSPENDED",
            AppError::BadInput { .. } | AppError::InvalidBatch { .. } => "BAD_USER_INPUT",
            AppError::NotFound(_) => "NOT_FOUND",
            AppError::QuotaExceeded(_) => "QUOTA_EXCEEDED",
            AppError::Unavailable(_) => "UNAVAILABLE",
            AppError::RateLimited { .. } => "RATE_LIMITED",
            AppError::QueryTimeout(_) => "QUERY_TIMEOUT",
            AppError::QueryTooExpensive { .. } => "QUERY_TOO_EXPENSIVE",
            AppError::VersionConflict { .. } => "VERSION_CONFLICT",
            AppError::PersistedQueryNotFound => "PERSISTED_QUERY_NOT_FOUND",
            AppError::PersistedQueryHashMismatch => "PERSISTED_QUERY_HASH_MISMATCH",
            AppError::NotInAllowList(_) => "PERSISTED_QUERY_NOT_IN_LIST",
            AppError::LimitExceeded(_) => "LIMIT_EXCEEDED",
            AppError::SlowConsumer(_) => "SLOW_CONSUMER",
            AppError::Internal(_) => "INTERNAL_SERVER_ERROR",
        }
    }

    /// The request id of the current request, if any.
    pub fn current_request_id() -> Option<String> {
        REQUEST_ID.try_with(Clone::clone).ok()
    }
}

impl AppError {
    /// A copy for each of several awaiters of one shared computation (an
    /// internal error keeps its message, not its chain).
    pub fn duplicate(&self) -> AppError {
        match self {
            AppError::Unauthenticated(m) => AppError::Unauthenticated(m.clone()),
            AppError::Forbidden(m) => AppError::Forbidden(m.clone()),
            AppError::TenantSuspended => AppError::TenantSuspended,
            AppError::LimitExceeded(m) => AppError::LimitExceeded(m.clone()),
            AppError::SlowConsumer(m) => AppError::SlowConsumer(m.clone()),
            AppError::BadInput { field, message } => AppError::BadInput {
                field: field.clone(),
                message: message.clone(),
            },
            AppError::InvalidBatch { message, problems } => AppError::InvalidBatch {
                message: message.clone(),
                problems: problems.clone(),
            },
            AppError::NotFound(what) => AppError::NotFound(what),
            AppError::QuotaExceeded(m) => AppError::QuotaExceeded(m.clone()),
            AppError::Unavailable(m) => AppError::Unavailable(m.clone()),
            AppError::RateLimited {
                message,
                retry_after,
            } => AppError::RateLimited {
                message: message.clone(),
                retry_after: *retry_after,
            },
            AppError::VersionConflict { current } => {
                AppError::VersionConflict { current: *current }
            }
            AppError::QueryTimeout(m) => AppError::QueryTimeout(m.clone()),
            AppError::QueryTooExpensive {
                message,
                estimate,
                limit,
                retry_after,
            } => AppError::QueryTooExpensive {
                message: message.clone(),
                estimate: *estimate,
                limit: *limit,
                retry_after: *retry_after,
            },
            AppError::PersistedQueryNotFound => AppError::PersistedQueryNotFound,
            AppError::PersistedQueryHashMismatch => AppError::PersistedQueryHashMismatch,
            AppError::NotInAllowList(m) => AppError::NotInAllowList(m.clone()),
            AppError::Internal(e) => AppError::Internal(anyhow::anyhow!("{e:#}")),
        }
    }
}

impl From<DbErr> for AppError {
    fn from(err: DbErr) -> Self {
        match err.sql_err() {
            // Callers that can name the field check for conflicts first;
            // this is the race where two requests insert at once.
            Some(SqlErr::UniqueConstraintViolation(_)) => {
                AppError::bad_input("input", "a record with these values already exists")
            }
            _ => match err {
                DbErr::RecordNotFound(_) => AppError::NotFound("record"),
                DbErr::ConnectionAcquire(_) => {
                    AppError::Unavailable("the database is not reachable; retry shortly".into())
                }
                other => AppError::Internal(other.into()),
            },
        }
    }
}

impl ErrorExtensions for AppError {
    fn extend(&self) -> async_graphql::Error {
        let request_id = AppError::current_request_id();
        let message = match self {
            AppError::Internal(cause) => {
                tracing::error!(
                    request_id = request_id.as_deref().unwrap_or("-"),
                    error = format!("{cause:#}"),
                    "internal error"
                );
                match &request_id {
                    Some(id) => format!("internal error (request id {id})"),
                    None => "internal error".to_owned(),
                }
            }
            other => other.to_string(),
        };
        async_graphql::Error::new(message).extend_with(|_, ext| {
            ext.set("code", self.code());
            if let AppError::BadInput { field, .. } = self {
                ext.set("field", field.as_str());
            }
            if let AppError::InvalidBatch { problems, .. } = self
                && let Ok(value) = async_graphql::to_value(problems)
            {
                ext.set("problems", value);
            }
            if let AppError::VersionConflict { current } = self {
                ext.set("currentVersion", *current);
            }
            if let AppError::RateLimited { retry_after, .. } = self {
                ext.set("retryAfter", retry_after.as_secs_f64().ceil() as u64);
            }
            if let AppError::QueryTooExpensive {
                estimate,
                limit,
                retry_after,
                ..
            } = self
            {
                ext.set("estimate", *estimate);
                ext.set("limit", *limit);
                if let Some(wait) = retry_after {
                    ext.set("retryAfter", wait.as_secs_f64().ceil() as u64);
                }
            }
            if let (AppError::Internal(_), Some(id)) = (self, &request_id) {
                ext.set("requestId", id.as_str());
            }
        })
    }
}

impl From<AppError> for async_graphql::Error {
    fn from(err: AppError) -> Self {
        err.extend()
    }
}

pub type AppResult<T> = Result<T, AppError>;
