//! flagd's JsonLogic operators, as flagd v0.16.0 defines them (`core/pkg/evaluator`):
//! `fractional`, `sem_ver`, `starts_with`, `ends_with`. Each gets its arguments already
//! evaluated and answers null where flagd logs an error and returns nil, so the flag falls back
//! to its default variant, as in flagd.
//!
//! They are registered under their own names on an engine without datalogic's `flagd` and
//! `ext-string` features: with those, datalogic's built-ins would win, and they differ from
//! flagd (docs/research/flags.md).

use std::sync::LazyLock;

use datalogic_rs::{
    ArenaExt, CustomOperator, DataValue, Engine, EvaluationConfig, Result,
    bumpalo::{self, Bump},
    datavalue::NumberValue,
    operator::EvalContext,
};
use serde_json::{Map, Value, json};

use super::{go_text, semver::Version};

/// The engine every flag's targeting is compiled for and evaluated by, after [`dialect`].
///
/// Loose equality across types is false, not an error: jsonlogic-go (flagd's engine) and the
/// JsonLogic reference answer `1 == "pro"` with false, and datalogic's default error would turn
/// a rule like `{"==": [{"var": "plan"}, "pro"]}` into an error for a context with `plan: 1`.
pub static ENGINE: LazyLock<Engine> = LazyLock::new(|| {
    Engine::builder()
        .with_config(EvaluationConfig::default().with_loose_equality_errors(false))
        .add_operator(GO_CAT, GoCat)
        .add_operator("fractional", Fractional)
        .add_operator("sem_ver", SemVer)
        .add_operator("starts_with", StringAffix::Starts)
        .add_operator("ends_with", StringAffix::Ends)
        .build()
});

/// A targeting rule (its `$ref`s expanded) rewritten where datalogic's built-ins answer
/// differently from jsonlogic-go, flagd's engine (datalogic runs built-ins before custom
/// operators of the same name, so these are rewritten rather than overridden):
/// - `{"var": [path, default]}` becomes `{"if": [{"===": [{"var": path}, null]}, default,
///   {"var": path}]}`: jsonlogic-go (and the JsonLogic reference) give the default for a null
///   value, datalogic only for a missing one (its `??` would do, but needs the `ext-control`
///   operators, which flagd does not have);
/// - `cat` becomes [`GoCat`], which prints numbers as Go does (`2.0` is `2`) and trims the result.
pub fn dialect(rule: Value) -> Value {
    match rule {
        Value::Object(map) if map.len() == 1 => {
            let (op, args) = map.into_iter().next().expect("one entry");
            let args = dialect(args);
            match (op.as_str(), args) {
                ("var", Value::Array(mut a)) if a.len() == 2 => {
                    let default = a.pop().expect("two items");
                    let var = json!({"var": a.pop().expect("one item")});
                    json!({"if": [{"===": [var, null]}, default, var]})
                }
                ("cat", args) => json!({ GO_CAT: args }),
                (_, args) => Value::Object(Map::from_iter([(op, args)])),
            }
        }
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, dialect(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(dialect).collect()),
        other => other,
    }
}

/// The name [`dialect`] gives `cat`.
const GO_CAT: &str = "flagd.cat";

/// jsonlogic-go's `cat`: numbers as Go's `strconv.FormatFloat(f, 'f', -1, 64)` (which Rust's
/// `Display` for `f64` matches), null as nothing, the result trimmed of surrounding whitespace.
/// Other values (where jsonlogic-go's type assertion fails) as JSON text.
struct GoCat;

impl CustomOperator for GoCat {
    fn evaluate<'a>(
        &self,
        args: &[&'a DataValue<'a>],
        _ctx: &mut EvalContext<'_, 'a>,
        arena: &'a Bump,
    ) -> Result<&'a DataValue<'a>> {
        let mut text = String::new();
        let mut push = |value: &DataValue<'_>| match value {
            DataValue::String(s) => text.push_str(s),
            DataValue::Null => {}
            DataValue::Number(NumberValue::Integer(i)) => text.push_str(&i.to_string()),
            DataValue::Number(NumberValue::Float(f)) => text.push_str(&f.to_string()),
            other => text.push_str(&other.to_string()),
        };
        args.iter().for_each(|arg| push(arg));
        Ok(arena.string(text.trim()))
    }
}

