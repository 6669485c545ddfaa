//! The apply engine: one ApplySet, applied stage by stage.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PropagationPolicy,
};
use kube::core::{ApiResource, GroupVersionKind, ObjectMeta};
use kube::discovery::{self, Scope};
use kube::Client;
use serde_json::Value;

use crate::applyset::{self, Entry, Inventory, ParentRef, ParentState};
use crate::health::{self, Health};
use crate::plan::{plan, Planned};
use crate::{ApplyError, CONCURRENCY, FIELD_MANAGER};

/// Objects per page when listing members.
const LIST_PAGE: u32 = 250;

/// Per-object opt-in to delete-and-recreate when an immutable field changes
/// (e.g. a Job's template, a Service's clusterIP): set it to `"true"`.
pub const RECREATE_ANNOTATION: &str = "cairn.dev/recreate-on-immutable-change";

/// How one apply behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Take fields over from other declarative (Apply) managers.
    pub force: bool,
    /// Delete members of the set that are no longer rendered.
    pub prune: bool,
    /// Accept an empty set (which prunes everything).
    pub allow_empty: bool,
    /// Server-side dry run: nothing is written.
    pub dry_run: bool,
    /// Collect unified diffs (implies a dry run of every object).
    pub diff: bool,
    /// Wait this long for every member to become healthy.
    pub wait: Option<Duration>,
    pub concurrency: usize,
    /// Recorded on the parent (the commit the set was rendered from).
    pub revision: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            force: false,
            prune: true,
            allow_empty: false,
            dry_run: false,
            diff: false,
            wait: None,
            concurrency: CONCURRENCY,
            revision: None,
        }
    }
}

/// What an apply did, object by object.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Members in the set.
    pub members: usize,
    /// Sent to the API server (created, changed, or drift corrected).
    pub applied: Vec<String>,
    /// Of `applied`: taken back from an imperative edit (`kubectl edit`…).
    pub drift_corrected: Vec<String>,
    /// Deleted and created again (immutable field change, opted in).
    pub recreated: Vec<String>,
    /// Unchanged since the last apply: not sent.
    pub unchanged: usize,
    pub pruned: Vec<String>,
    /// Object → why it could not be applied or pruned.
    pub failed: Vec<(String, String)>,
    /// Object → why it is not healthy (after `wait`).
    pub unhealthy: Vec<(String, String)>,
    /// Unified diffs (with `diff`).
    pub diffs: Vec<String>,
    /// Whether the parent Secret was written.
    pub parent_written: bool,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.unhealthy.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.diffs {
            write!(f, "{d}")?;
        }
        for id in &self.applied {
            let how = if self.drift_corrected.contains(id) {
                "applied (drift corrected)"
            } else {
                "applied"
            };
            writeln!(f, "{id}: {how}")?;
        }
        for id in &self.recreated {
            writeln!(f, "{id}: recreated (immutable field changed)")?;
        }
        for id in &self.pruned {
            writeln!(f, "{id}: pruned")?;
        }
        for (id, why) in &self.failed {
            writeln!(f, "{id}: FAILED: {why}")?;
        }
        for (id, why) in &self.unhealthy {
            writeln!(f, "{id}: UNHEALTHY: {why}")?;
        }
        writeln!(
            f,
            "{} members: {} applied, {} unchanged, {} pruned, {} failed, {} unhealthy",
            self.members,
            self.applied.len(),
            self.unchanged,
            self.pruned.len(),
            self.failed.len(),
            self.unhealthy.len()
        )
    }
}

/// A planned object with its resolved API resource and member key.
#[derive(Clone)]
struct Resolved {
    p: Planned,
    ar: ApiResource,
    scope: Scope,
    namespace: Option<String>,
    key: String,
    hash: String,
}

impl Resolved {
    fn id(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{}/{}", self.p.gvk.kind, ns, self.p.name),
            None => format!("{}/{}", self.p.gvk.kind, self.p.name),
        }
    }

    fn api(&self, client: &Client) -> Api<DynamicObject> {
        match (&self.scope, &self.namespace) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &self.ar),
            _ => Api::all_with(client.clone(), &self.ar),
        }
    }
}

