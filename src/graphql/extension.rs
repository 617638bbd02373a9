//! The one schema extension: gives every error an `extensions.code`,
//! including the ones async-graphql raises itself (parse, validation, depth
//! and complexity limits), so that clients can always switch on a code; and
//! runs the request's other hooks (the persisted-query gate, the socket's
//! rates, the analytic-field cap, provenance), which live in their own
//! modules as plain functions.
//!
//! One extension, not one per concern: with any extension at all,
//! async-graphql sends every field through the chain of all of them, a
//! boxed future per extension per field; five extensions cost a quarter of
//! a cached dashboard query's CPU (bench/README.md, "Breakdown").

use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextPrepareRequest,
    NextRequest, NextSubscribe, NextValidation,
};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{
    Request, Response, ServerError, ServerResult, ValidationResult, Value, Variables,
};

use super::provenance::QueryLog;
use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;

pub struct ErrorCodes {
    /// Deepest nesting of brackets a document may have before it is
    /// parsed at all (see [`shape`]).
    pub max_nesting: usize,
    /// Most lexical tokens a document may have before it is parsed.
    pub max_tokens: usize,
    /// Most analytic fields one operation may hold ([`super::budget`]).
    pub max_fields: usize,
}

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
        Arc::new(ErrorCodesExtension {
            max_nesting: self.max_nesting,
            max_tokens: self.max_tokens,
            max_fields: self.max_fields,
            log: QueryLog::default(),
        })
    }
}

struct ErrorCodesExtension {
    max_nesting: usize,
    max_tokens: usize,
    max_fields: usize,
    /// What the metric resolvers report ([`super::provenance`]).
    log: QueryLog,
}

/// What a single linear pass over a GraphQL document sees before the
/// parser runs: its tokens and how deep its brackets nest. The parser is
/// recursive, slow on debug builds and not cheap on release ones, and the
/// depth and complexity limits apply only after it; a 1 MB document of
/// nested selections or thousands of tiny tokens would hold a worker for
/// seconds before being refused. Bounding both first (as Apollo Router's
/// `parser_max_tokens` and `parser_max_recursion` do) keeps parsing
/// proportional to what an honest query needs.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Lexical tokens: names, numbers, strings and punctuators.
    pub tokens: usize,
    /// Deepest nesting of `{`, `(` and `[`.
    pub depth: usize,
    /// Whether a NUL character appears, raw or escaped in a string.
    pub nul: bool,
}

/// `u{0}`, `u{00}`, …: the braced escape of the NUL character.
fn is_braced_zero(escape: &[u8]) -> bool {
    let Some(rest) = escape.strip_prefix(b"u{") else {
        return false;
    };
    let zeros = rest.iter().take_while(|&&b| b == b'0').count();
    zeros > 0 && rest.get(zeros) == Some(&b'}')
}

pub(crate) fn shape(query: &str) -> Shape {
    let bytes = query.as_bytes();
    let mut shape = Shape {
        nul: bytes.contains(&0),
        ..Shape::default()
    };
    let (mut depth, mut i) = (0usize, 0usize);
    let name = |b: u8| b == b'_' || b.is_ascii_alphanumeric();
    let number = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-');
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b' ' | b'\t' | b'\n' | b'\r' | b',' => {
                i += 1;
                continue;
            }
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
                continue;
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                // A block string ends at the next unescaped `"""`.
                i += 3;
                while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                    i += if bytes[i..].starts_with(b"\\\"\"\"") {
                        4
                    } else {
                        1
                    };
                }
                i += 3;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    if bytes[i] == b'\\' {
                        let escape = &bytes[i + 1..];
                        shape.nul |= escape.starts_with(b"u0000") || is_braced_zero(escape);
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
                i += 1;
            }
            b'.' if bytes[i..].starts_with(b"...") => i += 3,
            b'-' | b'0'..=b'9' => {
                i += 1;
                while i < bytes.len() && number(bytes[i]) {
                    i += 1;
                }
            }
            _ if name(b) => {
                while i < bytes.len() && name(bytes[i]) {
                    i += 1;
                }
            }
            b'{' | b'(' | b'[' => {
                depth += 1;
                shape.depth = shape.depth.max(depth);
                i += 1;
            }
            b'}' | b')' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
        shape.tokens += 1;
    }
    shape
}

