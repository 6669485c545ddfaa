//! The field-spec driven transformers: namespace, namePrefix/nameSuffix,
//! labels/commonLabels, commonAnnotations, replicas, images.
//! Field tables are kustomize v5's defaults (`api/konfig/builtinpluginconsts`).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

use super::fieldpath::{apply_fs, fs, fsg, Fs, Leaf, OwnedFs};
use super::resource::Resource;
use super::types::{ImageSpec, Kustomization, ReplicaSpec};
use crate::error::RenderError;

fn transform_err(kfile: &Path, r: &Resource, field: &str, message: String) -> RenderError {
    RenderError::Transform {
        file: kfile.to_path_buf(),
        object: r.id().to_string(),
        field: field.to_string(),
        message,
    }
}

/// `namespace:` — set metadata.namespace on namespaced objects, rename
/// Namespace objects, fix RoleBinding subjects that pointed at "default".
pub(crate) fn namespace(kfile: &Path, ns: &str, rm: &mut [Resource]) -> Result<(), RenderError> {
    if ns.is_empty() {
        return Ok(());
    }
    for r in rm.iter_mut() {
        let id = r.id();
        if id.group.is_empty() && id.kind == "Namespace" {
            r.set_name(ns);
            continue;
        }
        if !id.is_cluster_scoped() {
            r.set_namespace(ns);
        }
        let rbac = id.group == "rbac.authorization.k8s.io"
            && (id.kind == "RoleBinding" || id.kind == "ClusterRoleBinding");
        if rbac {
            if let Some(Value::Array(subjects)) = r.obj.get_mut("subjects") {
                for s in subjects.iter_mut() {
                    let is_default = s.get("namespace").and_then(Value::as_str) == Some("default");
                    let is_sa = s.get("kind").and_then(Value::as_str) == Some("ServiceAccount");
                    if is_default && is_sa {
                        s["namespace"] = Value::String(ns.to_string());
                    }
                }
            }
        }
        let specs: &[(&str, &str, &str, bool)] = &[
            (
                "apiregistration.k8s.io",
                "APIService",
                "spec/service/namespace",
                true,
            ),
            (
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                "spec/conversion/webhook/clientConfig/service/namespace",
                false,
            ),
        ];
        for (group, kind, path, create) in specs {
            if id.group == *group && id.kind == *kind {
                let spec = OwnedFs::from(&fsg(path, group, kind, *create));
                let value = Value::String(ns.to_string());
                let gvk = (id.group.as_str(), id.version.as_str(), id.kind.as_str());
                apply_fs(&mut r.obj, gvk, &spec, Leaf::Scalar, &mut |n| {
                    *n = value.clone();
                    Ok(())
                })
                .map_err(|m| transform_err(kfile, r, path, m))?;
            }
        }
    }
    Ok(())
}

/// `namePrefix:`/`nameSuffix:` — rename everything except CRDs, APIServices
/// and Namespaces (kustomize v5 skips those).
pub(crate) fn prefix_suffix(prefix: &str, suffix: &str, rm: &mut [Resource]) {
    for r in rm.iter_mut() {
        let id = r.orig_id();
        let skip = id.kind == "CustomResourceDefinition"
            || id.kind == "Namespace"
            || (id.group == "apiregistration.k8s.io" && id.kind == "APIService");
        if skip {
            continue;
        }
        let name = format!("{prefix}{}{suffix}", r.name());
        r.set_name(&name);
        if !prefix.is_empty() {
            r.prefixes.push(prefix.to_string());
        }
        if !suffix.is_empty() {
            r.suffixes.push(suffix.to_string());
        }
    }
}

