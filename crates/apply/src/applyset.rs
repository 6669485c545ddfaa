//! The ApplySet convention (KEP-3659, as kubectl implements it): a parent
//! object labelled `applyset.kubernetes.io/id`, members labelled
//! `applyset.kubernetes.io/part-of` with the same id, and hint annotations
//! on the parent naming the member kinds and namespaces. cairn's parent is
//! a Secret (kubectl's default parent kind), so
//! `KUBECTL_APPLYSET=true kubectl apply --prune --applyset=NAME -n NS` and
//! any ApplySet-aware tool can read the inventory.
//!
//! The parent also carries cairn's apply cache (`data["cairn-inventory.json"]`):
//! per member, the hash of what was applied and the resourceVersion and
//! generation the API server answered with. A member whose desired hash is
//! unchanged and whose live object shows no change since (same
//! resourceVersion, or only a status change) is not sent again — a no-op
//! reconcile of 1,000 objects is one metadata LIST per kind and no write.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const LABEL_ID: &str = "applyset.kubernetes.io/id";
pub const LABEL_PART_OF: &str = "applyset.kubernetes.io/part-of";
pub const ANN_TOOLING: &str = "applyset.kubernetes.io/tooling";
pub const ANN_GROUP_KINDS: &str = "applyset.kubernetes.io/contains-group-kinds";
pub const ANN_NAMESPACES: &str = "applyset.kubernetes.io/additional-namespaces";
/// The commit (or other version) whose render the set was last applied from.
pub const ANN_REVISION: &str = "cairn.dev/applied-revision";
/// Data key of the apply cache in the parent Secret.
pub const INVENTORY_KEY: &str = "cairn-inventory.json";

/// `cairn/<version>`: the tooling value cairn writes and accepts.
pub fn tooling() -> String {
    format!("cairn/{}", env!("CARGO_PKG_VERSION"))
}

/// The parent Secret of an ApplySet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRef {
    pub name: String,
    pub namespace: String,
}

impl ParentRef {
    pub fn new(name: &str, namespace: &str) -> ParentRef {
        ParentRef {
            name: name.into(),
            namespace: namespace.into(),
        }
    }

    /// `applyset-<base64url(sha256(name.namespace.Secret.))>-v1` — the
    /// KEP's GKNN hash (core group: empty), as kubectl computes it.
    pub fn id(&self) -> String {
        let gknn = format!("{}.{}.Secret.", self.name, self.namespace);
        let digest = Sha256::digest(gknn.as_bytes());
        format!(
            "applyset-{}-v1",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
        )
    }

    pub fn selector(&self) -> String {
        format!("{LABEL_PART_OF}={}", self.id())
    }
}

/// A member's group and kind, written `Kind` (core) or `Kind.group`, the
/// format of `contains-group-kinds`.
pub fn group_kind(group: &str, kind: &str) -> String {
    if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    }
}

/// Split a `contains-group-kinds` entry back into (group, kind).
pub fn parse_group_kind(gk: &str) -> (String, String) {
    match gk.split_once('.') {
        Some((k, g)) => (g.to_string(), k.to_string()),
        None => (String::new(), gk.to_string()),
    }
}

/// What the cache remembers about one applied member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Hash of the desired object as sent.
    pub h: String,
    /// resourceVersion after our apply.
    pub rv: String,
    /// metadata.generation after our apply (kinds that have one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub g: Option<i64>,
}

/// Member key → cache entry. Keys: `Kind.group/namespace/name` (namespace
/// empty for cluster-scoped objects).
pub type Inventory = BTreeMap<String, Entry>;

/// The member key of an object.
pub fn member_key(group: &str, kind: &str, namespace: Option<&str>, name: &str) -> String {
    format!(
        "{}/{}/{}",
        group_kind(group, kind),
        namespace.unwrap_or(""),
        name
    )
}

/// Hash of a desired object (its canonical JSON).
pub fn desired_hash(obj: &Value) -> String {
    let bytes = serde_json::to_vec(obj).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..16])
}

/// What a parent says, read back from the cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParentState {
    pub exists: bool,
    pub resource_version: Option<String>,
    pub group_kinds: BTreeSet<String>,
    pub namespaces: BTreeSet<String>,
    pub revision: Option<String>,
    pub inventory: Inventory,
}

/// Why a parent cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParentProblem {
    /// The Secret exists but is not an ApplySet parent (no id label).
    NotAParent,
    /// The id label does not match the Secret's name/namespace.
    WrongId { found: String },
    /// Another tool manages it.
    OtherTooling { found: String },
}

