//! Name-reference fixing: after the top-level build, fields that name another
//! object (a ConfigMap in a pod's volumes, a ServiceAccount in a
//! RoleBinding's subjects, ...) are rewritten to that object's final name
//! (prefix, suffix, content hash). The table is kustomize v5's
//! `nameReference` configuration (`api/konfig/builtinpluginconsts/namereference.go`),
//! and candidate selection follows its `nameref` filter: the referral must
//! once have had the referenced name, be of the right kind, and live in the
//! referrer's namespace (cluster-scoped objects and ServiceAccounts excepted);
//! ties are broken by equal prefixes/suffixes.
//!
//! Deliberate deviations: `subjects` entries are only rewritten when their
//! `kind` is ServiceAccount; IngressClass references are not rewritten
//! (kustomize's table names a group that can never match, so it doesn't either).

use std::collections::HashMap;

use serde_json::Value;

use super::fieldpath::{parse_path, visit, Seg};
use super::resource::{ResId, Resource};
use crate::error::RenderError;

/// A referrer field: which kinds hold it and where.
struct Referrer {
    group: Option<&'static str>,
    kind: &'static str,
    path: String,
    segs: Vec<Seg>,
}

struct Rule {
    /// The referenced kind (and group, empty = core).
    kind: &'static str,
    group: &'static str,
    referrers: Vec<Referrer>,
}

fn r(kind: &'static str, path: &str) -> Referrer {
    Referrer {
        group: None,
        kind,
        path: path.to_string(),
        segs: parse_path(path),
    }
}

fn rg(group: &'static str, kind: &'static str, path: &str) -> Referrer {
    Referrer {
        group: Some(group),
        kind,
        path: path.to_string(),
        segs: parse_path(path),
    }
}

