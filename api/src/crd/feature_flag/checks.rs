//! What the CRD's schema and CEL rules cannot check about a `FeatureFlag`, because variant
//! values, targeting rules and metadata are untyped JSON that Kubernetes hides from CEL. One
//! function for every place a flag enters (standalone loading, the sidecar's compile, the
//! operator's validating webhook), so the same flag is accepted or refused everywhere with the
//! same message.

use std::collections::{BTreeMap, VecDeque};

use serde_json::Value;

use super::{FeatureFlagSpec, Flag, JsonLogic};
pub use crate::validation::FieldError;

fn error(field: String, message: impl Into<String>) -> FieldError {
    FieldError::new(field, message)
}

/// Every problem found, in field order (empty: the spec is acceptable).
pub fn check(spec: &FeatureFlagSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (key, flag) in &spec.flags {
        check_flag(
            &format!("spec.flags[{key}]"),
            flag,
            &spec.evaluators,
            &mut errors,
        );
    }
    for (name, rule) in &spec.evaluators {
        let at = format!("spec.$evaluators[{name}]");
        check_refs(&at, &rule.0, &spec.evaluators, &mut errors);
        check_operators(&at, &rule.0, &mut errors);
        if let Some(cycle) = ref_cycle(name, &spec.evaluators) {
            errors.push(error(at, format!("$ref cycle: {}", cycle.join(" → "))));
        }
    }
    check_metadata("spec.metadata", &spec.metadata, &mut errors);
    for (i, gate) in spec.gates.iter().enumerate() {
        // An unknown flag is the CEL rule's to report.
        let Some(flag) = spec.flags.get(&gate.flag) else {
            continue;
        };
        for (j, variant) in gate.allowed_variants.iter().enumerate() {
            if !flag.variants.contains_key(variant) {
                errors.push(error(
                    format!("spec.gates[{i}].allowedVariants[{j}]"),
                    format!(
                        "flag {:?} has no variant {variant:?} (its variants: {})",
                        gate.flag,
                        names(&flag.variants)
                    ),
                ));
            }
        }
    }
    errors
}

