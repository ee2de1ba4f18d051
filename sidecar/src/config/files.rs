//! Standalone mode: Bulwark custom resources read from `*.yaml`, `*.yml` and `*.json` files in one
//! directory (not recursive; names starting with `.` are skipped, so a Kubernetes ConfigMap
//! volume's `..data` links are not read twice). Errors say file, line, column and field.
//!
//! The directory may also hold `v1` Secrets, for the keys `jwt.verification.keySecretRef`s
//! name: the same manifests as in a cluster, resolved here as the operator would resolve them.

use std::{
    collections::BTreeMap,
    fmt, fs,
    path::{Path, PathBuf},
    sync::LazyLock,
};

use bulwark_api::{
    crd::{
        FailoverPolicy, FeatureFlag, QuotaPolicy, RateLimitPolicy, WebhookEndpoint,
        common::{ReadsBearerTokens, SecretKeyRef},
        feature_flag::checks as flag_checks,
    },
    snapshot::{
        ObjectRef, PolicySource, ResolvedWebhookEndpoint, SecretString, SigningKey, Snapshot,
        Sourced, secret_key_id,
    },
    validation::bounds::Bounds,
};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use serde::{Deserialize, de::DeserializeOwned};

/// Namespace given to objects without `metadata.namespace`, as `kubectl apply` would.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Why a configuration directory cannot become a snapshot. The whole load fails: a snapshot is
/// taken whole or not at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// `file`, `file:line:column`, or the directory itself.
    pub location: String,
    /// The field, as users write it (`spec.rules[0].rates[0].window`), when known.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: {field}: {}", self.location, self.message),
            None => write!(f, "{}: {}", self.location, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A loaded directory: the snapshot (version 0: the caller numbers it) and, for every policy,
/// where it was read, so later errors (compilation) can point at the file.
#[derive(Debug, Default)]
pub struct Loaded {
    pub snapshot: Snapshot,
    pub origins: BTreeMap<(String, PolicySource), String>,
    /// The Secrets read, by namespace and name: key → value.
    secrets: BTreeMap<ObjectRef, BTreeMap<String, Vec<u8>>>,
}

impl Loaded {
    /// Nothing loaded yet: an empty snapshot.
    pub fn new() -> Self {
        Self {
            snapshot: Snapshot::empty(),
            ..Self::default()
        }
    }

    /// Where the policy `kind namespace/name` was read (for error messages).
    pub fn origin(&self, kind: &str, source: &PolicySource) -> String {
        let key = (
            kind.to_owned(),
            PolicySource {
                generation: 0,
                ..source.clone()
            },
        );
        self.origins
            .get(&key)
            .cloned()
            .unwrap_or_else(|| format!("{kind} {}/{}", source.namespace, source.name))
    }
}

/// The files of `dir` that hold policies, in name order (the load order, so errors are stable).
pub fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = fs::read_dir(dir).map_err(|e| ConfigError {
        location: dir.display().to_string(),
        field: None,
        message: format!("cannot read the configuration directory: {e}"),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            !name.starts_with('.') && matches!(ext, "yaml" | "yml" | "json") && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Reads every policy file of `dir` into one snapshot.
pub fn load_dir(dir: &Path) -> Result<Loaded, ConfigError> {
    let mut loaded = Loaded::new();
    for path in policy_files(dir)? {
        let text = fs::read_to_string(&path).map_err(|e| ConfigError {
            location: path.display().to_string(),
            field: None,
            message: format!("cannot read: {e}"),
        })?;
        load_text(&path.display().to_string(), &text, &mut loaded)?;
    }
    loaded.resolve_jwt_keys()?;
    loaded.resolve_ca_bundles()?;
    loaded.resolve_signing_keys()?;
    Ok(loaded)
}

impl Loaded {
    /// Puts the key every `jwt.verification.keySecretRef` names into the snapshot, from the
    /// Secrets read; a missing Secret or key is an error at the policy's file.
    fn resolve_jwt_keys(&mut self) -> Result<(), ConfigError> {
        let snapshot = &self.snapshot;
        let verifying = snapshot
            .rate_limits
            .iter()
            .map(|p| ("RateLimitPolicy", &p.source, p.spec.jwt_verification()))
            .chain(
                snapshot
                    .quotas
                    .iter()
                    .map(|p| ("QuotaPolicy", &p.source, p.spec.jwt_verification())),
            )
            .chain(
                snapshot
                    .feature_flags
                    .iter()
                    .map(|p| ("FeatureFlag", &p.source, p.spec.jwt_verification())),
            );
        let mut keys = BTreeMap::new();
        for (kind, source, verification) in verifying {
            let Some(secret) = verification.map(|v| &v.key_secret_ref) else {
                continue;
            };
            let value =
                self.secret_text(kind, source, secret, "spec.jwt.verification.keySecretRef")?;
            keys.insert(
                secret_key_id(&source.namespace, secret),
                SecretString::new(value),
            );
        }
        self.snapshot.jwt_keys = keys;
        Ok(())
    }

    /// Puts the CA bundle every FailoverPolicy upstream's `tls.caSecretRef` names into the
    /// snapshot, from the Secrets read.
    fn resolve_ca_bundles(&mut self) -> Result<(), ConfigError> {
        let mut bundles = BTreeMap::new();
        for policy in &self.snapshot.failover {
            for (i, upstream) in policy.spec.upstreams.iter().enumerate() {
                let Some(ca) = upstream.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()) else {
                    continue;
                };
                let field = format!("spec.upstreams[{i}].tls.caSecretRef");
                let pem = self.secret_text("FailoverPolicy", &policy.source, ca, &field)?;
                bundles.insert(secret_key_id(&policy.source.namespace, ca), pem);
            }
        }
        self.snapshot.ca_bundles = bundles;
        Ok(())
    }

    /// Puts each WebhookEndpoint's signing key (`signing.secretRef`) into the snapshot. There
    /// is no rotation in standalone mode: the key in the directory is the one that signs.
    fn resolve_signing_keys(&mut self) -> Result<(), ConfigError> {
        let mut keys = Vec::with_capacity(self.snapshot.webhooks.len());
        for webhook in &self.snapshot.webhooks {
            let secret = &webhook.spec.endpoint.signing.secret_ref;
            let value = self.secret_text(
                "WebhookEndpoint",
                &webhook.source,
                secret,
                "spec.signing.secretRef",
            )?;
            keys.push(vec![SigningKey {
                secret: SecretString::new(value),
                not_after: None,
            }]);
        }
        for (webhook, keys) in self.snapshot.webhooks.iter_mut().zip(keys) {
            webhook.spec.signing_keys = keys;
        }
        Ok(())
    }

    /// The text of `secret`'s key, from the Secrets read; a missing Secret or key is an error
    /// at the file of `kind` `source`, naming `field`.
    fn secret_text(
        &self,
        kind: &str,
        source: &PolicySource,
        secret: &SecretKeyRef,
        field: &str,
    ) -> Result<String, ConfigError> {
        let found = self
            .secrets
            .get(&ObjectRef {
                namespace: source.namespace.clone(),
                name: secret.name.clone(),
            })
            .and_then(|data| data.get(&secret.key));
        found
            .and_then(|bytes| String::from_utf8(bytes.clone()).ok())
            .ok_or_else(|| ConfigError {
                location: self.origin(kind, source),
                field: Some(field.into()),
                message: match found {
                    Some(_) => format!(
                        "key {:?} of Secret {} is not UTF-8 text",
                        secret.key, secret.name
                    ),
                    None => format!(
                        "no Secret {}/{} with key {:?} in the configuration directory",
                        source.namespace, secret.name, secret.key
                    ),
                },
            })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    api_version: Option<String>,
    kind: Option<String>,
}

/// The YAML documents of `text`, each with the number of lines before it, split at the
/// document markers (`---` at the start of a line) so that each is parsed once: parsing
/// document N by skipping N-1 documents of the whole text made loading quadratic (a file of
/// 4,000 policies took minutes). Text before the first marker is a document only if it holds
/// more than blank lines, comments and directives, as for a YAML parser.
fn documents(text: &str) -> Vec<(usize, &str)> {
    let mut documents = Vec::new();
    let (mut start, mut start_line, mut offset) = (0, 0, 0);
    for (line_number, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let marker = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        if marker && line_number > 0 {
            documents.push((start_line, &text[start..offset]));
            (start, start_line) = (offset, line_number);
        }
        offset += line.len();
    }
    documents.push((start_line, &text[start..]));
    let only_preamble = |doc: &str| {
        doc.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#') || l.starts_with('%')
        })
    };
    if documents.len() > 1 && only_preamble(documents[0].1) {
        documents.remove(0);
    }
    documents
}

/// Adds the documents of one file (`origin` names it in errors) to `loaded`.
pub fn load_text(origin: &str, text: &str, loaded: &mut Loaded) -> Result<(), ConfigError> {
    // A UTF-8 byte order mark (as some Windows editors write) is not part of the YAML.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let expected_api_version = format!("{}/{}", bulwark_api::GROUP, bulwark_api::VERSION);
    for (index, (lines_before, text)) in documents(text).into_iter().enumerate() {
        let origin = &Origin {
            file: origin,
            lines_before,
        };
        let document = serde_yaml::Deserializer::from_str(text);
        let value =
            serde_yaml::Value::deserialize(document).map_err(|e| yaml_error(origin, None, &e))?;
        if value.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let doc_location = || format!("{} (document {})", origin.file, index + 1);
        // Where a field found wrong in the values is (its key's line), or else where the
        // document starts (its `---`).
        let field_at = |field: &str| {
            let line = super::field_line::line_of(text, field).unwrap_or(1);
            format!(
                "{}:{} (document {})",
                origin.file,
                origin.lines_before + line,
                index + 1
            )
        };
        let meta = TypeMeta::deserialize(&value).map_err(|e| ConfigError {
            location: doc_location(),
            field: None,
            message: format!("not a Kubernetes object: {e}"),
        })?;
        let kind = meta.kind.unwrap_or_default();
        let (expected_api_version, api) = match kind.as_str() {
            "Secret" => ("v1", "core"),
            _ => (expected_api_version.as_str(), "Bulwark's"),
        };
        if meta.api_version.as_deref() != Some(expected_api_version) {
            return Err(ConfigError {
                location: doc_location(),
                field: Some("apiVersion".into()),
                message: format!(
                    "expected {expected_api_version} ({api} API), found {:?}",
                    meta.api_version.unwrap_or_default()
                ),
            });
        }
        // Typed deserialisation of the same document, so errors carry its line and the field path.
        let typed = || serde_yaml::Deserializer::from_str(text);
        match kind.as_str() {
            "RateLimitPolicy" => {
                let object: RateLimitPolicy = typed_object(origin, typed())?;
                let sourced = sourced(origin.file, &kind, &object, object.spec.clone(), loaded)?;
                loaded.snapshot.rate_limits.push(sourced);
            }
            "QuotaPolicy" => {
                let object: QuotaPolicy = typed_object(origin, typed())?;
                let sourced = sourced(origin.file, &kind, &object, object.spec.clone(), loaded)?;
                loaded.snapshot.quotas.push(sourced);
            }
            "FeatureFlag" => {
                let object: FeatureFlag = typed_object(origin, typed())?;
                // What the apiserver's schema cannot check (variant values are untyped JSON).
                if let Some(e) = flag_checks::check(&object.spec).into_iter().next() {
                    return Err(ConfigError {
                        location: field_at(&e.field),
                        field: Some(e.field),
                        message: e.message,
                    });
                }
                let sourced = sourced(origin.file, &kind, &object, object.spec.clone(), loaded)?;
                loaded.snapshot.feature_flags.push(sourced);
            }
            // Standalone has no Services to resolve: only `address` backends have endpoints
            // (a `service` backend's group stays empty, docs/failover.md).
            "FailoverPolicy" => {
                let object: FailoverPolicy = typed_object(origin, typed())?;
                let sourced = sourced(origin.file, &kind, &object, object.spec.clone(), loaded)?;
                loaded.snapshot.failover.push(sourced);
            }
            // Its signing key is read from the directory's Secrets once every file is loaded.
            "WebhookEndpoint" => {
                let object: WebhookEndpoint = typed_object(origin, typed())?;
                let endpoint = ResolvedWebhookEndpoint {
                    endpoint: object.spec.clone(),
                    signing_keys: Vec::new(),
                };
                let sourced = sourced(origin.file, &kind, &object, endpoint, loaded)?;
                loaded.snapshot.webhooks.push(sourced);
            }
            "Secret" => {
                let object: Secret = typed_object(origin, typed())?;
                // `stringData` wins over `data`, as the apiserver merges them.
                let mut data: BTreeMap<String, Vec<u8>> = object
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect();
                for (k, v) in object.string_data.iter().flatten() {
                    data.insert(k.clone(), v.clone().into_bytes());
                }
                let secret = sourced(origin.file, &kind, &object, data, loaded)?;
                let name = ObjectRef {
                    namespace: secret.source.namespace,
                    name: secret.source.name,
                };
                loaded.secrets.insert(name, secret.spec);
            }
            other => {
                return Err(ConfigError {
                    location: doc_location(),
                    field: Some("kind".into()),
                    message: format!(
                        "unknown kind {other:?}: expected RateLimitPolicy, QuotaPolicy, FeatureFlag, WebhookEndpoint, FailoverPolicy or Secret"
                    ),
                });
            }
        }
        // The bounds the apiserver would check (maxItems, maxLength, patterns, ...), from the
        // same CRD schema; after the typed read, whose errors carry lines.
        if let Some(bounds) = bounds_of(&kind) {
            let spec = serde_json::to_value(value.get("spec")).unwrap_or_default();
            if let Some(e) = bounds.check(&spec).into_iter().next() {
                return Err(ConfigError {
                    location: field_at(&format!("spec.{}", e.field.trim_start_matches("spec."))),
                    field: Some(e.field),
                    message: e.message,
                });
            }
        }
    }
    Ok(())
}

/// The CRD bounds of a Bulwark kind, compiled once.
fn bounds_of(kind: &str) -> Option<&'static Bounds> {
    static RATE_LIMIT: LazyLock<Bounds> = LazyLock::new(Bounds::of::<RateLimitPolicy>);
    static QUOTA: LazyLock<Bounds> = LazyLock::new(Bounds::of::<QuotaPolicy>);
    static FLAG: LazyLock<Bounds> = LazyLock::new(Bounds::of::<FeatureFlag>);
    static FAILOVER: LazyLock<Bounds> = LazyLock::new(Bounds::of::<FailoverPolicy>);
    static WEBHOOK: LazyLock<Bounds> = LazyLock::new(Bounds::of::<WebhookEndpoint>);
    Some(match kind {
        "RateLimitPolicy" => &RATE_LIMIT,
        "QuotaPolicy" => &QUOTA,
        "FeatureFlag" => &FLAG,
        "FailoverPolicy" => &FAILOVER,
        "WebhookEndpoint" => &WEBHOOK,
        _ => return None,
    })
}

