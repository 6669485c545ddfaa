//! The cairn agent: makes this node converge to its signed fleet repository.
//!
//! One reconcile is a function of (repository, node identity, cluster):
//! fetch and verify every new commit ([`cairn_source`]), render this node's
//! objects ([`cairn_render`]), server-side apply them ([`cairn_apply`]), and
//! only then record the commit as applied. A refusal or failure at any step
//! applies nothing further, records nothing, and is reported on the Node
//! (annotations) and as a Kubernetes Event.

pub mod config;
pub mod drift;
pub mod identity;
pub mod node;
pub mod os;
pub mod status;

use std::path::Path;

use std::sync::Arc;
use std::time::Duration;

use cairn_apply::lease::{LeaseLock, LeaseState};
use cairn_apply::{Applier, ParentRef};
use cairn_source::{CommitId, Source, SourceConfig, Verified};
use kube::Client;
use serde_json::Value;

pub use config::AgentConfig;

/// The ApplySet parent (a Secret in kube-system) of a cluster's objects:
/// shared by every agent of the cluster and by `cairnctl apply --node`.
pub fn applyset_name(cluster: &str) -> String {
    format!("cairn-{cluster}")
}

/// Namespace of the ApplySet parent and of the apply Lease.
pub const SYSTEM_NAMESPACE: &str = "kube-system";

/// Objects in flight at once when the agent applies.
pub const AGENT_CONCURRENCY: usize = 8;

/// Seconds an apply Lease lasts without renewal.
pub const LEASE_SECONDS: i32 = 90;

/// What one reconcile did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The recorded commit is the branch tip and was applied.
    Unchanged { commit: String },
    /// The commit's objects were applied: `changed` of `objects` were sent
    /// (a new commit, or drift corrected), `pruned` deleted.
    Applied {
        commit: String,
        objects: usize,
        changed: usize,
        pruned: usize,
    },
    /// Verified and rendered; another node holds the cluster's apply Lease
    /// and applies cluster state.
    Standby { commit: String, holder: String },
    /// The source refused the new history (unsigned, unknown key, rewind…).
    Refused {
        commit: Option<String>,
        reason: String,
    },
    /// Something failed before the commit was applied (fetch, render, apply).
    Failed {
        step: &'static str,
        commit: Option<String>,
        reason: String,
    },
}

/// Errors that stop the agent from starting at all.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("trusted signers: {0}")]
    Trust(#[source] cairn_source::SourceError),
    #[error("git source: {0}")]
    Source(#[source] cairn_source::SourceError),
    #[error("kubeconfig {path}: {reason}")]
    Kube { path: String, reason: String },
}

/// Build a client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client, AgentError> {
    let err = |reason: String| AgentError::Kube {
        path: path.display().to_string(),
        reason,
    };
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| err(e.to_string()))?;
    Client::try_from(cfg).map_err(|e| err(e.to_string()))
}

/// The agent's state between reconciles.
pub struct Agent {
    cfg: AgentConfig,
    source: Option<Source>,
    client: Client,
    node_name: String,
    /// The commit last applied by this process.
    applied: Option<CommitId>,
    /// The last verified commit's render, kept so drift can be corrected
    /// without rendering again.
    rendered: Option<Arc<RenderedCommit>>,
    applier: Option<Applier>,
    /// Wakes the loop when a managed object changes behind our back.
    drift: Arc<tokio::sync::Notify>,
    watch: drift::Watch,
    node_applied: Option<String>,
    /// The commit this process last applied (or, on a standby node,
    /// verified while another node applied) with a healthy result.
    current_ok: Option<CommitId>,
    os: os::OsUpdate,
}

/// What one verified commit renders for this node.
#[derive(Clone)]
struct RenderedCommit {
    commit: CommitId,
    cluster: String,
    objects: Vec<Value>,
    node: cairn_render::NodeMetadata,
    policy: cairn_render::ApplyPolicy,
    os_version: String,
    update: cairn_render::UpdatePolicy,
}