/// One ApplySet on one cluster.
pub struct Applier {
    client: Client,
    parent: ParentRef,
    kinds: BTreeMap<String, (ApiResource, Scope)>,
}

enum Outcome {
    Applied {
        rv: String,
        generation: Option<i64>,
        drift: bool,
        recreated: bool,
        result: Value,
    },
    Failed(String),
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ApplyError {
    let what = what.into();
    move |source| ApplyError::Api { what, source }
}

/// Managers named in a server-side apply conflict message
/// (`conflict with "kubectl-edit" using v1: .data.k`).
fn conflict_managers(message: &str) -> BTreeSet<String> {
    message
        .split("conflict with \"")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(m, _)| m.to_string()))
        .collect()
}

fn is_immutable_error(s: &kube::core::Status) -> bool {
    s.code == 422
        && (s.message.contains("immutable")
            || s.message.contains("are forbidden")
            || s.message.contains("may not be changed")
            || s.message.contains("may not change once set"))
}

/// Our labels and annotations are still on the live object.
fn meta_intact(live: &ObjectMeta, desired: &Value) -> bool {
    let check = |field: &str, live: &Option<BTreeMap<String, String>>| {
        desired
            .pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .all(|(k, v)| live.as_ref().and_then(|m| m.get(k)).map(String::as_str) == v.as_str())
    };
    check("labels", &live.labels) && check("annotations", &live.annotations)
}

/// Has the live object changed since our apply, other than in status?
fn drifted(live: &ObjectMeta, entry: &Entry, desired: &Value) -> bool {
    if live.resource_version.as_deref() == Some(entry.rv.as_str()) {
        return false;
    }
    match (entry.g, live.generation) {
        // the spec did not change (it would bump generation): status only
        (Some(g), Some(lg)) if g == lg => !meta_intact(live, desired),
        _ => true,
    }
}

impl Applier {
    pub fn new(client: Client, parent: ParentRef) -> Applier {
        Applier {
            client,
            parent,
            kinds: BTreeMap::new(),
        }
    }

    pub fn parent(&self) -> &ParentRef {
        &self.parent
    }

    async fn resolve_kind(
        &mut self,
        gvk: &GroupVersionKind,
    ) -> Result<(ApiResource, Scope), kube::Error> {
        let key = format!("{}/{}/{}", gvk.group, gvk.version, gvk.kind);
        if let Some(hit) = self.kinds.get(&key) {
            return Ok(hit.clone());
        }
        let (ar, caps) = discovery::pinned_kind(&self.client, gvk).await?;
        self.kinds.insert(key, (ar.clone(), caps.scope.clone()));
        Ok((ar, caps.scope))
    }

    /// Resolve a group-kind (any served version) for listing members.
    async fn resolve_group_kind(&mut self, gk: &str) -> Option<(ApiResource, Scope)> {
        let (group, kind) = applyset::parse_group_kind(gk);
        if let Some((ar, scope)) = self
            .kinds
            .values()
            .find(|(ar, _)| ar.group == group && ar.kind == kind)
        {
            return Some((ar.clone(), scope.clone()));
        }
        let apigroup = discovery::group(&self.client, &group).await.ok()?;
        let (ar, caps) = apigroup
            .recommended_resources()
            .into_iter()
            .find(|(ar, _)| ar.kind == kind)?;
        self.kinds.insert(
            format!("{}/{}/{}", ar.group, ar.version, ar.kind),
            (ar.clone(), caps.scope.clone()),
        );
        Some((ar, caps.scope))
    }

