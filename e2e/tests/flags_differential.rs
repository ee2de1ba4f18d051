//! The sidecar against the real flagd: one flag file (`flagd/differential.flagd.json`) loaded
//! into both, the same generated evaluation contexts sent to both over OFREP's bulk endpoint,
//! and every flag's answer compared: value, variant, reason, error code and metadata.
//!
//! The file covers what flagd users rely on: fractional splits (weights that do not sum to 100,
//! omitted weights, custom bucketing, a missing targeting key), sem_ver (`v` prefixes, partial
//! versions, pre-releases, every operator), string operators, `$ref` (single and nested),
//! disabled flags, targeting that returns null or an unknown variant, variants chosen from the
//! context, `$flagd.flagKey` and `$flagd.timestamp`, and flag-set metadata merged into a flag's.
//! Contexts are generated from a fixed seed, so a difference reproduces. Any difference fails
//! the test, except the deviations docs/feature-flags.md lists, each checked to be exactly the
//! documented one.

use std::{collections::BTreeMap, time::Duration};

use bulwark_e2e::{
    flagd::Flagd,
    keep_alive::KeepAlive,
    process::wait_for_status,
    sidecar::{Sidecar, Standalone},
};
use proptest::{
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
};
use serde_json::{Map, Value, json};

const FLAG_FILE: &str = include_str!("flagd/differential.flagd.json");
const CONTEXTS: usize = 10_000;
/// Contexts for the typed calls of the evaluation API (each flag times five types).
const RPC_CONTEXTS: usize = 60;
const BULK: &str = "/ofrep/v1/evaluate/flags";
/// The flags of the file whose answer does not depend on the context.
const CONSTANT: &[&str] = &[
    "static-bool",
    "static-object",
    "disabled",
    "flag-key",
    "timestamp",
    "targeting-json-null",
    "targeting-empty",
    "metadata-merge",
];

/// The flagd file as a FeatureFlag: the file's content is the spec, unchanged.
fn feature_flag() -> String {
    let mut spec: Value = serde_json::from_str(FLAG_FILE).unwrap();
    spec.as_object_mut().unwrap().remove("$schema");
    json!({
        "apiVersion": "bulwark.dev/v1alpha1",
        "kind": "FeatureFlag",
        "metadata": {"name": "differential"},
        "spec": spec,
    })
    .to_string()
}

fn pick(values: Vec<Value>) -> impl Strategy<Value = Value> {
    proptest::sample::select(values)
}

/// Sometimes absent, sometimes one of a few telling values, sometimes anything of its kind.
fn field(
    present: f64,
    telling: Vec<Value>,
    other: impl Strategy<Value = Value> + 'static,
) -> impl Strategy<Value = Option<Value>> {
    proptest::option::weighted(present, prop_oneof![3 => pick(telling), 1 => other])
}

