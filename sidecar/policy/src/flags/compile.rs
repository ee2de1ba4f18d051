//! `FeatureFlag` specs compiled into a [`FlagSet`]: each flag's targeting parsed once (its
//! `$ref`s expanded), its metadata merged with its set's, so evaluating parses nothing.

use std::collections::BTreeMap;

use bulwark_api::{
    crd::feature_flag::{FeatureFlagSpec, Flag, FlagState, JsonLogic, checks},
    snapshot::{PolicySource, Sourced},
};
use datalogic_rs::Logic;
use serde_json::{Map, Value};

use prometheus::IntCounterVec;

use super::{
    Resolution,
    metrics::{FlagMetrics, count_evaluation},
    operators::{ENGINE, dialect},
};
use crate::compile::CompileError;

/// Every flag the workload's `FeatureFlag`s define, by key.
#[derive(Default)]
pub struct FlagSet {
    flags: BTreeMap<String, CompiledFlag>,
    /// `bulwark_flag_evaluations_total`, when the set counts its evaluations.
    evaluations: Option<IntCounterVec>,
}

pub struct CompiledFlag {
    pub key: String,
    pub enabled: bool,
    pub variants: BTreeMap<String, Value>,
    pub default_variant: String,
    pub targeting: Targeting,
    /// The set's metadata overwritten by the flag's (flagd's `patchMetadata`).
    pub metadata: Map<String, Value>,
    /// The `FeatureFlag` that defines it.
    pub source: PolicySource,
}

pub enum Targeting {
    /// No rule, or `{}`: the default variant, reason `STATIC`.
    None,
    Rule(Logic),
    /// A rule the engine cannot compile: as in flagd, the flag still loads and each
    /// evaluation fails with `PARSE_ERROR` (the message says why).
    Invalid(String),
}

/// How deep `$ref`s may nest (a cycle is refused before this matters).
const MAX_REF_DEPTH: usize = 16;

impl FlagSet {
    /// Compiles every spec. A spec that fails the checks the apiserver cannot make
    /// ([`checks::check`]) is refused whole, naming the field. A key defined by two resources
    /// is served from the first in snapshot order (namespace, then name), as flagd serves one
    /// flag per key.
    pub fn compile(
        specs: &[Sourced<FeatureFlagSpec>],
        metrics: &FlagMetrics,
    ) -> Result<Self, (PolicySource, CompileError)> {
        let mut flags = BTreeMap::new();
        for Sourced { source, spec } in specs {
            let fail = |e: CompileError| (source.clone(), e);
            if let Some(e) = checks::check(spec).into_iter().next() {
                let field = e.field.strip_prefix("spec.").unwrap_or(&e.field).to_owned();
                return Err(fail(CompileError::new(field, e.message)));
            }
            for (key, flag) in &spec.flags {
                if let Some(first) = flags.get(key).map(|f: &CompiledFlag| &f.source) {
                    tracing::warn!(
                        flag = %key,
                        served_from = %format!("{}/{}", first.namespace, first.name),
                        ignored_in = %format!("{}/{}", source.namespace, source.name),
                        "flag defined twice; serving the first definition"
                    );
                    continue;
                }
                let compiled = compile_flag(key, flag, spec, source)
                    .map_err(|e| fail(e.under(&format!("flags[{key}]"))))?;
                flags.insert(key.clone(), compiled);
            }
        }
        Ok(Self {
            flags,
            evaluations: Some(metrics.evaluations.clone()),
        })
    }

    /// One flag of `spec`, compiled as [`FlagSet::compile`] compiles it (for the gates, which
    /// evaluate their own resource's definition); an error names `flags[KEY]`.
    pub fn compile_one(
        key: &str,
        flag: &Flag,
        spec: &FeatureFlagSpec,
        source: &PolicySource,
    ) -> Result<CompiledFlag, CompileError> {
        compile_flag(key, flag, spec, source).map_err(|e| e.under(&format!("flags[{key}]")))
    }

