//! The contacts endpoints of the guide: `GET /contacts` (paginated envelope),
//! `GET /contacts/{id}`, `POST /contacts`, over an in-memory contact book that
//! starts with the guide's two example contacts. Contacts need the bearer key
//! but are not counted against the message rate limit.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use serde_json::json;

use super::reply::ApiError;
use super::routes::{parse_json_body, with_errors};
use super::state::SandboxState;
use crate::api::model::{Contact, NewContact, Pagination};

pub const DEFAULT_PER_PAGE: u64 = 10;
pub const MAX_PER_PAGE: u64 = 100;
/// The largest page number accepted (int32, as the OpenAPI document says).
pub const MAX_PAGE: u64 = i32::MAX as u64;

/// Contacts in creation order, with an index by id.
pub struct ContactBook {
    contacts: Vec<Contact>,
    by_id: HashMap<String, usize>,
    /// Feeds the 3-character suffix of new ids.
    next: u64,
}

impl ContactBook {
    pub fn new(seed_contacts: bool) -> ContactBook {
        let mut book = ContactBook {
            contacts: Vec::new(),
            by_id: HashMap::new(),
            next: 1,
        };
        if seed_contacts {
            // The guide's own examples, so its curl commands work verbatim.
            for (id, name, phone, at) in [
                (
                    "contact_20250411ABC",
                    "John Doe",
                    "1234567890",
                    "2025-04-11T10:30:00Z",
                ),
                (
                    "contact_20250411XYZ",
                    "Jane Smith",
                    "9876543210",
                    "2025-04-11T11:45:00Z",
                ),
            ] {
                book.insert(Contact {
                    id: id.into(),
                    name: name.into(),
                    phone_number: phone.into(),
                    created_at: Some(at.into()),
                    updated_at: Some(at.into()),
                });
            }
        }
        book
    }

    pub fn len(&self) -> usize {
        self.contacts.len()
    }

    pub fn get(&self, id: &str) -> Option<&Contact> {
        self.by_id.get(id).map(|&i| &self.contacts[i])
    }

    /// One page, 1-based; a page past the end is empty, not an error.
    pub fn page(&self, page: u64, per_page: u64) -> (Vec<Contact>, Pagination) {
        let total = self.contacts.len() as u64;
        let start = page.saturating_sub(1).saturating_mul(per_page);
        let contacts = usize::try_from(start)
            .ok()
            .and_then(|start| self.contacts.get(start..))
            .unwrap_or_default()
            .iter()
            .take(usize::try_from(per_page).unwrap_or(usize::MAX))
            .cloned()
            .collect();
        let pagination = Pagination {
            total,
            page,
            per_page,
            total_pages: total.div_ceil(per_page),
        };
        (contacts, pagination)
    }

    /// Adds a contact with a fresh id like the guide's `contact_20250411DEF`.
    pub fn create(&mut self, name: String, phone_number: String) -> Contact {
        let now = Utc::now();
        let date = now.format("%Y%m%d");
        let id = loop {
            let candidate = format!("contact_{date}{}", base36_suffix(self.next));
            self.next += 1;
            if !self.by_id.contains_key(&candidate) {
                break candidate;
            }
        };
        let at = now.to_rfc3339_opts(SecondsFormat::Secs, true);
        let contact = Contact {
            id,
            name,
            phone_number,
            created_at: Some(at.clone()),
            updated_at: Some(at),
        };
        self.insert(contact.clone());
        contact
    }

    fn insert(&mut self, contact: Contact) {
        self.by_id.insert(contact.id.clone(), self.contacts.len());
        self.contacts.push(contact);
    }
}