/// Whether a variable's value holds a NUL anywhere: no column or JSON
/// document of PostgreSQL can store one, and no honest input needs one.
fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::List(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

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
    /// What no later hook coded was raised while preparing the request
    /// (e.g. "Unknown operation named …", "Operation name required"): the
    /// request is at fault, so it is a validation failure.
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let mut response = next.run(ctx).await;
        response.errors = std::mem::take(&mut response.errors)
            .into_iter()
            .map(|e| with_code(e, "GRAPHQL_VALIDATION_FAILED"))
            .collect();
        response
    }

    /// The same for operations over the WebSocket, which run as streams.
    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        next.run(ctx, stream)
            .map(|mut response| {
                response.errors = std::mem::take(&mut response.errors)
                    .into_iter()
                    .map(|e| with_code(e, "GRAPHQL_VALIDATION_FAILED"))
                    .collect();
                response
            })
            .boxed()
    }

    /// The request's gates, in order: persisted queries and the
    /// allow-list, then the socket's rates; then the log resolvers write
    /// provenance to.
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        super::guard::refresh_socket_caller(ctx, &mut request).await?;
        super::persisted::gate(ctx, &request).await?;
        super::rates::admit(ctx, &mut request).await?;
        next.run(ctx, request.data(self.log.clone())).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let shape = shape(query);
        if shape.depth > self.max_nesting {
            return Err(with_code(
                ServerError::new(
                    format!(
                        "the document nests braces, parentheses or brackets more than {} deep",
                        self.max_nesting
                    ),
                    None,
                ),
                "QUERY_TOO_DEEP",
            ));
        }
        if shape.nul || variables.values().any(has_nul) {
            return Err(with_code(
                ServerError::new("strings may not contain the NUL character (U+0000)", None),
                "BAD_USER_INPUT",
            ));
        }
        if shape.tokens > self.max_tokens {
            return Err(with_code(
                ServerError::new(
                    format!(
                        "the document has {} tokens; at most {} are allowed",
                        shape.tokens, self.max_tokens
                    ),
                    None,
                ),
                "QUERY_TOO_COMPLEX",
            ));
        }
        let doc = next.run(ctx, query, variables).await.map_err(|e| {
            // The parser's own recursion bound (set to the same nesting).
            let code = if e.message.starts_with("The recursion depth") {
                "QUERY_TOO_DEEP"
            } else {
                "GRAPHQL_PARSE_FAILED"
            };
            with_code(e, code)
        })?;
        super::budget::check(&doc, self.max_fields)?;
        Ok(doc)
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
        self.log.attach(&mut response);
        // What is left is async-graphql's own argument coercion ("Failed to
        // parse ..."): the client sent a value of the wrong shape.
        response.errors = std::mem::take(&mut response.errors)
            .into_iter()
            .map(|e| with_code(e, "BAD_USER_INPUT"))
            .collect();
        response
    }
}

#[cfg(test)]
mod tests {
    use super::shape;

    fn depth(q: &str) -> usize {
        shape(q).depth
    }

    #[test]
    fn depth_counts_brackets_outside_strings_and_comments() {
        assert_eq!(depth("{ a }"), 1);
        assert_eq!(depth("{ a(x: {y: [1]}) { b } }"), 4);
        assert_eq!(depth(r#"{ a(s: "{{{{(((") }"#), 2);
        assert_eq!(depth(r#"{ a(s: "\"{{{") }"#), 2);
        assert_eq!(depth("{ a # {{{{{{\n b }"), 1);
        assert_eq!(depth(r#"{ a(s: """ {{{ \""" {{{ """) }"#), 2);
        assert_eq!(depth("}}}{"), 1);
        assert_eq!(depth(&"{ a ".repeat(10_000)), 10_000);
    }

    #[test]
    fn tokens_are_counted_as_a_lexer_would() {
        // query Q ( $ v : Int = -1.5e3 ) { a }
        assert_eq!(shape("query Q($v: Int = -1.5e3) { a }").tokens, 13);
        assert_eq!(shape(r#"{ a(s: "x y, z") }"#).tokens, 8);
        assert_eq!(shape("{ ...F } # a b c").tokens, 4);
        assert_eq!(shape(r#"{ a(s: """x "" y""") }"#).tokens, 8);
        assert_eq!(shape(",,, \n\t").tokens, 0);
        assert_eq!(shape(&"a0: t { s } ".repeat(1_000)).tokens, 6_000);
    }

    #[test]
    fn nul_is_found_raw_or_escaped_but_not_when_the_backslash_is() {
        assert!(shape("{ a(s: \"x\\u0000\") }").nul);
        assert!(shape("{ a(s: \"\\u{0}\") }").nul);
        assert!(shape("{ a(s: \"\\u{000}\") }").nul);
        assert!(!shape("{ a(s: \"\\u{10}\") }").nul);
        assert!(shape("{ a(s: \"\0\") }").nul);
        assert!(!shape("{ a(s: \"\\\\u0000\") }").nul);
        assert!(!shape("{ a(s: \"u0000\") }").nul);
    }
}
