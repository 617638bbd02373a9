//! Gives every error an `extensions.code`, including the ones async-graphql
//! raises itself (parse, validation, depth and complexity limits), so that
//! clients can always switch on a code.

use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextValidation,
};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{Response, ServerError, ServerResult, ValidationResult, Value, Variables};

pub struct ErrorCodes;

/// Set once execution begins: a response without it failed as a request
/// (parse, validation, limits), which GraphQL over HTTP answers with a 4xx
/// and no `data` under `application/graphql-response+json`. The HTTP layer
/// puts one into each request's data.
#[derive(Clone, Debug, Default)]
pub struct Executed(pub Arc<std::sync::atomic::AtomicBool>);

impl Executed {
    pub fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl ExtensionFactory for ErrorCodes {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ErrorCodesExtension)
    }
}

struct ErrorCodesExtension;

fn has_code(err: &ServerError) -> bool {
    err.extensions
        .as_ref()
        .is_some_and(|ext| ext.get("code").is_some())
}

fn with_code(mut err: ServerError, code: &str) -> ServerError {
    if !has_code(&err) {
        err.extensions
            .get_or_insert_with(Default::default)
            .set("code", Value::from(code));
    }
    err
}

/// async-graphql's limit errors have fixed messages; give them their own
/// codes so clients can tell "simplify the query" from a typo.
fn validation_code(err: &ServerError) -> &'static str {
    let message = err.message.as_str();
    match message {
        "Query is nested too deep." => "QUERY_TOO_DEEP",
        "Query is too complex." => "QUERY_TOO_COMPLEX",
        // A well-formed query given a value of the wrong shape, inline or
        // in a variable: the client's input is at fault, not the query.
        _ if message.starts_with("Invalid value for argument")
            || message.starts_with("Variable \"") =>
        {
            "BAD_USER_INPUT"
        }
        _ => "GRAPHQL_VALIDATION_FAILED",
    }
}

/// The argument an "Invalid value for argument \"input.role\"" error names.
fn argument_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("Invalid value for argument \"")?;
    rest.split('"').next()
}

#[async_graphql::async_trait::async_trait]
impl Extension for ErrorCodesExtension {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        next.run(ctx, query, variables)
            .await
            .map_err(|e| with_code(e, "GRAPHQL_PARSE_FAILED"))
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx).await.map_err(|errors| {
            errors
                .into_iter()
                .map(|mut e| {
                    let code = validation_code(&e);
                    if let Some(field) = argument_field(&e.message).map(str::to_owned) {
                        e.extensions
                            .get_or_insert_with(Default::default)
                            .set("field", Value::from(field));
                    }
                    with_code(e, code)
                })
                .collect()
        })
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        if let Some(executed) = ctx.data_opt::<Executed>() {
            executed.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let mut response = next.run(ctx, operation_name).await;
        // What is left is async-graphql's own argument coercion ("Failed to
        // parse ..."): the client sent a value of the wrong shape.
        response.errors = std::mem::take(&mut response.errors)
            .into_iter()
            .map(|e| with_code(e, "BAD_USER_INPUT"))
            .collect();
        response
    }
}