/// `{"fractional": [bucketBy?, [variant, weight], ...]}`: the variant whose share of the total
/// weight holds the MurmurHash3 (x86_32, seed 0) of the bucketing value. Without a string
/// `bucketBy`, the value is `$flagd.flagKey` followed by the context's `targetingKey`.
struct Fractional;

impl CustomOperator for Fractional {
    fn evaluate<'a>(
        &self,
        args: &[&'a DataValue<'a>],
        ctx: &mut EvalContext<'_, 'a>,
        arena: &'a Bump,
    ) -> Result<&'a DataValue<'a>> {
        Ok(fractional(args, ctx.root_input(), arena).unwrap_or_else(|| arena.null()))
    }
}

/// Its scratch space (the bucketing key, the weights) is in the evaluation's arena: this runs
/// for every request a rollout gate sees.
fn fractional<'a>(
    args: &[&'a DataValue<'a>],
    root: &'a DataValue<'a>,
    arena: &'a Bump,
) -> Option<&'a DataValue<'a>> {
    let first = args.first()?;
    root.as_object()?;
    let (bucket_by, buckets) = match first.as_str() {
        Some(key) => (key, &args[1..]),
        None => {
            let buckets = if first.is_null() { &args[1..] } else { args };
            // Missing, null, empty or not a string: no bucket (flagd returns nil).
            let targeting_key = root.get("targetingKey")?.as_str()?;
            if targeting_key.is_empty() {
                return None;
            }
            let flag_key = root
                .get("$flagd")
                .and_then(|f| f.get("flagKey"))
                .and_then(DataValue::as_str)
                .unwrap_or("");
            let mut key = bumpalo::collections::String::with_capacity_in(
                flag_key.len() + targeting_key.len(),
                arena,
            );
            key.push_str(flag_key);
            key.push_str(targeting_key);
            (key.into_bump_str(), buckets)
        }
    };
    let mut total: i64 = 0;
    let mut weighted = bumpalo::collections::Vec::with_capacity_in(buckets.len(), arena);
    for bucket in buckets {
        let bucket = bucket.as_array()?;
        let variant = bucket.first()?;
        if !matches!(
            variant,
            DataValue::String(_) | DataValue::Bool(_) | DataValue::Number(_) | DataValue::Null
        ) {
            return None;
        }
        let weight = match bucket.get(1) {
            None | Some(DataValue::Null) => 1,
            Some(DataValue::Number(NumberValue::Integer(w))) => *w,
            Some(DataValue::Number(NumberValue::Float(w))) => {
                // Go truncates to int64, then refuses what was not whole.
                let truncated = *w as i64;
                if truncated as f64 != *w {
                    return None;
                }
                truncated
            }
            Some(_) => return None,
        };
        if weight > i64::from(i32::MAX) {
            return None;
        }
        // Negative weights (results of rollout arithmetic) count as 0.
        let weight = weight.max(0);
        total += weight;
        weighted.push((variant, weight as u64));
    }
    if total == 0 || total > i64::from(i32::MAX) {
        return None;
    }
    let hash = murmur3::murmur3_32(&mut std::io::Cursor::new(bucket_by.as_bytes()), 0)
        .expect("reading a slice cannot fail");
    let bucket = (u64::from(hash) * total as u64) >> 32;
    let mut range_end = 0;
    weighted.into_iter().find_map(|(variant, weight)| {
        range_end += weight;
        (bucket < range_end).then_some(variant)
    })
}

/// `{"sem_ver": [version, op, version]}` with `=`, `!=`, `<`, `<=`, `>`, `>=`, `^` (same
/// major) and `~` (same major and minor); versions may omit the `v` (or have `V`).
struct SemVer;

impl CustomOperator for SemVer {
    fn evaluate<'a>(
        &self,
        args: &[&'a DataValue<'a>],
        _ctx: &mut EvalContext<'_, 'a>,
        arena: &'a Bump,
    ) -> Result<&'a DataValue<'a>> {
        Ok(match sem_ver(args) {
            Some(b) => arena.bool(b),
            None => arena.null(),
        })
    }
}

