//! Failover: where the app's outbound calls go, and how their failures are absorbed
//! (`FailoverPolicy`). A request matching an upstream becomes a [`call::Call`]: a bulkhead
//! slot, a circuit breaker's permission, the endpoint of each try (priority groups, health,
//! ejection), and after each try whether to retry. The pure state machines are apart:
//! [`breaker`], [`budget`] (retries), [`outlier`] (ejection); [`settings`] says what an omitted
//! field means.

pub mod admin;
pub mod breaker;
pub mod budget;
pub mod bulkhead;
pub mod call;
pub mod endpoint;
pub mod metrics;
pub mod outlier;
pub mod settings;
pub mod upstream;

use std::{collections::BTreeMap, sync::Arc};

use bulwark_api::{
    crd::failover::FailoverPolicySpec,
    snapshot::{Endpoint as SnapshotEndpoint, PolicySource, Sourced},
};

use self::upstream::{CompiledUpstream, Upstream};
use crate::{
    compile::{CompileEnv, CompileError},
    request::RequestView,
};

/// The snapshot's upstreams, in policy order, with their endpoints.
#[derive(Default)]
pub struct Failover {
    upstreams: Vec<Arc<Upstream>>,
}

impl Failover {
    /// `ca_bundles`: the snapshot's, for upstreams with `tls.caSecretRef`.
    pub fn compile(
        policies: &[Sourced<FailoverPolicySpec>],
        endpoints: &BTreeMap<String, Vec<SnapshotEndpoint>>,
        ca_bundles: &BTreeMap<String, String>,
        env: &CompileEnv<'_>,
    ) -> Result<Self, (PolicySource, CompileError)> {
        let mut upstreams = Vec::new();
        for policy in policies {
            let source = &policy.source;
            for (i, spec) in policy.spec.upstreams.iter().enumerate() {
                let compiled = CompiledUpstream::compile(source, spec, env, ca_bundles)
                    .map_err(|e| (source.clone(), e.under(&format!("upstreams[{i}]"))))?;
                upstreams.push(Arc::new(Arc::new(compiled).with_endpoints(endpoints)));
            }
        }
        Ok(Self { upstreams })
    }

    /// The same upstreams with `endpoints` (a snapshot that changed only endpoints).
    pub fn with_endpoints(&self, endpoints: &BTreeMap<String, Vec<SnapshotEndpoint>>) -> Self {
        Self {
            upstreams: self
                .upstreams
                .iter()
                .map(|u| Arc::new(u.compiled.with_endpoints(endpoints)))
                .collect(),
        }
    }

    /// Drops the states of endpoints no upstream has any more (when this is installed).
    pub fn prune_endpoints(&self) {
        for upstream in &self.upstreams {
            upstream.prune_endpoints();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.upstreams.is_empty()
    }

    /// The first upstream whose `match` the request satisfies.
    pub fn route(&self, req: &RequestView<'_>) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.compiled.matches(req))
    }

    /// The upstream `name` of a FailoverPolicy in `namespace` (a flag gate's `routeTo`); the
    /// first, in policy order, when several policies name one alike.
    pub fn named(&self, namespace: &str, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams
            .iter()
            .find(|u| u.compiled.name == name && u.compiled.namespace() == namespace)
    }

    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    pub fn headers_read(&self) -> impl Iterator<Item = &http::HeaderName> {
        self.upstreams
            .iter()
            .flat_map(|u| u.compiled.headers_read())
    }
}

#[cfg(test)]
mod tests;