impl Agent {
    pub async fn new(cfg: AgentConfig) -> Result<Agent, AgentError> {
        let trust =
            cairn_source::AllowedSigners::from_file(&cfg.trust).map_err(AgentError::Trust)?;
        let mut scfg = SourceConfig::new(
            cfg.source.url.clone(),
            cfg.source.branch.clone(),
            cfg.state_dir.join("source"),
            trust,
        );
        if let Some(ssh) = &cfg.source.ssh {
            scfg.ssh.private_key = Some(ssh.private_key.clone());
            scfg.ssh.known_hosts = Some(ssh.known_hosts.clone());
        }
        let source = Source::open(scfg).map_err(AgentError::Source)?;
        let client = client_from_kubeconfig(&cfg.kubeconfig).await?;
        let node_name = cfg
            .node_name
            .clone()
            .unwrap_or_else(|| identity::read(Path::new("/")).hostname);
        let drift = Arc::new(tokio::sync::Notify::new());
        let tuf = cfg.update.as_ref().map(|u| os::images::TufSettings {
            metadata_url: u.metadata_url.clone(),
            targets_url: u.targets_url.clone(),
            trusted_root: u.trusted_root.clone(),
            metadata_dir: os::images::metadata_dir(&cfg.state_dir),
        });
        let os = os::OsUpdate::new(tuf, &cfg.state_dir);
        Ok(Agent {
            cfg,
            source: Some(source),
            watch: drift::Watch::new(client.clone(), drift.clone()),
            client,
            node_name,
            applied: None,
            rendered: None,
            applier: None,
            drift,
            node_applied: None,
            current_ok: None,
            os,
        })
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Run git work off the async threads, handing the source back afterwards.
    async fn with_source<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Source) -> T + Send + 'static,
    ) -> T {
        let mut src = self
            .source
            .take()
            .expect("source present between reconciles");
        let (src, out) = tokio::task::spawn_blocking(move || {
            let out = f(&mut src);
            (src, out)
        })
        .await
        .expect("git task panicked");
        self.source = Some(src);
        out
    }

    /// One pass: fetch+verify → render → (Lease) apply → record. A commit
    /// already rendered is not rendered again; its objects are applied on
    /// every pass, which sends only what drifted (see [`cairn_apply`]).
    pub async fn reconcile_once(&mut self) -> Outcome {
        let verified = match self.with_source(|s| s.fetch_and_verify()).await {
            Ok(v) => v,
            Err(e) if e.is_refusal() => {
                return Outcome::Refused {
                    commit: e.commit().map(|c| c.to_string()),
                    reason: e.to_string(),
                }
            }
            Err(e) => {
                return Outcome::Failed {
                    step: "fetch",
                    commit: e.commit().map(|c| c.to_string()),
                    reason: e.to_string(),
                }
            }
        };
        let (commit, is_new) = match verified {
            Verified::Unchanged(c) => (c, false),
            Verified::New(c) => (c, true),
        };
        let id = commit.id();
        if self.rendered.as_ref().map(|r| r.commit) != Some(id) {
            match self.render(&commit).await {
                Ok(r) => self.rendered = Some(Arc::new(r)),
                Err((step, reason)) => {
                    return Outcome::Failed {
                        step,
                        commit: Some(id.to_string()),
                        reason,
                    }
                }
            }
        }
        let Some(r) = self.rendered.clone() else {
            unreachable!("rendered just above")
        };

        // node-local state: every node for itself (a Node not registered
        // yet must not hold up cluster state; retried every pass)
        if let Err(e) = self.apply_node_metadata(&r.node).await {
            log::warn!("{e}");
        }

        // cluster state: one Lease holder at a time
        let lock = LeaseLock {
            namespace: SYSTEM_NAMESPACE.into(),
            name: format!("{}-apply", applyset_name(&r.cluster)),
            holder: self.node_name.clone(),
            duration_seconds: LEASE_SECONDS,
        };
        match lock.try_acquire(&self.client).await {
            Ok(LeaseState::Held) => {}
            Ok(LeaseState::HeldBy(holder)) => {
                self.current_ok = Some(id);
                return Outcome::Standby {
                    commit: id.to_string(),
                    holder,
                };
            }
            Err(e) => {
                return Outcome::Failed {
                    step: "lease",
                    commit: Some(id.to_string()),
                    reason: e.to_string(),
                }
            }
        }

        let parent = ParentRef::new(&applyset_name(&r.cluster), SYSTEM_NAMESPACE);
        if self.applier.as_ref().map(|a| a.parent()) != Some(&parent) {
            self.applier = Some(Applier::new(self.client.clone(), parent));
        }
        let first_time = self.applied != Some(id);
        let health = r.policy.health_timeout_seconds().unwrap_or(300);
        let opts = cairn_apply::Options {
            force: r.policy.force,
            prune: r.policy.prune,
            allow_empty: r.policy.allow_empty,
            // healthTimeout: 0s turns the wait off; a slot on trial is still
            // cordoned, its gate checks what it must (update.checks)
            wait: (first_time && health > 0 && !self.os.on_trial())
                .then(|| Duration::from_secs(health)),
            revision: Some(id.to_string()),
            // a node agent has time; fewer connections keep its memory small
            concurrency: AGENT_CONCURRENCY,
            ..Default::default()
        };
        let Some(applier) = self.applier.as_mut() else {
            unreachable!("set just above")
        };
        let report = match applier.apply(&r.objects, &opts).await {
            Ok(rep) => rep,
            Err(e) => {
                return Outcome::Failed {
                    step: "apply",
                    commit: Some(id.to_string()),
                    reason: e.to_string(),
                }
            }
        };
        if !report.failed.is_empty() {
            return Outcome::Failed {
                step: "apply",
                commit: Some(id.to_string()),
                reason: report.to_string(),
            };
        }
        if !report.unhealthy.is_empty() {
            return Outcome::Failed {
                step: "health",
                commit: Some(id.to_string()),
                reason: report.to_string(),
            };
        }
        self.watch.follow(applier.parent(), &r.objects).await;
        if is_new || first_time {
            if let Err(e) = self.with_source(move |s| s.record(&commit)).await {
                return Outcome::Failed {
                    step: "record",
                    commit: Some(id.to_string()),
                    reason: e.to_string(),
                };
            }
        }
        self.current_ok = Some(id);
        let changed = report.applied.len() + report.recreated.len();
        if !first_time && changed == 0 && report.pruned.is_empty() {
            return Outcome::Unchanged {
                commit: id.to_string(),
            };
        }
        self.applied = Some(id);
        Outcome::Applied {
            commit: id.to_string(),
            objects: report.members,
            changed,
            pruned: report.pruned.len(),
        }
    }

    /// The OS update step after a pass (see [`os`]).
    async fn os_step(&mut self) {
        let r = self.rendered.clone();
        let current_ok = match (&r, self.current_ok) {
            (Some(r), Some(ok)) => r.commit == ok,
            _ => false,
        };
        let ctx = os::Ctx {
            client: &self.client,
            node: &self.node_name,
            cluster: r.as_ref().map(|r| r.cluster.as_str()),
            desired: r.as_ref().map(|r| r.os_version.as_str()),
            policy: r.as_ref().map(|r| &r.update),
            current_ok,
        };
        self.os.step(&ctx).await;
    }

    async fn render(
        &mut self,
        commit: &cairn_source::VerifiedCommit,
    ) -> Result<RenderedCommit, (&'static str, String)> {
        let c2 = commit.clone();
        let tree = self
            .with_source(move |s| s.checkout(&c2))
            .await
            .map_err(|e| ("checkout", e.to_string()))?;
        let ident = identity::read(Path::new("/"));
        let baked = self.cfg.policies.clone();
        let id = commit.id();
        tokio::task::spawn_blocking(move || -> Result<RenderedCommit, (&'static str, String)> {
            let fleet = cairn_render::Fleet::load(&tree).map_err(|e| ("render", e.to_string()))?;
            let plan = fleet
                .resolve(&ident)
                .map_err(|e| ("render", e.to_string()))?;
            let rendered =
                cairn_render::render_node(&tree, &plan).map_err(|e| ("render", e.to_string()))?;
            // the image's policies are the floor; the repo may only tighten them
            let set = cairn_policy::PolicySet::load(&baked, Some(&tree))
                .map_err(|e| ("policy", e.to_string()))?;
            let report = cairn_policy::check(&rendered, fleet.settings(), &set);
            if report.has_deny() {
                return Err(("policy", report.to_string()));
            }
            for w in report.warnings() {
                log::warn!("policy warning: {w}");
            }
            Ok(RenderedCommit {
                commit: id,
                cluster: plan.cluster.clone(),
                objects: rendered.objects,
                node: plan.node_metadata.clone(),
                policy: fleet.settings().apply.clone(),
                os_version: fleet.settings().os.version.clone(),
                update: fleet.settings().update.clone(),
            })
        })
        .await
        .expect("render task panicked")
    }

    /// Server-side apply this node's labels, annotations and taints to its
    /// own Node object (field manager `cairn`), when they changed.
    async fn apply_node_metadata(&mut self, m: &cairn_render::NodeMetadata) -> Result<(), String> {
        let patch = node::node_patch(&self.node_name, m);
        let key = patch.to_string();
        if self.node_applied.as_deref() == Some(key.as_str()) {
            return Ok(());
        }
        node::apply(&self.client, &self.node_name, &patch).await?;
        self.node_applied = Some(key);
        Ok(())
    }

    /// Reconcile forever at the configured interval, reporting each outcome;
    /// `after_pass` runs after every pass (the daemon returns freed heap to
    /// the system there).
    pub async fn run_with(self, after_pass: impl Fn()) {
        self.run_inner(&after_pass).await
    }

    /// Reconcile forever at the configured interval, reporting each outcome.
    /// An outcome that could not be reported (API server not up yet, Node
    /// not registered yet) is retried on the next pass until it is.
    pub async fn run(self) {
        self.run_inner(&|| {}).await
    }

    async fn run_inner(mut self, after_pass: &dyn Fn()) {
        let mut reported: Option<Outcome> = None;
        let mut pending: Option<Outcome> = None;
        loop {
            let outcome = self.reconcile_once().await;
            log_outcome(&outcome);
            if !matches!(outcome, Outcome::Unchanged { .. }) && reported.as_ref() != Some(&outcome)
            {
                pending = Some(outcome);
            }
            if let Some(p) = pending.take() {
                match status::report(&self.client, &self.node_name, &p).await {
                    Ok(()) => reported = Some(p),
                    Err(e) => {
                        log::warn!(
                            "could not report status on node {}: {e}; will retry",
                            self.node_name
                        );
                        pending = Some(p);
                    }
                }
            }
            self.os_step().await;
            after_pass();
            let drift = self.drift.clone();
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.interval()) => {}
                _ = drift.notified() => {
                    log::info!("a managed object changed behind the agent's back: reconciling now");
                    // let a burst of edits settle into one pass
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

fn log_outcome(o: &Outcome) {
    match o {
        Outcome::Unchanged { commit } => log::debug!("commit={commit} unchanged"),
        Outcome::Applied {
            commit,
            objects,
            changed,
            pruned,
        } => log::info!(
            "commit={commit} objects={objects} changed={changed} pruned={pruned} applied"
        ),
        Outcome::Standby { commit, holder } => {
            log::info!("commit={commit} verified; cluster state is applied by {holder}")
        }
        Outcome::Refused { commit, reason } => log::error!(
            "commit={} refused: {reason}; nothing applied, the recorded commit is unchanged",
            commit.as_deref().unwrap_or("?")
        ),
        Outcome::Failed {
            step,
            commit,
            reason,
        } => log::error!(
            "step={step} commit={} failed: {reason}; will retry",
            commit.as_deref().unwrap_or("?")
        ),
    }
}