/// Where `labels` with `includeTemplates` (and everything with selectors) go.
pub(crate) const TEMPLATE_LABEL_FIELDS: &[Fs] = &[
    fs("metadata/labels", None, true),
    fsg(
        "spec/template/metadata/labels",
        "",
        "ReplicationController",
        true,
    ),
    fs("spec/template/metadata/labels", Some("Deployment"), true),
    fs("spec/template/metadata/labels", Some("ReplicaSet"), true),
    fs("spec/template/metadata/labels", Some("DaemonSet"), true),
    fsg("spec/template/metadata/labels", "apps", "StatefulSet", true),
    fsg(
        "spec/volumeClaimTemplates[]/metadata/labels",
        "apps",
        "StatefulSet",
        true,
    ),
    fsg("spec/template/metadata/labels", "batch", "Job", true),
    fsg("spec/jobTemplate/metadata/labels", "batch", "CronJob", true),
    fsg(
        "spec/jobTemplate/spec/template/metadata/labels",
        "batch",
        "CronJob",
        true,
    ),
];

const AFFINITY: &[&str] = &[
    "spec/template/spec/affinity/podAffinity/preferredDuringSchedulingIgnoredDuringExecution/podAffinityTerm/labelSelector/matchLabels",
    "spec/template/spec/affinity/podAffinity/requiredDuringSchedulingIgnoredDuringExecution/labelSelector/matchLabels",
    "spec/template/spec/affinity/podAntiAffinity/preferredDuringSchedulingIgnoredDuringExecution/podAffinityTerm/labelSelector/matchLabels",
    "spec/template/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution/labelSelector/matchLabels",
    "spec/template/spec/topologySpreadConstraints/labelSelector/matchLabels",
];

/// Selector fields `commonLabels` (and `labels` with `includeSelectors`) also set.
fn selector_label_fields() -> Vec<OwnedFs> {
    let mut v: Vec<OwnedFs> = vec![
        OwnedFs::from(&fsg("spec/selector", "", "Service", true)),
        OwnedFs::from(&fsg("spec/selector", "", "ReplicationController", true)),
        OwnedFs::from(&fs("spec/selector/matchLabels", Some("Deployment"), true)),
    ];
    for p in AFFINITY {
        v.push(OwnedFs::new(
            p,
            Some("apps"),
            None,
            Some("Deployment"),
            false,
        ));
    }
    v.push(OwnedFs::from(&fs(
        "spec/selector/matchLabels",
        Some("ReplicaSet"),
        true,
    )));
    v.push(OwnedFs::from(&fs(
        "spec/selector/matchLabels",
        Some("DaemonSet"),
        true,
    )));
    v.push(OwnedFs::from(&fsg(
        "spec/selector/matchLabels",
        "apps",
        "StatefulSet",
        true,
    )));
    for p in AFFINITY {
        v.push(OwnedFs::new(
            p,
            Some("apps"),
            None,
            Some("StatefulSet"),
            false,
        ));
    }
    for f in [
        fsg("spec/selector/matchLabels", "batch", "Job", false),
        fsg(
            "spec/jobTemplate/spec/selector/matchLabels",
            "batch",
            "CronJob",
            false,
        ),
        fsg(
            "spec/selector/matchLabels",
            "policy",
            "PodDisruptionBudget",
            false,
        ),
        fsg(
            "spec/podSelector/matchLabels",
            "networking.k8s.io",
            "NetworkPolicy",
            false,
        ),
        fsg(
            "spec/ingress/from/podSelector/matchLabels",
            "networking.k8s.io",
            "NetworkPolicy",
            false,
        ),
        fsg(
            "spec/egress/to/podSelector/matchLabels",
            "networking.k8s.io",
            "NetworkPolicy",
            false,
        ),
    ] {
        v.push(OwnedFs::from(&f));
    }
    v.extend(TEMPLATE_LABEL_FIELDS.iter().map(OwnedFs::from));
    v
}

fn set_map_entries(
    kfile: &Path,
    rm: &mut [Resource],
    pairs: &BTreeMap<String, String>,
    specs: &[OwnedFs],
) -> Result<(), RenderError> {
    if pairs.is_empty() {
        return Ok(());
    }
    for r in rm.iter_mut() {
        let (g, v, k) = r.gvk();
        let (g, v, k) = (g.to_string(), v.to_string(), k.to_string());
        for spec in specs {
            let res = apply_fs(&mut r.obj, (&g, &v, &k), spec, Leaf::Map, &mut |n| {
                let m = match n {
                    Value::Object(m) => m,
                    Value::Null => {
                        *n = Value::Object(Map::new());
                        n.as_object_mut().expect("just made a mapping")
                    }
                    other => return Err(format!("expected a mapping, found {other}")),
                };
                for (k, v) in pairs {
                    m.insert(k.clone(), Value::String(v.clone()));
                }
                Ok(())
            });
            res.map_err(|m| transform_err(kfile, r, &spec.path, m))?;
        }
    }
    Ok(())
}

