//! A resource being built: the object plus what kustomize tracks beside it
//! (previous names for name-reference fixing, generator options).

use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::error::RenderError;

/// Group/version/kind/namespace/name of an object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ResId {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ResId {
    pub fn of(obj: &Value) -> ResId {
        let (group, version) = split_api_version(str_at(obj, &["apiVersion"]).unwrap_or(""));
        ResId {
            group,
            version,
            kind: str_at(obj, &["kind"]).unwrap_or("").to_string(),
            namespace: str_at(obj, &["metadata", "namespace"])
                .unwrap_or("")
                .to_string(),
            name: str_at(obj, &["metadata", "name"]).unwrap_or("").to_string(),
        }
    }

    pub fn is_cluster_scoped(&self) -> bool {
        is_cluster_scoped(&self.group, &self.kind)
    }

    /// Namespace for comparisons: "" for cluster-scoped kinds, "default" for
    /// a namespaced object without one.
    pub fn effective_namespace(&self) -> &str {
        if self.is_cluster_scoped() {
            ""
        } else if self.namespace.is_empty() {
            "default"
        } else {
            &self.namespace
        }
    }

    pub fn ns_equals(&self, other: &ResId) -> bool {
        self.effective_namespace() == other.effective_namespace()
    }

    pub fn gvk_equals(&self, other: &ResId) -> bool {
        self.group == other.group && self.version == other.version && self.kind == other.kind
    }

    /// Same gvk, name and (effective) namespace.
    pub fn equals(&self, other: &ResId) -> bool {
        self.gvk_equals(other) && self.name == other.name && self.ns_equals(other)
    }

    /// Same gvk and name, any namespace.
    pub fn gvkn_equals(&self, other: &ResId) -> bool {
        self.gvk_equals(other) && self.name == other.name
    }
}

impl std::fmt::Display for ResId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let api = if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        };
        if self.namespace.is_empty() {
            write!(f, "{api} {} {}", self.kind, self.name)
        } else {
            write!(f, "{api} {} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

pub(crate) fn split_api_version(api: &str) -> (String, String) {
    match api.rsplit_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), api.to_string()),
    }
}

/// Built-in cluster-scoped kinds (everything else, including custom
/// resources, is treated as namespaced, as kustomize does without a schema).
pub(crate) fn is_cluster_scoped(group: &str, kind: &str) -> bool {
    matches!(
        (group, kind),
        ("", "Namespace")
            | ("", "Node")
            | ("", "PersistentVolume")
            | ("", "ComponentStatus")
            | ("apiextensions.k8s.io", "CustomResourceDefinition")
            | ("apiregistration.k8s.io", "APIService")
            | ("rbac.authorization.k8s.io", "ClusterRole")
            | ("rbac.authorization.k8s.io", "ClusterRoleBinding")
            | ("storage.k8s.io", "StorageClass")
            | ("storage.k8s.io", "CSIDriver")
            | ("storage.k8s.io", "CSINode")
            | ("storage.k8s.io", "VolumeAttachment")
            | ("scheduling.k8s.io", "PriorityClass")
            | ("networking.k8s.io", "IngressClass")
            | ("node.k8s.io", "RuntimeClass")
            | ("policy", "PodSecurityPolicy")
            | (
                "admissionregistration.k8s.io",
                "MutatingWebhookConfiguration"
            )
            | (
                "admissionregistration.k8s.io",
                "ValidatingWebhookConfiguration"
            )
            | ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy")
            | (
                "admissionregistration.k8s.io",
                "ValidatingAdmissionPolicyBinding"
            )
            | ("certificates.k8s.io", "CertificateSigningRequest")
            | ("flowcontrol.apiserver.k8s.io", "FlowSchema")
            | ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration")
    )
}

pub(crate) fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

/// Generator bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GenInfo {
    /// Append the content hash to the name when the build finishes.
    pub hash: bool,
}

/// One object plus kustomize bookkeeping.
#[derive(Debug, Clone)]
pub(crate) struct Resource {
    pub obj: Value,
    /// File that defined it (or the kustomization that generated it).
    pub file: PathBuf,
    /// Ids it had before renames, oldest first.
    pub prev: Vec<ResId>,
    pub prefixes: Vec<String>,
    pub suffixes: Vec<String>,
    pub gen: Option<GenInfo>,
}

impl Resource {
    /// Wrap a parsed document, checking it is a Kubernetes object.
    pub fn new(obj: Value, file: PathBuf, index: usize) -> Result<Resource, RenderError> {
        let bad = |message: &str| RenderError::InvalidObject {
            path: file.clone(),
            index,
            message: message.to_string(),
        };
        let m = obj
            .as_object()
            .ok_or_else(|| bad("not a mapping (a Kubernetes object is expected)"))?;
        for key in ["apiVersion", "kind"] {
            match m.get(key) {
                Some(Value::String(s)) if !s.is_empty() => {}
                _ => return Err(bad(&format!("missing {key}"))),
            }
        }
        let name_ok = matches!(
            m.get("metadata").and_then(|md| md.get("name")),
            Some(Value::String(s)) if !s.is_empty()
        );
        let gen_name = m
            .get("metadata")
            .and_then(|md| md.get("generateName"))
            .is_some();
        if !name_ok {
            return Err(bad(if gen_name {
                "metadata.generateName is not supported (objects need a stable metadata.name to be applied and pruned)"
            } else {
                "missing metadata.name"
            }));
        }
        Ok(Resource {
            obj,
            file,
            prev: Vec::new(),
            prefixes: Vec::new(),
            suffixes: Vec::new(),
            gen: None,
        })
    }

    pub fn id(&self) -> ResId {
        ResId::of(&self.obj)
    }

    /// Borrowed (group, version, kind).
    pub fn gvk(&self) -> (&str, &str, &str) {
        let api = str_at(&self.obj, &["apiVersion"]).unwrap_or("");
        let (g, v) = api.rsplit_once('/').unwrap_or(("", api));
        (g, v, self.kind())
    }

    /// The first id this resource had.
    pub fn orig_id(&self) -> ResId {
        self.prev.first().cloned().unwrap_or_else(|| self.id())
    }

    /// Current id and every previous id.
    pub fn any_id(&self, f: impl Fn(&ResId) -> bool) -> bool {
        f(&self.id()) || self.prev.iter().any(f)
    }

    pub fn kind(&self) -> &str {
        str_at(&self.obj, &["kind"]).unwrap_or("")
    }

    pub fn name(&self) -> &str {
        str_at(&self.obj, &["metadata", "name"]).unwrap_or("")
    }

    pub fn namespace(&self) -> &str {
        str_at(&self.obj, &["metadata", "namespace"]).unwrap_or("")
    }

    fn remember(&mut self) {
        let id = self.id();
        if self.prev.last() != Some(&id) {
            self.prev.push(id);
        }
    }

    pub fn set_name(&mut self, name: &str) {
        if self.name() == name {
            return;
        }
        self.remember();
        self.metadata_mut()
            .insert("name".into(), Value::String(name.to_string()));
    }

    pub fn set_namespace(&mut self, ns: &str) {
        if self.namespace() == ns {
            return;
        }
        self.remember();
        self.metadata_mut()
            .insert("namespace".into(), Value::String(ns.to_string()));
    }

    pub fn metadata_mut(&mut self) -> &mut Map<String, Value> {
        let m = self
            .obj
            .as_object_mut()
            .expect("resource objects are mappings");
        let md = m
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if !md.is_object() {
            *md = Value::Object(Map::new());
        }
        md.as_object_mut().expect("just made a mapping")
    }
}
