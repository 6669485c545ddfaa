//! What cairn knows about the objects it checks: how to name them, where a
//! workload keeps its pod spec, and the fleet settings as an object.

use cairn_render::FleetSettings;
use serde_json::{json, Value};

/// The kind every OS-update policy matches: the fleet settings of
/// `fleet.yaml`, presented to CEL as an object (see [`settings_object`]).
pub const SETTINGS_KIND: &str = "FleetSettings";

/// An object as reports name it: `Kind/namespace/name`, or `Kind/name` for
/// cluster-scoped objects.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    pub(crate) fn of(obj: &Value) -> ObjectRef {
        let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        let meta = obj.get("metadata");
        ObjectRef {
            kind: s(obj.get("kind")).unwrap_or_default(),
            namespace: s(meta.and_then(|m| m.get("namespace"))).filter(|n| !n.is_empty()),
            name: s(meta.and_then(|m| m.get("name"))).unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}/{}", self.kind, ns, self.name),
            None => write!(f, "{}/{}", self.kind, self.name),
        }
    }
}

/// The pod spec of a workload, wherever its kind keeps it:
///
/// | kind | pod spec |
/// | --- | --- |
/// | Pod | `spec` |
/// | Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, ReplicationController | `spec.template.spec` |
/// | CronJob | `spec.jobTemplate.spec.template.spec` |
/// | PodTemplate | `template.spec` |
///
/// Only for the built-in API groups (core, `apps`, `batch`, `extensions`):
/// a custom resource that happens to share a kind name has no pod spec.
pub fn pod_spec(obj: &Value) -> Option<&Value> {
    let kind = obj.get("kind")?.as_str()?;
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    if !matches!(group, "" | "apps" | "batch" | "extensions") {
        return None;
    }
    let path: &[&str] = match kind {
        "Pod" => &["spec"],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => &["spec", "template", "spec"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template", "spec"],
        "PodTemplate" => &["template", "spec"],
        _ => return None,
    };
    path.iter()
        .try_fold(obj, |v, k| v.get(k))
        .filter(|v| v.is_object())
}

/// The containers of a pod spec: `containers`, then `initContainers`, then
/// `ephemeralContainers`.
pub fn containers(pod_spec: &Value) -> impl Iterator<Item = &Value> {
    ["containers", "initContainers", "ephemeralContainers"]
        .into_iter()
        .filter_map(|k| pod_spec.get(k).and_then(Value::as_array))
        .flatten()
}

/// The fleet settings as the object `FleetSettings` policies see:
///
/// ```yaml
/// apiVersion: cairn.dev/v1alpha1
/// kind: FleetSettings
/// metadata: {name: fleet.yaml}
/// os: {version: "0.1.0"}
/// update:
///   maxUnavailable: 1
///   maintenanceWindow: {days: [Sat], start: "02:00", duration: 4h}   # absent when not set
/// ```
pub fn settings_object(settings: &FleetSettings) -> Value {
    let mut update = json!({ "maxUnavailable": settings.update.max_unavailable });
    if let Some(w) = &settings.update.maintenance_window {
        update["maintenanceWindow"] = json!({
            "days": w.days,
            "start": w.start,
            "duration": w.duration,
        });
    }
    json!({
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": SETTINGS_KIND,
        "metadata": { "name": "fleet.yaml" },
        "os": { "version": settings.os.version },
        "update": update,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_specs_of_every_workload_kind() {
        let t = json!({"template": {"spec": {"containers": [{"name": "a"}]}}});
        let cases = [
            json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"name": "a"}]}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": t}),
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "spec": t}),
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "spec": t}),
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "spec": t}),
            json!({"apiVersion": "batch/v1", "kind": "Job", "spec": t}),
            json!({"apiVersion": "v1", "kind": "ReplicationController", "spec": t}),
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "spec": {"jobTemplate": {"spec": t}}}),
            json!({"apiVersion": "v1", "kind": "PodTemplate", "template": {"spec": {"containers": [{"name": "a"}]}}}),
        ];
        for c in &cases {
            let spec = pod_spec(c).unwrap_or_else(|| panic!("no pod spec in {c}"));
            assert_eq!(containers(spec).count(), 1, "{c}");
        }
        assert!(pod_spec(
            &json!({"apiVersion": "example.com/v1", "kind": "Deployment", "spec": t})
        )
        .is_none());
        assert!(pod_spec(&json!({"apiVersion": "v1", "kind": "ConfigMap"})).is_none());
    }

    #[test]
    fn object_refs_read_like_kubectl() {
        let o = json!({"kind": "Service", "metadata": {"name": "a", "namespace": "b"}});
        assert_eq!(ObjectRef::of(&o).to_string(), "Service/b/a");
        let o = json!({"kind": "Namespace", "metadata": {"name": "b"}});
        assert_eq!(ObjectRef::of(&o).to_string(), "Namespace/b");
    }
}
