//! Strategic merge patches (`patches` with an object patch, and
//! `patchesStrategicMerge`).
//!
//! Maps merge key by key (`null` deletes a key). Lists merge by their merge
//! key where Kubernetes defines one for a built-in kind, and are replaced
//! otherwise (custom resources: always replaced, as kustomize does). Merged
//! lists come out as kustomize prints them: the patch's elements first, in
//! patch order, then the target's remaining elements.
//!
//! Covered merge keys (see [`list_strategy`]):
//! * Pod spec (Pod; the pod template of Deployment, ReplicaSet, DaemonSet,
//!   StatefulSet, Job, ReplicationController, CronJob): `containers`,
//!   `initContainers`, `ephemeralContainers` by `name`; `volumes`,
//!   `imagePullSecrets`, `resourceClaims`, `schedulingGates` by `name`;
//!   `hostAliases` by `ip`; `topologySpreadConstraints` by `topologyKey`.
//! * Containers: `ports` by `containerPort`, `env` by `name`, `volumeMounts`
//!   by `mountPath`, `volumeDevices` by `devicePath`.
//! * Service: `spec.ports` by `port`. ServiceAccount: `secrets` by `name`.
//! * Webhook configurations: `webhooks` by `name`.
//! * Any object's metadata: `finalizers` (set union), `ownerReferences` by `uid`.
//!
//! Directives: `$patch: delete` (list element by key, a map, or the whole
//! object), `$patch: replace` (a map, or a list via an element),
//! `$deleteFromPrimitiveList/<field>`, `$retainKeys`; `$setElementOrder/<field>`
//! is accepted and ignored.

use std::path::Path;

use serde_json::{Map, Value};

use super::resource::{ResId, Resource};
use super::selector::Compiled;
use super::types::{Kustomization, PatchOptions, PatchSpec};
use super::Loader;
use crate::error::RenderError;

/// Where in an object we are, as far as merge keys care.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Ty {
    Root,
    Meta,
    WorkloadSpec,
    CronSpec,
    JobTemplate,
    PodTemplate,
    PodSpec,
    Container,
    ServiceSpec,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Strategy {
    MergeBy(&'static str, Ty),
    /// Kubernetes list-map with several keys (`port`+`protocol`): see [`merge_multi_key`].
    MergeByKeys(&'static [&'static str], Ty),
    Union,
    Replace,
}

const WORKLOADS: &[&str] = &[
    "Deployment",
    "ReplicaSet",
    "DaemonSet",
    "StatefulSet",
    "Job",
    "ReplicationController",
];

fn child_ty(kind: &str, ty: Ty, field: &str) -> Ty {
    match (ty, field) {
        (_, "metadata") if matches!(ty, Ty::Root | Ty::PodTemplate | Ty::JobTemplate) => Ty::Meta,
        (Ty::Root, "spec") if WORKLOADS.contains(&kind) => Ty::WorkloadSpec,
        (Ty::Root, "spec") if kind == "CronJob" => Ty::CronSpec,
        (Ty::Root, "spec") if kind == "Pod" => Ty::PodSpec,
        (Ty::Root, "spec") if kind == "Service" => Ty::ServiceSpec,
        (Ty::Root, "template") if kind == "PodTemplate" => Ty::PodTemplate,
        (Ty::CronSpec, "jobTemplate") => Ty::JobTemplate,
        (Ty::JobTemplate, "spec") => Ty::WorkloadSpec,
        (Ty::WorkloadSpec, "template") => Ty::PodTemplate,
        (Ty::PodTemplate, "spec") => Ty::PodSpec,
        _ => Ty::Other,
    }
}

