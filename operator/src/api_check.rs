//! Readiness: the operator is ready when the apiserver answers and serves every Bulwark kind, and
//! its other gates pass (the index has listed everything: until then it serves no snapshot). A
//! missing CRD is the most common install mistake, so /readyz names what is missing.

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

/// Another condition of readiness, checked after the API: `Some(why)` while not met.
pub type Gate = Arc<dyn Fn() -> Option<String> + Send + Sync>;

pub async fn run(
    client: Client,
    interval: Duration,
    metrics: Arc<Metrics>,
    ready: watch::Sender<Readiness>,
    gate: Gate,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let mut state = check(&client).await;
        if state == Readiness::Ready
            && let Some(why) = gate()
        {
            state = Readiness::NotReady(why);
        }
        metrics.api_ready.set(i64::from(state == Readiness::Ready));
        if *ready.borrow() != state {
            match &state {
                Readiness::Ready => tracing::info!("bulwark.dev API is served: ready"),
                Readiness::NotReady(why) => tracing::warn!(%why, "not ready"),
                Readiness::Starting => {}
            }
        }
        // Not ready yet: look again soon, so readiness follows start-up within a second.
        let wait = if state == Readiness::Ready {
            interval
        } else {
            interval.min(Duration::from_secs(1))
        };
        ready.send_replace(state);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
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