fn sem_ver(args: &[&DataValue<'_>]) -> Option<bool> {
    let [actual, op, target] = args else {
        return None;
    };
    let (actual, target) = (normalize(actual)?, normalize(target)?);
    let (a, b) = (Version::parse(&actual)?, Version::parse(&target)?);
    let order = a.compare(&b);
    Some(match op.as_str()? {
        "=" => order.is_eq(),
        "!=" => order.is_ne(),
        "<" => order.is_lt(),
        "<=" => order.is_le(),
        ">" => order.is_gt(),
        ">=" => order.is_ge(),
        "^" => a.same_major(&b),
        "~" => a.same_minor(&b),
        _ => return None,
    })
}

/// flagd's `normalizeVersion`: text as Go's `%v` prints it, with a `v` in front (a leading
/// `V` becomes `v`).
fn normalize(value: &DataValue<'_>) -> Option<String> {
    let text = go_text::sprint_v(value)?;
    if text.starts_with('v') {
        return Some(text);
    }
    Some(format!("v{}", text.strip_prefix('V').unwrap_or(&text)))
}

/// `starts_with` / `ends_with`: exactly two strings, else null.
enum StringAffix {
    Starts,
    Ends,
}

impl CustomOperator for StringAffix {
    fn evaluate<'a>(
        &self,
        args: &[&'a DataValue<'a>],
        _ctx: &mut EvalContext<'_, 'a>,
        arena: &'a Bump,
    ) -> Result<&'a DataValue<'a>> {
        let [value, affix] = args else {
            return Ok(arena.null());
        };
        Ok(match (value.as_str(), affix.as_str()) {
            (Some(value), Some(affix)) => arena.bool(match self {
                StringAffix::Starts => value.starts_with(affix),
                StringAffix::Ends => value.ends_with(affix),
            }),
            _ => arena.null(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(rule: &str, data: &str) -> String {
        let logic = ENGINE.compile(rule).unwrap();
        let arena = Bump::new();
        let value = ENGINE.evaluate(&logic, data, &arena).unwrap();
        value.to_json_string()
    }

    fn eval_flagd(rule: &str, data: &str) -> String {
        let rule = dialect(serde_json::from_str(rule).unwrap());
        eval(&rule.to_string(), data)
    }

    #[test]
    fn base_operators_answer_as_jsonlogic_go_does() {
        // Cross-type loose equality is false, not an error.
        assert_eq!(
            eval_flagd(r#"{"==": [{"var": "plan"}, "pro"]}"#, r#"{"plan": 1}"#),
            "false"
        );
        assert_eq!(
            eval_flagd(r#"{"!=": [{"var": "plan"}, "pro"]}"#, r#"{"plan": true}"#),
            "true"
        );
        // A var's default stands in for null as for missing, and not for other falsy values.
        let var = r#"{"var": ["plan", "pro"]}"#;
        assert_eq!(eval_flagd(var, r#"{"plan": null}"#), r#""pro""#);
        assert_eq!(eval_flagd(var, r#"{}"#), r#""pro""#);
        assert_eq!(eval_flagd(var, r#"{"plan": ""}"#), r#""""#);
        assert_eq!(eval_flagd(var, r#"{"plan": 0}"#), "0");
        // cat prints numbers as Go does, null as nothing, and trims.
        let cat = r#"{"cat": [" tier-", {"var": "t"}, {"var": "missing"}, " "]}"#;
        assert_eq!(eval_flagd(cat, r#"{"t": 2.0}"#), r#""tier-2""#);
        assert_eq!(eval_flagd(cat, r#"{"t": 2.5}"#), r#""tier-2.5""#);
        assert_eq!(
            eval_flagd(cat, r#"{"t": 1e21}"#),
            r#""tier-1000000000000000000000""#
        );
        assert_eq!(eval_flagd(r#"{"cat": "solo"}"#, "{}"), r#""solo""#);
        // Nested rules are rewritten too.
        assert_eq!(
            eval_flagd(
                r#"{"if": [true, {"cat": ["v", {"var": ["n", 3]}]}, "x"]}"#,
                "{}"
            ),
            r#""v3""#
        );
    }

    #[test]
    fn every_operator_the_checks_allow_is_one_the_engine_has() {
        use bulwark_api::crd::feature_flag::checks::OPERATORS;
        // The engine compiles unknown operators and fails them when evaluated; other errors
        // (arguments missing here) mean the operator exists.
        let unknown = |op: &str| {
            let rule = dialect(json!({ op: [] })).to_string();
            let arena = Bump::new();
            let logic = ENGINE.compile(&rule).unwrap();
            ENGINE
                .evaluate(&logic, "{}", &arena)
                .err()
                .is_some_and(|e| e.to_string().starts_with("Invalid operator"))
        };
        assert!(
            unknown("contains_any"),
            "the probe tells unknown operators apart"
        );
        // `$ref` is expanded before compiling.
        for op in OPERATORS.iter().filter(|op| **op != "$ref") {
            assert!(!unknown(op), "{op} is not an operator of the engine");
        }
    }

    #[test]
    fn murmur3_matches_flagds_hash() {
        // twmb/murmur3 StringSum32 values (docs/research/flags.md).
        for (input, hash) in [
            ("", 0x0000_0000),
            ("hello", 0x248b_fa47),
            ("headerColorrachel@faas.com", 0x6b9f_c846),
            ("my-seedrachel@faas.com", 0xaeb6_5dea),
        ] {
            let got = murmur3::murmur3_32(&mut std::io::Cursor::new(input.as_bytes()), 0).unwrap();
            assert_eq!(got, hash, "{input}");
        }
    }

    /// flagd's own cases (core/pkg/evaluator/fractional_test.go, v0.16.0).
    #[test]
    fn fractional_matches_flagds_test_vectors() {
        let four = r#"["red",25],["blue",25],["green",25],["yellow",25]"#;
        let by_flag_and_email = format!(
            r#"{{"fractional":[{{"cat":[{{"var":"$flagd.flagKey"}},{{"var":"email"}}]}},{four}]}}"#
        );
        let with =
            |email: &str| format!(r#"{{"email":"{email}","$flagd":{{"flagKey":"headerColor"}}}}"#);
        assert_eq!(
            eval(&by_flag_and_email, &with("rachel@faas.com")),
            r#""blue""#
        );
        assert_eq!(
            eval(&by_flag_and_email, &with("monica@faas.com")),
            r#""yellow""#
        );
        assert_eq!(eval(&by_flag_and_email, &with("joey@faas.com")), r#""red""#);
        assert_eq!(
            eval(&by_flag_and_email, &with("ross@faas.com")),
            r#""blue""#
        );
        let seeded =
            format!(r#"{{"fractional":[{{"cat":["my-seed",{{"var":"email"}}]}},{four}]}}"#);
        assert_eq!(
            eval(&seeded, r#"{"email":"rachel@faas.com"}"#),
            r#""green""#
        );
        assert_eq!(eval(&seeded, r#"{"email":"monica@faas.com"}"#), r#""red""#);
        assert_eq!(
            eval(
                r#"{"fractional":["email",["red",50],["blue",25],["green",25]]}"#,
                r#"{"email":"test4@faas.com"}"#
            ),
            r#""green""#
        );
        assert_eq!(
            eval(
                r#"{"fractional":[{"var":"email"},["red"],["blue"]]}"#,
                r#"{"email":"foo@foo.com"}"#
            ),
            r#""blue""#,
            "weights default to 1"
        );
        assert_eq!(
            eval(
                r#"{"fractional":[["blue",50],["green",50]]}"#,
                r#"{"targetingKey":"foo@foo.com","$flagd":{"flagKey":"headerColor"}}"#
            ),
            r#""green""#,
            "implicit key: flag key then targeting key"
        );
        assert_eq!(
            eval(
                r#"{"fractional":[["red",-1000],["green",1]]}"#,
                r#"{"targetingKey":"some-targeting-key","$flagd":{"flagKey":"clampedWeightFlag"}}"#
            ),
            r#""green""#,
            "a negative weight counts as 0"
        );
    }

    #[test]
    fn fractional_gives_null_where_flagd_gives_nil() {
        let flagd = r#""$flagd":{"flagKey":"f"}"#;
        for (rule, data) in [
            (
                r#"{"fractional":[["a",50],["b",50]]}"#,
                format!("{{{flagd}}}"),
            ),
            (
                r#"{"fractional":[["a",50],["b",50]]}"#,
                format!(r#"{{"targetingKey":"",{flagd}}}"#),
            ),
            (
                r#"{"fractional":[["a",50],["b",50]]}"#,
                format!(r#"{{"targetingKey":7,{flagd}}}"#),
            ),
            (r#"{"fractional":["k",["a",0],["b",0]]}"#, "{}".into()),
            (r#"{"fractional":["k",["a",1.5]]}"#, "{}".into()),
            (r#"{"fractional":["k",["a","1"]]}"#, "{}".into()),
            (r#"{"fractional":["k",["a",2147483648]]}"#, "{}".into()),
            (
                r#"{"fractional":["k",["a",2147483647],["b",1]]}"#,
                "{}".into(),
            ),
            (r#"{"fractional":["k",[["a"],1]]}"#, "{}".into()),
            (r#"{"fractional":["k",[]]}"#, "{}".into()),
            (r#"{"fractional":["k"]}"#, "{}".into()),
        ] {
            assert_eq!(eval(rule, &data), "null", "{rule} with {data}");
        }
        // Booleans, numbers and null are variants too.
        assert_eq!(eval(r#"{"fractional":["k",[true,1]]}"#, "{}"), "true");
        assert_eq!(eval(r#"{"fractional":["k",[null,1]]}"#, "{}"), "null");
    }

    #[test]
    fn sem_ver_follows_flagd() {
        let t = |rule: &str| eval(rule, r#"{"version":"1.2.3","num":1.5}"#);
        assert_eq!(t(r#"{"sem_ver":[{"var":"version"},">=","1.2.0"]}"#), "true");
        assert_eq!(
            t(r#"{"sem_ver":[{"var":"version"},"<","v1.2.3"]}"#),
            "false"
        );
        assert_eq!(t(r#"{"sem_ver":["V1.2.3","=","1.2.3"]}"#), "true");
        assert_eq!(t(r#"{"sem_ver":["1.2.3-rc.1","<","1.2.3"]}"#), "true");
        assert_eq!(t(r#"{"sem_ver":["1.9.0","^","1.2.3"]}"#), "true");
        assert_eq!(t(r#"{"sem_ver":["1.3.0","~","1.2.3"]}"#), "false");
        assert_eq!(
            t(r#"{"sem_ver":[{"var":"num"},">","1.4"]}"#),
            "true",
            "1.5 reads as v1.5"
        );
        for invalid in [
            r#"{"sem_ver":["1.2-beta","=","1.2"]}"#,
            r#"{"sem_ver":["1.2.3","=="," 1.2.3"]}"#,
            r#"{"sem_ver":["1.2.3","=","1.2.3","x"]}"#,
            r#"{"sem_ver":[true,"=","1.2.3"]}"#,
            r#"{"sem_ver":["1.2.3","===","1.2.3"]}"#,
        ] {
            assert_eq!(t(invalid), "null", "{invalid}");
        }
    }

    #[test]
    fn string_affixes_need_two_strings() {
        let t = |rule: &str| eval(rule, r#"{"email":"admin@example.com","n":5}"#);
        assert_eq!(t(r#"{"starts_with":[{"var":"email"},"admin@"]}"#), "true");
        assert_eq!(
            t(r#"{"ends_with":[{"var":"email"},"@example.com"]}"#),
            "true"
        );
        assert_eq!(
            t(r#"{"ends_with":[{"var":"email"},"@other.org"]}"#),
            "false"
        );
        assert_eq!(t(r#"{"starts_with":[{"var":"n"},"5"]}"#), "null");
        assert_eq!(t(r#"{"starts_with":[{"var":"missing"},"a"]}"#), "null");
        assert_eq!(t(r#"{"starts_with":["a"]}"#), "null");
    }
}
