//! Cordon, drain and uncordon this node around an OS reboot, and the
//! cluster-wide reboot lock.
//!
//! Drain is `kubectl drain` without `--force` and with
//! `--ignore-daemonsets`: every Pod on the node that a controller will
//! recreate elsewhere is evicted through the Eviction API (so
//! PodDisruptionBudgets are respected: a 429 is retried until the drain
//! timeout), DaemonSet Pods and static (mirror) Pods stay, finished Pods are
//! ignored, and a Pod no controller owns is left alone (it comes back with
//! the node after the reboot; evicting it would delete it for good). When
//! the timeout passes with Pods still protected by a budget, the reboot is
//! put off: the node is uncordoned and the lock released.

use std::time::{Duration, Instant};

use cairn_apply::lease::{LeaseLock, LeaseState};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

/// Marks a Node cordoned by cairn for an OS update (value: the version), so
/// cairn only ever uncordons what it cordoned.
pub const ANN_CORDONED: &str = "cairn.dev/cordoned-for-update";

/// How long a reboot lock lasts without renewal: long enough for a slow
/// machine to reboot and pass its health gate, short enough that a node
/// that never comes back does not stop the fleet's updates forever.
pub const REBOOT_LOCK_SECONDS: i32 = 3600;

/// The lock names of a cluster with `max_unavailable` reboot slots.
pub fn lock_names(cluster: &str, max_unavailable: u32) -> Vec<String> {
    (0..max_unavailable)
        .map(|i| format!("cairn-{cluster}-reboot-{i}"))
        .collect()
}

fn lock(name: &str, node: &str) -> LeaseLock {
    LeaseLock {
        namespace: crate::SYSTEM_NAMESPACE.into(),
        name: name.into(),
        holder: node.into(),
        duration_seconds: REBOOT_LOCK_SECONDS,
    }
}

/// Take (or renew) one of the cluster's reboot locks. `Ok(None)` when all
/// are held by other nodes (their names are returned in the error-free
/// `Err`-less form `Ok(Some(..))` only when we hold one).
pub async fn acquire_reboot_lock(
    client: &Client,
    cluster: &str,
    max_unavailable: u32,
    node: &str,
) -> Result<Result<String, Vec<String>>, kube::Error> {
    let names = lock_names(cluster, max_unavailable);
    // renew one we already hold first, so a node never holds two
    let api: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), crate::SYSTEM_NAMESPACE);
    for name in &names {
        if let Some(l) = api.get_opt(name).await? {
            if l.spec.and_then(|s| s.holder_identity).as_deref() == Some(node) {
                lock(name, node).try_acquire(client).await?;
                return Ok(Ok(name.clone()));
            }
        }
    }
    let mut holders = Vec::new();
    for name in &names {
        match lock(name, node).try_acquire(client).await? {
            LeaseState::Held => return Ok(Ok(name.clone())),
            LeaseState::HeldBy(h) => holders.push(h),
        }
    }
    Ok(Err(holders))
}

/// Renew a reboot lock this node holds (no-op when it holds none).
pub async fn renew_reboot_lock(
    client: &Client,
    cluster: &str,
    max_unavailable: u32,
    node: &str,
) -> Result<bool, kube::Error> {
    let api: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), crate::SYSTEM_NAMESPACE);
    for name in lock_names(cluster, max_unavailable.max(1)) {
        if let Some(l) = api.get_opt(&name).await? {
            if l.spec.and_then(|s| s.holder_identity).as_deref() == Some(node) {
                lock(&name, node).try_acquire(client).await?;
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Release every reboot lock this node holds (any count: the setting may
/// have changed while it was rebooting).
pub async fn release_reboot_locks(
    client: &Client,
    cluster: &str,
    node: &str,
) -> Result<(), kube::Error> {
    let api: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), crate::SYSTEM_NAMESPACE);
    let prefix = format!("cairn-{cluster}-reboot-");
    for l in api.list(&ListParams::default()).await? {
        let name = l.metadata.name.clone().unwrap_or_default();
        if name.starts_with(&prefix)
            && l.spec.and_then(|s| s.holder_identity).as_deref() == Some(node)
        {
            lock(&name, node).release(client).await?;
        }
    }
    Ok(())
}

/// Mark the node unschedulable (and remember that cairn did it).
pub async fn cordon(client: &Client, node: &str, version: &str) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": {ANN_CORDONED: version}},
                "spec": {"unschedulable": true}
            })),
        )
        .await?;
    Ok(())
}

/// Undo [`cordon`], only if cairn cordoned the node. Returns true when it
/// uncordoned.
pub async fn uncordon(client: &Client, node: &str) -> Result<bool, kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let Some(n) = nodes.get_opt(node).await? else {
        return Ok(false);
    };
    let ours = n
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ANN_CORDONED));
    if !ours {
        return Ok(false);
    }
    nodes
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": {ANN_CORDONED: null}},
                "spec": {"unschedulable": null}
            })),
        )
        .await?;
    Ok(true)
}

