//! Keyset pagination over UUIDv7 ids, which sort in creation order on both
//! backends; cursors stay valid while rows are added.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

use crate::error::{AppError, AppResult};

pub const DEFAULT_PAGE: u64 = 20;
pub const MAX_PAGE: u64 = 100;

#[derive(Clone, Copy, Debug)]
pub struct PageRequest {
    pub first: u64,
    pub after: Option<Uuid>,
}

impl PageRequest {
    /// Validates GraphQL's `first`/`after` arguments.
    pub fn new(first: Option<i32>, after: Option<&str>) -> AppResult<Self> {
        let first = match first {
            None => DEFAULT_PAGE,
            Some(n) if n < 0 => return Err(AppError::bad_input("first", "must not be negative")),
            Some(n) if n as u64 > MAX_PAGE => {
                return Err(AppError::bad_input(
                    "first",
                    format!("must be at most {MAX_PAGE}"),
                ));
            }
            Some(n) => n as u64,
        };
        let after = after.map(decode_cursor).transpose()?;
        Ok(PageRequest { first, after })
    }
}

/// One page of rows, plus whether more follow.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_next: bool,
}

impl<T> Page<T> {
    /// Builds a page from a query that fetched `first + 1` rows.
    pub fn from_overfetch(mut items: Vec<T>, first: u64) -> Self {
        let has_next = items.len() as u64 > first;
        items.truncate(first as usize);
        Page { items, has_next }
    }
}

pub fn encode_cursor(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn decode_cursor(cursor: &str) -> AppResult<Uuid> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .ok_or_else(|| AppError::bad_input("after", "not a cursor returned by this API"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let id = Uuid::now_v7();
        let page = PageRequest::new(Some(5), Some(&encode_cursor(id))).expect("valid");
        assert_eq!(page.after, Some(id));
        assert_eq!(page.first, 5);
    }

    #[test]
    fn first_is_bounded_and_cursors_checked() {
        assert!(PageRequest::new(Some(100), None).is_ok());
        assert!(PageRequest::new(Some(101), None).is_err());
        assert!(PageRequest::new(Some(-1), None).is_err());
        assert!(PageRequest::new(None, Some("garbage!")).is_err());
    }

    #[test]
    fn overfetch_reports_a_next_page() {
        let page = Page::from_overfetch(vec![1, 2, 3], 2);
        assert_eq!(page.items, vec![1, 2]);
        assert!(page.has_next);
        assert!(!Page::from_overfetch(vec![1, 2], 2).has_next);
    }
}