/// Read a parent Secret (as JSON).
pub fn read_parent(parent: &ParentRef, secret: &Value) -> Result<ParentState, ParentProblem> {
    let labels = secret.pointer("/metadata/labels");
    let id = labels
        .and_then(|l| l.get(LABEL_ID))
        .and_then(Value::as_str)
        .ok_or(ParentProblem::NotAParent)?;
    if id != parent.id() {
        return Err(ParentProblem::WrongId { found: id.into() });
    }
    let ann = |k: &str| {
        secret
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let tool = ann(ANN_TOOLING).unwrap_or_default();
    if !tool.starts_with("cairn/") {
        return Err(ParentProblem::OtherTooling { found: tool });
    }
    let list = |k: &str| -> BTreeSet<String> {
        ann(k)
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let inventory = secret
        .pointer(&format!("/data/{INVENTORY_KEY}"))
        .and_then(Value::as_str)
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    Ok(ParentState {
        exists: true,
        resource_version: secret
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
        group_kinds: list(ANN_GROUP_KINDS),
        namespaces: list(ANN_NAMESPACES),
        revision: ann(ANN_REVISION),
        inventory,
    })
}

/// The parent Secret as cairn applies it (server-side apply; the
/// namespace of the parent itself is not listed in `additional-namespaces`).
pub fn parent_object(
    parent: &ParentRef,
    group_kinds: &BTreeSet<String>,
    namespaces: &BTreeSet<String>,
    revision: Option<&str>,
    inventory: &Inventory,
) -> Value {
    let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(",");
    let extra: BTreeSet<String> = namespaces
        .iter()
        .filter(|n| **n != parent.namespace)
        .cloned()
        .collect();
    let mut annotations = json!({
        ANN_TOOLING: tooling(),
        ANN_GROUP_KINDS: join(group_kinds),
        ANN_NAMESPACES: join(&extra),
    });
    if let Some(r) = revision {
        annotations[ANN_REVISION] = json!(r);
    }
    let inv = serde_json::to_vec(inventory).unwrap_or_default();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": parent.name,
            "namespace": parent.namespace,
            "labels": { LABEL_ID: parent.id() },
            "annotations": annotations,
        },
        "type": "Opaque",
        "data": { INVENTORY_KEY: base64::engine::general_purpose::STANDARD.encode(inv) },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_matches_kubectl() {
        // kubectl 1.32: `kubectl apply --applyset=cairn-test -n default` labels
        // its parent Secret with this id.
        assert_eq!(
            ParentRef::new("cairn-test", "default").id(),
            "applyset-bvhXiRV1XYZuS_c7cVs83QDiDKg2iG84GQjEsl5temM-v1"
        );
    }

    #[test]
    fn group_kinds_round_trip() {
        assert_eq!(group_kind("", "ConfigMap"), "ConfigMap");
        assert_eq!(group_kind("apps", "Deployment"), "Deployment.apps");
        assert_eq!(
            parse_group_kind("CustomResourceDefinition.apiextensions.k8s.io"),
            (
                "apiextensions.k8s.io".into(),
                "CustomResourceDefinition".into()
            )
        );
        assert_eq!(parse_group_kind("Secret"), ("".into(), "Secret".into()));
    }

    #[test]
    fn parent_round_trips_and_foreign_parents_are_refused() {
        let p = ParentRef::new("fleet", "kube-system");
        let gks: BTreeSet<String> = ["ConfigMap".to_string(), "Deployment.apps".into()].into();
        let nss: BTreeSet<String> = ["kube-system".to_string(), "web".into()].into();
        let mut inv = Inventory::new();
        inv.insert(
            "ConfigMap/web/a".into(),
            Entry {
                h: "ab".into(),
                rv: "7".into(),
                g: None,
            },
        );
        let obj = parent_object(&p, &gks, &nss, Some("c0ffee"), &inv);
        assert_eq!(obj["metadata"]["annotations"][ANN_NAMESPACES], "web");
        let st = read_parent(&p, &obj).unwrap();
        assert_eq!(st.group_kinds, gks);
        assert_eq!(st.inventory, inv);
        assert_eq!(st.revision.as_deref(), Some("c0ffee"));

        let mut other = obj.clone();
        other["metadata"]["annotations"][ANN_TOOLING] = json!("kubectl/v1.32");
        assert_eq!(
            read_parent(&p, &other),
            Err(ParentProblem::OtherTooling {
                found: "kubectl/v1.32".into()
            })
        );
        let wrong = read_parent(&ParentRef::new("fleet", "default"), &obj);
        assert!(matches!(wrong, Err(ParentProblem::WrongId { .. })));
        let mut bare = obj;
        bare["metadata"]["labels"] = json!({});
        assert_eq!(read_parent(&p, &bare), Err(ParentProblem::NotAParent));
    }
}