/// `labels:` entries, then `commonLabels:`.
pub(crate) fn labels(
    kfile: &Path,
    k: &Kustomization,
    rm: &mut [Resource],
) -> Result<(), RenderError> {
    for l in &k.labels {
        let mut specs: Vec<OwnedFs> = l.fields.iter().map(OwnedFs::from).collect();
        if l.include_selectors {
            specs.extend(selector_label_fields());
        } else if l.include_templates {
            specs.extend(TEMPLATE_LABEL_FIELDS.iter().map(OwnedFs::from));
        } else {
            specs.push(OwnedFs::from(&fs("metadata/labels", None, true)));
        }
        set_map_entries(kfile, rm, &l.pairs, &specs)?;
    }
    set_map_entries(kfile, rm, &k.common_labels, &selector_label_fields())
}

const ANNOTATION_FIELDS: &[Fs] = &[
    fs("metadata/annotations", None, true),
    fsg(
        "spec/template/metadata/annotations",
        "",
        "ReplicationController",
        true,
    ),
    fs(
        "spec/template/metadata/annotations",
        Some("Deployment"),
        true,
    ),
    fs(
        "spec/template/metadata/annotations",
        Some("ReplicaSet"),
        true,
    ),
    fs(
        "spec/template/metadata/annotations",
        Some("DaemonSet"),
        true,
    ),
    fs(
        "spec/template/metadata/annotations",
        Some("StatefulSet"),
        true,
    ),
    fsg("spec/template/metadata/annotations", "batch", "Job", true),
    fsg(
        "spec/jobTemplate/metadata/annotations",
        "batch",
        "CronJob",
        true,
    ),
    fsg(
        "spec/jobTemplate/spec/template/metadata/annotations",
        "batch",
        "CronJob",
        true,
    ),
];

/// `commonAnnotations:`.
pub(crate) fn annotations(
    kfile: &Path,
    pairs: &BTreeMap<String, String>,
    rm: &mut [Resource],
) -> Result<(), RenderError> {
    let specs: Vec<OwnedFs> = ANNOTATION_FIELDS.iter().map(OwnedFs::from).collect();
    set_map_entries(kfile, rm, pairs, &specs)
}

const REPLICA_KINDS: &[&str] = &[
    "Deployment",
    "ReplicationController",
    "ReplicaSet",
    "StatefulSet",
];

/// `replicas:` — set spec.replicas of the named workload (matched by any of
/// its names). No match is an error, as in kustomize.
pub(crate) fn replicas(
    kfile: &Path,
    specs: &[ReplicaSpec],
    rm: &mut [Resource],
) -> Result<(), RenderError> {
    for spec in specs {
        let mut found = false;
        for r in rm.iter_mut() {
            let hit =
                r.any_id(|id| id.name == spec.name && REPLICA_KINDS.contains(&id.kind.as_str()));
            if !hit {
                continue;
            }
            found = true;
            let spec_map = r
                .obj
                .as_object_mut()
                .expect("resource objects are mappings")
                .entry("spec")
                .or_insert_with(|| Value::Object(Map::new()));
            match spec_map {
                Value::Object(m) => {
                    m.insert("replicas".into(), Value::Number(spec.count.into()));
                }
                _ => {
                    return Err(transform_err(kfile, r, "spec", "expected a mapping".into()));
                }
            }
        }
        if !found {
            return Err(RenderError::InvalidField {
                file: kfile.to_path_buf(),
                field: "replicas".into(),
                message: format!(
                    "no Deployment, ReplicationController, ReplicaSet or StatefulSet named {:?}",
                    spec.name
                ),
            });
        }
    }
    Ok(())
}