fn names<V>(map: &BTreeMap<String, V>) -> String {
    map.keys()
        .map(|k| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The JSON type of a variant value, as flagd types flags.
fn variant_type(value: &Value) -> Option<&'static str> {
    match value {
        Value::Bool(_) => Some("boolean"),
        Value::String(_) => Some("string"),
        Value::Number(_) => Some("number"),
        Value::Object(_) => Some("object"),
        Value::Null | Value::Array(_) => None,
    }
}

fn check_flag(
    at: &str,
    flag: &Flag,
    evaluators: &BTreeMap<String, JsonLogic>,
    errors: &mut Vec<FieldError>,
) {
    if !flag.variants.contains_key(&flag.default_variant) {
        errors.push(error(
            format!("{at}.defaultVariant"),
            format!(
                "{:?} is not one of the flag's variants ({})",
                flag.default_variant,
                names(&flag.variants)
            ),
        ));
    }
    let mut first: Option<(&str, &'static str)> = None;
    for (name, value) in &flag.variants {
        let Some(kind) = variant_type(&value.0) else {
            errors.push(error(
                format!("{at}.variants[{name}]"),
                "must be a boolean, string, number or object",
            ));
            continue;
        };
        match first {
            None => first = Some((name, kind)),
            Some((first_name, first_kind)) if first_kind != kind => errors.push(error(
                format!("{at}.variants[{name}]"),
                format!(
                    "is a {kind}, but variant {first_name:?} is a {first_kind}: all variants of a flag have one type"
                ),
            )),
            Some(_) => {}
        }
    }
    if let Some(targeting) = &flag.targeting {
        check_refs(&format!("{at}.targeting"), &targeting.0, evaluators, errors);
        check_operators(&format!("{at}.targeting"), &targeting.0, errors);
    }
    check_metadata(&format!("{at}.metadata"), &flag.metadata, errors);
}

/// Every `{"$ref": name}` in `rule` must name a shared evaluator.
fn check_refs(
    at: &str,
    rule: &Value,
    evaluators: &BTreeMap<String, JsonLogic>,
    errors: &mut Vec<FieldError>,
) {
    match rule {
        Value::Object(map) => {
            if let Some(reference) = map.get("$ref") {
                match reference.as_str() {
                    Some(name) if evaluators.contains_key(name) => {}
                    Some(name) => errors.push(error(
                        at.to_owned(),
                        format!("$ref {name:?} names no entry of $evaluators"),
                    )),
                    None => errors.push(error(at.to_owned(), "$ref must be a string")),
                }
            }
            for value in map.values() {
                check_refs(at, value, evaluators, errors);
            }
        }
        Value::Array(items) => {
            for item in items {
                check_refs(at, item, evaluators, errors);
            }
        }
        _ => {}
    }
}

/// The operators a targeting rule may use: JsonLogic's (as flagd's engine, jsonlogic-go, has
/// them), flagd's own, and `$ref`. The sidecar's engine evaluates exactly these (a test in
/// `bulwark-policy` compiles each). jsonlogic-go's own extensions (`abs`, `contains_all`,
/// `contains_any`, `contains_none`, `set`) are not among them: flagd does not document them.
pub const OPERATORS: &[&str] = &[
    // JsonLogic
    "var",
    "missing",
    "missing_some",
    "if",
    "?:",
    "==",
    "===",
    "!=",
    "!==",
    "!",
    "!!",
    "or",
    "and",
    ">",
    ">=",
    "<",
    "<=",
    "max",
    "min",
    "+",
    "-",
    "*",
    "/",
    "%",
    "map",
    "reduce",
    "filter",
    "all",
    "none",
    "some",
    "merge",
    "in",
    "cat",
    "substr",
    // flagd
    "fractional",
    "sem_ver",
    "starts_with",
    "ends_with",
    "$ref",
];

/// Every object in a rule is an operation: one key, a known operator. flagd would load the
/// rule and fail every evaluation of it (PARSE_ERROR); refusing it names the mistake at once.
fn check_operators(at: &str, rule: &Value, errors: &mut Vec<FieldError>) {
    match rule {
        Value::Object(map) if map.is_empty() => {}
        Value::Object(map) if map.len() > 1 => errors.push(error(
            at.to_owned(),
            format!(
                "an object in JsonLogic is one operation, with one key; this one has {} ({})",
                map.len(),
                map.keys()
                    .map(|k| format!("{k:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        Value::Object(map) => {
            let (op, args) = map.iter().next().expect("one key");
            if !OPERATORS.contains(&op.as_str()) {
                errors.push(error(
                    at.to_owned(),
                    format!("unknown JsonLogic operator {op:?}"),
                ));
            }
            check_operators(at, args, errors);
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| check_operators(at, item, errors)),
        _ => {}
    }
}

/// The shortest chain of `$ref`s from evaluator `name` back to itself, if any (breadth-first,
/// so each evaluator is visited once).
fn ref_cycle(name: &str, evaluators: &BTreeMap<String, JsonLogic>) -> Option<Vec<String>> {
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([name]);
    while let Some(current) = queue.pop_front() {
        let mut refs = Vec::new();
        if let Some(rule) = evaluators.get(current) {
            collect_refs(&rule.0, &mut refs);
        }
        for next in refs {
            let Some((next, _)) = evaluators.get_key_value(next) else {
                continue; // check_refs reports it
            };
            if next == name {
                let mut chain = vec![current];
                while let Some(up) = parent.get(chain[chain.len() - 1]) {
                    chain.push(up);
                }
                chain.reverse();
                chain.push(name);
                return Some(chain.into_iter().map(str::to_owned).collect());
            }
            if next != name && !parent.contains_key(next.as_str()) {
                parent.insert(next, current);
                queue.push_back(next);
            }
        }
    }
    None
}

fn collect_refs<'a>(rule: &'a Value, refs: &mut Vec<&'a str>) {
    match rule {
        Value::Object(map) => {
            if let Some(name) = map.get("$ref").and_then(Value::as_str) {
                refs.push(name);
            }
            map.values().for_each(|v| collect_refs(v, refs));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, refs)),
        _ => {}
    }
}

fn check_metadata(
    at: &str,
    metadata: &BTreeMap<String, super::MetadataValue>,
    errors: &mut Vec<FieldError>,
) {
    for (key, value) in metadata {
        if !matches!(
            value.0,
            Value::Bool(_) | Value::String(_) | Value::Number(_)
        ) {
            errors.push(error(
                format!("{at}[{key}]"),
                "must be a boolean, string or number",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> FeatureFlagSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn fields(spec: &FeatureFlagSpec) -> Vec<String> {
        check(spec).into_iter().map(|e| e.field).collect()
    }

    const GOOD: &str = r#"
flags:
  new-checkout:
    state: ENABLED
    variants: {"on": true, "off": false}
    defaultVariant: "off"
    targeting: {"if": [{"$ref": "staff"}, "on", null]}
    metadata: {team: shop, weight: 3}
$evaluators:
  staff: {"ends_with": [{"var": "email"}, "@example.com"]}
metadata: {flagSetId: shop}
gates:
- name: beta
  flag: new-checkout
  allowedVariants: ["on"]
"#;

    #[test]
    fn a_flagd_style_flag_set_passes() {
        assert_eq!(check(&spec(GOOD)), vec![]);
    }

    #[test]
    fn each_problem_is_named_by_its_field() {
        let bad = spec(
            r#"
flags:
  a:
    state: ENABLED
    variants: {"on": true, "off": "no", "gone": null}
    defaultVariant: "maybe"
    targeting: {"if": [{"$ref": "missing"}, "on", "off"]}
    metadata: {owner: {name: x}}
  b:
    state: DISABLED
    variants: {x: [1, 2]}
    defaultVariant: x
$evaluators:
  loop: {"or": [{"$ref": 7}]}
metadata: {list: [1]}
gates:
- name: g
  flag: a
  allowedVariants: ["on", "shiny"]
"#,
        );
        assert_eq!(
            fields(&bad),
            [
                "spec.flags[a].defaultVariant",
                "spec.flags[a].variants[gone]",
                "spec.flags[a].variants[on]",
                "spec.flags[a].targeting",
                "spec.flags[a].metadata[owner]",
                "spec.flags[b].variants[x]",
                "spec.$evaluators[loop]",
                "spec.metadata[list]",
                "spec.gates[0].allowedVariants[1]",
            ]
        );
        let messages: Vec<String> = check(&bad).iter().map(ToString::to_string).collect();
        assert!(
            messages[0]
                .contains(r#""maybe" is not one of the flag's variants ("gone", "off", "on")"#),
            "{messages:?}"
        );
        assert!(
            messages[2].contains(r#"is a boolean, but variant "off" is a string"#),
            "{messages:?}"
        );
        assert!(messages[3].contains(r#"$ref "missing""#), "{messages:?}");
    }

    #[test]
    fn ref_cycles_are_refused_with_the_chain() {
        let looped = spec(
            r#"
flags: {}
$evaluators:
  a: {"or": [{"$ref": "b"}, {"var": "x"}]}
  b: {"and": [{"$ref": "c"}]}
  c: {"!": {"$ref": "a"}}
  self: {"if": [{"$ref": "self"}, true, false]}
  fine: {"$ref": "a"}
"#,
        );
        let messages: Vec<String> = check(&looped).iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "spec.$evaluators[a]: $ref cycle: a → b → c → a",
                "spec.$evaluators[b]: $ref cycle: b → c → a → b",
                "spec.$evaluators[c]: $ref cycle: c → a → b → c",
                "spec.$evaluators[self]: $ref cycle: self → self",
            ]
        );
    }

    #[test]
    fn rules_use_known_operators_one_per_object() {
        let bad = spec(
            r#"
flags:
  f:
    state: ENABLED
    variants: {"on": true, "off": false}
    defaultVariant: "off"
    targeting: {"if": [{"contains_any": [{"var": "tags"}, ["a"]]}, "on", "off"]}
  g:
    state: ENABLED
    variants: {"on": true, "off": false}
    defaultVariant: "off"
    targeting: {"==": [{"var": "a"}, 1], "!=": [{"var": "b"}, 2]}
  h:
    state: ENABLED
    variants: {"on": true, "off": false}
    defaultVariant: "off"
    targeting: {}
$evaluators:
  typo: {"start_with": [{"var": "email"}, "a"]}
"#,
        );
        let messages: Vec<String> = check(&bad).iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                r#"spec.flags[f].targeting: unknown JsonLogic operator "contains_any""#,
                r#"spec.flags[g].targeting: an object in JsonLogic is one operation, with one key; this one has 2 ("!=", "==")"#,
                r#"spec.$evaluators[typo]: unknown JsonLogic operator "start_with""#,
            ]
        );
    }
}
