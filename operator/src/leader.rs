//! Leader election with a `coordination.k8s.io` Lease (kube-lease-manager): one replica writes
//! status; every replica serves snapshots. A replica that stops gracefully releases the Lease
//! so another takes over at once; one that dies is replaced when the Lease expires.

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Seconds a Lease holds without renewal: how long a dead leader keeps the role.
pub const LEASE_SECONDS: u64 = 10;
/// How early before expiry the holder renews.
const GRACE_SECONDS: u64 = 3;

/// Campaigns for the Lease until shutdown, publishing whether this replica leads.
pub async fn run(
    client: Client,
    namespace: String,
    lease_name: String,
    identity: String,
    leader: watch::Sender<bool>,
    metrics: std::sync::Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let manager = LeaseManagerBuilder::new(client, &lease_name)
        .with_namespace(&namespace)
        .with_identity(&identity)
        .with_duration(LEASE_SECONDS)
        .with_grace(GRACE_SECONDS)
        .with_field_manager("bulwark-operator")
        .build()
        .await?;
    let (mut state, task) = manager.watch().await;
    loop {
        let leading = *state.borrow_and_update();
        if leader.send_replace(leading) != leading {
            tracing::info!(leading, lease = %lease_name, "leadership changed");
        }
        metrics.leader.set(leading as i64);
        tokio::select! {
            changed = state.changed() => if changed.is_err() { break },
            _ = shutdown.changed() => break,
        }
    }
    drop(state);
    leader.send_replace(false);
    metrics.leader.set(0);
    match task.await {
        Ok(Ok(manager)) => manager.release().await?,
        Ok(Err(e)) => tracing::warn!(error = %e, "the lease manager stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "the lease manager task failed"),
    }
    Ok(())
}
