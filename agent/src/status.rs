//! Making the agent's state visible with kubectl: annotations on its Node
//! and Events that name the Node.

use k8s_openapi::api::core::v1::{Event, Node, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

use crate::Outcome;

pub const ANN_APPLIED: &str = "cairn.dev/applied-commit";
pub const ANN_APPLIED_AT: &str = "cairn.dev/applied-at";
pub const ANN_REFUSED: &str = "cairn.dev/refused-commit";
pub const ANN_ERROR: &str = "cairn.dev/last-error";
/// The node holding the cluster's apply Lease, as a standby node saw it.
pub const ANN_APPLIER: &str = "cairn.dev/cluster-applier";
/// The commit a standby node verified and rendered.
pub const ANN_VERIFIED: &str = "cairn.dev/verified-commit";

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The annotation patch an outcome produces (`null` removes a key).
pub fn annotations_for(o: &Outcome) -> serde_json::Value {
    let clip = |s: &str| s.chars().take(1000).collect::<String>();
    match o {
        Outcome::Unchanged { .. } => json!({}),
        Outcome::Applied { commit, .. } => json!({
            ANN_APPLIED: commit,
            ANN_APPLIED_AT: now_rfc3339(),
            ANN_ERROR: null,
            ANN_APPLIER: null,
        }),
        Outcome::Standby { commit, holder } => json!({
            ANN_VERIFIED: commit,
            ANN_APPLIER: holder,
            ANN_ERROR: null,
        }),
        Outcome::Refused { commit, reason } => json!({
            ANN_REFUSED: commit.clone().unwrap_or_default(),
            ANN_ERROR: clip(reason),
        }),
        Outcome::Failed { step, reason, .. } => {
            json!({ ANN_ERROR: clip(&format!("{step}: {reason}")) })
        }
    }
}

fn event_for(o: &Outcome) -> Option<(&'static str, &'static str, String)> {
    match o {
        Outcome::Unchanged { .. } => None,
        Outcome::Applied {
            commit,
            objects,
            changed,
            pruned,
        } => Some((
            "Normal",
            "Applied",
            format!("applied commit {commit}: {objects} objects, {changed} sent, {pruned} pruned"),
        )),
        Outcome::Standby { commit, holder } => Some((
            "Normal",
            "Standby",
            format!("commit {commit} verified; cluster state is applied by {holder}"),
        )),
        Outcome::Refused { reason, .. } => Some(("Warning", "SourceRefused", reason.clone())),
        Outcome::Failed { step, reason, .. } => {
            Some(("Warning", "ReconcileFailed", format!("{step}: {reason}")))
        }
    }
}

/// Annotate the node and post an Event for `o`.
pub async fn report(client: &Client, node: &str, o: &Outcome) -> Result<(), kube::Error> {
    annotate(client, node, &annotations_for(o)).await?;
    if let Some((type_, reason, message)) = event_for(o) {
        event(client, node, type_, reason, &message).await?;
    }
    Ok(())
}

/// Merge `ann` (a map; `null` removes a key) into the Node's annotations.
pub async fn annotate(
    client: &Client,
    node: &str,
    ann: &serde_json::Value,
) -> Result<(), kube::Error> {
    if ann.as_object().is_some_and(|m| !m.is_empty()) {
        let nodes: Api<Node> = Api::all(client.clone());
        nodes
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": ann}})),
            )
            .await?;
    }
    Ok(())
}

/// Post a core/v1 Event about the Node.
pub async fn event(
    client: &Client,
    node: &str,
    type_: &str,
    reason: &str,
    message: &str,
) -> Result<(), kube::Error> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let ev = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{node}.cairn.")),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.into()),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message.chars().take(1000).collect()),
        type_: Some(type_.into()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        source: Some(k8s_openapi::api::core::v1::EventSource {
            component: Some("cairn-agent".into()),
            host: Some(node.into()),
        }),
        ..Default::default()
    };
    events.create(&PostParams::default(), &ev).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_sets_commit_and_clears_error() {
        let a = annotations_for(&Outcome::Applied {
            commit: "abc".into(),
            objects: 2,
            changed: 2,
            pruned: 0,
        });
        assert_eq!(a[ANN_APPLIED], "abc");
        assert!(a[ANN_ERROR].is_null());
        assert!(a.as_object().unwrap().contains_key(ANN_ERROR));
    }

    #[test]
    fn refusal_names_the_commit_and_reason_but_keeps_applied() {
        let a = annotations_for(&Outcome::Refused {
            commit: Some("def".into()),
            reason: "commit def is not signed".into(),
        });
        assert_eq!(a[ANN_REFUSED], "def");
        assert_eq!(a[ANN_ERROR], "commit def is not signed");
        assert!(!a.as_object().unwrap().contains_key(ANN_APPLIED));
    }

    #[test]
    fn unchanged_patches_nothing() {
        assert_eq!(
            annotations_for(&Outcome::Unchanged { commit: "x".into() }),
            json!({})
        );
        assert!(event_for(&Outcome::Unchanged { commit: "x".into() }).is_none());
    }
}