    /// Read the parent: `None` fields when it does not exist yet.
    pub async fn read_parent(&self) -> Result<ParentState, ApplyError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.parent.namespace);
        let what = format!(
            "reading ApplySet parent Secret {}/{}",
            self.parent.namespace, self.parent.name
        );
        let Some(s) = secrets
            .get_opt(&self.parent.name)
            .await
            .map_err(api_err(what))?
        else {
            return Ok(ParentState::default());
        };
        let v = serde_json::to_value(&s).unwrap_or_default();
        applyset::read_parent(&self.parent, &v).map_err(|p| ApplyError::Parent {
            namespace: self.parent.namespace.clone(),
            name: self.parent.name.clone(),
            reason: match p {
                applyset::ParentProblem::NotAParent => {
                    "exists but is not an ApplySet parent (no applyset.kubernetes.io/id label); \
                     choose another name or delete it"
                        .into()
                }
                applyset::ParentProblem::WrongId { found } => format!(
                    "its applyset.kubernetes.io/id {found} does not match its name and namespace \
                     ({}); it was copied or tampered with — delete it to start a new inventory",
                    self.parent.id()
                ),
                applyset::ParentProblem::OtherTooling { found } => format!(
                    "managed by {found:?}, not cairn; cairn does not take over another tool's ApplySet"
                ),
            },
        })
    }

    async fn write_parent(
        &self,
        gks: &BTreeSet<String>,
        nss: &BTreeSet<String>,
        revision: Option<&str>,
        inventory: &Inventory,
    ) -> Result<(), ApplyError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.parent.namespace);
        let obj = applyset::parent_object(&self.parent, gks, nss, revision, inventory);
        secrets
            .patch(
                &self.parent.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
            .map_err(api_err(format!(
                "writing ApplySet parent Secret {}/{}",
                self.parent.namespace, self.parent.name
            )))?;
        Ok(())
    }

    /// List the live members of one group-kind (metadata only), by key.
    async fn live_members(&mut self, gk: &str) -> Result<BTreeMap<String, ObjectMeta>, ApplyError> {
        let Some((ar, _)) = self.resolve_group_kind(gk).await else {
            return Ok(BTreeMap::new());
        };
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
        let mut out = BTreeMap::new();
        let mut lp = ListParams::default()
            .labels(&self.parent.selector())
            .limit(LIST_PAGE);
        // pages, keeping only what drift detection needs (not managedFields):
        // memory stays flat however large the set
        loop {
            let list = api
                .list_metadata(&lp)
                .await
                .map_err(api_err(format!("listing {gk} members of the ApplySet")))?;
            for o in list.items {
                // keep only what drift detection and prune read
                let m = ObjectMeta {
                    name: o.metadata.name,
                    namespace: o.metadata.namespace,
                    resource_version: o.metadata.resource_version,
                    generation: o.metadata.generation,
                    labels: o.metadata.labels,
                    annotations: o.metadata.annotations,
                    ..Default::default()
                };
                let key = applyset::member_key(
                    &ar.group,
                    &ar.kind,
                    m.namespace.as_deref(),
                    m.name.as_deref().unwrap_or(""),
                );
                out.insert(key, m);
            }
            match list.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(c) => lp = lp.continue_token(&c),
                None => break,
            }
        }
        Ok(out)
    }

    /// Apply `objects` as the whole ApplySet.
    pub async fn apply(&mut self, objects: &[Value], opts: &Options) -> Result<Report, ApplyError> {
        let dry = opts.dry_run || opts.diff;
        let planned = plan(objects)?;
        if planned.is_empty() && !opts.allow_empty {
            return Err(ApplyError::EmptySet);
        }
        let id = self.parent.id();
        for p in &planned {
            let index = p.index;
            let invalid = |reason: String| ApplyError::InvalidObject {
                index,
                what: p.id(),
                reason,
            };
            let meta = objects[index]
                .get("metadata")
                .and_then(Value::as_object)
                .ok_or_else(|| invalid("metadata is not a mapping".into()))?;
            match meta.get("labels") {
                None | Some(Value::Null) => {}
                Some(Value::Object(l)) if l.contains_key(applyset::LABEL_PART_OF) => {
                    return Err(invalid(format!(
                        "carries the label {}; remove it, cairn sets ApplySet membership itself",
                        applyset::LABEL_PART_OF
                    )))
                }
                Some(Value::Object(_)) => {}
                Some(_) => return Err(invalid("metadata.labels is not a mapping".into())),
            }
        }
        let old = self.read_parent().await?;
        let mut report = Report {
            members: planned.len(),
            ..Default::default()
        };

        // Resolve what can be resolved now; kinds defined by CRDs of this
        // set are resolved again after stage 0.
        let mut stages: BTreeMap<u8, Vec<Planned>> = BTreeMap::new();
        for p in planned {
            stages.entry(p.stage).or_default().push(p);
        }
        let mut new_gks = BTreeSet::new();
        let mut new_nss = BTreeSet::new();
        for p in stages.values().flatten() {
            new_gks.insert(applyset::group_kind(&p.gvk.group, &p.gvk.kind));
            if let Some(ns) = &p.namespace {
                new_nss.insert(ns.clone());
            }
        }
        let mut resolved_all: Vec<Arc<Resolved>> = Vec::new();
        let mut new_inventory = Inventory::new();
        let mut keys = BTreeSet::new();
        let mut stage_failed = false;

        // Record the union of old and new kinds before touching members, so
        // a crash in the middle still lets a later apply prune.
        if !dry {
            let union_gks: BTreeSet<String> = old.group_kinds.union(&new_gks).cloned().collect();
            let mut union_nss: BTreeSet<String> = old.namespaces.union(&new_nss).cloned().collect();
            union_nss.insert("default".into());
            let needs = !old.exists
                || !new_gks.is_subset(&old.group_kinds)
                || !new_nss
                    .iter()
                    .all(|n| old.namespaces.contains(n) || *n == self.parent.namespace);
            if needs {
                self.write_parent(
                    &union_gks,
                    &union_nss,
                    old.revision.as_deref(),
                    &old.inventory,
                )
                .await?;
                report.parent_written = true;
            }
        }

        let mut listed: BTreeMap<String, BTreeMap<String, ObjectMeta>> = BTreeMap::new();
        for (stage, items) in stages {
            let mut todo = Vec::new();
            for p in items {
                let (ar, scope) = match self.resolve_kind(&p.gvk).await {
                    Ok(x) => x,
                    Err(e) => {
                        let reason = if dry {
                            format!("kind {}/{} is not served (yet): {e}; if a CRD of this set defines it, it is created by the real apply", p.gvk.group, p.gvk.kind)
                        } else {
                            format!("kind {}/{} is not served by the API server: {e}; apply its CRD first or fix apiVersion/kind", p.gvk.group, p.gvk.kind)
                        };
                        report.failed.push((p.id(), reason));
                        stage_failed = true;
                        continue;
                    }
                };
                let namespace = match scope {
                    Scope::Namespaced => {
                        Some(p.namespace.clone().unwrap_or_else(|| "default".into()))
                    }
                    Scope::Cluster => None,
                };
                let key = applyset::member_key(&ar.group, &ar.kind, namespace.as_deref(), &p.name);
                if !keys.insert(key.clone()) {
                    report
                        .failed
                        .push((p.id(), "appears twice in the set".into()));
                    stage_failed = true;
                    continue;
                }
                let hash = applyset::desired_hash(&objects[p.index]);
                todo.push(Arc::new(Resolved {
                    p,
                    ar,
                    scope,
                    namespace,
                    key,
                    hash,
                }));
            }
            if stage_failed {
                break;
            }
            // what is live, one metadata LIST per kind
            for r in &todo {
                let gk = applyset::group_kind(&r.ar.group, &r.ar.kind);
                if let std::collections::btree_map::Entry::Vacant(slot) = listed.entry(gk) {
                    let members = self.live_members(slot.key()).await?;
                    slot.insert(members);
                }
            }
            let mut send = Vec::new();
            for r in todo {
                let gk = applyset::group_kind(&r.ar.group, &r.ar.kind);
                let live = listed.get(&gk).and_then(|m| m.get(&r.key));
                let cached = old.inventory.get(&r.key);
                let skip = !opts.diff
                    && match (live, cached) {
                        (Some(live), Some(entry)) => {
                            entry.h == r.hash && !drifted(live, entry, &objects[r.p.index])
                        }
                        _ => false,
                    };
                if skip {
                    report.unchanged += 1;
                    if let Some(e) = cached {
                        new_inventory.insert(r.key.clone(), e.clone());
                    }
                } else {
                    send.push(r.clone());
                }
                resolved_all.push(r);
            }
            let results: Vec<(Arc<Resolved>, Outcome)> = stream::iter(send)
                .map(|r| {
                    let client = self.client.clone();
                    let id = &id;
                    async move {
                        // the labelled copy exists only while its request is in flight
                        let desired = desired_object(&objects[r.p.index], &r, id);
                        let out = apply_one(&client, &r, &desired, opts.force, dry).await;
                        (r, out)
                    }
                })
                .buffer_unordered(opts.concurrency.max(1))
                .collect()
                .await;
            let mut results = results;
            results.sort_by(|a, b| a.0.key.cmp(&b.0.key));
            for (r, out) in results {
                match out {
                    Outcome::Applied {
                        rv,
                        generation,
                        drift,
                        recreated,
                        result,
                    } => {
                        if opts.diff {
                            let live = get_live(&self.client, &r).await;
                            let d = crate::diff::unified(&r.id(), live.as_ref(), Some(&result));
                            if !d.is_empty() {
                                report.diffs.push(d);
                            }
                            continue;
                        }
                        if dry {
                            continue;
                        }
                        if recreated {
                            report.recreated.push(r.id());
                        } else {
                            report.applied.push(r.id());
                        }
                        if drift {
                            report.drift_corrected.push(r.id());
                        }
                        new_inventory.insert(
                            r.key.clone(),
                            Entry {
                                h: r.hash.clone(),
                                rv,
                                g: generation,
                            },
                        );
                    }
                    Outcome::Failed(why) => {
                        report.failed.push((r.id(), why));
                        stage_failed = true;
                    }
                }
            }
            if stage_failed {
                break;
            }
            if stage == 0 && !dry {
                wait_crds_established(&self.client, &resolved_all, &mut report).await;
                if !report.failed.is_empty() {
                    stage_failed = true;
                    break;
                }
            }
        }
        if stage_failed {
            // nothing is pruned and the inventory keeps the union: the next
            // apply converges from here
            return Ok(report);
        }

        // prune: members of the old or new kinds that are not in the set
        let mut prune_gks: BTreeSet<String> = old.group_kinds.clone();
        prune_gks.extend(new_gks.iter().cloned());
        let mut doomed: Vec<(u8, String, ApiResource, Scope, ObjectMeta)> = Vec::new();
        if opts.prune {
            for gk in &prune_gks {
                let members = match listed.get(gk) {
                    Some(m) => m.clone(),
                    None => self.live_members(gk).await?,
                };
                let Some((ar, scope)) = self.resolve_group_kind(gk).await else {
                    continue;
                };
                for (key, meta) in members {
                    if !keys.contains(&key) {
                        doomed.push((
                            crate::stage_of(&ar.group, &ar.kind),
                            key,
                            ar.clone(),
                            scope.clone(),
                            meta,
                        ));
                    }
                }
            }
        }
        // reverse order: workloads before the namespaces and CRDs they live in
        doomed.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, _key, ar, scope, meta) in doomed {
            let name = meta.name.clone().unwrap_or_default();
            let id = match &meta.namespace {
                Some(ns) => format!("{}/{}/{}", ar.kind, ns, name),
                None => format!("{}/{}", ar.kind, name),
            };
            let api: Api<DynamicObject> = match (&scope, &meta.namespace) {
                (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
                _ => Api::all_with(self.client.clone(), &ar),
            };
            if opts.diff {
                if let Ok(live) = api.get(&name).await {
                    let v = serde_json::to_value(&live).unwrap_or_default();
                    report.diffs.push(crate::diff::unified(&id, Some(&v), None));
                }
                continue;
            }
            if dry {
                continue;
            }
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..Default::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => report.pruned.push(id),
                Err(kube::Error::Api(s)) if s.code == 404 => report.pruned.push(id),
                Err(e) => report.failed.push((id, format!("prune failed: {e}"))),
            }
        }
        if dry {
            return Ok(report);
        }
        if report.failed.is_empty() {
            let revision = opts.revision.clone().or(old.revision.clone());
            let mut nss = new_nss.clone();
            for r in &resolved_all {
                if let Some(ns) = &r.namespace {
                    nss.insert(ns.clone());
                }
            }
            let changed = !old.exists
                || old.group_kinds != new_gks
                || old.namespaces
                    != nss
                        .iter()
                        .filter(|n| **n != self.parent.namespace)
                        .cloned()
                        .collect()
                || old.revision != revision
                || old.inventory != new_inventory
                || report.parent_written;
            if changed {
                self.write_parent(&new_gks, &nss, revision.as_deref(), &new_inventory)
                    .await?;
                report.parent_written = true;
            }
        }
        if let Some(timeout) = opts.wait {
            if report.failed.is_empty() {
                self.wait_healthy(&resolved_all, timeout, &mut report)
                    .await?;
            }
        }
        Ok(report)
    }

    /// Poll members until all are Current, one is Failed (fail fast), or
    /// `timeout` passes; unhealthy members go to the report.
    async fn wait_healthy(
        &mut self,
        members: &[Arc<Resolved>],
        timeout: Duration,
        report: &mut Report,
    ) -> Result<(), ApplyError> {
        let deadline = Instant::now() + timeout;
        let mut by_gk: BTreeMap<String, (ApiResource, BTreeSet<String>)> = BTreeMap::new();
        for r in members {
            by_gk
                .entry(applyset::group_kind(&r.ar.group, &r.ar.kind))
                .or_insert_with(|| (r.ar.clone(), BTreeSet::new()))
                .1
                .insert(r.key.clone());
        }
        loop {
            let mut pending = Vec::new();
            let mut failed = Vec::new();
            for (ar, want) in by_gk.values() {
                let api: Api<DynamicObject> = Api::all_with(self.client.clone(), ar);
                let mut seen = BTreeSet::new();
                let mut lp = ListParams::default()
                    .labels(&self.parent.selector())
                    .limit(LIST_PAGE);
                let mut list_failed = false;
                'pages: loop {
                    let page = match api.list(&lp).await {
                        Ok(l) => l,
                        Err(e) => {
                            pending.push((ar.kind.clone(), format!("cannot list: {e}")));
                            list_failed = true;
                            break 'pages;
                        }
                    };
                    let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
                    for o in page.items {
                        let key = applyset::member_key(
                            &ar.group,
                            &ar.kind,
                            o.metadata.namespace.as_deref(),
                            o.metadata.name.as_deref().unwrap_or(""),
                        );
                        if !want.contains(&key) {
                            continue;
                        }
                        seen.insert(key);
                        let id = match &o.metadata.namespace {
                            Some(ns) => format!(
                                "{}/{}/{}",
                                ar.kind,
                                ns,
                                o.metadata.name.clone().unwrap_or_default()
                            ),
                            None => format!(
                                "{}/{}",
                                ar.kind,
                                o.metadata.name.clone().unwrap_or_default()
                            ),
                        };
                        let mut v = serde_json::to_value(&o).unwrap_or_default();
                        v["apiVersion"] = Value::String(ar.api_version.clone());
                        v["kind"] = Value::String(ar.kind.clone());
                        match health::health(&v) {
                            Health::Current => {}
                            Health::InProgress(why) => pending.push((id, why)),
                            Health::Failed(why) => failed.push((id, why)),
                        }
                    }
                    match next {
                        Some(c) => lp = lp.continue_token(&c),
                        None => break 'pages,
                    }
                }
                if list_failed {
                    continue;
                }
                for missing in want.difference(&seen) {
                    pending.push((missing.clone(), "not found".into()));
                }
            }
            if !failed.is_empty() {
                report.unhealthy = failed;
                return Ok(());
            }
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                report.unhealthy = pending
                    .into_iter()
                    .map(|(id, why)| (id, format!("{why} (timed out after {timeout:?})")))
                    .collect();
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
    }
}