/// How the list at `field` of a `ty` node merges.
fn list_strategy(kind: &str, ty: Ty, field: &str) -> Strategy {
    use Strategy::*;
    match (ty, field) {
        (Ty::PodSpec, "containers" | "initContainers" | "ephemeralContainers") => {
            MergeBy("name", Ty::Container)
        }
        (Ty::PodSpec, "volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates") => {
            MergeBy("name", Ty::Other)
        }
        (Ty::PodSpec, "hostAliases") => MergeBy("ip", Ty::Other),
        (Ty::PodSpec, "topologySpreadConstraints") => MergeBy("topologyKey", Ty::Other),
        (Ty::Container, "ports") => MergeByKeys(&["containerPort", "protocol"], Ty::Other),
        (Ty::Container, "env") => MergeBy("name", Ty::Other),
        (Ty::Container, "volumeMounts") => MergeBy("mountPath", Ty::Other),
        (Ty::Container, "volumeDevices") => MergeBy("devicePath", Ty::Other),
        (Ty::ServiceSpec, "ports") => MergeByKeys(&["port", "protocol"], Ty::Other),
        (Ty::Meta, "finalizers") => Union,
        (Ty::Meta, "ownerReferences") => MergeBy("uid", Ty::Other),
        (Ty::Root, "secrets") if kind == "ServiceAccount" => MergeBy("name", Ty::Other),
        (Ty::Root, "webhooks")
            if kind == "MutatingWebhookConfiguration"
                || kind == "ValidatingWebhookConfiguration" =>
        {
            MergeBy("name", Ty::Other)
        }
        _ => Replace,
    }
}

/// Outcome of merging a map: keep it, or the patch deleted it.
enum Merged {
    Keep,
    Delete,
}

fn directive(v: &Value) -> Option<&str> {
    v.get("$patch").and_then(Value::as_str)
}

/// Remove SMP directives from a value that is inserted as-is.
fn clean(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), clean(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|e| !matches!(directive(e), Some("delete") | Some("replace")))
                .map(clean)
                .collect(),
        ),
        o => o.clone(),
    }
}

/// Merge `patch` into `dst` (an object of kind `kind`). Returns false when the
/// patch deletes the whole object (`$patch: delete` at the top).
pub(crate) fn merge_object(dst: &mut Value, patch: &Value, kind: &str) -> Result<bool, String> {
    match merge_value(dst, patch, kind, Ty::Root)? {
        Merged::Keep => Ok(true),
        Merged::Delete => Ok(false),
    }
}

fn merge_value(dst: &mut Value, patch: &Value, kind: &str, ty: Ty) -> Result<Merged, String> {
    let Value::Object(pm) = patch else {
        *dst = patch.clone();
        return Ok(Merged::Keep);
    };
    match directive(patch) {
        Some("delete") => return Ok(Merged::Delete),
        Some("replace") => {
            *dst = clean(patch);
            return Ok(Merged::Keep);
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown directive $patch: {other}")),
    }
    if !dst.is_object() {
        *dst = Value::Object(Map::new());
    }
    let dm = dst.as_object_mut().expect("made a mapping above");
    for (k, pv) in pm {
        if k == "$patch" || k.starts_with("$setElementOrder/") || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(del)) = (dm.get_mut(field), pv) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if pv.is_null() {
            dm.remove(k);
            continue;
        }
        match pv {
            Value::Object(_) => {
                let cty = child_ty(kind, ty, k);
                let existing = dm.entry(k.clone()).or_insert(Value::Null);
                if !existing.is_object() {
                    if directive(pv) == Some("delete") {
                        dm.remove(k);
                        continue;
                    }
                    *existing = Value::Object(Map::new());
                }
                if let Merged::Delete = merge_value(existing, pv, kind, cty)? {
                    dm.remove(k);
                }
            }
            Value::Array(pl) => {
                let strategy = list_strategy(kind, ty, k);
                match dm.get_mut(k) {
                    Some(Value::Array(dl)) => {
                        let merged = merge_list(dl, pl, strategy, kind)?;
                        *dl = merged;
                    }
                    _ => {
                        dm.insert(k.clone(), clean(pv));
                    }
                }
            }
            scalar => {
                dm.insert(k.clone(), scalar.clone());
            }
        }
    }
    if let Some(Value::Array(keep)) = pm.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        dm.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(Merged::Keep)
}