/// A file, and where in it the document being read starts.
struct Origin<'a> {
    file: &'a str,
    lines_before: usize,
}

fn typed_object<T: DeserializeOwned>(
    origin: &Origin<'_>,
    document: serde_yaml::Deserializer<'_>,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(document).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != ".").then_some(path);
        yaml_error(origin, field, e.inner())
    })
}

fn yaml_error(origin: &Origin<'_>, field: Option<String>, e: &serde_yaml::Error) -> ConfigError {
    let location = match e.location() {
        Some(at) => format!(
            "{}:{}:{}",
            origin.file,
            origin.lines_before + at.line(),
            at.column()
        ),
        None => origin.file.to_owned(),
    };
    // serde_yaml appends " at line L column C"; the location already says it.
    let message = e.to_string();
    let mut message = message
        .split(" at line ")
        .next()
        .unwrap_or(&message)
        .to_owned();
    // It may also prefix a coarser path of its own ("spec.rules[0].rates[0]: ...").
    if let (Some(field), Some((head, rest))) = (&field, message.split_once(": "))
        && field.starts_with(head)
    {
        message = rest.to_owned();
    }
    ConfigError {
        location,
        field,
        message,
    }
}

/// The policy with its identity; rejects a second object of the same kind, namespace and name.
fn sourced<K: kube::Resource, T>(
    origin: &str,
    kind: &str,
    object: &K,
    spec: T,
    loaded: &mut Loaded,
) -> Result<Sourced<T>, ConfigError> {
    let name = object.meta().name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err(ConfigError {
            location: origin.to_owned(),
            field: Some("metadata.name".into()),
            message: format!("a {kind} needs a name"),
        });
    }
    let source = PolicySource {
        namespace: object
            .namespace()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
        name,
        generation: object.meta().generation.unwrap_or(0),
    };
    let key = (
        kind.to_owned(),
        PolicySource {
            generation: 0,
            ..source.clone()
        },
    );
    if let Some(first) = loaded.origins.get(&key) {
        return Err(ConfigError {
            location: origin.to_owned(),
            field: Some("metadata.name".into()),
            message: format!(
                "{kind} {}/{} is already defined in {first}",
                source.namespace, source.name
            ),
        });
    }
    loaded.origins.insert(key, origin.to_owned());
    Ok(Sourced { source, spec })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Loaded, ConfigError> {
        let mut loaded = Loaded::new();
        load_text("policies/api.yaml", text, &mut loaded).map(|()| loaded)
    }

    const GOOD: &str = "\
apiVersion: bulwark.dev/v1alpha1
kind: RateLimitPolicy
metadata:
  name: api
