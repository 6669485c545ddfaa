//! Server-side apply of a rendered object set under one field manager.
//!
//! [`plan`] is pure: it validates every object and sorts it into apply
//! stages (Namespaces and CRDs first, then cluster-scoped RBAC and `*Class`
//! kinds, then everything else). [`apply`] resolves each kind through API
//! discovery and applies one stage at a time, objects of a stage concurrently.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use futures::stream::{self, StreamExt};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{self, Scope};
use kube::Client;
use serde_json::Value;

/// The one field manager cairn applies with.
pub const FIELD_MANAGER: &str = "cairn";

/// How many objects of one stage are in flight at once.
pub const CONCURRENCY: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("object #{index} ({what}): {reason}")]
    InvalidObject {
        index: usize,
        what: String,
        reason: String,
    },
    #[error("{object}: kind {gvk} is not served by the API server ({source})")]
    UnknownKind {
        object: String,
        gvk: String,
        #[source]
        source: kube::Error,
    },
    #[error("{object}: server-side apply failed: {source}")]
    Apply {
        object: String,
        #[source]
        source: kube::Error,
    },
}

/// One object, validated, with the identity apply needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub gvk: GroupVersionKind,
    pub name: String,
    pub namespace: Option<String>,
    pub stage: u8,
    pub object: Value,
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
pub fn stage_of(group: &str, kind: &str) -> u8 {
    match (group, kind) {
        ("", "Namespace") | ("apiextensions.k8s.io", "CustomResourceDefinition") => 0,
        ("rbac.authorization.k8s.io", "ClusterRole" | "ClusterRoleBinding") => 1,
        (_, k) if k.ends_with("Class") => 1,
        ("", "ServiceAccount" | "ConfigMap" | "Secret") => 2,
        _ => 3,
    }
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
            object: o.clone(),
        });
    }
    // stable: keeps render order within a stage
    out.sort_by_key(|p| p.stage);
    Ok(out)
}

/// The outcome of one apply.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Object id → resourceVersion after apply.
    pub applied: BTreeMap<String, String>,
}

async fn resolve(
    client: &Client,
    cache: &mut BTreeMap<String, (ApiResource, Scope)>,
    p: &Planned,
) -> Result<(ApiResource, Scope), ApplyError> {
    let key = format!("{}/{}/{}", p.gvk.group, p.gvk.version, p.gvk.kind);
    if let Some(hit) = cache.get(&key) {
        return Ok(hit.clone());
    }
    let (ar, caps) = discovery::pinned_kind(client, &p.gvk)
        .await
        .map_err(|source| ApplyError::UnknownKind {
            object: p.id(),
            gvk: key.clone(),
            source,
        })?;
    cache.insert(key, (ar.clone(), caps.scope.clone()));
    Ok((ar, caps.scope))
}

/// Server-side apply every object, stage by stage. Stops at the first stage
/// with a failure and returns the first error of that stage.
pub async fn apply(client: &Client, objects: &[Value]) -> Result<ApplyReport, ApplyError> {
    let planned = plan(objects)?;
    let mut cache = BTreeMap::new();
    let mut report = ApplyReport::default();
    let mut stages: BTreeMap<u8, Vec<Planned>> = BTreeMap::new();
    for p in planned {
        stages.entry(p.stage).or_default().push(p);
    }
    // kinds are resolved stage by stage: CRDs of stage 0 may define kinds of later stages
    for (_, items) in stages {
        let mut resolved = Vec::with_capacity(items.len());
        for p in items {
            let (ar, scope) = resolve(client, &mut cache, &p).await?;
            resolved.push((p, ar, scope));
        }
        let results: Vec<Result<(String, String), ApplyError>> = stream::iter(resolved)
            .map(|(p, ar, scope)| {
                let client = client.clone();
                async move {
                    let api: Api<DynamicObject> = match scope {
                        Scope::Cluster => Api::all_with(client, &ar),
                        Scope::Namespaced => Api::namespaced_with(
                            client,
                            p.namespace.as_deref().unwrap_or("default"),
                            &ar,
                        ),
                    };
                    let params = PatchParams::apply(FIELD_MANAGER);
                    let obj = api
                        .patch(&p.name, &params, &Patch::Apply(&p.object))
                        .await
                        .map_err(|source| ApplyError::Apply {
                            object: p.id(),
                            source,
                        })?;
                    Ok((p.id(), obj.metadata.resource_version.unwrap_or_default()))
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for r in results {
            let (id, rv) = r?;
            report.applied.insert(id, rv);
        }
    }
    Ok(report)
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
