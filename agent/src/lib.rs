//! The cairn agent: makes this node converge to its signed fleet repository.
//!
//! One reconcile is a function of (repository, node identity, cluster):
//! fetch and verify every new commit ([`cairn_source`]), render this node's
//! objects ([`cairn_render`]), server-side apply them ([`cairn_apply`]), and
//! only then record the commit as applied. A refusal or failure at any step
//! applies nothing further, records nothing, and is reported on the Node
//! (annotations) and as a Kubernetes Event.

pub mod config;
pub mod identity;
pub mod status;

use std::path::Path;

use cairn_source::{CommitId, Source, SourceConfig, Verified};
use kube::Client;

pub use config::AgentConfig;

/// What one reconcile did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The recorded commit is the branch tip and was applied.
    Unchanged { commit: String },
    /// A new commit was verified, rendered and applied.
    Applied { commit: String, objects: usize },
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
    /// The commit last applied by this process (skip re-apply when unchanged).
    applied: Option<CommitId>,
}

impl Agent {
    pub async fn new(cfg: AgentConfig) -> Result<Agent, AgentError> {
        let trust =
            cairn_source::AllowedSigners::from_file(&cfg.trust).map_err(AgentError::Trust)?;
        let scfg = SourceConfig::new(
            cfg.source.url.clone(),
            cfg.source.branch.clone(),
            cfg.state_dir.join("source"),
            trust,
        );
        let source = Source::open(scfg).map_err(AgentError::Source)?;
        let client = client_from_kubeconfig(&cfg.kubeconfig).await?;
        let node_name = cfg
            .node_name
            .clone()
            .unwrap_or_else(|| identity::read(Path::new("/")).hostname);
        Ok(Agent {
            cfg,
            source: Some(source),
            client,
            node_name,
            applied: None,
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

    /// One pass: fetch+verify → render → apply → record.
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
        if !is_new && self.applied == Some(id) {
            return Outcome::Unchanged {
                commit: id.to_string(),
            };
        }
        let c2 = commit.clone();
        let tree = match self.with_source(move |s| s.checkout(&c2)).await {
            Ok(t) => t,
            Err(e) => {
                return Outcome::Failed {
                    step: "checkout",
                    commit: Some(id.to_string()),
                    reason: e.to_string(),
                }
            }
        };
        let ident = identity::read(Path::new("/"));
        let baked = self.cfg.policies.clone();
        let rendered = tokio::task::spawn_blocking(move || -> Result<_, (&'static str, String)> {
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
            Ok(rendered)
        })
        .await
        .expect("render task panicked");
        let rendered = match rendered {
            Ok(r) => r,
            Err((step, reason)) => {
                return Outcome::Failed {
                    step,
                    commit: Some(id.to_string()),
                    reason,
                }
            }
        };
        let report = match cairn_apply::apply(&self.client, &rendered.objects).await {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Failed {
                    step: "apply",
                    commit: Some(id.to_string()),
                    reason: e.to_string(),
                }
            }
        };
        if is_new {
            if let Err(e) = self.with_source(move |s| s.record(&commit)).await {
                return Outcome::Failed {
                    step: "record",
                    commit: Some(id.to_string()),
                    reason: e.to_string(),
                };
            }
        }
        self.applied = Some(id);
        Outcome::Applied {
            commit: id.to_string(),
            objects: report.applied.len(),
        }
    }

    /// Reconcile forever at the configured interval, reporting each outcome.
    /// An outcome that could not be reported (API server not up yet, Node
    /// not registered yet) is retried on the next pass until it is.
    pub async fn run(mut self) {
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
            tokio::time::sleep(self.cfg.interval()).await;
        }
    }
}

fn log_outcome(o: &Outcome) {
    match o {
        Outcome::Unchanged { commit } => log::debug!("commit={commit} unchanged"),
        Outcome::Applied { commit, objects } => {
            log::info!("commit={commit} objects={objects} applied")
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