/// Pod spec locations per workload kind.
fn pod_specs(kinds: &[&'static str]) -> Vec<(&'static str, &'static str)> {
    kinds
        .iter()
        .map(|k| {
            (
                *k,
                match *k {
                    "Pod" => "spec",
                    "CronJob" => "spec/jobTemplate/spec/template/spec",
                    _ => "spec/template/spec",
                },
            )
        })
        .collect()
}

const CM_SECRET_WORKLOADS: &[&str] = &[
    "Pod",
    "Deployment",
    "ReplicaSet",
    "DaemonSet",
    "StatefulSet",
    "Job",
    "CronJob",
];
const SA_WORKLOADS: &[&str] = &[
    "Pod",
    "StatefulSet",
    "Deployment",
    "ReplicationController",
    "CronJob",
    "Job",
    "DaemonSet",
];

fn rules() -> Vec<Rule> {
    let mut out = Vec::new();
    for kind in [
        "Deployment",
        "ReplicationController",
        "ReplicaSet",
        "StatefulSet",
    ] {
        out.push(Rule {
            kind,
            group: if kind == "ReplicationController" {
                ""
            } else {
                "apps"
            },
            referrers: vec![r("HorizontalPodAutoscaler", "spec/scaleTargetRef/name")],
        });
    }
    let mut cm = Vec::new();
    for (kind, p) in pod_specs(CM_SECRET_WORKLOADS) {
        for sub in [
            "volumes/configMap/name",
            "containers/env/valueFrom/configMapKeyRef/name",
            "initContainers/env/valueFrom/configMapKeyRef/name",
            "containers/envFrom/configMapRef/name",
            "initContainers/envFrom/configMapRef/name",
            "volumes/projected/sources/configMap/name",
        ] {
            cm.push(r(kind, &format!("{p}/{sub}")));
        }
    }
    cm.push(r("Node", "spec/configSource/configMap"));
    cm.push(r("Role", "rules/resourceNames"));
    cm.push(r("ClusterRole", "rules/resourceNames"));
    cm.push(r(
        "Ingress",
        "metadata/annotations/nginx.ingress.kubernetes.io\\/fastcgi-params-configmap",
    ));
    cm.push(rg(
        "serving.knative.dev",
        "Service",
        "spec/template/spec/containers/env/valueFrom/configMapKeyRef/name",
    ));
    cm.push(rg(
        "serving.knative.dev",
        "Service",
        "spec/template/spec/containers/envFrom/configMapRef/name",
    ));
    out.push(Rule {
        kind: "ConfigMap",
        group: "",
        referrers: cm,
    });

    let mut secret = Vec::new();
    for (kind, p) in pod_specs(CM_SECRET_WORKLOADS) {
        for sub in [
            "volumes/secret/secretName",
            "containers/env/valueFrom/secretKeyRef/name",
            "initContainers/env/valueFrom/secretKeyRef/name",
            "containers/envFrom/secretRef/name",
            "initContainers/envFrom/secretRef/name",
            "imagePullSecrets/name",
            "volumes/projected/sources/secret/name",
        ] {
            secret.push(r(kind, &format!("{p}/{sub}")));
        }
    }
    for p in [
        "spec/tls/secretName",
        "metadata/annotations/ingress.kubernetes.io\\/auth-secret",
        "metadata/annotations/nginx.ingress.kubernetes.io\\/auth-secret",
        "metadata/annotations/nginx.ingress.kubernetes.io\\/auth-tls-secret",
    ] {
        secret.push(r("Ingress", p));
    }
    secret.push(r("ServiceAccount", "imagePullSecrets/name"));
    for p in [
        "parameters/secretName",
        "parameters/adminSecretName",
        "parameters/userSecretName",
        "parameters/secretRef",
    ] {
        secret.push(r("StorageClass", p));
    }
    secret.push(r("Role", "rules/resourceNames"));
    secret.push(r("ClusterRole", "rules/resourceNames"));
    secret.push(rg(
        "serving.knative.dev",
        "Service",
        "spec/template/spec/containers/env/valueFrom/secretKeyRef/name",
    ));
    secret.push(r("PersistentVolume", "spec/azureFile/secretName"));
    out.push(Rule {
        kind: "Secret",
        group: "",
        referrers: secret,
    });

    out.push(Rule {
        kind: "Service",
        group: "",
        referrers: vec![
            rg("apps", "StatefulSet", "spec/serviceName"),
            r("Ingress", "spec/rules/http/paths/backend/serviceName"),
            r("Ingress", "spec/backend/serviceName"),
            r("Ingress", "spec/rules/http/paths/backend/service/name"),
            r("Ingress", "spec/defaultBackend/service/name"),
            rg("apiregistration.k8s.io", "APIService", "spec/service/name"),
            rg(
                "admissionregistration.k8s.io",
                "ValidatingWebhookConfiguration",
                "webhooks/clientConfig/service",
            ),
            rg(
                "admissionregistration.k8s.io",
                "MutatingWebhookConfiguration",
                "webhooks/clientConfig/service",
            ),
        ],
    });
    out.push(Rule {
        kind: "Role",
        group: "rbac.authorization.k8s.io",
        referrers: vec![rg(
            "rbac.authorization.k8s.io",
            "RoleBinding",
            "roleRef/name",
        )],
    });
    out.push(Rule {
        kind: "ClusterRole",
        group: "rbac.authorization.k8s.io",
        referrers: vec![
            rg("rbac.authorization.k8s.io", "RoleBinding", "roleRef/name"),
            rg(
                "rbac.authorization.k8s.io",
                "ClusterRoleBinding",
                "roleRef/name",
            ),
        ],
    });
    let mut sa = vec![
        rg("rbac.authorization.k8s.io", "RoleBinding", "subjects"),
        rg(
            "rbac.authorization.k8s.io",
            "ClusterRoleBinding",
            "subjects",
        ),
    ];
    let mut pvc = Vec::new();
    let mut prio = Vec::new();
    for (kind, p) in pod_specs(SA_WORKLOADS) {
        sa.push(r(kind, &format!("{p}/serviceAccountName")));
        pvc.push(r(
            kind,
            &format!("{p}/volumes/persistentVolumeClaim/claimName"),
        ));
        prio.push(r(kind, &format!("{p}/priorityClassName")));
    }
    out.push(Rule {
        kind: "ServiceAccount",
        group: "",
        referrers: sa,
    });
    out.push(Rule {
        kind: "PersistentVolumeClaim",
        group: "",
        referrers: pvc,
    });
    out.push(Rule {
        kind: "PersistentVolume",
        group: "",
        referrers: vec![
            r("PersistentVolumeClaim", "spec/volumeName"),
            r("ClusterRole", "rules/resourceNames"),
        ],
    });
    out.push(Rule {
        kind: "StorageClass",
        group: "storage.k8s.io",
        referrers: vec![
            r("PersistentVolume", "spec/storageClassName"),
            r("PersistentVolumeClaim", "spec/storageClassName"),
            r(
                "StatefulSet",
                "spec/volumeClaimTemplates/spec/storageClassName",
            ),
        ],
    });
    out.push(Rule {
        kind: "PriorityClass",
        group: "scheduling.k8s.io",
        referrers: prio,
    });
    out
}

/// What candidate selection needs to know about each resource.
struct Cand {
    cur: ResId,
    prev: Vec<ResId>,
    prefixes: Vec<String>,
    suffixes: Vec<String>,
}

struct Index {
    cands: Vec<Cand>,
    /// previous name -> candidates that once had it
    by_prev_name: HashMap<String, Vec<usize>>,
}

impl Index {
    fn new(rm: &[Resource]) -> Index {
        let mut by_prev_name: HashMap<String, Vec<usize>> = HashMap::new();
        let cands: Vec<Cand> = rm
            .iter()
            .enumerate()
            .map(|(i, r)| {
                for p in &r.prev {
                    let v = by_prev_name.entry(p.name.clone()).or_default();
                    if v.last() != Some(&i) {
                        v.push(i);
                    }
                }
                Cand {
                    cur: r.id(),
                    prev: r.prev.clone(),
                    prefixes: r.prefixes.clone(),
                    suffixes: r.suffixes.clone(),
                }
            })
            .collect();
        Index {
            cands,
            by_prev_name,
        }
    }
}

struct Ctx<'a> {
    idx: &'a Index,
    rule: &'a Rule,
    referrer: usize,
    path: &'a str,
    /// (group, kind) from roleRef, when the field is roleRef/name.
    role_ref: Option<(String, String)>,
}

