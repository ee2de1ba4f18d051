//! Durations as Kubernetes users write them in Gateway API resources (GEP-2257): one to four
//! `<number><unit>` pairs with units `h`, `m`, `s`, `ms`, e.g. `1h30m`, `250ms`.
//!
//! The schema pattern and this parser accept exactly the same strings, so what the apiserver admits
//! the sidecar can read in standalone mode, and CEL's `duration()` can compare it.

use std::{borrow::Cow, fmt, str::FromStr};

use kube::core::{Message, Rule};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// The OpenAPI pattern of a duration, identical to Gateway API's `Duration`.
pub const PATTERN: &str = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$";

/// A non-negative duration with millisecond precision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

/// Why a string is not a duration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: {reason} (expected e.g. \"250ms\", \"30s\", \"1h30m\")")]
pub struct ParseDurationError {
    input: String,
    reason: &'static str,
}

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    pub const fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }

    pub const fn as_std(&self) -> std::time::Duration {
        self.0
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason| ParseDurationError {
            input: input.to_owned(),
            reason,
        };
        let mut rest = input;
        let mut total_ms: u64 = 0;
        let mut pairs = 0;
        if rest.is_empty() {
            return Err(fail("empty"));
        }
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(fail("expected a number"));
            }
            if digits > 5 {
                return Err(fail("a number has at most 5 digits"));
            }
            let n: u64 = rest[..digits]
                .parse()
                .map_err(|_| fail("expected a number"))?;
            rest = &rest[digits..];
            let (unit_ms, len) = if rest.starts_with("ms") {
                (1, 2)
            } else if rest.starts_with('h') {
                (3_600_000, 1)
            } else if rest.starts_with('m') {
                (60_000, 1)
            } else if rest.starts_with('s') {
                (1_000, 1)
            } else {
                return Err(fail("unit must be one of h, m, s, ms"));
            };
            rest = &rest[len..];
            total_ms += n * unit_ms;
            pairs += 1;
            if pairs > 4 {
                return Err(fail("at most 4 number-unit pairs"));
            }
        }
        Ok(Self::from_millis(total_ms))
    }
}

impl fmt::Display for Duration {
    /// The shortest form the pattern accepts: `1h30m`, `250ms`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            let n = ms / size;
            // Hours above the 5-digit limit cannot be written; clamp rather than emit an
            // unreadable value (nothing in Bulwark's bounds comes close).
            if n > 0 {
                write!(f, "{}{unit}", n.min(99_999))?;
                ms -= n * size;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": PATTERN,
            // The pattern allows at most 4 × (5 digits + 2 unit letters).
            "maxLength": 28,
        })
    }
}

// CEL rules on durations. The apiserver runs CEL even when the pattern already failed, and
// `duration()` of a malformed string adds a confusing "type conversion error"; every rule is
// therefore guarded by the pattern, so a malformed value gets the pattern's error alone.

fn well_formed(expr: &str) -> String {
    format!("{expr}.matches('{PATTERN}')")
}

fn field_rule(condition: String, message: String) -> Rule {
    Rule::new(format!("!{} || ({condition})", well_formed("self")))
        .message(Message::Message(message))
}

/// A field-level rule: the duration lies within `[min, max]`.
pub fn rule_between(field: &str, min: &str, max: &str) -> Rule {
    field_rule(
        format!("duration(self) >= duration('{min}') && duration(self) <= duration('{max}')"),
        format!("{field} must be between {min} and {max}"),
    )
}

/// A field-level rule: the duration is at least `min`.
pub fn rule_at_least(field: &str, min: &str) -> Rule {
    field_rule(
        format!("duration(self) >= duration('{min}')"),
        format!("{field} must be at least {min}"),
    )
}

/// A field-level rule: the duration is at most `max`.
pub fn rule_at_most(field: &str, max: &str) -> Rule {
    field_rule(
        format!("duration(self) <= duration('{max}')"),
        format!("{field} must be at most {max}"),
    )
}

/// An object-level rule: when both are set, `self.<shorter>` does not exceed `self.<longer>`
/// (strictly shorter when `strict`). Reported at `.<shorter>`.
pub fn rule_not_longer(shorter: &str, longer: &str, strict: bool) -> Rule {
    let (a, b) = (format!("self.{shorter}"), format!("self.{longer}"));
    let op = if strict { "<" } else { "<=" };
    let relation = if strict {
        "be shorter than"
    } else {
        "not exceed"
    };
    Rule::new(format!(
        "!has({a}) || !has({b}) || !{} || !{} || duration({a}) {op} duration({b})",
        well_formed(&a),
        well_formed(&b)
    ))
    .message(Message::Message(format!(
        "{shorter} must {relation} {longer}"
    )))
    .field_path(format!(".{shorter}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_gateway_api_durations() {
        assert_eq!("250ms".parse(), Ok(Duration::from_millis(250)));
        assert_eq!("1h30m".parse(), Ok(Duration::from_secs(5400)));
        assert_eq!("1m0s500ms".parse(), Ok(Duration::from_millis(60_500)));
        assert_eq!("0s".parse(), Ok(Duration::from_millis(0)));
    }

    #[test]
    fn rejects_what_the_schema_pattern_rejects() {
        let pattern = regex::Regex::new(PATTERN).unwrap();
        for bad in [
            "",
            "1",
            "1.5s",
            "-1s",
            "1d",
            "1h1m1s1ms1h",
            "123456s",
            "s",
            "1 s",
            "1us",
        ] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} parsed");
            assert!(!pattern.is_match(bad), "{bad:?} matched the schema pattern");
        }
    }

    proptest! {
        #[test]
        fn display_round_trips_and_matches_the_pattern(ms in 0u64..(99_999 * 3_600_000)) {
            let d = Duration::from_millis(ms);
            let text = d.to_string();
            prop_assert!(regex::Regex::new(PATTERN).unwrap().is_match(&text), "{text}");
            prop_assert_eq!(text.parse::<Duration>(), Ok(d));
        }

        #[test]
        fn parser_and_pattern_agree(s in "[0-9hms]{0,12}") {
            let pattern = regex::Regex::new(PATTERN).unwrap();
            prop_assert_eq!(s.parse::<Duration>().is_ok(), pattern.is_match(&s), "{}", s);
        }
    }
}