async fn get_live(client: &Client, r: &Resolved) -> Option<Value> {
    r.api(client)
        .get_opt(&r.p.name)
        .await
        .ok()
        .flatten()
        .map(|o| serde_json::to_value(&o).unwrap_or_default())
}

fn applied(obj: DynamicObject, drift: bool, recreated: bool) -> Outcome {
    let rv = obj.metadata.resource_version.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    Outcome::Applied {
        rv,
        generation,
        drift,
        recreated,
        result: serde_json::to_value(&obj).unwrap_or_default(),
    }
}

/// The object as sent: the ApplySet's part-of label added, and no
/// namespace on cluster-scoped kinds.
fn desired_object(obj: &Value, r: &Resolved, id: &str) -> Value {
    let mut v = obj.clone();
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        if r.scope == Scope::Cluster {
            meta.remove("namespace");
        }
        let labels = meta
            .entry("labels")
            .or_insert_with(|| Value::Object(Default::default()));
        if !labels.is_object() {
            *labels = Value::Object(Default::default());
        }
        if let Some(l) = labels.as_object_mut() {
            l.insert(
                applyset::LABEL_PART_OF.into(),
                Value::String(id.to_string()),
            );
        }
    }
    v
}

/// Apply one object: conflicts with imperative edits are drift (taken
/// back), with other declarative managers a refusal unless `force`;
/// immutable-field errors recreate only with [`RECREATE_ANNOTATION`].
async fn apply_one(
    client: &Client,
    r: &Resolved,
    desired: &Value,
    force: bool,
    dry: bool,
) -> Outcome {
    let api = r.api(client);
    let mut params = PatchParams::apply(FIELD_MANAGER);
    params.force = force;
    params.dry_run = dry;
    let first = if dry {
        api.patch(&r.p.name, &params, &Patch::Apply(desired))
            .await
            .map(|o| applied(o, false, false))
    } else {
        patch_metadata_only(client, r, desired, &params).await
    };
    let err = match first {
        Ok(o) => return o,
        Err(e) => e,
    };
    match err {
        kube::Error::Api(s) if s.code == 409 => {
            let managers = conflict_managers(&s.message);
            let live = match api.get(&r.p.name).await {
                Ok(l) => l,
                Err(e) => {
                    return Outcome::Failed(format!(
                        "conflict ({}); reading it back: {e}",
                        s.message
                    ))
                }
            };
            let mf = live.metadata.managed_fields.unwrap_or_default();
            let declarative: Vec<&String> = managers
                .iter()
                .filter(|m| {
                    mf.iter().any(|e| {
                        e.manager.as_deref() == Some(m.as_str())
                            && e.operation.as_deref() == Some("Apply")
                    })
                })
                .collect();
            if !declarative.is_empty() || managers.is_empty() {
                return Outcome::Failed(format!(
                    "conflict with field manager(s) {declarative:?} that also apply this object: {}; \
                     remove the field from one of the two sources, or set `apply: {{force: true}}` \
                     in fleet.yaml (cairnctl apply --force) to take the fields over",
                    s.message
                ));
            }
            // imperative edits (kubectl edit/patch/scale): drift, take it back
            params.force = true;
            match api.patch(&r.p.name, &params, &Patch::Apply(desired)).await {
                Ok(o) => applied(o, true, false),
                Err(e) => Outcome::Failed(format!("correcting drift by {managers:?}: {e}")),
            }
        }
        kube::Error::Api(s) if is_immutable_error(&s) => {
            let opted_in = desired
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(RECREATE_ANNOTATION))
                .and_then(Value::as_str)
                == Some("true");
            if !opted_in {
                return Outcome::Failed(format!(
                    "an immutable field changed: {}; to allow cairn to delete and recreate this object, \
                     annotate it with {RECREATE_ANNOTATION}: \"true\"",
                    s.message
                ));
            }
            if dry {
                return Outcome::Failed(format!(
                    "would be deleted and recreated (immutable field changed: {})",
                    s.message
                ));
            }
            if let Err(e) = recreate_delete(&api, &r.p.name).await {
                return Outcome::Failed(format!("recreate: deleting: {e}"));
            }
            match api.patch(&r.p.name, &params, &Patch::Apply(desired)).await {
                Ok(o) => applied(o, false, true),
                Err(e) => Outcome::Failed(format!("recreate: creating again: {e}")),
            }
        }
        e => Outcome::Failed(format!("server-side apply failed: {e}")),
    }
}

