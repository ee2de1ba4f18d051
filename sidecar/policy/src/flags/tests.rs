//! Flag sets from YAML specs, evaluated: every outcome in flagd's table
//! (docs/research/flags.md, `evaluateVariant`).

use bulwark_api::snapshot::{PolicySource, Sourced};
use datalogic_rs::bumpalo::Bump;
use serde_json::json;

use super::*;
use crate::metrics::PolicyMetrics;

const NOW: i64 = 1_764_900_000;

fn set(yaml: &str) -> FlagSet {
    FlagSet::compile(
        &[Sourced {
            source: PolicySource {
                namespace: "shop".into(),
                name: "flags".into(),
                generation: 1,
            },
            spec: serde_yaml::from_str(yaml).unwrap(),
        }],
        &PolicyMetrics::unregistered().flags,
    )
    .unwrap()
}

/// (reason, variant, value, error code) of `key` for `context`.
fn eval(
    set: &FlagSet,
    key: &str,
    context: &str,
) -> (
    &'static str,
    Option<String>,
    Option<serde_json::Value>,
    Option<&'static str>,
) {
    let arena = Bump::new();
    let context = Context::parse(context, &arena).unwrap();
    let r = set.get(key).unwrap().evaluate(context, &arena, NOW);
    (
        r.reason.as_str(),
        r.variant.map(str::to_owned),
        r.value.cloned(),
        r.error.map(|(code, _)| code.as_str()),
    )
}

const FLAGS: &str = r##"
flags:
  static-flag:
    state: ENABLED
    variants: {"on": true, "off": false}
    defaultVariant: "off"
  empty-targeting:
    state: ENABLED
    variants: {"on": true, "off": false}
    defaultVariant: "on"
    targeting: {}
  staff-only:
    state: ENABLED
    variants: {"on": true, "off": false}
    defaultVariant: "off"
    targeting: {"if": [{"$ref": "is-staff"}, "on", null]}
    metadata: {owner: checkout, flagSetId: overridden}
  disabled:
    state: DISABLED
    variants: {"a": "A", "b": "B"}
    defaultVariant: "a"
  unknown-variant:
    state: ENABLED
    variants: {"a": 1, "b": 2}
    defaultVariant: "a"
    targeting: {"if": [true, "c", "a"]}
  bool-result:
    state: ENABLED
    variants: {"true": "yes", "false": "no"}
    defaultVariant: "false"
    targeting: {"==": [{"var": "plan"}, "pro"]}
  bad-rule:
    state: ENABLED
    variants: {"a": 1}
    defaultVariant: "a"
    targeting: {"if": "not a list"}
  rollout:
    state: ENABLED
    variants: {"blue": "#00f", "green": "#0f0"}
    defaultVariant: "blue"
    targeting: {"fractional": [["blue", 50], ["green", 50]]}
  flag-key:
    state: ENABLED
    variants: {"flag-key": 1, "other": 2}
    defaultVariant: "other"
    targeting: {"var": "$flagd.flagKey"}
  fresh:
    state: ENABLED
    variants: {"new": 1, "old": 2}
    defaultVariant: "old"
    targeting: {"if": [{">": [{"var": "$flagd.timestamp"}, 1700000000]}, "new", "old"]}
$evaluators:
  is-staff: {"ends_with": [{"var": "email"}, {"$ref": "staff-domain"}]}
  staff-domain: "@example.com"
metadata: {flagSetId: shop, version: 3}
"##;