impl Ctx<'_> {
    fn gvk_ok(&self, id: &ResId) -> bool {
        id.kind == self.rule.kind && id.group == self.rule.group
    }

    /// Candidates that once had `name`, filtered like kustomize's selectReferral.
    fn select(&self, name: &str, pool: Option<&[usize]>) -> Result<Option<usize>, String> {
        let Some(by_name) = self.idx.by_prev_name.get(name) else {
            return Ok(None);
        };
        let referrer = &self.idx.cands[self.referrer].cur;
        let mut c: Vec<usize> = by_name
            .iter()
            .copied()
            .filter(|i| pool.is_none_or(|p| p.contains(i)))
            .filter(|i| {
                let cand = &self.idx.cands[*i];
                cand.prev.iter().any(|p| p.name == name)
                    && cand.prev.iter().any(|p| self.gvk_ok(p))
                    && self.role_ref.as_ref().is_none_or(|(g, k)| {
                        cand.prev.iter().any(|p| &p.group == g && &p.kind == k)
                    })
                    && (referrer.is_cluster_scoped()
                        || cand.cur.is_cluster_scoped()
                        || cand.cur.kind == "ServiceAccount"
                        || cand.cur.ns_equals(referrer))
            })
            .collect();
        if c.len() == 1 {
            return Ok(Some(c[0]));
        }
        let me = &self.idx.cands[self.referrer];
        c.retain(|i| {
            let cand = &self.idx.cands[*i];
            cand.prefixes == me.prefixes && cand.suffixes == me.suffixes
        });
        match c.len() {
            0 => Ok(None),
            1 => Ok(Some(c[0])),
            _ => {
                let first = &self.idx.cands[c[0]].cur;
                if c.iter().all(|i| {
                    let x = &self.idx.cands[*i].cur;
                    x.name == first.name && x.namespace == first.namespace
                }) {
                    Ok(Some(c[0]))
                } else {
                    Err(format!(
                        "{name:?} could refer to several objects: {}",
                        c.iter()
                            .map(|i| self.idx.cands[*i].cur.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
            }
        }
    }

    fn set_scalar(&self, node: &mut Value) -> Result<(), String> {
        match node {
            Value::String(s) => {
                if let Some(i) = self.select(s, None)? {
                    let new = &self.idx.cands[i].cur.name;
                    if new != s {
                        *s = new.clone();
                    }
                }
                Ok(())
            }
            Value::Array(items) => {
                for item in items.iter_mut() {
                    match item {
                        Value::Object(_) => self.set_mapping(item)?,
                        Value::String(_) => self.set_scalar(item)?,
                        _ => {}
                    }
                }
                Ok(())
            }
            Value::Object(_) => self.set_mapping(node),
            _ => Ok(()),
        }
    }

    /// A map with `name` (and maybe `namespace`): subjects, webhook services.
    fn set_mapping(&self, node: &mut Value) -> Result<(), String> {
        let Value::Object(m) = node else {
            return Ok(());
        };
        if self.path == "subjects"
            && m.get("kind").and_then(Value::as_str) != Some("ServiceAccount")
        {
            return Ok(());
        }
        let Some(old) = m.get("name").and_then(Value::as_str).map(str::to_string) else {
            return Ok(());
        };
        let pool: Option<Vec<usize>> = match m.get("namespace").and_then(Value::as_str) {
            None => None,
            Some(ns) => {
                let eff = |id: &ResId| id.effective_namespace().to_string();
                let orig: Vec<usize> = (0..self.idx.cands.len())
                    .filter(|i| {
                        let c = &self.idx.cands[*i];
                        let o = c.prev.first().unwrap_or(&c.cur);
                        !o.is_cluster_scoped() && eff(o) == ns
                    })
                    .collect();
                if !orig.is_empty() {
                    Some(orig)
                } else {
                    Some(
                        (0..self.idx.cands.len())
                            .filter(|i| {
                                let c = &self.idx.cands[*i].cur;
                                !c.is_cluster_scoped() && eff(c) == ns
                            })
                            .collect(),
                    )
                }
            }
        };
        let Some(i) = self.select(&old, pool.as_deref())? else {
            return Ok(());
        };
        let target = &self.idx.cands[i].cur;
        if target.name == old && target.namespace.is_empty() {
            return Ok(());
        }
        m.insert("name".into(), Value::String(target.name.clone()));
        if !target.namespace.is_empty() {
            m.insert("namespace".into(), Value::String(target.namespace.clone()));
        }
        Ok(())
    }
}

/// Rewrite every name reference to its referral's final name.
pub(crate) fn fix_references(rm: &mut [Resource]) -> Result<(), RenderError> {
    // Nothing was renamed: nothing to do.
    if rm.iter().all(|r| r.prev.is_empty()) {
        return Ok(());
    }
    let rules = rules();
    // referrer kind -> (rule, referrer) pairs, in table order
    let mut by_kind: HashMap<&str, Vec<(&Rule, &Referrer)>> = HashMap::new();
    for rule in &rules {
        for referrer in &rule.referrers {
            by_kind
                .entry(referrer.kind)
                .or_default()
                .push((rule, referrer));
        }
    }
    let idx = Index::new(rm);
    for (ri, res) in rm.iter_mut().enumerate() {
        let id = idx.cands[ri].cur.clone();
        let Some(pairs) = by_kind.get(id.kind.as_str()) else {
            continue;
        };
        for (rule, referrer) in pairs {
            {
                if referrer.group.is_some_and(|g| g != id.group) {
                    continue;
                }
                let role_ref = if referrer.path.ends_with("roleRef/name") {
                    let rr = res.obj.get("roleRef");
                    match (
                        rr.and_then(|r| r.get("apiGroup")).and_then(Value::as_str),
                        rr.and_then(|r| r.get("kind")).and_then(Value::as_str),
                    ) {
                        (Some(g), Some(k)) => Some((g.to_string(), k.to_string())),
                        _ => None,
                    }
                } else {
                    None
                };
                let ctx = Ctx {
                    idx: &idx,
                    rule,
                    referrer: ri,
                    path: &referrer.path,
                    role_ref,
                };
                visit(&mut res.obj, &referrer.segs, None, &mut |node| {
                    ctx.set_scalar(node)
                })
                .map_err(|message| RenderError::NameReference {
                    object: id.to_string(),
                    field: referrer.path.clone(),
                    message,
                })?;
            }
        }
    }
    Ok(())
}