/// Why a Pod is or is not evicted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodAction {
    Evict,
    Skip(&'static str),
}

/// `kubectl drain --ignore-daemonsets` without `--force`, as a pure rule.
pub fn pod_action(p: &Pod) -> PodAction {
    let meta = &p.metadata;
    if meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"))
    {
        return PodAction::Skip("static pod");
    }
    if meta.deletion_timestamp.is_some() {
        return PodAction::Skip("already terminating");
    }
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded") | Some("Failed")) {
        return PodAction::Skip("finished");
    }
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    match controller {
        Some(o) if o.kind == "DaemonSet" => PodAction::Skip("DaemonSet pod"),
        Some(_) => PodAction::Evict,
        None => PodAction::Skip("no controller would recreate it"),
    }
}

/// What a drain did.
#[derive(Debug, Clone, Default)]
pub struct DrainReport {
    pub evicted: Vec<String>,
    pub skipped: Vec<String>,
    /// Pods still waiting (budget or termination) when the timeout passed.
    pub blocked: Vec<String>,
}

/// Evict this node's Pods (see the module docs) and wait until they are
/// gone, for at most `timeout`.
pub async fn drain(
    client: &Client,
    node: &str,
    timeout: Duration,
) -> Result<DrainReport, kube::Error> {
    let start = Instant::now();
    let all: Api<Pod> = Api::all(client.clone());
    let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let mut report = DrainReport::default();
    loop {
        let mut waiting = Vec::new();
        for p in all.list(&lp).await? {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            let name = p.metadata.name.clone().unwrap_or_default();
            let id = format!("{ns}/{name}");
            match pod_action(&p) {
                PodAction::Skip(why) => {
                    if why == "already terminating" {
                        waiting.push(format!("{id} (terminating)"));
                    } else if !report.skipped.iter().any(|s| s.starts_with(&id)) {
                        report.skipped.push(format!("{id} ({why})"));
                    }
                }
                PodAction::Evict => match evict(client, &ns, &name).await? {
                    Evicted::Yes => {
                        if !report.evicted.contains(&id) {
                            report.evicted.push(id.clone());
                        }
                        waiting.push(format!("{id} (terminating)"));
                    }
                    Evicted::Gone => {}
                    Evicted::Blocked(why) => waiting.push(format!("{id} ({why})")),
                },
            }
        }
        if waiting.is_empty() {
            return Ok(report);
        }
        if start.elapsed() >= timeout {
            report.blocked = waiting;
            return Ok(report);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

enum Evicted {
    Yes,
    Gone,
    Blocked(String),
}

/// POST an Eviction (policy/v1beta1: understood by every API server cairn
/// pins, 1.20 included; newer servers still serve it for Evictions).
async fn evict(client: &Client, ns: &str, name: &str) -> Result<Evicted, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let body = json!({
        "apiVersion": "policy/v1beta1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": ns}
    });
    let r: Result<serde_json::Value, kube::Error> = pods
        .create_subresource("eviction", name, &PostParams::default(), &body)
        .await;
    match r {
        Ok(_) => Ok(Evicted::Yes),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Evicted::Gone),
        Err(kube::Error::Api(s)) if s.code == 429 => Ok(Evicted::Blocked(format!(
            "a PodDisruptionBudget does not allow it yet: {}",
            s.message
        ))),
        Err(kube::Error::Api(s)) if s.code == 500 && s.message.contains("multiple") => {
            Ok(Evicted::Blocked(s.message.clone()))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn drain_rules_match_kubectl_drain_without_force() {
        let owned = |kind: &str| {
            pod(json!({"metadata": {"name": "p", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": kind, "name": "o", "uid": "u", "controller": true}
            ]}, "status": {"phase": "Running"}}))
        };
        assert_eq!(pod_action(&owned("ReplicaSet")), PodAction::Evict);
        assert_eq!(pod_action(&owned("StatefulSet")), PodAction::Evict);
        assert_eq!(
            pod_action(&owned("DaemonSet")),
            PodAction::Skip("DaemonSet pod")
        );
        assert!(matches!(
            pod_action(&pod(json!({"metadata": {"name": "bare"}}))),
            PodAction::Skip(_)
        ));
        assert_eq!(
            pod_action(&pod(
                json!({"metadata": {"name": "m", "annotations": {"kubernetes.io/config.mirror": "x"}}})
            )),
            PodAction::Skip("static pod")
        );
        let mut done = owned("ReplicaSet");
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert_eq!(pod_action(&done), PodAction::Skip("finished"));
    }

    #[test]
    fn one_lock_per_unavailable_node() {
        assert_eq!(
            lock_names("prod", 2),
            ["cairn-prod-reboot-0", "cairn-prod-reboot-1"]
        );
        assert!(lock_names("prod", 0).is_empty(), "0 pauses updates");
    }
}
