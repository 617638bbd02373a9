//! Caps the analytic fields (`metrics`, `funnel`, `retention`, and what
//! later issues add) one operation may hold, aliases and fragments
//! included, before anything runs: each one is a database query, so a
//! document of hundreds of aliased copies is refused whole with
//! `QUERY_TOO_COMPLEX` rather than half-executed. Complexity (see
//! [`METRIC_COST`](super::METRIC_COST)) bounds the rest of the cost.

use std::collections::HashSet;

use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{Name, ServerError, ServerResult};

/// Root fields that run an analytic query.
pub const ANALYTIC_FIELDS: &[&str] = &["metrics", "formula", "funnel", "retention"];

/// The analytic fields one selection set asks for, following fragment
/// spreads once each (a cycle is reported by validation, later).
fn count(doc: &ExecutableDocument, set: &SelectionSet, seen: &mut HashSet<Name>) -> usize {
    set.items
        .iter()
        .map(|item| match &item.node {
            Selection::Field(f) => {
                usize::from(ANALYTIC_FIELDS.contains(&f.node.name.node.as_str()))
            }
            Selection::InlineFragment(fragment) => {
                count(doc, &fragment.node.selection_set.node, seen)
            }
            Selection::FragmentSpread(spread) => {
                let name = &spread.node.fragment_name.node;
                match doc.fragments.get(name) {
                    Some(fragment) if seen.insert(name.clone()) => {
                        count(doc, &fragment.node.selection_set.node, seen)
                    }
                    _ => 0,
                }
            }
        })
        .sum()
}

/// Refuses a document any of whose operations holds more than
/// `max_fields` analytic fields.
pub fn check(doc: &ExecutableDocument, max_fields: usize) -> ServerResult<()> {
    for (_, operation) in doc.operations.iter() {
        let n = count(doc, &operation.node.selection_set.node, &mut HashSet::new());
        if n > max_fields {
            let mut err = ServerError::new(
                format!(
                    "an operation may hold at most {max_fields} analytic fields (metrics, formula, funnel, retention); this one holds {n}"
                ),
                None,
            );
            err.extensions
                .get_or_insert_with(Default::default)
                .set("code", "QUERY_TOO_COMPLEX");
            return Err(err);
        }
    }
    Ok(())
}
