//! A CRD's structural schema applied to a resource, as the apiserver applies it: types, string
//! lengths and patterns, numeric ranges, enums, item and property counts, required fields, and
//! unique keys of map-type lists. Standalone sidecars read resources from files, not through
//! the apiserver; without this, bounds such as a 20 MB response body or 10,000 rules passed.
//!
//! Not checked: CEL rules (`x-kubernetes-validations`; they need a CEL interpreter, and the
//! sidecar's compile step re-checks what matters to it) and unknown fields (the apiserver
//! prunes them; the typed loader ignores them the same way).

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use regex::Regex;
use serde_json::Value;

use super::FieldError;

/// A schema compiled once (patterns included) and checked against many resources.
#[derive(Debug)]
pub struct Bounds {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    type_: Option<String>,
    nullable: bool,
    int_or_string: bool,
    /// `x-kubernetes-preserve-unknown-fields` without a type: any JSON.
    any: bool,
    max_length: Option<usize>,
    min_length: Option<usize>,
    pattern: Option<Regex>,
    enum_: Vec<Value>,
    maximum: Option<(f64, bool)>,
    minimum: Option<(f64, bool)>,
    max_items: Option<usize>,
    min_items: Option<usize>,
    items: Option<Box<Node>>,
    /// `x-kubernetes-list-type: map` keys, or empty.
    list_map_keys: Vec<String>,
    list_set: bool,
    properties: BTreeMap<String, Node>,
    required: Vec<String>,
    max_properties: Option<usize>,
    min_properties: Option<usize>,
    additional: Option<Box<Node>>,
}

fn count(n: Option<i64>) -> Option<usize> {
    n.map(|n| usize::try_from(n).unwrap_or(0))
}

impl Node {
    fn compile(s: &JSONSchemaProps) -> Result<Self, regex::Error> {
        let pattern = s.pattern.as_deref().map(Regex::new).transpose()?;
        let items = match &s.items {
            Some(JSONSchemaPropsOrArray::Schema(item)) => Some(Box::new(Node::compile(item)?)),
            _ => None,
        };
        let additional = match &s.additional_properties {
            Some(JSONSchemaPropsOrBool::Schema(value)) => Some(Box::new(Node::compile(value)?)),
            _ => None,
        };
        let mut properties = BTreeMap::new();
        for (name, prop) in s.properties.iter().flatten() {
            properties.insert(name.clone(), Node::compile(prop)?);
        }
        Ok(Node {
            type_: s.type_.clone(),
            nullable: s.nullable == Some(true),
            int_or_string: s.x_kubernetes_int_or_string == Some(true),
            any: s.type_.is_none() && s.x_kubernetes_preserve_unknown_fields == Some(true),
            max_length: count(s.max_length),
            min_length: count(s.min_length),
            pattern,
            enum_: s.enum_.iter().flatten().map(|v| v.0.clone()).collect(),
            maximum: s.maximum.map(|m| (m, s.exclusive_maximum == Some(true))),
            minimum: s.minimum.map(|m| (m, s.exclusive_minimum == Some(true))),
            max_items: count(s.max_items),
            min_items: count(s.min_items),
            items,
            list_map_keys: match s.x_kubernetes_list_type.as_deref() {
                Some("map") => s.x_kubernetes_list_map_keys.clone().unwrap_or_default(),
                _ => Vec::new(),
            },
            list_set: s.x_kubernetes_list_type.as_deref() == Some("set"),
            properties,
            required: s.required.clone().unwrap_or_default(),
            max_properties: count(s.max_properties),
            min_properties: count(s.min_properties),
            additional,
        })
    }