#[test]
fn every_outcome_as_flagd_gives_it() {
    let set = set(FLAGS);
    let v = |s: &str| Some(s.to_owned());
    assert_eq!(
        eval(&set, "static-flag", "{}"),
        ("STATIC", v("off"), Some(json!(false)), None)
    );
    assert_eq!(
        eval(&set, "empty-targeting", "{}"),
        ("STATIC", v("on"), Some(json!(true)), None)
    );
    assert_eq!(
        eval(&set, "staff-only", r#"{"email":"ana@example.com"}"#),
        ("TARGETING_MATCH", v("on"), Some(json!(true)), None)
    );
    assert_eq!(
        eval(&set, "staff-only", r#"{"email":"bo@other.org"}"#),
        ("DEFAULT", v("off"), Some(json!(false)), None),
        "targeting gave null"
    );
    assert_eq!(eval(&set, "disabled", "{}"), ("DISABLED", None, None, None));
    assert_eq!(
        eval(&set, "unknown-variant", "{}"),
        ("ERROR", None, None, Some("GENERAL"))
    );
    assert_eq!(
        eval(&set, "bool-result", r#"{"plan":"pro"}"#),
        ("TARGETING_MATCH", v("true"), Some(json!("yes")), None),
        "a boolean result names the variant \"true\""
    );
    assert_eq!(
        eval(&set, "bad-rule", "{}"),
        ("ERROR", None, None, Some("PARSE_ERROR"))
    );
    assert_eq!(eval(&set, "flag-key", "{}").1, v("flag-key"));
    assert_eq!(
        eval(&set, "fresh", "{}").1,
        v("new"),
        "$flagd.timestamp is Unix seconds"
    );
    assert_eq!(
        eval(&set, "flag-key", r#"{"$flagd":{"flagKey":"other"}}"#).1,
        v("flag-key"),
        "a caller's $flagd is replaced"
    );
}

#[test]
fn fractional_without_a_targeting_key_falls_back_and_with_one_is_stable() {
    let set = set(FLAGS);
    assert_eq!(eval(&set, "rollout", "{}").0, "DEFAULT");
    let first = eval(&set, "rollout", r#"{"targetingKey":"user-1"}"#);
    assert_eq!(first.0, "TARGETING_MATCH");
    for _ in 0..3 {
        assert_eq!(eval(&set, "rollout", r#"{"targetingKey":"user-1"}"#), first);
    }
    let greens = (0..1000)
        .filter(|i| {
            eval(
                &set,
                "rollout",
                &format!(r#"{{"targetingKey":"user-{i}"}}"#),
            )
            .1
            .as_deref()
                == Some("green")
        })
        .count();
    assert!(
        (430..=570).contains(&greens),
        "{greens} of 1000 in a 50% bucket"
    );
}

#[test]
fn metadata_is_the_sets_overwritten_by_the_flags() {
    let set = set(FLAGS);
    let arena = Bump::new();
    let r = set
        .get("staff-only")
        .unwrap()
        .evaluate(Context::empty(), &arena, NOW);
    assert_eq!(
        serde_json::Value::Object(r.metadata.clone()),
        json!({"flagSetId": "overridden", "version": 3, "owner": "checkout"})
    );
    let r = set
        .get("disabled")
        .unwrap()
        .evaluate(Context::empty(), &arena, NOW);
    assert_eq!(
        r.metadata["flagSetId"], "shop",
        "metadata comes with DISABLED too"
    );
}

#[test]
fn a_spec_that_fails_the_checks_is_refused_naming_the_field() {
    let err = FlagSet::compile(
        &[Sourced {
            source: PolicySource::default(),
            spec: serde_yaml::from_str(
                r#"
flags:
  f: {state: ENABLED, variants: {a: 1}, defaultVariant: b}
"#,
            )
            .unwrap(),
        }],
        &PolicyMetrics::unregistered().flags,
    )
    .err()
    .unwrap();
    assert_eq!(err.1.field, "flags[f].defaultVariant");
}

#[test]
fn a_ref_cycle_is_refused() {
    let err = FlagSet::compile(
        &[Sourced {
            source: PolicySource::default(),
            spec: serde_yaml::from_str(
                r#"
flags:
  f: {state: ENABLED, variants: {a: 1}, defaultVariant: a, targeting: {"$ref": "x"}}
$evaluators:
  x: {"or": [{"$ref": "y"}]}
  y: {"and": [{"$ref": "x"}]}
"#,
            )
            .unwrap(),
        }],
        &PolicyMetrics::unregistered().flags,
    )
    .err()
    .unwrap();
    assert_eq!(err.1.field, "$evaluators[x]");
    assert_eq!(err.1.message, "$ref cycle: x → y → x");
}

#[test]
fn refs_nested_deeper_than_the_bound_are_refused() {
    // e0 → e1 → … → e17: no cycle, but deeper than MAX_REF_DEPTH.
    let mut yaml = String::from(
        "flags:\n  f: {state: ENABLED, variants: {a: 1}, defaultVariant: a, targeting: {\"$ref\": \"e0\"}}\n$evaluators:\n",
    );
    for i in 0..17 {
        yaml.push_str(&format!(
            "  e{i}: {{\"!\": {{\"$ref\": \"e{}\"}}}}\n",
            i + 1
        ));
    }
    yaml.push_str("  e17: {\"var\": \"x\"}\n");
    let err = FlagSet::compile(
        &[Sourced {
            source: PolicySource::default(),
            spec: serde_yaml::from_str(&yaml).unwrap(),
        }],
        &PolicyMetrics::unregistered().flags,
    )
    .err()
    .unwrap();
    assert_eq!(err.1.field, "flags[f].targeting");
    assert!(
        err.1.message.contains("nests more than"),
        "{}",
        err.1.message
    );
}

#[test]
fn a_ref_inside_an_evaluator_resolves() {
    let set = set(r#"
$evaluators:
  isStaff: {"ends_with": [{"var": "email"}, "@example.com"]}
  isProStaff: {"and": [{"$ref": "isStaff"}, {"==": [{"var": "plan"}, "pro"]}]}
flags:
  f:
    state: ENABLED
    variants: {"on": true, "off": false}
    defaultVariant: "off"
    targeting: {"if": [{"$ref": "isProStaff"}, "on", "off"]}
"#);
    assert_eq!(
        eval(&set, "f", r#"{"email": "ana@example.com", "plan": "pro"}"#),
        (
            "TARGETING_MATCH",
            Some("on".into()),
            Some(json!(true)),
            None
        )
    );
    assert_eq!(
        eval(&set, "f", r#"{"email": "ana@example.com", "plan": "free"}"#),
        (
            "TARGETING_MATCH",
            Some("off".into()),
            Some(json!(false)),
            None
        )
    );
}
