//! Apply order of rendered objects.
//!
//! 1. `Namespace`, then `CustomResourceDefinition` — everything else may live in
//!    a namespace or be an instance of a CRD;
//! 2. then kustomize's legacy order for built-in kinds: ResourceQuota,
//!    StorageClass, ServiceAccount, PodSecurityPolicy, Role, ClusterRole,
//!    RoleBinding, ClusterRoleBinding, ConfigMap, Secret, Endpoints, Service,
//!    LimitRange, PriorityClass, PersistentVolume, PersistentVolumeClaim,
//!    Deployment, StatefulSet, CronJob, PodDisruptionBudget;
//! 3. then every other kind (custom resources included), by kind name;
//! 4. `MutatingWebhookConfiguration`, `ValidatingWebhookConfiguration` last, so
//!    webhooks never block the objects their own services need.
//!
//! Ties are broken by kind, API group, version, namespace and name, so the
//! order never depends on file order.

use super::resource::ResId;

const FIRST: &[&str] = &[
    "Namespace",
    "CustomResourceDefinition",
    "ResourceQuota",
    "StorageClass",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
];

const LAST: &[&str] = &[
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];

fn rank(kind: &str) -> usize {
    if let Some(i) = FIRST.iter().position(|k| *k == kind) {
        i
    } else if let Some(i) = LAST.iter().position(|k| *k == kind) {
        FIRST.len() + 1 + i
    } else {
        FIRST.len()
    }
}

/// Sort key for an object id.
pub(crate) fn apply_key(id: &ResId) -> (usize, String, String, String, String, String) {
    (
        rank(&id.kind),
        id.kind.clone(),
        id.group.clone(),
        id.version.clone(),
        id.namespace.clone(),
        id.name.clone(),
    )
}

/// Sort objects into apply order (stable, total).
pub(crate) fn sort_for_apply(objects: &mut [serde_json::Value]) {
    objects.sort_by_cached_key(|o| apply_key(&ResId::of(o)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn namespaces_and_crds_first_webhooks_last() {
        let mut objs = vec![
            json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration", "metadata": {"name": "w"}}),
            json!({"apiVersion": "example.com/v1", "kind": "Foo", "metadata": {"name": "f"}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}}),
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "c"}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}}),
        ];
        sort_for_apply(&mut objs);
        let kinds: Vec<&str> = objs.iter().map(|o| o["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "CustomResourceDefinition",
                "Deployment",
                "Foo",
                "ValidatingWebhookConfiguration"
            ]
        );
    }
}
