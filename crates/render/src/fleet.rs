//! The fleet repository: fleet-wide settings, clusters, node groups and node
//! entries, and how a booting node finds its entry.
//!
//! Layout (relative to the repository root; see `gitops/README.md`):
//!
//! ```text
//! fleet.yaml                    fleet-wide settings + default values
//! clusters/<cluster>/cluster.yaml   cluster facts + cluster values
//! clusters/<cluster>/kustomization.yaml  what the cluster's nodes render
//! groups/<group>.yaml           node group values (optional directory)
//! nodes/<node>.yaml             one entry per node; the file stem is the node name
//! ```
//!
//! Matching precedence (first level with a match decides):
//! 1. machine id (`/etc/machine-id`), 2. any MAC address, 3. hostname.
//!
//! Two entries claiming the same MAC, hostname or machine id are rejected at
//! load time; several entries matching one machine at the same level (a
//! machine with two NICs listed in two entries) is [`RenderError::AmbiguousNode`].

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::RenderError;
use crate::template::{merge_values, TemplateContext};

/// Identity of the node that renders (what it knows about itself at boot).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeIdentity {
    pub hostname: String,
    pub machine_id: Option<String>,
    pub macs: Vec<String>,
}

impl std::fmt::Display for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hostname={:?}", self.hostname)?;
        if let Some(m) = &self.machine_id {
            write!(f, " machine-id={m}")?;
        }
        write!(f, " macs=[{}]", self.macs.join(","))
    }
}

/// Fleet-wide settings from `fleet.yaml` (read by the OS update loop).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FleetSettings {
    /// Desired OS image.
    pub os: OsSettings,
    /// How OS updates roll through the fleet.
    #[serde(default)]
    pub update: UpdatePolicy,
    /// How rendered objects are applied.
    #[serde(default)]
    pub apply: ApplyPolicy,
}

/// How the agent applies what the repository renders (`apply:` in `fleet.yaml`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApplyPolicy {
    /// Delete objects this repository applied earlier and no longer renders. Default true.
    #[serde(default = "yes")]
    pub prune: bool,
    /// Allow a render that produces no objects at all (which would prune
    /// everything). Default false: an empty render is refused.
    #[serde(default)]
    pub allow_empty: bool,
    /// Take over fields another field manager owns instead of refusing. Default false.
    #[serde(default)]
    pub force: bool,
    /// How long objects may take to become healthy after a new commit is
    /// applied ("5m", "90s"); "0s" does not wait.
    #[serde(default = "five_minutes")]
    pub health_timeout: String,
}

fn yes() -> bool {
    true
}

fn five_minutes() -> String {
    "5m".into()
}

impl Default for ApplyPolicy {
    fn default() -> Self {
        ApplyPolicy {
            prune: true,
            allow_empty: false,
            force: false,
            health_timeout: five_minutes(),
        }
    }
}

impl ApplyPolicy {
    /// `health_timeout` in seconds.
    pub fn health_timeout_seconds(&self) -> Result<u64, String> {
        parse_duration_seconds(&self.health_timeout).ok_or_else(|| {
            format!(
                "apply.healthTimeout {:?}: expected a duration like 90s, 5m or 1h30m",
                self.health_timeout
            )
        })
    }
}

/// "90s", "5m", "1h30m" → seconds.
pub fn parse_duration_seconds(s: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut num = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        total += n * match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        any = true;
    }
    (num.is_empty() && any).then_some(total)
}

/// The desired OS version (a TUF target version published by `cairn-image`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OsSettings {
    pub version: String,
}

