//! Readiness: the operator is ready when the apiserver answers and serves every Bulwark kind.
//! A missing CRD is the most common install mistake, so /readyz names what is missing.

use std::{sync::Arc, time::Duration};

use kube::Client;
use tokio::sync::watch;

use crate::metrics::Metrics;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    Starting,
    Ready,
    NotReady(String),
}

/// The plural names Bulwark's API must serve.
fn expected_plurals() -> Vec<String> {
    bulwark_api::crd::all()
        .into_iter()
        .map(|(_, crd)| crd.spec.names.plural)
        .collect()
}

/// Compares what the apiserver serves with what this build needs.
pub fn missing_kinds(served: &[String]) -> Vec<String> {
    expected_plurals()
        .into_iter()
        .filter(|p| !served.contains(p))
        .collect()
}

async fn check(client: &Client) -> Readiness {
    let group_version = format!("{}/{}", bulwark_api::GROUP, bulwark_api::VERSION);
    let served: Vec<String> = match client.list_api_group_resources(&group_version).await {
        Ok(list) => list.resources.into_iter().map(|r| r.name).collect(),
        // The whole group is unknown until the first Bulwark CRD is installed.
        Err(kube::Error::Api(status)) if status.code == 404 => Vec::new(),
        Err(e) => {
            return Readiness::NotReady(format!("cannot list {group_version} resources: {e}"));
        }
    };
    let missing = missing_kinds(&served);
    if missing.is_empty() {
        Readiness::Ready
    } else {
        Readiness::NotReady(format!(
            "{group_version} does not serve {}: install the CRDs (kubectl apply -f crds/)",
            missing.join(", ")
        ))
    }
}

pub async fn run(
    client: Client,
    interval: Duration,
    metrics: Arc<Metrics>,
    ready: watch::Sender<Readiness>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let state = check(&client).await;
        metrics.api_ready.set(i64::from(state == Readiness::Ready));
        if *ready.borrow() != state {
            match &state {
                Readiness::Ready => tracing::info!("bulwark.dev API is served: ready"),
                Readiness::NotReady(why) => tracing::warn!(%why, "not ready"),
                Readiness::Starting => {}
            }
        }
        ready.send_replace(state);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_every_kind_that_is_not_served() {
        let served = vec![
            "ratelimitpolicies".to_owned(),
            "ratelimitpolicies/status".to_owned(),
        ];
        let missing = missing_kinds(&served);
        assert_eq!(
            missing,
            [
                "quotapolicies",
                "featureflags",
                "webhookendpoints",
                "failoverpolicies"
            ]
        );
        let all: Vec<String> = expected_plurals();
        assert!(missing_kinds(&all).is_empty());
    }
}