fn merge_list(
    dst: &[Value],
    patch: &[Value],
    strategy: Strategy,
    kind: &str,
) -> Result<Vec<Value>, String> {
    if patch.iter().any(|e| directive(e) == Some("replace")) {
        return Ok(patch
            .iter()
            .filter(|e| directive(e) != Some("replace"))
            .map(clean)
            .collect());
    }
    match strategy {
        Strategy::Replace => Ok(patch.iter().map(clean).collect()),
        Strategy::Union => {
            let mut out: Vec<Value> = Vec::new();
            for p in patch {
                if !out.contains(p) {
                    out.push(p.clone());
                }
            }
            for d in dst {
                if !out.contains(d) {
                    out.push(d.clone());
                }
            }
            Ok(out)
        }
        Strategy::MergeByKeys(keys, elem_ty) => merge_multi_key(dst, patch, keys, elem_ty, kind),
        Strategy::MergeBy(key, elem_ty) => {
            let mut used = vec![false; dst.len()];
            let mut out = Vec::new();
            for p in patch {
                let Some(kv) = p.get(key).filter(|_| p.is_object()) else {
                    // No merge key: cannot be matched, keep as a new element.
                    out.push(clean(p));
                    continue;
                };
                let pos = dst
                    .iter()
                    .enumerate()
                    .position(|(i, d)| !used[i] && d.get(key) == Some(kv));
                if directive(p) == Some("delete") {
                    // Delete every target element with this key.
                    for (i, d) in dst.iter().enumerate() {
                        if d.get(key) == Some(kv) {
                            used[i] = true;
                        }
                    }
                    continue;
                }
                match pos {
                    Some(i) => {
                        used[i] = true;
                        let mut merged = dst[i].clone();
                        if let Merged::Keep = merge_value(&mut merged, p, kind, elem_ty)? {
                            out.push(merged);
                        }
                    }
                    None => out.push(clean(p)),
                }
            }
            for (i, d) in dst.iter().enumerate() {
                if !used[i] {
                    out.push(d.clone());
                }
            }
            Ok(out)
        }
    }
}

fn key_tuple(v: &Value, keys: &[&str]) -> Vec<String> {
    keys.iter()
        .map(|k| match v.get(*k) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(other) if !other.is_null() => other.to_string(),
            _ => String::new(),
        })
        .collect()
}

/// Lists keyed by several fields (container and Service `ports`, keyed by
/// port and protocol), merged the way kustomize v5 does it:
/// * a patch element whose whole key tuple (a missing protocol counts as
///   empty) equals a target element's is merged into it, in place;
///   `$patch: delete` removes it;
/// * a patch element that matches a target element only on the keys it
///   gives (say `port: 80` against `port: 80, protocol: TCP`) has no effect;
/// * any other patch element is new; new elements come first, in patch
///   order, followed by the target's elements in their order.
fn merge_multi_key(
    dst: &[Value],
    patch: &[Value],
    keys: &[&str],
    elem_ty: Ty,
    kind: &str,
) -> Result<Vec<Value>, String> {
    let mut kept: Vec<Option<Value>> = dst.iter().cloned().map(Some).collect();
    let mut new = Vec::new();
    for p in patch {
        if !p.is_object() {
            new.push(clean(p));
            continue;
        }
        let full = key_tuple(p, keys);
        let given: Vec<usize> = (0..keys.len()).filter(|i| !full[*i].is_empty()).collect();
        let exact = dst.iter().position(|d| key_tuple(d, keys) == full);
        let partial = dst.iter().any(|d| {
            let t = key_tuple(d, keys);
            !given.is_empty() && given.iter().all(|i| t[*i] == full[*i])
        });
        match (exact, directive(p)) {
            (Some(i), Some("delete")) => kept[i] = None,
            (None, Some("delete")) => {}
            (Some(i), _) => {
                if let Some(slot) = kept[i].as_mut() {
                    if let Merged::Delete = merge_value(slot, p, kind, elem_ty)? {
                        kept[i] = None;
                    }
                }
            }
            (None, _) if partial => {}
            (None, _) => new.push(clean(p)),
        }
    }
    new.extend(kept.into_iter().flatten());
    Ok(new)
}

/// Apply a strategic merge patch to one resource, keeping its name, kind and
/// namespace unless the options allow a change. Returns false when the patch
/// deleted the resource.
pub(crate) fn apply_to(
    r: &mut Resource,
    patch: &Value,
    opts: &PatchOptions,
) -> Result<bool, String> {
    let (name, kind, ns) = (
        r.name().to_string(),
        r.kind().to_string(),
        r.namespace().to_string(),
    );
    let before = r.id();
    let mut obj = r.obj.clone();
    if !merge_object(&mut obj, patch, &kind)? {
        return Ok(false);
    }
    let m = obj
        .as_object_mut()
        .ok_or("patched object is not a mapping")?;
    if !opts.allow_kind_change {
        m.insert("kind".into(), Value::String(kind));
    }
    r.obj = obj;
    if !opts.allow_name_change {
        r.metadata_mut().insert("name".into(), Value::String(name));
    }
    if ns.is_empty() {
        r.metadata_mut().remove("namespace");
    } else {
        r.metadata_mut()
            .insert("namespace".into(), Value::String(ns));
    }
    if r.id() != before && r.prev.last() != Some(&before) {
        r.prev.push(before);
    }
    Ok(true)
}

