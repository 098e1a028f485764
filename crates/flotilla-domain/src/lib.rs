//! Flotilla's domain: the resources an operator manages, the rules that make
//! them valid, and the shapes of a policy's permissions block and of the
//! full policy an agent receives (packages and their rendering live in
//! `flotilla-packages`).
//!
//! Architecture invariant: this crate performs no I/O and knows nothing of
//! SQL, HTTP or the async runtime. Everything here is a pure function of its
//! inputs, so it is tested with plain unit tests.

#![warn(unreachable_pub)]

pub mod action;
pub mod agent;
pub mod apikey;
pub mod connector;
pub mod enrollment;
pub mod error;
pub mod full_policy;
pub mod kuery;
pub mod output;
pub mod package_policy;
pub mod permissions;
pub mod policy;
pub mod status_history;
pub mod task;

pub use error::ValidationError;

/// Normalise a free-text name: trimmed, non-empty, at most `max` characters.
pub(crate) fn validate_name(
    field: &str,
    value: &str,
    max: usize,
) -> Result<String, ValidationError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if trimmed.chars().count() > max {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(trimmed.to_owned())
}

/// Validate a caller-chosen identifier: 1–128 characters of `[A-Za-z0-9_.:-]`.
pub fn validate_id(field: &str, value: &str) -> Result<(), ValidationError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            "must be 1-128 characters of letters, digits, '_', '-', '.' or ':'",
        ))
    }
}
