//! Rules every value passes before it reaches the database.
//!
//! The limits are the column sizes of `migrations/0001_init.sql`, counted in
//! characters (as MySQL counts `VARCHAR(n)`), so a value that passes here
//! always fits; the caller gets `field: rule` instead of a truncation error.

use crate::error::{Error, Result};

/// Longest user or person name, in characters.
pub const NAME_MAX: usize = 64;
/// Longest id card, in characters.
pub const ID_CARD_MAX: usize = 32;
/// Longest blacklist reason, in characters.
pub const REASON_MAX: usize = 512;
/// Longest gate name, in characters.
pub const GATE_MAX: usize = 64;
/// Longest node id recorded with a gate check, in characters.
pub const NODE_MAX: usize = 128;
/// Shortest password, in characters.
pub const PASSWORD_MIN: usize = 8;
/// Longest password, in characters (argon2 takes any length; this bounds the
/// work an unauthenticated request can ask for).
pub const PASSWORD_MAX: usize = 128;
/// Largest page of a listing or history query.
pub const LIMIT_MAX: u32 = dsf_proto::LIMIT_MAX;

/// A free-text field: `min..=max` characters, not blank, no control
/// characters (they break logs and terminals and are never meant).
fn text(field: &'static str, value: &str, max: usize, rule: &'static str) -> Result<()> {
    let n = value.chars().count();
    if n == 0 || n > max || value.trim().is_empty() || value.chars().any(char::is_control) {
        return Err(Error::Invalid { field, rule });
    }
    Ok(())
}

/// A user name or a person's name.
pub fn name(field: &'static str, value: &str) -> Result<()> {
    text(
        field,
        value,
        NAME_MAX,
        "1 to 64 characters, not blank, no control characters",
    )
}

/// An id card: 1 to 32 ASCII letters, digits or `-`. Narrow on purpose:
/// id cards are identifiers, and a narrow alphabet keeps them unambiguous.
pub fn id_card(value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= ID_CARD_MAX
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            field: "id_card",
            rule: "1 to 32 characters, ASCII letters, digits or '-'",
        })
    }
}

/// A blacklist reason.
pub fn reason(value: &str) -> Result<()> {
    // Newlines and tabs are fine in a reason; other control characters are not.
    let n = value.chars().count();
    if n > REASON_MAX
        || value
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(Error::Invalid {
            field: "reason",
            rule: "at most 512 characters, no control characters other than newline and tab",
        });
    }
    Ok(())
}

/// A gate name.
pub fn gate(value: &str) -> Result<()> {
    text(
        "gate",
        value,
        GATE_MAX,
        "1 to 64 characters, not blank, no control characters",
    )
}

/// The node that served a gate check.
pub fn node(value: &str) -> Result<()> {
    text(
        "node",
        value,
        NODE_MAX,
        "1 to 128 characters, not blank, no control characters",
    )
}

/// A password before hashing.
pub fn password(value: &str) -> Result<()> {
    let n = value.chars().count();
    if !(PASSWORD_MIN..=PASSWORD_MAX).contains(&n) {
        return Err(Error::Invalid {
            field: "password",
            rule: "8 to 128 characters",
        });
    }
    Ok(())
}

/// A page size: 1 to 500; `None` takes `default`.
pub fn limit(value: Option<u32>, default: u32) -> Result<u32> {
    match value {
        None => Ok(default),
        Some(n) if (1..=LIMIT_MAX).contains(&n) => Ok(n),
        Some(_) => Err(Error::Invalid {
            field: "limit",
            rule: "1 to 500",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_count_characters_not_bytes() {
        assert!(name("name", &"😀".repeat(64)).is_ok());
        assert!(name("name", &"😀".repeat(65)).is_err());
        assert!(name("name", "x' OR '1'='1").is_ok());
    }

    #[test]
    fn blank_or_control_names_are_refused_with_the_rule() {
        for bad in ["", "   ", "a\0b", "a\nb"] {
            let e = name("name", bad).unwrap_err();
            assert_eq!(
                e.to_string(),
                "name: 1 to 64 characters, not blank, no control characters"
            );
        }
    }

    #[test]
    fn id_cards_are_narrow() {
        assert!(id_card("11010119900307451X").is_ok());
        assert!(id_card("P-1234").is_ok());
        for bad in ["", "x' OR '1'='1", "a b", "é", &"1".repeat(33)] {
            assert!(id_card(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(limit(None, 100).unwrap(), 100);
        assert_eq!(limit(Some(500), 100).unwrap(), 500);
        assert!(limit(Some(0), 100).is_err());
        assert!(limit(Some(501), 100).is_err());
    }
}