/// Update policy: how many nodes may be down for an update at once, and when.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpdatePolicy {
    /// Nodes of one cluster that may reboot into a new OS at the same time
    /// (the size of the cluster-wide reboot lock). Default 1; 0 pauses updates.
    #[serde(default = "one")]
    pub max_unavailable: u32,
    /// When nodes may reboot. None: any time.
    #[serde(default)]
    pub maintenance_window: Option<MaintenanceWindow>,
    /// How long a freshly booted slot has to pass the health gate ("15m")
    /// before it is marked bad and the node reboots into the old slot.
    #[serde(default = "fifteen_minutes")]
    pub health_timeout: String,
    /// How long draining the node before a reboot may take ("10m"); when
    /// PodDisruptionBudgets still block evictions then, the reboot is put
    /// off, the node uncordoned, and the drain tried again later.
    #[serde(default = "ten_minutes")]
    pub drain_timeout: String,
    /// Extra checks of the health gate, besides "the agent reached the API
    /// server, the Node is Ready and the current commit is applied".
    #[serde(default)]
    pub checks: HealthChecks,
}

/// Extra health-gate checks (`update.checks` in `fleet.yaml`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthChecks {
    /// systemd units that must be active; a unit that is failed, masked,
    /// missing or restarting over and over fails the gate at once.
    #[serde(default)]
    pub units: Vec<String>,
    /// Kubernetes objects that must be healthy (kstatus).
    #[serde(default)]
    pub objects: Vec<ObjectRef>,
}

/// A Kubernetes object named in the fleet settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectRef {
    /// e.g. `apps/v1`.
    pub api_version: String,
    /// e.g. `Deployment`.
    pub kind: String,
    /// Empty for cluster-scoped objects.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The object's name.
    pub name: String,
}

fn one() -> u32 {
    1
}

fn fifteen_minutes() -> String {
    "15m".into()
}

fn ten_minutes() -> String {
    "10m".into()
}

impl Default for UpdatePolicy {
    fn default() -> Self {
        UpdatePolicy {
            max_unavailable: 1,
            maintenance_window: None,
            health_timeout: fifteen_minutes(),
            drain_timeout: ten_minutes(),
            checks: HealthChecks::default(),
        }
    }
}

impl UpdatePolicy {
    /// `health_timeout` in seconds.
    pub fn health_timeout_seconds(&self) -> Result<u64, String> {
        duration_field("update.healthTimeout", &self.health_timeout)
    }

    /// `drain_timeout` in seconds.
    pub fn drain_timeout_seconds(&self) -> Result<u64, String> {
        duration_field("update.drainTimeout", &self.drain_timeout)
    }

    /// Is `unix_secs` inside the maintenance window (always, without one)?
    pub fn in_window(&self, unix_secs: u64) -> bool {
        let Some(w) = &self.maintenance_window else {
            return true;
        };
        // 1970-01-01 was a Thursday: Monday 00:00 UTC is 3 days later
        let minute_of_week = ((unix_secs / 60) + 3 * 24 * 60) % (7 * 24 * 60);
        w.contains(minute_of_week as u32)
    }
}

fn duration_field(key: &str, value: &str) -> Result<u64, String> {
    parse_duration_seconds(value)
        .ok_or_else(|| format!("{key} {value:?}: expected a duration like 90s, 5m or 1h30m"))
}

/// A weekly window, in UTC: on each of `days`, from `start` for `duration`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MaintenanceWindow {
    /// Three-letter English day names: `Mon` … `Sun`. Empty: every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// `HH:MM`, 24-hour clock, UTC.
    pub start: String,
    /// `<n>h`, `<n>m` or `<n>h<n>m`, at most 24h.
    pub duration: String,
}

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

impl MaintenanceWindow {
    /// Minutes after midnight UTC at which the window opens.
    pub fn start_minutes(&self) -> u32 {
        parse_hhmm(&self.start).unwrap_or(0)
    }

    /// Length of the window in minutes.
    pub fn duration_minutes(&self) -> u32 {
        parse_duration(&self.duration).unwrap_or(0)
    }

    /// Days as indexes, Monday = 0. Every day when the list is empty.
    pub fn day_indexes(&self) -> Vec<u32> {
        if self.days.is_empty() {
            return (0..7).collect();
        }
        self.days
            .iter()
            .filter_map(|d| DAYS.iter().position(|x| x == d).map(|p| p as u32))
            .collect()
    }