    /// Counts an evaluation of `flag` (`bulwark_flag_evaluations_total`).
    pub fn record(&self, flag: &CompiledFlag, resolution: &Resolution<'_>) {
        if let Some(evaluations) = &self.evaluations {
            count_evaluation(evaluations, &flag.key, resolution);
        }
    }

    /// Evaluates `keys` (every flag when `None`) for a context given as the text of a JSON
    /// object, parsed once; `None` when it is not one. Each evaluation is counted.
    pub fn evaluate_json<'f>(
        &'f self,
        keys: Option<&str>,
        context: &str,
        now: i64,
    ) -> Option<Vec<(&'f CompiledFlag, Resolution<'f>)>> {
        let arena = datalogic_rs::bumpalo::Bump::new();
        let context = super::Context::parse(context, &arena)?;
        let flags: Vec<&CompiledFlag> = match keys {
            Some(key) => self.get(key).into_iter().collect(),
            None => self.iter().collect(),
        };
        Some(
            flags
                .into_iter()
                .map(|flag| {
                    let resolution = flag.evaluate(context, &arena, now);
                    self.record(flag, &resolution);
                    (flag, resolution)
                })
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&CompiledFlag> {
        self.flags.get(key)
    }

    /// Every flag, by key.
    pub fn iter(&self) -> impl Iterator<Item = &CompiledFlag> {
        self.flags.values()
    }

    pub fn len(&self) -> usize {
        self.flags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }
}

fn compile_flag(
    key: &str,
    flag: &Flag,
    spec: &FeatureFlagSpec,
    source: &PolicySource,
) -> Result<CompiledFlag, CompileError> {
    let targeting = match &flag.targeting {
        None => Targeting::None,
        Some(JsonLogic(rule)) => {
            let rule = expand_refs(rule, &spec.evaluators, 0)
                .map_err(|message| CompileError::new("targeting", message))?;
            if rule.as_object().is_some_and(Map::is_empty) {
                Targeting::None
            } else {
                match ENGINE.compile(dialect(rule).to_string().as_str()) {
                    Ok(logic) => Targeting::Rule(logic),
                    Err(e) => Targeting::Invalid(e.to_string()),
                }
            }
        }
    };
    let mut metadata: Map<String, Value> = spec
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    metadata.extend(flag.metadata.iter().map(|(k, v)| (k.clone(), v.0.clone())));
    Ok(CompiledFlag {
        key: key.to_owned(),
        enabled: flag.state == FlagState::Enabled,
        variants: flag
            .variants
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect(),
        default_variant: flag.default_variant.clone(),
        targeting,
        metadata,
        source: source.clone(),
    })
}

/// `rule` with each `{"$ref": name}` replaced by the named evaluator, recursively. flagd
/// substitutes text once, so a `$ref` inside an evaluator resolves only sometimes there
/// (docs/feature-flags.md, deviations); here it always does.
fn expand_refs(
    rule: &Value,
    evaluators: &BTreeMap<String, JsonLogic>,
    depth: usize,
) -> Result<Value, String> {
    Ok(match rule {
        Value::Object(map) if map.len() == 1 && map.contains_key("$ref") => {
            let name = map["$ref"].as_str().ok_or("$ref must be a string")?;
            let evaluator = evaluators
                .get(name)
                .ok_or_else(|| format!("$ref {name:?} names no entry of $evaluators"))?;
            if depth >= MAX_REF_DEPTH {
                return Err(format!(
                    "$ref {name:?} nests more than {MAX_REF_DEPTH} deep (a cycle?)"
                ));
            }
            expand_refs(&evaluator.0, evaluators, depth + 1)?
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), expand_refs(v, evaluators, depth)?)))
                .collect::<Result<_, String>>()?,
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| expand_refs(v, evaluators, depth))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}
