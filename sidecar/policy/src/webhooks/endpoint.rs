//! A snapshot's WebhookEndpoints, compiled: URL, filters, headers, schedule, limits and the
//! decoded signing keys, with every omitted field's default (docs/webhooks.md).

use std::{sync::Arc, time::Duration};

use bulwark_api::{
    crd::{common::Scope, webhook::WebhookEndpointSpec},
    snapshot::{PolicySource, ResolvedWebhookEndpoint, Sourced},
};
use http::{HeaderName, HeaderValue, Uri};

use super::{event_type::EventTypes, retry::Schedule, signature::SigningKey};
use crate::compile::{CompileEnv, CompileError};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_MAX_MESSAGE_AGE: Duration = Duration::from_secs(72 * 3600);
pub const DEFAULT_CONCURRENCY: u32 = 10;
pub const DEFAULT_JITTER_PERCENT: u8 = 20;

/// One endpoint, ready to deliver to.
#[derive(Debug)]
pub struct Endpoint {
    /// `namespace/name`: the key of its deliveries in the store and its metric label.
    pub id: String,
    pub source: PolicySource,
    pub url: Uri,
    pub event_types: EventTypes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub timeout: Duration,
    pub schedule: Schedule,
    pub rate_per_second: Option<u32>,
    pub max_concurrency: u32,
    pub ordered: bool,
    pub disabled: bool,
    /// `scope: Global`: the queue is the endpoint's Redis Stream, shared by its sidecars.
    pub shared: bool,
    pub allow_private_addresses: bool,
    pub follow_redirects: bool,
    /// The current key first; a previous one while its rotation grace period lasts.
    pub keys: Vec<SigningKey>,
}

impl Endpoint {
    pub fn compile(
        source: &PolicySource,
        resolved: &ResolvedWebhookEndpoint,
        env: &CompileEnv<'_>,
    ) -> Result<Self, CompileError> {
        let spec: &WebhookEndpointSpec = &resolved.endpoint;
        env.require_redis(spec.scope)?;
        let url: Uri = spec
            .url
            .parse()
            .map_err(|e| CompileError::new("url", format!("not a URL: {e}")))?;
        let network = spec.network.clone().unwrap_or_default();
        match url.scheme_str() {
            Some("https") => {}
            Some("http") if network.allow_insecure_http => {}
            Some("http") => {
                return Err(CompileError::new(
                    "url",
                    "http is allowed only with network.allowInsecureHTTP",
                ));
            }
            _ => return Err(CompileError::new("url", "must be an http(s) URL")),
        }
        if url.host().is_none_or(str::is_empty) {
            return Err(CompileError::new("url", "has no host"));
        }
        let headers = spec
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|e| CompileError::new(format!("headers[{i}].name"), e.to_string()))?;
                let value = HeaderValue::from_str(&h.value)
                    .map_err(|e| CompileError::new(format!("headers[{i}].value"), e.to_string()))?;
                Ok((name, value))
            })
            .collect::<Result<_, CompileError>>()?;
        if resolved.signing_keys.is_empty() {
            return Err(CompileError::new(
                "signing.secretRef",
                "no signing key was resolved",
            ));
        }
        let keys = resolved
            .signing_keys
            .iter()
            .map(|k| SigningKey::parse(k.secret.expose(), k.not_after))
            .collect::<Result<_, String>>()
            .map_err(|e| CompileError::new("signing.secretRef", e))?;
        let retry = spec.retry.as_ref();
        Ok(Self {
            id: format!("{}/{}", source.namespace, source.name),
            source: source.clone(),
            url,
            event_types: EventTypes::new(&spec.event_types),
            headers,
            timeout: spec.timeout.map_or(DEFAULT_TIMEOUT, |d| d.as_std()),
            schedule: Schedule {
                delays: retry.map_or_else(Schedule::default_delays, |r| {
                    r.schedule.iter().map(|d| d.as_std()).collect()
                }),
                jitter_percent: retry
                    .and_then(|r| r.jitter_percent)
                    .unwrap_or(DEFAULT_JITTER_PERCENT),
                max_message_age: spec
                    .max_message_age
                    .map_or(DEFAULT_MAX_MESSAGE_AGE, |d| d.as_std()),
            },
            rate_per_second: spec.rate_limit_per_second,
            max_concurrency: spec.max_concurrency.unwrap_or(DEFAULT_CONCURRENCY).max(1),
            ordered: spec.ordered,
            disabled: spec.disabled,
            shared: spec.scope == Scope::Global,
            allow_private_addresses: network.allow_private_addresses,
            follow_redirects: network.follow_redirects,
            keys,
        })
    }
}

/// The snapshot's endpoints, by id.
#[derive(Debug, Default)]
pub struct Webhooks {
    endpoints: Vec<Arc<Endpoint>>,
}

impl Webhooks {
    pub fn compile(
        webhooks: &[Sourced<ResolvedWebhookEndpoint>],
        env: &CompileEnv<'_>,
    ) -> Result<Self, (PolicySource, CompileError)> {
        let mut endpoints = webhooks
            .iter()
            .map(|w| {
                Endpoint::compile(&w.source, &w.spec, env)
                    .map(Arc::new)
                    .map_err(|e| (w.source.clone(), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        endpoints.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Self { endpoints })
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.endpoints.iter()
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Endpoint>> {
        self.endpoints
            .binary_search_by(|e| e.id.as_str().cmp(id))
            .ok()
            .map(|i| &self.endpoints[i])
    }

    /// The endpoints a message of `event_type` fans out to (disabled ones too: their
    /// deliveries wait until they are enabled again).
    pub fn matching<'a>(&'a self, event_type: &'a str) -> impl Iterator<Item = &'a Arc<Endpoint>> {
        self.endpoints
            .iter()
            .filter(move |e| e.event_types.matches(event_type))
    }
}