fn patch_err(kfile: &Path, patch: &str, message: String) -> RenderError {
    RenderError::Patch {
        file: kfile.to_path_buf(),
        patch: patch.to_string(),
        message,
    }
}

/// A patch's text: from `path` (inside the kustomization dir) or inline.
pub(crate) fn patch_text(
    l: &Loader<'_>,
    dir: &Path,
    kfile: &Path,
    spec_path: Option<&str>,
    inline: Option<&str>,
    field: &'static str,
) -> Result<(String, String, std::path::PathBuf), RenderError> {
    match (spec_path, inline) {
        (Some(p), None) => {
            let path = l.file_in(dir, p, kfile, field)?;
            Ok((l.read(&path)?, p.to_string(), path))
        }
        (None, Some(text)) => Ok((text.to_string(), "(inline)".into(), kfile.to_path_buf())),
        (Some(_), Some(_)) => Err(patch_err(
            kfile,
            "(entry)",
            "give either `path` or `patch`, not both".into(),
        )),
        (None, None) => Err(patch_err(
            kfile,
            "(entry)",
            "needs `path` or `patch`".into(),
        )),
    }
}

/// Apply an untargeted SMP document to the one resource it names.
fn apply_by_id(
    kfile: &Path,
    label: &str,
    rm: &mut Vec<Resource>,
    patch: &Value,
    opts: &PatchOptions,
) -> Result<(), RenderError> {
    let pid = ResId::of(patch);
    if pid.kind.is_empty() || pid.name.is_empty() {
        return Err(patch_err(
            kfile,
            label,
            "a strategic merge patch without `target` needs apiVersion, kind and metadata.name"
                .into(),
        ));
    }
    let hits: Vec<usize> = rm
        .iter()
        .enumerate()
        .filter(|(_, r)| r.any_id(|id| id.equals(&pid)))
        .map(|(i, _)| i)
        .collect();
    match hits.as_slice() {
        [] => Err(patch_err(
            kfile,
            label,
            format!("no object matches {pid} (the patch's apiVersion/kind/name/namespace)"),
        )),
        [i] => {
            let keep =
                apply_to(&mut rm[*i], patch, opts).map_err(|m| patch_err(kfile, label, m))?;
            if !keep {
                rm.remove(*i);
            }
            Ok(())
        }
        many => Err(patch_err(
            kfile,
            label,
            format!(
                "{} objects match {pid}; add a namespace or use `target`",
                many.len()
            ),
        )),
    }
}

/// Parse patch text as a JSON6902 operation list, if it is one.
pub(crate) fn as_json6902(text: &str, path: &Path) -> Option<Vec<Value>> {
    let docs = crate::yaml::parse_stream(text, path).ok()?;
    match docs.as_slice() {
        [Value::Array(ops)] => Some(ops.clone()),
        _ => None,
    }
}

/// `patches:` entries (strategic merge or JSON6902, with optional target).
pub(crate) fn run_patches(
    l: &Loader<'_>,
    dir: &Path,
    kfile: &Path,
    k: &Kustomization,
    rm: &mut Vec<Resource>,
) -> Result<(), RenderError> {
    for spec in &k.patches {
        apply_patch_spec(l, dir, kfile, spec, rm)?;
    }
    Ok(())
}

