//! Checking a request's fields: one collector of violations, and the rules written once with
//! one message each.
//!
//! Every use case that validates input gathers its violations in a [`Violations`] and finishes
//! with `violations.finish()?`; `crate::error` turns the collected violations into
//! INVALID_ARGUMENT with one `BadRequest` field violation each. The messages here are part of
//! the API (clients show them), so each rule says one thing one way: a missing field "is
//! required", a long text "must be at most N characters", a text with control characters "must
//! not contain control characters".

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// What a missing (empty or blank) field is told.
pub const REQUIRED: &str = "is required";

/// The invalid fields of one request, in the order they were found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "finish() turns the violations into an error"]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` is invalid for `why`.
    pub fn push(&mut self, field: impl Into<String>, why: impl Into<String>) {
        self.0.push(FieldViolation::new(field, why));
    }

    /// Records violations found elsewhere (the password policy, a nested message).
    pub fn extend(&mut self, more: impl IntoIterator<Item = FieldViolation>) {
        self.0.extend(more);
    }

    /// The value of a check, or `None` with its reason recorded against `field`.
    pub fn check<T>(&mut self, field: &str, outcome: Result<T, impl Into<String>>) -> Option<T> {
        match outcome {
            Ok(value) => Some(value),
            Err(why) => {
                self.push(field, why);
                None
            }
        }
    }

    /// `value` must not be empty or blank. Returns whether it is there.
    pub fn required(&mut self, field: &str, value: &str) -> bool {
        let present = !value.trim().is_empty();
        if !present {
            self.push(field, REQUIRED);
        }
        present
    }

    /// An optional free text: at most `max` characters, no control characters.
    pub fn text(&mut self, field: &str, value: &str, max: usize) {
        if let Err(why) = text(value, max) {
            self.push(field, why);
        }
    }

    /// A required free text: present, at most `max` characters, no control characters.
    pub fn required_text(&mut self, field: &str, value: &str, max: usize) {
        if self.required(field, value) {
            self.text(field, value, max);
        }
    }

    /// A person's display name (optional): see [`MAX_DISPLAY_NAME`].
    pub fn display_name(&mut self, field: &str, value: &str) {
        self.text(field, value, MAX_DISPLAY_NAME);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<FieldViolation> {
        self.0
    }

    /// `Ok` when nothing was found; otherwise the violations, which `?` turns into
    /// INVALID_ARGUMENT (see `crate::error`).
    pub fn finish(self) -> Result<(), Violations> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }

    /// A single violation, as an error value.
    pub fn one(field: impl Into<String>, why: impl Into<String>) -> Violations {
        Violations(vec![FieldViolation::new(field, why)])
    }
}

impl IntoIterator for Violations {
    type Item = FieldViolation;
    type IntoIter = std::vec::IntoIter<FieldViolation>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// `value` must be present: `Err` with the one message for a missing field.
pub fn require(field: &str, value: &str) -> Result<(), Violations> {
    let mut v = Violations::new();
    v.required(field, value);
    v.finish()
}

/// Longest display name of a person (in characters).
pub const MAX_DISPLAY_NAME: usize = 100;

/// Why `value` is not an acceptable free text of at most `max` characters, if it is not.
pub fn text(value: &str, max: usize) -> Result<(), String> {
    if value.chars().count() > max {
        Err(format!("must be at most {max} characters"))
    } else if value.chars().any(char::is_control) {
        Err("must not contain control characters".to_string())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasons(v: Violations) -> Vec<(String, String)> {
        v.into_iter().map(|f| (f.field, f.description)).collect()
    }

    #[test]
    fn one_message_per_rule() {
        let mut v = Violations::new();
        v.required_text("name", "  ", 10);
        v.required_text("title", "x".repeat(11).as_str(), 10);
        v.text("note", "a\u{7}b", 10);
        v.display_name("display_name", &"d".repeat(MAX_DISPLAY_NAME + 1));
        v.text("fine", "", 10);
        v.display_name("also_fine", &"d".repeat(MAX_DISPLAY_NAME));
        assert_eq!(
            reasons(v),
            vec![
                ("name".into(), "is required".into()),
                ("title".into(), "must be at most 10 characters".into()),
                ("note".into(), "must not contain control characters".into()),
                (
                    "display_name".into(),
                    "must be at most 100 characters".into()
                ),
            ]
        );
    }

    #[test]
    fn finish_is_ok_only_without_violations() {
        assert_eq!(Violations::new().finish(), Ok(()));
        let mut v = Violations::new();
        assert_eq!(v.check("n", "7".parse::<u8>().map_err(|_| "bad")), Some(7));
        assert_eq!(v.check("n", "x".parse::<u8>().map_err(|_| "bad")), None);
        assert_eq!(v.clone().finish(), Err(v.clone()));
        assert_eq!(reasons(v), vec![("n".into(), "bad".into())]);
        assert!(require("id", "x").is_ok());
        assert_eq!(
            reasons(require("id", " ").unwrap_err()),
            vec![("id".into(), "is required".into())]
        );
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        assert_eq!(text("ééé", 3), Ok(()));
        assert!(text("éééé", 3).is_err());
    }
}