fn context() -> impl Strategy<Value = Value> {
    let targeting_key = field(
        0.85,
        vec![json!("user-1"), json!("user-2"), json!(""), json!(42)],
        "[a-z0-9-]{1,16}".prop_map(Value::from),
    );
    let email = field(
        0.8,
        vec![
            json!("ana@example.com"),
            json!("bob@example.com"),
            json!("ana@corp.io"),
            json!("eve@EXAMPLE.COM"),
            json!(""),
            json!(7),
        ],
        "[a-z]{1,8}@[a-z]{1,8}\\.(com|io|corp)".prop_map(Value::from),
    );
    let version = field(
        0.8,
        [
            "1.2.0",
            "1.2.3",
            "v1.2.3",
            "1.2",
            "1",
            "v2",
            "2.0",
            "2.0.0-alpha",
            "2.0.0-beta.2",
            "2.0.0-beta.11",
            "2.0.0-rc.1",
            "2.0.0",
            "2.1.5",
            "1.0.0",
            "1.0.0+build.5",
            "01.2.3",
            "1.2.3.4",
            "banana",
            "",
        ]
        .into_iter()
        .map(Value::from)
        .collect(),
        prop_oneof![
            (0u8..4, 0u8..12, 0u8..12).prop_map(|(a, b, c)| Value::from(format!("{a}.{b}.{c}"))),
            (0u8..3, 0u8..3).prop_map(|(a, b)| Value::from(format!("v{a}.{b}"))),
            Just(json!(1.5)),
        ],
    );
    let plan = field(
        0.8,
        vec![
            json!("free"),
            json!("pro"),
            json!("enterprise"),
            json!("PRO"),
            json!(null),
            json!(true),
            json!(1),
        ],
        "[a-z]{1,6}".prop_map(Value::from),
    );
    let country = field(
        0.8,
        vec![json!("US"), json!("CA"), json!("DE"), json!("us")],
        "[A-Z]{2}".prop_map(Value::from),
    );
    let age = field(
        0.8,
        vec![
            json!(17),
            json!(18),
            json!(30),
            json!(64),
            json!(65),
            json!(17.5),
            json!("30"),
            json!(null),
        ],
        (0i64..100).prop_map(Value::from),
    );
    let beta = field(
        0.5,
        vec![json!(true), json!(false), json!(0), json!(""), json!("no")],
        any::<bool>().prop_map(Value::from),
    );
    let user = proptest::option::weighted(
        0.8,
        (
            field(
                0.8,
                vec![json!("u-1"), json!("")],
                "[a-z0-9]{1,10}".prop_map(Value::from),
            ),
            field(
                0.8,
                vec![
                    json!(1),
                    json!(2),
                    json!(3),
                    json!(4),
                    json!("2"),
                    json!(2.0),
                ],
                (0i64..5).prop_map(Value::from),
            ),
        ),
    );
    let groups = field(
        0.7,
        vec![
            json!(["admin"]),
            json!(["beta-testers", "staff"]),
            json!([]),
            json!("admin"),
            json!("administrators"),
        ],
        proptest::collection::vec(
            pick(vec![
                json!("admin"),
                json!("beta-1"),
                json!("ops"),
                json!(3),
            ]),
            0..4,
        )
        .prop_map(Value::from),
    );
    (
        targeting_key,
        email,
        version,
        plan,
        country,
        age,
        beta,
        user,
        groups,
    )
        .prop_map(
            |(targeting_key, email, version, plan, country, age, beta, user, groups)| {
                let mut context = Map::new();
                let mut put = |name: &str, value: Option<Value>| {
                    if let Some(value) = value {
                        context.insert(name.into(), value);
                    }
                };
                put("targetingKey", targeting_key);
                put("email", email);
                put("version", version);
                put("plan", plan);
                put("country", country);
                put("age", age);
                put("beta", beta);
                put("groups", groups);
                if let Some((id, tier)) = user {
                    let mut user = Map::new();
                    id.map(|id| user.insert("id".into(), id));
                    tier.map(|tier| user.insert("tier".into(), tier));
                    context.insert("user".into(), Value::Object(user));
                }
                Value::Object(context)
            },
        )
}

/// A bulk answer as flag key → that flag's result, without `errorDetails` (free text, whose
/// wording is not part of the contract).
fn by_flag(body: &[u8]) -> BTreeMap<String, Value> {
    let answer: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)));
    answer["flags"]
        .as_array()
        .unwrap_or_else(|| panic!("no flags in {answer}"))
        .iter()
        .map(|result| {
            let mut result = result.clone();
            result.as_object_mut().unwrap().remove("errorDetails");
            (result["key"].as_str().unwrap().to_owned(), result)
        })
        .collect()
}

/// Where flagd's engine (jsonlogic-go) panics on a type it does not expect and flagd answers
/// PARSE_ERROR, while the sidecar follows the JsonLogic reference: arithmetic on null (0) and
/// `some` over a value that is not an array (false). docs/feature-flags.md lists both.
fn flagd_fails_where_sidecar_answers(flag: &str, context: &Value) -> Option<&'static str> {
    match flag {
        "arithmetic"
            if !context["user"]["tier"].is_number() && !context["user"]["tier"].is_string() =>
        {
            Some("arithmetic on null")
        }
        "group-some" if !context["groups"].is_array() => Some("some over a non-array"),
        _ => None,
    }
}