spec:
  rules:
  - name: per-ip
    key: [{type: ClientIP}]
    rates: [{limit: 10, window: 1s}]
---
apiVersion: bulwark.dev/v1alpha1
kind: QuotaPolicy
metadata:
  name: monthly
  namespace: shop
spec:
  quotas:
  - name: all
    limit: 1000
    period: Month
";

    #[test]
    fn reads_several_kinds_from_one_file_with_defaults_applied() {
        let loaded = load(GOOD).unwrap();
        let rl = &loaded.snapshot.rate_limits[0];
        assert_eq!(rl.source.namespace, "default");
        assert_eq!(rl.source.name, "api");
        assert_eq!(
            rl.spec.rules[0].rates[0].window,
            bulwark_api::Duration::from_secs(1)
        );
        assert_eq!(loaded.snapshot.quotas[0].source.namespace, "shop");
        assert_eq!(
            loaded.snapshot.quotas[0].spec.time_zone, "UTC",
            "CRD defaults apply in standalone mode too"
        );
        assert_eq!(
            loaded.origin("RateLimitPolicy", &rl.source),
            "policies/api.yaml"
        );
    }

    #[test]
    fn a_bad_field_is_reported_with_file_line_and_path() {
        let bad = GOOD.replace("window: 1s", "window: 1d");
        let err = load(&bad).unwrap_err();
        // The line of the bad value; serde_yaml's column is that of the enclosing flow mapping.
        assert!(err.location.starts_with("policies/api.yaml:9:"), "{err}");
        assert_eq!(err.field.as_deref(), Some("spec.rules[0].rates[0].window"));
        assert!(err.message.contains("invalid duration \"1d\""), "{err}");
        assert!(
            err.to_string()
                .contains(": spec.rules[0].rates[0].window: invalid duration"),
            "{err}"
        );
    }

    #[test]
    fn errors_in_a_later_document_point_at_its_own_lines() {
        let bad = GOOD.replace("period: Month", "period: Fortnight");
        let err = load(&bad).unwrap_err();
        assert!(err.location.starts_with("policies/api.yaml:20:"), "{err}");
        assert_eq!(err.field.as_deref(), Some("spec.quotas[0].period"));
        assert!(err.message.contains("Fortnight"), "{err}");
    }

    /// The CRD's bounds apply in standalone mode too (before, a 20 MB body and 10,000 rules
    /// were accepted).
    #[test]
    fn the_crd_bounds_apply_as_the_apiserver_applies_them() {
        let body = "x".repeat(5000);
        let big_body = GOOD.replace(
            "    rates: [{limit: 10, window: 1s}]\n",
            &format!("    rates: [{{limit: 10, window: 1s}}]\n  response: {{body: {body}}}\n"),
        );
        let err = load(&big_body).unwrap_err();
        // The line of the field's key.
        let line = big_body
            .lines()
            .position(|l| l.starts_with("  response:"))
            .unwrap()
            + 1;
        assert_eq!(
            err.location,
            format!("policies/api.yaml:{line} (document 1)")
        );
        assert_eq!(err.field.as_deref(), Some("spec.response.body"));
        assert!(err.message.contains("may not be longer than 4096"), "{err}");

        let rules: String = (0..10_000)
            .map(|i| format!("  - {{name: r{i}, key: [{{type: ClientIP}}], rates: [{{limit: 1, window: 1s}}]}}\n"))
            .collect();
        let many = format!(
            "apiVersion: bulwark.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: many}}\nspec:\n  rules:\n{rules}"
        );
        let err = load(&many).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.rules"));
        assert!(err.message.contains("must have at most"), "{err}");
    }

    /// What the CRD schema cannot check about a flag is checked here, as the apiserver would
    /// not: a `defaultVariant` that names no variant.
    #[test]
    fn a_flag_whose_default_is_not_a_variant_is_refused_with_its_field() {
        let flags = "apiVersion: bulwark.dev/v1alpha1
kind: FeatureFlag
metadata: {name: flags, namespace: shop}
spec:
  flags:
    new-checkout:
      state: ENABLED
      variants: {\"on\": true, \"off\": false}
      defaultVariant: \"of\"
";
        let text = format!("{GOOD}---\n{flags}");
        let err = load(&text).unwrap_err();
        // The line of `defaultVariant`, found again in the document by saphyr's parser.
        let line = text
            .lines()
            .position(|l| l.contains("defaultVariant: \"of\""))
            .unwrap()
            + 1;
        assert_eq!(
            err.location,
            format!("policies/api.yaml:{line} (document 3)")
        );
        assert_eq!(
            err.field.as_deref(),
            Some("spec.flags[new-checkout].defaultVariant")
        );
        assert!(
            err.message.contains("is not one of the flag's variants"),
            "{err}"
        );
        assert!(
            load(&format!(
                "{GOOD}---\n{}",
                flags.replace("\"of\"", "\"off\"")
            ))
            .is_ok()
        );
    }

    #[test]
    fn foreign_objects_and_duplicates_are_refused() {
        let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n";
        let err = load(deployment).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("apiVersion"));
        let unknown = "apiVersion: bulwark.dev/v1alpha1\nkind: Bogus\nmetadata: {name: x}\n";
        assert_eq!(load(unknown).unwrap_err().field.as_deref(), Some("kind"));
        let twice = format!("{GOOD}---\n{}", GOOD.split("---").next().unwrap());
        let err = load(&twice).unwrap_err();
        assert!(
            err.message
                .contains("RateLimitPolicy default/api is already defined in policies/api.yaml"),
            "{err}"
        );
    }

    #[test]
    fn a_byte_order_mark_is_accepted() {
        let loaded = load(&format!("\u{feff}{GOOD}")).unwrap();
        assert_eq!(loaded.snapshot.rate_limits.len(), 1);
    }

    #[test]
    fn documents_split_at_line_start_markers_only_and_keep_their_lines() {
        let text = "# preamble\n---\na: 1\nb: |\n  ---\n  not a marker\n--- {c: 3}\n---\n";
        let docs = documents(text);
        assert_eq!(
            docs,
            vec![
                (1, "---\na: 1\nb: |\n  ---\n  not a marker\n"),
                (6, "--- {c: 3}\n"),
                (7, "---\n")
            ]
        );
        assert_eq!(documents("a: 1\n"), vec![(0, "a: 1\n")]);
        assert_eq!(
            documents("a: 1\n---\nb: 2"),
            vec![(0, "a: 1\n"), (1, "---\nb: 2")]
        );
    }

    #[test]
    fn thousands_of_documents_in_one_file_all_load() {
        let one = GOOD.split("---").next().unwrap();
        let text: String = (0..2000)
            .map(|i| one.replace("name: api", &format!("name: api-{i}")))
            .collect::<Vec<_>>()
            .join("---\n");
        let loaded = load(&text).unwrap();
        assert_eq!(loaded.snapshot.rate_limits.len(), 2000);
        // An error in the last document still names its own line.
        let bad = text.replace("name: api-1999", "name: api-1999\n  labels: [oops");
        let err = load(&bad).unwrap_err();
        let line: usize = err.location.split(':').nth(1).unwrap().parse().unwrap();
        let expected = bad
            .lines()
            .position(|l| l.contains("labels: [oops"))
            .unwrap()
            + 1;
        assert!(
            (expected..=expected + 3).contains(&line),
            "{err} (line {expected})"
        );
    }

    #[test]
    fn empty_documents_and_missing_required_fields() {
        assert!(load("---\n---\n").unwrap().snapshot.rate_limits.is_empty());
        let no_rules = "apiVersion: bulwark.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: x}\nspec: {}\n";
        let err = load(no_rules).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec"));
        assert!(err.message.contains("missing field `rules`"), "{err}");
    }

    #[test]
    fn a_directory_is_read_in_name_order_skipping_hidden_and_other_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("b.yaml"), GOOD.split("---").nth(1).unwrap()).unwrap();
        fs::write(dir.path().join("a.yaml"), GOOD.split("---").next().unwrap()).unwrap();
        fs::write(dir.path().join(".hidden.yaml"), "not: [valid").unwrap();
        fs::write(dir.path().join("README.md"), "# notes").unwrap();
        let loaded = load_dir(dir.path()).unwrap();
        assert_eq!(loaded.snapshot.rate_limits.len(), 1);
        assert_eq!(loaded.snapshot.quotas.len(), 1);
        let missing = load_dir(&dir.path().join("nope")).unwrap_err();
        assert!(
            missing
                .message
                .contains("cannot read the configuration directory")
        );
    }

    #[test]
    fn secrets_in_the_directory_resolve_jwt_verification_keys() {
        let policy = "\
apiVersion: bulwark.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: per-user, namespace: shop}
spec:
  jwt:
    verification:
      keySecretRef: {name: idp, key: hmac}
      algorithms: [HS256]
  rules:
  - name: per-user
    key: [{type: JWTClaim, name: sub}]
    rates: [{limit: 10, window: 1s}]
";
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("policy.yaml"), policy).unwrap();
        let missing = load_dir(dir.path()).unwrap_err();
        assert!(missing.location.ends_with("policy.yaml"), "{missing}");
        assert_eq!(
            missing.field.as_deref(),
            Some("spec.jwt.verification.keySecretRef")
        );
        assert!(missing.message.contains("shop/idp"), "{missing}");

        // `data` is base64 ("c2VjcmV0" is "secret"); `stringData` wins for the same key.
        let secret = "\
apiVersion: v1
kind: Secret
metadata: {name: idp, namespace: shop}
data: {hmac: c2VjcmV0, other: b3RoZXI=}
";
        fs::write(dir.path().join("secret.yaml"), secret).unwrap();
        let loaded = load_dir(dir.path()).unwrap();
        let keys: Vec<_> = loaded
            .snapshot
            .jwt_keys
            .iter()
            .map(|(id, v)| (id.as_str(), v.expose()))
            .collect();
        assert_eq!(keys, [("shop/idp/hmac", "secret")]);
        fs::write(
            dir.path().join("secret.yaml"),
            format!("{secret}stringData: {{hmac: plain}}\n"),
        )
        .unwrap();
        let loaded = load_dir(dir.path()).unwrap();
        assert_eq!(loaded.snapshot.jwt_keys["shop/idp/hmac"].expose(), "plain");

        // A Secret must be a core v1 object.
        fs::write(
            dir.path().join("secret.yaml"),
            secret.replace("apiVersion: v1", "apiVersion: bulwark.dev/v1alpha1"),
        )
        .unwrap();
        assert_eq!(
            load_dir(dir.path()).unwrap_err().field.as_deref(),
            Some("apiVersion")
        );
    }

    #[test]
    fn the_verified_jwt_example_loads_and_compiles() {
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/ratelimitpolicy-per-user-verified-jwt.yaml"
        );
        let dir = tempfile::tempdir().unwrap();
        fs::copy(example, dir.path().join("example.yaml")).unwrap();
        let loaded = load_dir(dir.path()).unwrap();
        assert_eq!(loaded.snapshot.jwt_keys.len(), 1);
        let metrics = bulwark_policy::metrics::PolicyMetrics::unregistered();
        let compiled = bulwark_policy::compiled::CompiledPolicy::compile(
            loaded.snapshot,
            bulwark_policy::compile::CompileEnv::local(&metrics),
        );
        assert!(compiled.is_ok(), "{:?}", compiled.err());
    }
}