/// Server-side apply asking for only the object's metadata back
/// (`as=PartialObjectMetadata`): all the engine needs is resourceVersion and
/// generation, and the API server then encodes — and we decode — a fraction
/// of each object.
async fn patch_metadata_only(
    client: &Client,
    r: &Resolved,
    desired: &Value,
    params: &PatchParams,
) -> Result<Outcome, kube::Error> {
    use kube::Resource;
    let url = DynamicObject::url_path(&r.ar, r.namespace.as_deref());
    let mut req = kube::core::Request::new(url)
        .patch(&r.p.name, params, &Patch::Apply(desired))
        .map_err(kube::Error::BuildRequest)?;
    req.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static(
            "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
        ),
    );
    let meta: kube::core::PartialObjectMeta<DynamicObject> = client.request(req).await?;
    Ok(Outcome::Applied {
        rv: meta.metadata.resource_version.clone().unwrap_or_default(),
        generation: meta.metadata.generation,
        drift: false,
        recreated: false,
        result: Value::Null,
    })
}

async fn recreate_delete(api: &Api<DynamicObject>, name: &str) -> Result<(), kube::Error> {
    // Background: the object goes at once, the garbage collector removes
    // its dependents (Foreground would wait on the collector with the name taken)
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if api.get_opt(name).await?.is_none() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(kube::Error::Api(
        kube::core::Status::failure(
            &format!("{name} still exists 120 s after delete"),
            "Timeout",
        )
        .with_code(504)
        .boxed(),
    ))
}