    fn check(&self, value: &Value, at: &str, errors: &mut Vec<FieldError>) {
        if self.any {
            return;
        }
        if value.is_null() {
            if !self.nullable && self.type_.is_some() {
                errors.push(FieldError::new(at.to_owned(), "must not be null"));
            }
            return;
        }
        if !self.enum_.is_empty() && !self.enum_.contains(value) {
            let allowed: Vec<String> = self.enum_.iter().map(Value::to_string).collect();
            errors.push(FieldError::new(
                at.to_owned(),
                format!("must be one of {}", allowed.join(", ")),
            ));
        }
        if self.int_or_string {
            if !(value.is_string() || value.is_i64() || value.is_u64()) {
                errors.push(FieldError::new(
                    at.to_owned(),
                    "must be an integer or a string",
                ));
            } else if let Value::String(s) = value {
                self.check_string(s, at, errors);
            }
            return;
        }
        match (self.type_.as_deref(), value) {
            (Some("string"), Value::String(s)) => self.check_string(s, at, errors),
            (Some("integer"), Value::Number(n)) if n.is_i64() || n.is_u64() => {
                self.check_number(n.as_f64().unwrap_or(f64::NAN), at, errors)
            }
            (Some("number"), Value::Number(n)) => {
                self.check_number(n.as_f64().unwrap_or(f64::NAN), at, errors)
            }
            (Some("boolean"), Value::Bool(_)) | (None, _) => {}
            (Some("array"), Value::Array(items)) => self.check_array(items, at, errors),
            (Some("object"), Value::Object(map)) => self.check_object(map, at, errors),
            (Some(expected), _) => errors.push(FieldError::new(
                at.to_owned(),
                format!("must be of type {expected}"),
            )),
        }
    }

    fn check_string(&self, s: &str, at: &str, errors: &mut Vec<FieldError>) {
        // Lengths in characters, as the apiserver counts them.
        let length = s.chars().count();
        if let Some(max) = self.max_length
            && length > max
        {
            errors.push(FieldError::new(
                at.to_owned(),
                format!("may not be longer than {max} characters (is {length})"),
            ));
        }
        if let Some(min) = self.min_length
            && length < min
        {
            errors.push(FieldError::new(
                at.to_owned(),
                format!("must be at least {min} characters"),
            ));
        }
        if let Some(pattern) = &self.pattern
            && !pattern.is_match(s)
        {
            errors.push(FieldError::new(
                at.to_owned(),
                format!("must match {:?}", pattern.as_str()),
            ));
        }
    }

    fn check_number(&self, n: f64, at: &str, errors: &mut Vec<FieldError>) {
        if let Some((max, exclusive)) = self.maximum
            && (n > max || (exclusive && n >= max))
        {
            let op = if exclusive { "less than" } else { "at most" };
            errors.push(FieldError::new(
                at.to_owned(),
                format!("must be {op} {max}"),
            ));
        }
        if let Some((min, exclusive)) = self.minimum
            && (n < min || (exclusive && n <= min))
        {
            let op = if exclusive {
                "greater than"
            } else {
                "at least"
            };
            errors.push(FieldError::new(
                at.to_owned(),
                format!("must be {op} {min}"),
            ));
        }
    }

    fn check_array(&self, items: &[Value], at: &str, errors: &mut Vec<FieldError>) {
        if let Some(max) = self.max_items
            && items.len() > max
        {
            // Items past the bound are not checked one by one: the message says enough.
            errors.push(FieldError::new(
                at.to_owned(),
                format!("must have at most {max} items (has {})", items.len()),
            ));
            return;
        }
        if let Some(min) = self.min_items
            && items.len() < min
        {
            errors.push(FieldError::new(
                at.to_owned(),
                format!("must have at least {min} items"),
            ));
        }
        let mut seen = HashSet::new();
        for (i, item) in items.iter().enumerate() {
            let item_at = format!("{at}[{i}]");
            if let Some(schema) = &self.items {
                schema.check(item, &item_at, errors);
            }
            let identity = if !self.list_map_keys.is_empty() {
                Some(
                    self.list_map_keys
                        .iter()
                        .map(|k| item.get(k).cloned().unwrap_or(Value::Null).to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                )
            } else if self.list_set {
                Some(item.to_string())
            } else {
                None
            };
            if let Some(identity) = identity
                && !seen.insert(identity.clone())
            {
                errors.push(FieldError::new(
                    item_at,
                    format!("duplicate entry {identity}"),
                ));
            }
        }
    }

    fn check_object(
        &self,
        map: &serde_json::Map<String, Value>,
        at: &str,
        errors: &mut Vec<FieldError>,
    ) {
        if let Some(max) = self.max_properties
            && map.len() > max
        {
            errors.push(FieldError::new(
                at.to_owned(),
                format!("must have at most {max} entries (has {})", map.len()),
            ));
            return;
        }
        if let Some(min) = self.min_properties
            && map.len() < min
        {
            errors.push(FieldError::new(
                at.to_owned(),
                format!("must have at least {min} entries"),
            ));
        }
        for name in &self.required {
            if !map.contains_key(name) {
                errors.push(FieldError::new(format!("{at}.{name}"), "is required"));
            }
        }
        for (name, value) in map {
            if let Some(schema) = self.properties.get(name) {
                schema.check(value, &format!("{at}.{name}"), errors);
            } else if let Some(schema) = &self.additional {
                schema.check(value, &format!("{at}[{name}]"), errors);
            }
        }
    }
}

impl Bounds {
    /// The bounds of `spec` in a CRD's schema.
    pub fn of_spec(schema: &JSONSchemaProps) -> Result<Self, regex::Error> {
        let spec = schema
            .properties
            .as_ref()
            .and_then(|p| p.get("spec"))
            .map(Node::compile)
            .transpose()?
            .unwrap_or_default();
        Ok(Self { root: spec })
    }