/// Split an image reference into (name, tag, digest) like kustomize does:
/// the tag colon is the first `:` after the first `/`.
pub(crate) fn split_image(image: &str) -> (String, String, String) {
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, d.to_string()),
        None => (image, String::new()),
    };
    let slash = rest.find('/').unwrap_or(0);
    match rest[slash..].find(':') {
        Some(i) => (
            rest[..slash + i].to_string(),
            rest[slash + i + 1..].to_string(),
            digest,
        ),
        None => (rest.to_string(), String::new(), digest),
    }
}

/// kustomize's `IsImageMatched`: `name` (a regular expression, as in
/// kustomize; `*` matches every image) followed by an optional tag and digest.
fn image_matches(value: &str, name: &str) -> bool {
    if name == "*" {
        return true;
    }
    let pattern =
        format!("^(?:{name})(@sha256)?(:[a-zA-Z0-9_.{{}}-]*)?(@sha256:[a-zA-Z0-9_.{{}}-]*)?$");
    match regex::Regex::new(&pattern) {
        Ok(re) => re.is_match(value),
        Err(_) => split_image(value).0 == name,
    }
}

fn update_image(value: &str, spec: &ImageSpec) -> Option<String> {
    if !image_matches(value, &spec.name) {
        return None;
    }
    let (mut name, mut tag, mut digest) = split_image(value);
    if let Some(n) = spec.new_name.as_deref().filter(|n| !n.is_empty()) {
        name = n.to_string();
    }
    let new_tag = spec.new_tag.as_deref().filter(|t| !t.is_empty());
    let new_digest = spec.digest.as_deref().filter(|d| !d.is_empty());
    match (new_tag, new_digest) {
        (Some(t), Some(d)) => {
            tag = t.to_string();
            digest = d.to_string();
        }
        (Some(t), None) => {
            tag = t.to_string();
            digest.clear();
        }
        (None, Some(d)) => {
            tag.clear();
            digest = d.to_string();
        }
        (None, None) => {}
    }
    if !tag.is_empty() {
        name.push(':');
        name.push_str(&tag);
    }
    if !digest.is_empty() {
        name.push('@');
        name.push_str(&digest);
    }
    Some(name)
}

/// Every `containers`/`initContainers` list anywhere in the object (what
/// kustomize's legacy image filter walks), plus image volumes.
fn walk_images(v: &mut Value, spec: &ImageSpec) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if k == "containers" || k == "initContainers" {
                    if let Value::Array(items) = child {
                        for c in items.iter_mut() {
                            if let Some(Value::String(img)) = c.get_mut("image") {
                                if let Some(new) = update_image(img, spec) {
                                    *img = new;
                                }
                            }
                        }
                        continue;
                    }
                } else if k == "volumes" {
                    if let Value::Array(items) = child {
                        for vol in items.iter_mut() {
                            if let Some(Value::String(img)) =
                                vol.get_mut("image").and_then(|i| i.get_mut("reference"))
                            {
                                if let Some(new) = update_image(img, spec) {
                                    *img = new;
                                }
                            }
                        }
                    }
                }
                walk_images(child, spec);
            }
        }
        Value::Array(items) => {
            for i in items {
                walk_images(i, spec);
            }
        }
        _ => {}
    }
}

/// `images:`.
pub(crate) fn images(
    kfile: &Path,
    specs: &[ImageSpec],
    rm: &mut [Resource],
) -> Result<(), RenderError> {
    for spec in specs {
        if spec.name.is_empty() {
            return Err(RenderError::InvalidField {
                file: kfile.to_path_buf(),
                field: "images".into(),
                message: "an entry has no name".into(),
            });
        }
        for r in rm.iter_mut() {
            walk_images(&mut r.obj, spec);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_split() {
        assert_eq!(split_image("nginx"), ("nginx".into(), "".into(), "".into()));
        assert_eq!(
            split_image("reg:5000/a/nginx:1.2@sha256:abc"),
            ("reg:5000/a/nginx".into(), "1.2".into(), "sha256:abc".into())
        );
        assert_eq!(
            split_image("nginx:1.2"),
            ("nginx".into(), "1.2".into(), "".into())
        );
    }
}