    /// Is `minute_of_week` (Monday 00:00 UTC = 0) inside the window?
    /// Windows may run past midnight into the next day.
    pub fn contains(&self, minute_of_week: u32) -> bool {
        let week = 7 * 24 * 60;
        let (start, len) = (self.start_minutes(), self.duration_minutes());
        self.day_indexes().into_iter().any(|d| {
            let open = d * 24 * 60 + start;
            (minute_of_week + week - open) % week < len
        })
    }

    fn validate(&self) -> Result<(), String> {
        for d in &self.days {
            if !DAYS.contains(&d.as_str()) {
                return Err(format!(
                    "maintenanceWindow.days: {d:?} is not one of {}",
                    DAYS.join(", ")
                ));
            }
        }
        parse_hhmm(&self.start).ok_or_else(|| {
            format!(
                "maintenanceWindow.start: {:?} is not HH:MM (UTC)",
                self.start
            )
        })?;
        match parse_duration(&self.duration) {
            Some(m) if m > 0 && m <= 24 * 60 => Ok(()),
            _ => Err(format!(
                "maintenanceWindow.duration: {:?} is not a duration like 2h, 90m or 1h30m (at most 24h)",
                self.duration
            )),
        }
    }
}

fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

fn parse_duration(s: &str) -> Option<u32> {
    let mut total = 0u32;
    let mut num = String::new();
    let mut seen_unit = false;
    for c in s.chars() {
        match c {
            '0'..='9' => num.push(c),
            'h' | 'm' => {
                let n: u32 = num.parse().ok()?;
                num.clear();
                total = total.checked_add(if c == 'h' { n.checked_mul(60)? } else { n })?;
                seen_unit = true;
            }
            _ => return None,
        }
    }
    (num.is_empty() && seen_unit).then_some(total)
}

/// How an entry was matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchedBy {
    MachineId,
    Mac,
    Hostname,
    /// Chosen by name (`cairnctl render --node NAME`).
    Name,
}

/// What a node renders: its entry, the directories to build and the
/// template context.
#[derive(Debug, Clone, PartialEq)]
pub struct NodePlan {
    /// Node entry name (file stem of `nodes/<name>.yaml`).
    pub name: String,
    pub cluster: String,
    /// `control-plane` or `worker`.
    pub role: String,
    pub group: Option<String>,
    /// Kustomization directories to build, relative to the repository root,
    /// in order (default: `clusters/<cluster>`).
    pub entries: Vec<PathBuf>,
    /// What `.j2` files see.
    pub context: TemplateContext,
    pub matched_by: MatchedBy,
    /// Labels, annotations and taints for the node's own Node object.
    pub node_metadata: NodeMetadata,
}

