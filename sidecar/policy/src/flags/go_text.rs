//! Values as flagd's Go code writes them as text, where flagd's answers depend on it:
//! `fmt.Sprintf("%v")` (how `sem_ver` reads a number as a version) and `encoding/json` (how a
//! targeting result becomes a variant name: encoded, then every `"` removed, so `true` names
//! the variant `true` and `1.0` the variant `1`).

use std::{borrow::Cow, fmt::Write};

use datalogic_rs::DataValue;
use datalogic_rs::datavalue::NumberValue;

/// `fmt.Sprintf("%v", value)` for the values `sem_ver` can meet as a version; `None` for those
/// whose text cannot be a version anyway (null, booleans, arrays, objects).
pub fn sprint_v(value: &DataValue<'_>) -> Option<String> {
    match value {
        DataValue::String(s) => Some((*s).to_owned()),
        DataValue::Number(NumberValue::Integer(i)) => Some(i.to_string()),
        // JSON numbers are float64 in Go; %v prints them %g-style with exponent threshold 21.
        DataValue::Number(NumberValue::Float(f)) => Some(float_text(*f, Style::Sprint)),
        _ => None,
    }
}

/// The variant name flagd takes from a targeting result; `None` for null (no variant chosen).
/// A string that encodes as itself (the common case: a variant name from the rule) is
/// returned as it is, without encoding.
pub fn variant_name<'v>(value: &DataValue<'v>) -> Option<Cow<'v, str>> {
    match value {
        DataValue::Null => None,
        DataValue::String(s) if s.chars().all(encodes_as_itself) => Some(Cow::Borrowed(*s)),
        _ => {
            let mut json = String::new();
            encode(value, &mut json);
            Some(Cow::Owned(json.replace('"', "")))
        }
    }
}

/// A character `encode_str` writes unchanged.
fn encodes_as_itself(c: char) -> bool {
    !matches!(c, '"' | '\\' | '<' | '>' | '&' | '\u{2028}' | '\u{2029}') && c >= ' '
}

/// `encoding/json` with its defaults: HTML-safe escaping, map keys sorted, float64 numbers.
fn encode(value: &DataValue<'_>, out: &mut String) {
    match value {
        DataValue::Null => out.push_str("null"),
        DataValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        DataValue::Number(NumberValue::Integer(i)) => {
            let _ = write!(out, "{i}");
        }
        DataValue::Number(NumberValue::Float(f)) => out.push_str(&float_text(*f, Style::Json)),
        DataValue::String(s) => encode_str(s, out),
        DataValue::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                encode(item, out);
            }
            out.push(']');
        }
        DataValue::Object(entries) => {
            let mut sorted: Vec<_> = entries.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                encode_str(key, out);
                out.push(':');
                encode(item, out);
            }
            out.push('}');
        }
        #[allow(unreachable_patterns)]
        _ => out.push_str("null"),
    }
}

fn encode_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[derive(Clone, Copy, PartialEq)]
enum Style {
    /// `fmt`'s `%v`: exponent below 1e-4, two exponent digits at least (`1e-05`).
    Sprint,
    /// `encoding/json`: exponent below 1e-6, exponent digits as needed (`1e-7`).
    Json,
}

/// Go's shortest float text: a plain decimal for zero and magnitudes up to 1e21, else
/// `1e+21`-style.
fn float_text(f: f64, style: Style) -> String {
    let small = match style {
        Style::Sprint => 1e-4,
        Style::Json => 1e-6,
    };
    let abs = f.abs();
    if abs == 0.0 || (small..1e21).contains(&abs) {
        // Rust's Display is the shortest round-trip decimal, as Go's 'f' with precision -1.
        return format!("{f}");
    }
    let text = format!("{f:e}");
    let (mantissa, exponent) = text.split_once('e').expect("exponent form");
    let (sign, digits) = match exponent.strip_prefix('-') {
        Some(d) => ('-', d),
        None => ('+', exponent),
    };
    match style {
        Style::Sprint => format!("{mantissa}e{sign}{digits:0>2}"),
        Style::Json => format!("{mantissa}e{sign}{digits}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variant(json: &str) -> Option<String> {
        let arena = datalogic_rs::bumpalo::Bump::new();
        let value = DataValue::from_str(json, &arena).unwrap();
        variant_name(&value).map(Cow::into_owned)
    }

    #[test]
    fn variant_names_follow_encoding_json_without_quotes() {
        assert_eq!(variant("\"on\"").as_deref(), Some("on"));
        assert_eq!(variant("true").as_deref(), Some("true"));
        assert_eq!(variant("1.0").as_deref(), Some("1"));
        assert_eq!(variant("1.5").as_deref(), Some("1.5"));
        assert_eq!(variant("1e21").as_deref(), Some("1e+21"));
        assert_eq!(variant("0.0000001").as_deref(), Some("1e-7"));
        assert_eq!(variant("\"a&b\"").as_deref(), Some("a\\u0026b"));
        assert_eq!(variant("\"say \\\"hi\\\"\"").as_deref(), Some("say \\hi\\"));
        assert_eq!(
            variant("{\"b\":1,\"a\":[true]}").as_deref(),
            Some("{a:[true],b:1}")
        );
        assert_eq!(variant("null"), None);
    }

    proptest::proptest! {
        /// Returning a string as it is agrees with encoding it and removing the quotes.
        #[test]
        fn a_string_variant_is_its_encoding_without_quotes(s in "\\PC*|[a-z<>&\"\\\\\n\u{1}\u{2028} -]{0,12}") {
            let mut json = String::new();
            encode_str(&s, &mut json);
            let name = variant_name(&DataValue::String(&s)).unwrap();
            proptest::prop_assert_eq!(name.as_ref(), json.replace('"', ""));
        }
    }

    #[test]
    fn sprint_v_prints_numbers_as_go() {
        let arena = datalogic_rs::bumpalo::Bump::new();
        let v = |json: &str| sprint_v(&DataValue::from_str(json, &arena).unwrap());
        assert_eq!(v("1.5").as_deref(), Some("1.5"));
        assert_eq!(v("2.0").as_deref(), Some("2"));
        assert_eq!(v("100000000").as_deref(), Some("100000000"));
        assert_eq!(v("0.00001").as_deref(), Some("1e-05"));
        assert_eq!(v("true"), None);
    }
}
