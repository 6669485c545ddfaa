//! Node-local state: each node applies its own Node object's labels,
//! annotations and taints (from its entry in the fleet repository) with
//! server-side apply, field manager `cairn`. Only what the entry lists is
//! owned; labels and taints set by the kubelet or controllers are left alone.

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};

/// The apply configuration for this node's metadata.
pub fn node_patch(node: &str, m: &cairn_render::NodeMetadata) -> Value {
    let mut meta = json!({ "name": node });
    if !m.labels.is_empty() {
        meta["labels"] = json!(m.labels);
    }
    if !m.annotations.is_empty() {
        meta["annotations"] = json!(m.annotations);
    }
    let mut obj = json!({"apiVersion": "v1", "kind": "Node", "metadata": meta});
    // taints are an atomic list: only claimed when the entry declares some
    if !m.taints.is_empty() {
        obj["spec"] = json!({ "taints": m.taints });
    }
    obj
}

/// Apply `patch` to Node `node`. The Node must exist (the kubelet registers it).
pub async fn apply(client: &Client, node: &str, patch: &Value) -> Result<(), String> {
    let nodes: Api<Node> = Api::all(client.clone());
    // server-side apply creates what does not exist: a Node created here
    // instead of by the kubelet's registration never gets its capacity
    match nodes.get_metadata_opt(node).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(format!(
                "Node {node} is not registered yet (the kubelet creates it); will retry"
            ))
        }
        Err(e) => return Err(format!("reading Node {node}: {e}")),
    }
    match nodes
        .patch(
            node,
            &PatchParams::apply(cairn_apply::FIELD_MANAGER),
            &Patch::Apply(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(format!(
            "Node {node} is not registered yet (the kubelet creates it); will retry"
        )),
        Err(e) => Err(format!(
            "applying labels/annotations/taints to Node {node}: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_declared_parts_are_claimed() {
        let mut m = cairn_render::NodeMetadata::default();
        m.labels.insert("zone".into(), "a".into());
        let p = node_patch("n1", &m);
        assert_eq!(p["metadata"]["labels"]["zone"], "a");
        assert!(
            p.get("spec").is_none(),
            "taints claimed without any declared"
        );
        assert!(p["metadata"].get("annotations").is_none());
        m.taints.push(cairn_render::Taint {
            key: "dedicated".into(),
            value: Some("gpu".into()),
            effect: "NoSchedule".into(),
        });
        let p = node_patch("n1", &m);
        assert_eq!(p["spec"]["taints"][0]["effect"], "NoSchedule");
    }
}