#[derive(Debug, Clone)]
struct Cluster {
    info: Map<String, Value>,
    values: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FleetFile {
    os: OsSettings,
    #[serde(default)]
    update: UpdatePolicy,
    #[serde(default)]
    apply: ApplyPolicy,
    #[serde(default)]
    values: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GroupFile {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    values: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NodeFile {
    cluster: String,
    role: String,
    #[serde(default)]
    group: Option<String>,
    #[serde(rename = "match")]
    matcher: NodeMatch,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    taints: Vec<Taint>,
    #[serde(default)]
    values: Option<Value>,
    #[serde(default)]
    render: Option<Vec<String>>,
    #[serde(default)]
    description: Option<String>,
}

/// A node taint from a node entry (`taints:`), as on the Node object.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// NoSchedule, PreferNoSchedule or NoExecute.
    pub effect: String,
}

/// What a node sets on its own Node object (labels, annotations, taints
/// from its entry): applied by each node for itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMetadata {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NodeMatch {
    #[serde(default)]
    macs: Vec<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    machine_id: Option<String>,
}

#[derive(Debug, Clone)]
struct NodeEntry {
    annotations: BTreeMap<String, String>,
    taints: Vec<Taint>,
    name: String,
    file: PathBuf,
    cluster: String,
    role: String,
    group: Option<String>,
    macs: Vec<String>,
    hostname: Option<String>,
    machine_id: Option<String>,
    labels: BTreeMap<String, String>,
    values: Value,
    render: Vec<PathBuf>,
}

/// The parsed fleet repo (settings, clusters, groups, nodes).
#[derive(Debug, Clone)]
pub struct Fleet {
    root: PathBuf,
    settings: FleetSettings,
    defaults: Value,
    clusters: BTreeMap<String, Cluster>,
    groups: BTreeMap<String, Value>,
    nodes: Vec<NodeEntry>,
}

/// Roles a node entry may have.
pub const ROLES: [&str; 2] = ["control-plane", "worker"];

impl Fleet {
    /// Read `fleet.yaml`, `clusters/*/cluster.yaml`, `groups/*.yaml` and
    /// `nodes/*.yaml` under `repo_root`, and check them against each other.
    pub fn load(repo_root: &Path) -> Result<Fleet, RenderError> {
        let fleet_path = repo_root.join("fleet.yaml");
        let raw: FleetFile = read_typed(&fleet_path)?;
        let settings = FleetSettings {
            os: raw.os,
            update: raw.update,
            apply: raw.apply,
        };
        for check in [
            settings.apply.health_timeout_seconds(),
            settings.update.health_timeout_seconds(),
            settings.update.drain_timeout_seconds(),
        ] {
            if let Err(m) = check {
                return Err(fleet_err(&fleet_path, &m));
            }
        }
        if settings.update.health_timeout_seconds() == Ok(0) {
            return Err(fleet_err(
                &fleet_path,
                "update.healthTimeout must be more than 0s: a new OS slot needs time to prove itself",
            ));
        }
        if settings.os.version.trim().is_empty() {
            return Err(fleet_err(&fleet_path, "os.version must not be empty"));
        }
        if let Some(w) = &settings.update.maintenance_window {
            w.validate()
                .map_err(|m| fleet_err(&fleet_path, &format!("update.{m}")))?;
        }
        let defaults = mapping_or_empty(&fleet_path, "values", raw.values)?;

        let mut clusters = BTreeMap::new();
        let clusters_dir = repo_root.join("clusters");
        for dir in list_dir(&clusters_dir)? {
            if !dir.is_dir() {
                continue;
            }
            let name = file_name(&dir);
            let path = dir.join("cluster.yaml");
            let v = read_value(&path)?;
            let mut info = match v {
                Value::Object(m) => m,
                Value::Null => Map::new(),
                _ => return Err(fleet_err(&path, "must be a mapping")),
            };
            if let Some(n) = info.get("name") {
                if n.as_str() != Some(name.as_str()) {
                    return Err(fleet_err(
                        &path,
                        &format!("name {n} differs from the directory name {name:?}"),
                    ));
                }
            }
            let values = mapping_or_empty(&path, "values", info.remove("values"))?;
            info.insert("name".into(), Value::String(name.clone()));
            clusters.insert(name, Cluster { info, values });
        }

        let mut groups = BTreeMap::new();
        let groups_dir = repo_root.join("groups");
        if groups_dir.is_dir() {
            for path in list_dir(&groups_dir)? {
                if !is_yaml(&path) {
                    continue;
                }
                let g: GroupFile = read_typed(&path)?;
                let _ = g.description;
                groups.insert(stem(&path), mapping_or_empty(&path, "values", g.values)?);
            }
        }

        let mut nodes: Vec<NodeEntry> = Vec::new();
        let nodes_dir = repo_root.join("nodes");
        for path in list_dir(&nodes_dir)? {
            if !is_yaml(&path) {
                continue;
            }
            let name = stem(&path);
            if !is_dns_label(&name) {
                return Err(fleet_err(
                    &path,
                    "the file name must be a DNS label (lowercase letters, digits, '-'), it is the node name",
                ));
            }
            let f: NodeFile = read_typed(&path)?;
            let _ = f.description;
            if !ROLES.contains(&f.role.as_str()) {
                return Err(fleet_err(
                    &path,
                    &format!("role {:?} is not one of {}", f.role, ROLES.join(", ")),
                ));
            }
            if !clusters.contains_key(&f.cluster) {
                return Err(RenderError::UnknownReference {
                    node: name,
                    what: "cluster",
                    name: f.cluster.clone(),
                    expected: clusters_dir.join(&f.cluster).join("cluster.yaml"),
                });
            }
            if let Some(g) = &f.group {
                if !groups.contains_key(g) {
                    return Err(RenderError::UnknownReference {
                        node: name,
                        what: "group",
                        name: g.clone(),
                        expected: groups_dir.join(format!("{g}.yaml")),
                    });
                }
            }
            let mut macs = Vec::new();
            for m in &f.matcher.macs {
                macs.push(
                    normalize_mac(m)
                        .ok_or_else(|| fleet_err(&path, &format!("{m:?} is not a MAC address")))?,
                );
            }
            let machine_id = match &f.matcher.machine_id {
                Some(id) => Some(normalize_machine_id(id).ok_or_else(|| {
                    fleet_err(
                        &path,
                        &format!("{id:?} is not a machine id (32 hex digits)"),
                    )
                })?),
                None => None,
            };
            if macs.is_empty() && f.matcher.hostname.is_none() && machine_id.is_none() {
                return Err(fleet_err(
                    &path,
                    "match: give at least one of macs, hostname, machineId",
                ));
            }
            let render = match &f.render {
                Some(list) => list
                    .iter()
                    .map(|p| {
                        safe_relative(p).ok_or_else(|| {
                            fleet_err(
                                &path,
                                &format!(
                                    "render: {p:?} must be a relative path inside the repository"
                                ),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                None => vec![PathBuf::from("clusters").join(&f.cluster)],
            };
            for t in &f.taints {
                if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&t.effect.as_str()) {
                    return Err(fleet_err(
                        &path,
                        &format!(
                            "taints: {:?} has effect {:?}; use NoSchedule, PreferNoSchedule or NoExecute",
                            t.key, t.effect
                        ),
                    ));
                }
            }
            let entry = NodeEntry {
                name,
                file: path.clone(),
                cluster: f.cluster,
                role: f.role,
                group: f.group,
                macs,
                hostname: f.matcher.hostname,
                machine_id,
                labels: f.labels,
                annotations: f.annotations,
                taints: f.taints,
                values: mapping_or_empty(&path, "values", f.values)?,
                render,
            };
            for other in &nodes {
                let dup = |key: &'static str, value: String| RenderError::DuplicateNodeMatch {
                    key,
                    value,
                    first: other.name.clone(),
                    second: entry.name.clone(),
                };
                if let Some(m) = entry.macs.iter().find(|m| other.macs.contains(m)) {
                    return Err(dup("MAC", m.clone()));
                }
                if entry.hostname.is_some() && entry.hostname == other.hostname {
                    return Err(dup("hostname", entry.hostname.clone().unwrap_or_default()));
                }
                if entry.machine_id.is_some() && entry.machine_id == other.machine_id {
                    return Err(dup(
                        "machine id",
                        entry.machine_id.clone().unwrap_or_default(),
                    ));
                }
            }
            nodes.push(entry);
        }

        Ok(Fleet {
            root: repo_root.to_path_buf(),
            settings,
            defaults,
            clusters,
            groups,
            nodes,
        })
    }

    /// Fleet-wide settings (desired OS version, update policy).
    pub fn settings(&self) -> &FleetSettings {
        &self.settings
    }

    /// Names of all node entries, sorted.
    pub fn node_names(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.name.as_str()).collect()
    }

    /// Names of all clusters, sorted.
    pub fn cluster_names(&self) -> Vec<&str> {
        self.clusters.keys().map(String::as_str).collect()
    }

    /// Find this node's entry: by machine id, else by MAC, else by hostname.
    pub fn resolve(&self, id: &NodeIdentity) -> Result<NodePlan, RenderError> {
        if let Some(mid) = id.machine_id.as_deref().and_then(normalize_machine_id) {
            let hits: Vec<&NodeEntry> = self
                .nodes
                .iter()
                .filter(|n| n.machine_id.as_deref() == Some(mid.as_str()))
                .collect();
            if let Some(plan) = self.pick(hits, "machine id", MatchedBy::MachineId, id)? {
                return Ok(plan);
            }
        }
        let macs: Vec<String> = id.macs.iter().filter_map(|m| normalize_mac(m)).collect();
        let hits: Vec<&NodeEntry> = self
            .nodes
            .iter()
            .filter(|n| n.macs.iter().any(|m| macs.contains(m)))
            .collect();
        if let Some(plan) = self.pick(hits, "MAC address", MatchedBy::Mac, id)? {
            return Ok(plan);
        }
        if !id.hostname.is_empty() {
            let hits: Vec<&NodeEntry> = self
                .nodes
                .iter()
                .filter(|n| n.hostname.as_deref() == Some(id.hostname.as_str()))
                .collect();
            if let Some(plan) = self.pick(hits, "hostname", MatchedBy::Hostname, id)? {
                return Ok(plan);
            }
        }
        Err(RenderError::NoNodeEntry {
            nodes_dir: self.root.join("nodes"),
            identity: id.to_string(),
        })
    }

    /// The plan of the entry named `name` (for `cairnctl render --node NAME`).
    /// Facts the entry does not declare (hostname, MACs) are left empty.
    pub fn plan_for(&self, name: &str) -> Result<NodePlan, RenderError> {
        let entry =
            self.nodes
                .iter()
                .find(|n| n.name == name)
                .ok_or_else(|| RenderError::UnknownNode {
                    nodes_dir: self.root.join("nodes"),
                    name: name.to_string(),
                })?;
        Ok(self.plan(entry, &NodeIdentity::default(), MatchedBy::Name))
    }

    fn pick(
        &self,
        hits: Vec<&NodeEntry>,
        by: &'static str,
        how: MatchedBy,
        id: &NodeIdentity,
    ) -> Result<Option<NodePlan>, RenderError> {
        match hits.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(self.plan(one, id, how))),
            many => Err(RenderError::AmbiguousNode {
                by,
                candidates: many.iter().map(|n| n.name.clone()).collect(),
            }),
        }
    }

