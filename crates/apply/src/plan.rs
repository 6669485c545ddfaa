//! Validation and apply order. Pure: no API calls.

use kube::core::GroupVersionKind;
use serde_json::Value;

use crate::ApplyError;

/// One object, validated, with the identity apply needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub gvk: GroupVersionKind,
    pub name: String,
    pub namespace: Option<String>,
    pub stage: u8,
    /// Position of the object in the input slice (objects are not copied).
    pub index: usize,
}

impl Planned {
    /// `Kind/namespace/name` (or `Kind/name`) for reports and logs.
    pub fn id(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{}/{}", self.gvk.kind, ns, self.name),
            None => format!("{}/{}", self.gvk.kind, self.name),
        }
    }
}

/// Apply stage of a kind: lower goes first.
///
/// 0. Namespaces and CRDs (CRDs are waited on until Established);
/// 1. cluster-scoped RBAC and `*Class` kinds;
/// 2. what workloads reference: ServiceAccounts, ConfigMaps, Secrets,
///    namespaced RBAC, quotas, limit ranges, PVCs;
/// 3. other built-in kinds (workloads, Services…);
/// 4. custom resources;
/// 5. admission webhooks and APIServices, last, so they cannot block the
///    objects above them.
pub fn stage_of(group: &str, kind: &str) -> u8 {
    match (group, kind) {
        ("", "Namespace") | ("apiextensions.k8s.io", "CustomResourceDefinition") => 0,
        ("rbac.authorization.k8s.io", "ClusterRole" | "ClusterRoleBinding") => 1,
        (g, k) if k.ends_with("Class") && is_builtin_group(g) => 1,
        ("", "ServiceAccount" | "ConfigMap" | "Secret" | "LimitRange" | "ResourceQuota")
        | ("", "PersistentVolumeClaim" | "PersistentVolume")
        | ("rbac.authorization.k8s.io", "Role" | "RoleBinding") => 2,
        (
            "admissionregistration.k8s.io",
            "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration",
        )
        | ("apiregistration.k8s.io", "APIService") => 5,
        (g, _) if is_builtin_group(g) => 3,
        _ => 4,
    }
}

/// Kubernetes' own API groups: the core group, dotless groups (`apps`,
/// `batch`…) and `*.k8s.io`.
pub fn is_builtin_group(group: &str) -> bool {
    group.is_empty() || !group.contains('.') || group.ends_with(".k8s.io")
}

fn what(v: &Value) -> String {
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("?");
    let name = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?");
    format!("{kind}/{name}")
}

/// Validate and order the set. Pure: no API calls.
pub fn plan(objects: &[Value]) -> Result<Vec<Planned>, ApplyError> {
    let mut out = Vec::with_capacity(objects.len());
    for (index, o) in objects.iter().enumerate() {
        let invalid = |reason: &str| ApplyError::InvalidObject {
            index,
            what: what(o),
            reason: reason.to_string(),
        };
        let api_version = o
            .get("apiVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("missing apiVersion"))?;
        let kind = o
            .get("kind")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("missing kind"))?;
        let name = o
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid("missing metadata.name"))?;
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        out.push(Planned {
            gvk: GroupVersionKind::gvk(group, version, kind),
            name: name.to_string(),
            namespace: o
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_string),
            stage: stage_of(group, kind),
            index,
        });
    }
    // stable: keeps render order within a stage
    out.sort_by_key(|p| p.stage);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn namespaces_and_crds_go_first_order_kept_within_a_stage() {
        let objs = vec![
            json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"a","namespace":"x"}}),
            json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c","namespace":"x"}}),
            json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x"}}),
            json!({"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition","metadata":{"name":"foos.example.com"}}),
            json!({"apiVersion":"storage.k8s.io/v1","kind":"StorageClass","metadata":{"name":"fast"}}),
            json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"b","namespace":"x"}}),
        ];
        let ids: Vec<String> = plan(&objs).unwrap().iter().map(Planned::id).collect();
        assert_eq!(
            ids,
            [
                "Namespace/x",
                "CustomResourceDefinition/foos.example.com",
                "StorageClass/fast",
                "ConfigMap/x/c",
                "Deployment/x/a",
                "Deployment/x/b"
            ]
        );
    }

    #[test]
    fn invalid_objects_are_named_by_index() {
        let e = plan(&[json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{}})]).unwrap_err();
        assert!(matches!(e, ApplyError::InvalidObject { index: 0, .. }));
        assert!(e.to_string().contains("metadata.name"), "{e}");
        let e = plan(&[json!({"kind":"ConfigMap","metadata":{"name":"a"}})]).unwrap_err();
        assert!(e.to_string().contains("apiVersion"), "{e}");
    }

    #[test]
    fn core_group_parses_without_slash() {
        let p =
            plan(&[json!({"apiVersion":"v1","kind":"Service","metadata":{"name":"s"}})]).unwrap();
        assert_eq!(p[0].gvk.group, "");
        assert_eq!(p[0].gvk.version, "v1");
    }
}