/// What `ref-nested` must answer: its `$ref` names an evaluator that itself holds a `$ref`.
fn nested_ref_expected(context: &Value) -> Value {
    let staff = context["email"]
        .as_str()
        .is_some_and(|e| e.ends_with("@example.com"));
    let on = staff && context["plan"] == "pro";
    json!({
        "key": "ref-nested",
        "reason": "TARGETING_MATCH",
        "variant": if on { "on" } else { "off" },
        "value": on,
        "metadata": {"flagSetId": "differential", "version": 3},
    })
}

#[test]
fn sidecar_answers_as_flagd_does_over_ten_thousand_contexts() {
    let s = Standalone::new(&feature_flag(), &[("index.html", b"app\n")]);
    let flag_file = s.dir.path().join("flags.flagd.json");
    std::fs::write(&flag_file, FLAG_FILE).unwrap();
    let flagd = Flagd::start(&flag_file, &s.dir.path().join("flagd.log"));
    let sidecar = Sidecar::start(
        s.app.addr,
        &s.dir.path().join("state"),
        &["--config-dir", s.config.to_str().unwrap()],
    );
    wait_for_status(sidecar.admin, "/readyz", 200, Duration::from_secs(10));

    let mut to_flagd = KeepAlive::connect(flagd.ofrep);
    let mut to_sidecar = KeepAlive::connect(sidecar.admin);
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[0x5e; 32]),
    );
    let strategy = context();

    // flag → (count, first context, flagd's answer, the sidecar's answer)
    let mut differences: BTreeMap<String, (usize, Value, Value, Value)> = BTreeMap::new();
    // flag → distinct answers seen (flagd's), to show the contexts exercise every flag
    let mut outcomes: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    let mut nested_ref_flagd_errors = 0;
    // (flag, cause) → contexts where flagd errored and the sidecar answered
    let mut deviations: BTreeMap<(String, &str), usize> = BTreeMap::new();
    for _ in 0..CONTEXTS {
        let context = strategy.new_tree(&mut runner).unwrap().current();
        let body = serde_json::to_vec(&json!({ "context": context })).unwrap();
        let (flagd_status, flagd_body) = to_flagd.post_json(BULK, body.clone());
        let (our_status, our_body) = to_sidecar.post_json(BULK, body);
        assert_eq!(
            flagd_status,
            200,
            "flagd: {}",
            String::from_utf8_lossy(&flagd_body)
        );
        assert_eq!(
            our_status,
            200,
            "sidecar: {}",
            String::from_utf8_lossy(&our_body)
        );
        let theirs = by_flag(&flagd_body);
        let ours = by_flag(&our_body);
        assert_eq!(
            theirs.keys().collect::<Vec<_>>(),
            ours.keys().collect::<Vec<_>>(),
            "the same flags"
        );
        for (key, their) in &theirs {
            let our = &ours[key];
            outcomes.entry(key.clone()).or_default().insert(
                our.get("variant")
                    .or(our.get("errorCode"))
                    .map_or_else(|| our["reason"].to_string(), Value::to_string),
            );
            if key == "targeting-json-null" && their != our {
                // Documented deviation: `"targeting": null` is no targeting here (STATIC);
                // flagd evaluates the null (DEFAULT). Same variant and value.
                let mut as_flagd = our.clone();
                as_flagd["reason"] = json!("DEFAULT");
                assert_eq!(*their, as_flagd);
                *deviations
                    .entry((key.clone(), "null targeting is STATIC"))
                    .or_default() += 1;
                continue;
            }
            if let Some(cause) = flagd_fails_where_sidecar_answers(key, &context) {
                // Documented deviation: flagd errors; the sidecar answers as the JsonLogic
                // reference does (checked by the unit tests of the operators).
                if their != our {
                    assert_eq!(
                        their["errorCode"], "PARSE_ERROR",
                        "{key} ({cause}): {their}"
                    );
                    *deviations.entry((key.clone(), cause)).or_default() += 1;
                }
                continue;
            }
            if key == "ref-nested" {
                // Deliberate deviation (docs/feature-flags.md): flagd substitutes `$ref`s in
                // Go map order, so a nested one resolves or stays an unknown operator from
                // one start to the next. The sidecar always resolves it.
                assert_eq!(*our, nested_ref_expected(&context), "context {context}");
                if their != our {
                    assert!(their.get("errorCode").is_some(), "flagd: {their}");
                    nested_ref_flagd_errors += 1;
                }
                continue;
            }
            if their != our {
                let entry = differences
                    .entry(key.clone())
                    .or_insert_with(|| (0, context.clone(), their.clone(), our.clone()));
                entry.0 += 1;
            }
        }
    }

    let report: Vec<String> = differences
        .iter()
        .map(|(flag, (count, context, theirs, ours))| {
            format!("{flag}: {count} differences; first with context {context}:\n  flagd   {theirs}\n  sidecar {ours}")
        })
        .collect();
    assert!(
        report.is_empty(),
        "{} flags answered differently:\n{}",
        report.len(),
        report.join("\n")
    );
    // A degenerate generator would agree trivially: every flag whose answer depends on the
    // context must have given at least two different answers.
    for (flag, seen) in &outcomes {
        if !CONSTANT.contains(&flag.as_str()) {
            assert!(seen.len() >= 2, "{flag} always answered {seen:?}");
        }
    }
    eprintln!(
        "{CONTEXTS} contexts, {} flags each: no differences; ref-nested: flagd errored on {nested_ref_flagd_errors}; documented deviations: {deviations:?}",
        outcomes.len()
    );

    // The evaluation API (Connect with JSON, v1, on flagd's main port and --flagd-listen):
    // every flag resolved as each type, so a flag asked for as another type shows the
    // TYPE_MISMATCH answer of each.
    let mut to_flagd = KeepAlive::connect(flagd.rpc);
    let mut to_sidecar = KeepAlive::connect(sidecar.flagd);
    let keys: Vec<String> = outcomes.keys().cloned().collect();
    let mut rpc_differences: BTreeMap<String, (usize, String, String)> = BTreeMap::new();
    let mut calls = 0;
    for _ in 0..RPC_CONTEXTS {
        let context = strategy.new_tree(&mut runner).unwrap().current();
        for key in &keys {
            if key == "ref-nested" || flagd_fails_where_sidecar_answers(key, &context).is_some() {
                continue; // the deviations above
            }
            for method in [
                "ResolveBoolean",
                "ResolveString",
                "ResolveFloat",
                "ResolveInt",
                "ResolveObject",
            ] {
                let path = format!("/flagd.evaluation.v1.Service/{method}");
                let body =
                    serde_json::to_vec(&json!({"flagKey": key, "context": context})).unwrap();
                let theirs = to_flagd.post_json(&path, body.clone());
                let ours = to_sidecar.post_json(&path, body);
                calls += 1;
                let (theirs, ours) = (rpc_answer(theirs), rpc_answer(ours));
                let expected = if key == "targeting-json-null" {
                    theirs.replace("\"DEFAULT\"", "\"STATIC\"")
                } else {
                    theirs.clone()
                };
                if ours != expected {
                    rpc_differences
                        .entry(format!("{key} {method}"))
                        .or_insert((0, theirs, ours))
                        .0 += 1;
                }
            }
        }
    }
    let report: Vec<String> = rpc_differences
        .iter()
        .map(|(call, (n, theirs, ours))| {
            format!("{call}: {n}×\n  flagd   {theirs}\n  sidecar {ours}")
        })
        .collect();
    assert!(
        report.is_empty(),
        "{} calls differ:\n{}",
        report.len(),
        report.join("\n")
    );
    eprintln!("evaluation API: {calls} typed calls, no differences");
}

/// A Connect answer as status and body, with an error's free-text message left out.
fn rpc_answer((status, body): (u16, bytes::Bytes)) -> String {
    let mut value: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
    if let Some(map) = value.as_object_mut() {
        map.remove("message");
    }
    format!("{status} {value}")
}