    fn plan(&self, n: &NodeEntry, id: &NodeIdentity, how: MatchedBy) -> NodePlan {
        let cluster = &self.clusters[&n.cluster];
        let mut values = self.defaults.clone();
        merge_values(&mut values, &cluster.values);
        if let Some(g) = &n.group {
            merge_values(&mut values, &self.groups[g]);
        }
        merge_values(&mut values, &n.values);

        let hostname = n
            .hostname
            .clone()
            .or_else(|| (!id.hostname.is_empty()).then(|| id.hostname.clone()))
            .unwrap_or_else(|| n.name.clone());
        let machine_id = n
            .machine_id
            .clone()
            .or_else(|| id.machine_id.as_deref().and_then(normalize_machine_id));
        let macs: Vec<String> = if n.macs.is_empty() {
            id.macs.iter().filter_map(|m| normalize_mac(m)).collect()
        } else {
            n.macs.clone()
        };
        let mut node = Map::new();
        node.insert("name".into(), Value::String(n.name.clone()));
        node.insert("hostname".into(), Value::String(hostname));
        node.insert(
            "machineId".into(),
            machine_id.map(Value::String).unwrap_or(Value::Null),
        );
        node.insert(
            "macs".into(),
            Value::Array(macs.into_iter().map(Value::String).collect()),
        );
        node.insert("role".into(), Value::String(n.role.clone()));
        node.insert("cluster".into(), Value::String(n.cluster.clone()));
        node.insert(
            "group".into(),
            n.group.clone().map(Value::String).unwrap_or(Value::Null),
        );
        node.insert(
            "labels".into(),
            Value::Object(
                n.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
        );
        log::debug!(
            "node entry {} ({}) matched by {how:?}",
            n.name,
            n.file.display()
        );
        NodePlan {
            name: n.name.clone(),
            cluster: n.cluster.clone(),
            role: n.role.clone(),
            group: n.group.clone(),
            entries: n.render.clone(),
            context: TemplateContext {
                cluster: Value::Object(cluster.info.clone()),
                node: Value::Object(node),
                values,
            },
            matched_by: how,
            node_metadata: NodeMetadata {
                labels: n.labels.clone(),
                annotations: n.annotations.clone(),
                taints: n.taints.clone(),
            },
        }
    }
}

/// Lowercase, `:`-separated; accepts `-` separators. None if not a MAC.
pub fn normalize_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.trim().split([':', '-']).collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(parts.join(":").to_ascii_lowercase())
}

fn normalize_machine_id(s: &str) -> Option<String> {
    let s = s.trim();
    (s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A relative path without `..`, or None.
pub(crate) fn safe_relative(p: &str) -> Option<PathBuf> {
    let path = PathBuf::from(p);
    let ok = !p.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    ok.then_some(path)
}

fn fleet_err(path: &Path, message: &str) -> RenderError {
    RenderError::FleetFile {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn read_value(path: &Path) -> Result<Value, RenderError> {
    let text = std::fs::read_to_string(path).map_err(|e| RenderError::io(path, e))?;
    crate::yaml::parse_single(&text, path)
}

fn read_typed<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, RenderError> {
    let v = read_value(path)?;
    serde_json::from_value(v).map_err(|e| fleet_err(path, &e.to_string()))
}

fn mapping_or_empty(path: &Path, field: &str, v: Option<Value>) -> Result<Value, RenderError> {
    match v {
        None | Some(Value::Null) => Ok(Value::Object(Map::new())),
        Some(v @ Value::Object(_)) => Ok(v),
        Some(_) => Err(fleet_err(path, &format!("{field} must be a mapping"))),
    }
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, RenderError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| RenderError::io(dir, e))? {
        let e = e.map_err(|e| RenderError::io(dir, e))?;
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        out.push(e.path());
    }
    out.sort();
    Ok(out)
}

fn is_yaml(p: &Path) -> bool {
    p.is_file()
        && matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml") | Some("yml")
        )
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_contains() {
        let w = MaintenanceWindow {
            days: vec!["Sat".into()],
            start: "23:00".into(),
            duration: "2h".into(),
        };
        w.validate().unwrap();
        let sat = 5 * 24 * 60;
        assert!(w.contains(sat + 23 * 60));
        assert!(w.contains(sat + 24 * 60 + 59)); // Sunday 00:59
        assert!(!w.contains(sat + 24 * 60 + 60));
        assert!(!w.contains(sat + 22 * 60));
    }

    #[test]
    fn update_policy_window_in_unix_time_and_gate_settings() {
        let mut p = UpdatePolicy::default();
        assert!(p.in_window(0), "no window: always");
        assert_eq!(p.health_timeout_seconds(), Ok(900));
        assert_eq!(p.drain_timeout_seconds(), Ok(600));
        p.maintenance_window = Some(MaintenanceWindow {
            days: vec!["Sat".into()],
            start: "23:00".into(),
            duration: "2h".into(),
        });
        // 2026-11-28 is a Saturday: 23:30 UTC is inside, 22:59 is not
        let sat_2330 = 1_795_908_600; // date -u -d '2026-11-28 23:30' +%s
        assert!(p.in_window(sat_2330));
        assert!(!p.in_window(sat_2330 - 31 * 60));
        assert!(p.in_window(sat_2330 + 89 * 60), "Sunday 00:59");
        assert!(!p.in_window(sat_2330 + 91 * 60));
        p.health_timeout = "soon".into();
        let e = p.health_timeout_seconds().unwrap_err();
        assert!(
            e.contains("update.healthTimeout") && e.contains("soon"),
            "{e}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m"), Some(90));
        assert_eq!(parse_duration("45m"), Some(45));
        assert_eq!(parse_duration("45"), None);
        assert_eq!(parse_duration("h"), None);
    }

    #[test]
    fn macs() {
        assert_eq!(
            normalize_mac("52-54-00-12-34-AB").as_deref(),
            Some("52:54:00:12:34:ab")
        );
        assert_eq!(normalize_mac("52:54:00:12:34"), None);
    }
}