/// After stage 0: every CRD of the set must be Established before its
/// kinds are applied.
async fn wait_crds_established(client: &Client, resolved: &[Arc<Resolved>], report: &mut Report) {
    let crds: Vec<&Arc<Resolved>> = resolved
        .iter()
        .filter(|r| {
            r.p.gvk.group == "apiextensions.k8s.io" && r.p.gvk.kind == "CustomResourceDefinition"
        })
        .collect();
    for r in crds {
        let api = r.api(client);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let h = match api.get(&r.p.name).await {
                Ok(o) => {
                    let mut v = serde_json::to_value(&o).unwrap_or_default();
                    v["apiVersion"] = Value::String("apiextensions.k8s.io/v1".into());
                    v["kind"] = Value::String("CustomResourceDefinition".into());
                    health::health(&v)
                }
                Err(e) => Health::InProgress(e.to_string()),
            };
            match h {
                Health::Current => break,
                Health::Failed(why) => {
                    report.failed.push((r.id(), why));
                    break;
                }
                Health::InProgress(why) if Instant::now() >= deadline => {
                    report
                        .failed
                        .push((r.id(), format!("not Established after 60 s: {why}")));
                    break;
                }
                Health::InProgress(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conflict_message_names_managers() {
        let m = "Apply failed with 2 conflicts: conflict with \"kubectl-edit\" using v1: .data.k\nconflict with \"helm\" using apps/v1: .spec.replicas";
        assert_eq!(
            conflict_managers(m),
            ["helm".to_string(), "kubectl-edit".into()].into()
        );
        assert!(conflict_managers("something else").is_empty());
    }

    #[test]
    fn drift_ignores_status_only_changes() {
        let desired = json!({"metadata":{"name":"d","labels":{"app":"x"}}});
        let entry = Entry {
            h: "h".into(),
            rv: "10".into(),
            g: Some(1),
        };
        let mut live = ObjectMeta {
            resource_version: Some("10".into()),
            generation: Some(1),
            labels: Some([("app".to_string(), "x".to_string())].into()),
            ..Default::default()
        };
        assert!(!drifted(&live, &entry, &desired));
        live.resource_version = Some("12".into()); // status update by a controller
        assert!(!drifted(&live, &entry, &desired));
        live.generation = Some(2); // spec edited
        assert!(drifted(&live, &entry, &desired));
        live.generation = Some(1);
        live.labels = Some([("app".to_string(), "y".to_string())].into());
        assert!(drifted(&live, &entry, &desired));
        // kinds without generation: any change counts
        let cm = Entry {
            h: "h".into(),
            rv: "10".into(),
            g: None,
        };
        let live = ObjectMeta {
            resource_version: Some("11".into()),
            ..Default::default()
        };
        assert!(drifted(&live, &cm, &desired));
    }
}