/// Uppercase base 36, at least 3 characters: 1 → `001`, 46656 → `1000`.
fn base36_suffix(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut out = Vec::new();
    while n > 0 || out.len() < 3 {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// `GET /contacts?page=&per_page=`.
pub async fn list(
    State(state): State<SandboxState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    with_errors(&state, async {
        state.authorize(&headers)?;
        let Query(pairs) = query.map_err(|err| ApiError::validation(err.body_text()))?;
        let mut page = 1;
        let mut per_page = DEFAULT_PER_PAGE;
        for (key, value) in &pairs {
            match key.as_str() {
                "page" => page = whole_number("page", value, MAX_PAGE)?,
                "per_page" => per_page = whole_number("per_page", value, MAX_PER_PAGE)?,
                // Unknown parameters are ignored, as most APIs do.
                _ => {}
            }
        }
        let (contacts, pagination) = state.contacts().page(page, per_page);
        Ok(Json(json!({
            "success": true,
            "data": {"contacts": contacts, "pagination": pagination}
        }))
        .into_response())
    })
    .await
}

/// `GET /contacts/{id}`.
pub async fn get_one(
    State(state): State<SandboxState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    with_errors(&state, async {
        state.authorize(&headers)?;
        let Path(id) = id.map_err(|err| ApiError::validation(err.body_text()))?;
        let contact = state.contacts().get(&id).cloned();
        let contact =
            contact.ok_or_else(|| ApiError::not_found(format!("no contact with id '{id}'")))?;
        Ok(Json(json!({"success": true, "data": {"contact": contact}})).into_response())
    })
    .await
}

/// `POST /contacts` with `{name, phone_number}`.
pub async fn create(
    State(state): State<SandboxState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    with_errors(&state, async {
        state.authorize(&headers)?;
        let value = parse_json_body(&headers, body)?;
        let new: NewContact = serde_path_to_error::deserialize(&value).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            if path == "." {
                ApiError::validation(format!("body: {inner}"))
            } else {
                ApiError::validation(format!("{path}: {inner}"))
            }
        })?;
        if new.name.trim().is_empty() {
            return Err(ApiError::validation(
                "name: must not be empty or only whitespace",
            ));
        }
        if !is_contact_phone(&new.phone_number) {
            return Err(ApiError::validation(format!(
                "phone_number: '{}' is not a phone number (optional + then 7 to 15 digits, e.g. +1234567890)",
                new.phone_number.chars().take(40).collect::<String>()
            )));
        }
        let contact = state.contacts().create(new.name, new.phone_number);
        Ok((
            StatusCode::CREATED,
            Json(json!({
                "success": true,
                "message": "Contact created successfully",
                "data": {"contact": contact}
            })),
        )
            .into_response())
    })
    .await
}

/// The guide's examples omit the `+` (`1234567890`) while its advice is
/// E.164, so both are accepted: an optional `+` and 7 to 15 ASCII digits.
fn is_contact_phone(phone: &str) -> bool {
    let digits = phone.strip_prefix('+').unwrap_or(phone);
    (7..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

/// A query value that must be a whole number from 1 to `max`; digits only,
/// so `+5`, `5.0` and ` 5` are refused rather than guessed at.
fn whole_number(name: &str, value: &str, max: u64) -> Result<u64, ApiError> {
    let parsed = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        value.parse::<u64>().ok()
    } else {
        None
    };
    match parsed {
        Some(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::validation(format!(
            "{name}: '{}' is not a whole number from 1 to {max}",
            value.chars().take(40).collect::<String>()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_book_pages() {
        let book = ContactBook::new(true);
        let (first, p) = book.page(1, 1);
        assert_eq!(first[0].id, "contact_20250411ABC");
        assert_eq!((p.total, p.total_pages), (2, 2));
        let (second, _) = book.page(2, 1);
        assert_eq!(second[0].name, "Jane Smith");
        assert!(book.page(3, 1).0.is_empty());
        assert!(book.page(u64::MAX, 100).0.is_empty());
    }

    #[test]
    fn created_ids_are_unique_and_shaped_like_the_guide() {
        let mut book = ContactBook::new(false);
        let a = book.create("A".into(), "1234567".into());
        let b = book.create("B".into(), "1234567".into());
        assert_ne!(a.id, b.id);
        let suffix = a.id.strip_prefix("contact_").unwrap();
        assert_eq!(suffix.len(), 11, "{}", a.id);
        assert!(
            suffix
                .bytes()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        );
        assert_eq!(book.get(&b.id), Some(&b));
        assert_eq!(book.len(), 2);
    }

    #[test]
    fn base36_suffixes() {
        assert_eq!(base36_suffix(1), "001");
        assert_eq!(base36_suffix(35), "00Z");
        assert_eq!(base36_suffix(36 * 36 * 36), "1000");
    }

    #[test]
    fn phone_and_page_parsing() {
        assert!(is_contact_phone("1234567890"));
        assert!(is_contact_phone("+254712345678"));
        assert!(!is_contact_phone("123456"));
        assert!(!is_contact_phone("+12-345-678"));
        assert_eq!(whole_number("per_page", "100", MAX_PER_PAGE).unwrap(), 100);
        assert!(whole_number("per_page", "101", MAX_PER_PAGE).is_err());
        assert!(whole_number("page", "0", MAX_PAGE).is_err());
        assert!(whole_number("page", "+5", MAX_PAGE).is_err());
        assert!(whole_number("page", "2147483648", MAX_PAGE).is_err());
        assert_eq!(
            whole_number("page", "2147483647", MAX_PAGE).unwrap(),
            MAX_PAGE
        );
    }
}
