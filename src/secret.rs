//! A string that cannot be printed by accident.
//!
//! Tokens travel through config, clients and tasks; wrapping them means a
//! stray `{:?}` in a log line prints `[redacted]` instead of the secret.
//! The only way out is [`Secret::expose`], which is easy to grep for.

use serde::{Deserialize, Deserializer};
use std::fmt;

/// A token, password or URL with credentials: Debug and Display print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value the moment it is read, so it never travels bare.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself. Call it only where the value leaves for its one
    /// rightful destination (an `Authorization` header, a comparison).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is blank (an unset token), without exposing it.
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn never_prints_the_value() {
        let s = Secret::new("MLY|123|abcdef");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&s)), "Some([redacted])");
        assert_eq!(s.expose(), "MLY|123|abcdef");
    }
}