fn apply_patch_spec(
    l: &Loader<'_>,
    dir: &Path,
    kfile: &Path,
    spec: &PatchSpec,
    rm: &mut Vec<Resource>,
) -> Result<(), RenderError> {
    let (text, label, src) = patch_text(
        l,
        dir,
        kfile,
        spec.path.as_deref(),
        spec.patch.as_deref(),
        "patches",
    )?;
    let opts = spec.options.clone().unwrap_or_default();
    if let Some(ops) = as_json6902(&text, &src) {
        let Some(target) = &spec.target else {
            return Err(patch_err(
                kfile,
                &label,
                "a JSON6902 patch needs a `target`".into(),
            ));
        };
        let sel = Compiled::new(target).map_err(|m| patch_err(kfile, &label, m))?;
        for r in rm.iter_mut().filter(|r| sel.matches(r)) {
            super::json6902::apply_ops(r, &ops).map_err(|m| patch_err(kfile, &label, m))?;
        }
        return Ok(());
    }
    let docs = crate::yaml::parse_stream(&text, &src)?;
    if docs.is_empty() {
        return Err(patch_err(kfile, &label, "the patch is empty".into()));
    }
    for doc in &docs {
        if !doc.is_object() {
            return Err(patch_err(
                kfile,
                &label,
                "neither a strategic merge patch (a mapping) nor a JSON6902 patch (a list of operations)".into(),
            ));
        }
    }
    match &spec.target {
        None => {
            for doc in &docs {
                apply_by_id(kfile, &label, rm, doc, &opts)?;
            }
        }
        Some(target) => {
            let sel = Compiled::new(target).map_err(|m| patch_err(kfile, &label, m))?;
            for doc in &docs {
                let mut i = 0;
                while i < rm.len() {
                    if !sel.matches(&rm[i]) {
                        i += 1;
                        continue;
                    }
                    // The patch applies to each selected object whatever its own
                    // name/kind say.
                    let mut p = doc.clone();
                    let r = &rm[i];
                    if let Some(m) = p.as_object_mut() {
                        m.insert("apiVersion".into(), r.obj["apiVersion"].clone());
                        m.insert("kind".into(), r.obj["kind"].clone());
                        let md = m
                            .entry("metadata")
                            .or_insert_with(|| Value::Object(Map::new()));
                        if let Some(md) = md.as_object_mut() {
                            if !opts.allow_name_change || !md.contains_key("name") {
                                md.insert("name".into(), Value::String(r.name().to_string()));
                            }
                            if r.namespace().is_empty() {
                                md.remove("namespace");
                            } else {
                                md.insert(
                                    "namespace".into(),
                                    Value::String(r.namespace().to_string()),
                                );
                            }
                        }
                    }
                    let keep =
                        apply_to(&mut rm[i], &p, &opts).map_err(|m| patch_err(kfile, &label, m))?;
                    if keep {
                        i += 1;
                    } else {
                        rm.remove(i);
                    }
                }
            }
        }
    }
    Ok(())
}

/// `patchesStrategicMerge:` entries: file paths or inline YAML, no targets.
pub(crate) fn run_patches_strategic_merge(
    l: &Loader<'_>,
    dir: &Path,
    kfile: &Path,
    k: &Kustomization,
    rm: &mut Vec<Resource>,
) -> Result<(), RenderError> {
    for entry in &k.patches_strategic_merge {
        let looks_inline = entry.contains('\n') || entry.contains(": ");
        let (text, label, src) = if looks_inline {
            (entry.clone(), "(inline)".to_string(), kfile.to_path_buf())
        } else {
            let path = l.file_in(dir, entry, kfile, "patchesStrategicMerge")?;
            (l.read(&path)?, entry.clone(), path)
        };
        for doc in crate::yaml::parse_stream(&text, &src)? {
            apply_by_id(kfile, &label, rm, &doc, &PatchOptions::default())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_merge_by_name_patch_first() {
        let mut d = json!({"kind": "Deployment", "spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a", "env": [{"name": "E1", "value": "1"}, {"name": "E2", "value": "2"}]},
            {"name": "c", "image": "c"}
        ]}}}});
        let p = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "b", "image": "b"},
            {"name": "a", "env": [{"name": "E3", "value": "3"}, {"name": "E1", "$patch": "delete"}]},
            {"name": "c", "$patch": "delete"}
        ]}}}});
        assert!(merge_object(&mut d, &p, "Deployment").unwrap());
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"],
            json!([
                {"name": "b", "image": "b"},
                {"name": "a", "image": "a", "env": [{"name": "E3", "value": "3"}, {"name": "E2", "value": "2"}]}
            ])
        );
    }

    #[test]
    fn custom_resource_lists_are_replaced() {
        let mut d = json!({"spec": {"items": [{"name": "a"}]}});
        merge_object(&mut d, &json!({"spec": {"items": [{"name": "b"}]}}), "Foo").unwrap();
        assert_eq!(d, json!({"spec": {"items": [{"name": "b"}]}}));
    }

    #[test]
    fn top_level_delete() {
        let mut d = json!({"kind": "ConfigMap"});
        assert!(!merge_object(&mut d, &json!({"$patch": "delete"}), "ConfigMap").unwrap());
    }
}