    /// The bounds of `spec` in the schema of `K`'s CRD (served version).
    pub fn of<K: kube::CustomResourceExt>() -> Self {
        let crd = K::crd();
        let schema = crd
            .spec
            .versions
            .first()
            .and_then(|v| v.schema.as_ref())
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("a CRD generated with its schema");
        Self::of_spec(schema).expect("the CRD's patterns compile")
    }

    /// Every bound `spec` breaks (empty: within bounds).
    pub fn check(&self, spec: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        self.root.check(spec, "spec", &mut errors);
        errors
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::crd::{FeatureFlag, QuotaPolicy, RateLimitPolicy};

    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|e| e.field).collect()
    }

    fn rule(name: &str) -> Value {
        json!({"name": name, "key": [{"type": "ClientIP"}], "rates": [{"limit": 5, "window": "1s"}]})
    }

    #[test]
    fn a_valid_policy_is_within_bounds() {
        let bounds = Bounds::of::<RateLimitPolicy>();
        assert_eq!(bounds.check(&json!({"rules": [rule("per-ip")]})), vec![]);
    }

    #[test]
    fn the_bounds_the_apiserver_enforces_are_enforced() {
        let bounds = Bounds::of::<RateLimitPolicy>();
        let many: Vec<Value> = (0..10_000).map(|i| rule(&format!("r{i}"))).collect();
        let errors = bounds.check(&json!({ "rules": many }));
        assert_eq!(fields(errors.clone()), ["spec.rules"]);
        assert!(errors[0].message.contains("at most"), "{errors:?}");

        let huge = "x".repeat(20 * 1024 * 1024);
        let errors = bounds.check(&json!({ "rules": [rule("r")], "response": {"body": huge} }));
        assert_eq!(fields(errors.clone()), ["spec.response.body"], "{errors:?}");
        assert!(
            errors[0].message.contains("may not be longer than"),
            "{errors:?}"
        );

        let errors = bounds.check(&json!({ "rules": [rule("Not_A_Name"), rule("a"), rule("a")] }));
        assert_eq!(
            fields(errors),
            ["spec.rules[0].name", "spec.rules[2]"],
            "the name's pattern, then the duplicate list-map key"
        );
    }

    #[test]
    fn every_kind_has_bounds_that_compile() {
        let quota = Bounds::of::<QuotaPolicy>();
        assert_eq!(
            fields(quota.check(&json!({"quotas": "nope"}))),
            ["spec.quotas"]
        );
        let flags = Bounds::of::<FeatureFlag>();
        // Variant values are untyped JSON (preserve-unknown-fields): anything goes there.
        let spec =
            json!({"flags": {"f": {"state": "ON", "variants": {"a": [1]}, "defaultVariant": "a"}}});
        assert_eq!(fields(flags.check(&spec)), ["spec.flags[f].state"]);
    }
}
