//! The agent's configuration file (`/etc/cairn/agent.yaml`), delivered with
//! the node's configuration (never inside the signed image).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentConfig {
    pub source: SourceSettings,
    /// kubeconfig the agent applies with.
    pub kubeconfig: PathBuf,
    /// allowed_signers baked into the image (stage 1 puts it in /run/cairn/trust).
    #[serde(default = "default_trust")]
    pub trust: PathBuf,
    #[serde(default = "default_state")]
    pub state_dir: PathBuf,
    /// Kubernetes node name; defaults to the hostname.
    #[serde(default)]
    pub node_name: Option<String>,
    /// The image's policy set (the floor; the repo's `.cairn/policies` may only tighten it).
    #[serde(default = "default_policies")]
    pub policies: PathBuf,
    /// The TUF repository OS images come from. Without it a disk-booted
    /// node reports that it cannot update and keeps its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateSettings>,
}

/// Where OS updates come from (`update:`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpdateSettings {
    /// Base URL of the TUF metadata (`…/metadata`).
    pub metadata_url: String,
    /// Base URL of the TUF targets (`…/targets`).
    pub targets_url: String,
    /// The TUF root shipped in the image (stage 1 puts it in /run/cairn/trust).
    #[serde(default = "default_tuf_root")]
    pub trusted_root: PathBuf,
}

fn default_tuf_root() -> PathBuf {
    PathBuf::from("/run/cairn/trust/tuf-root.json")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SourceSettings {
    pub url: String,
    #[serde(default = "default_branch")]
    pub branch: String,
    /// Seconds between polls of the repository.
    #[serde(default = "default_interval")]
    pub interval_seconds: u64,
    /// For `ssh://` and `user@host:path` URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SourceSsh>,
}

/// ssh credentials for the source (`source.ssh:`), delivered with the
/// node's configuration like the rest of this file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SourceSsh {
    /// The deploy key (OpenSSH private key file, mode 0600).
    pub private_key: PathBuf,
    /// The server's host key(s), OpenSSH `known_hosts` format; hosts not in
    /// it are refused.
    pub known_hosts: PathBuf,
}

fn default_trust() -> PathBuf {
    PathBuf::from("/run/cairn/trust/allowed_signers")
}
fn default_state() -> PathBuf {
    PathBuf::from("/var/lib/cairn")
}
fn default_policies() -> PathBuf {
    PathBuf::from("/usr/share/cairn/policies")
}
fn default_branch() -> String {
    "main".into()
}
fn default_interval() -> u64 {
    30
}

#[derive(Debug, thiserror::Error)]
#[error("agent configuration {path}: {reason}")]
pub struct ConfigError {
    pub path: PathBuf,
    pub reason: String,
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.into(),
            reason: e.to_string(),
        })?;
        let cfg: AgentConfig = serde_yaml::from_str(&text).map_err(|e| ConfigError {
            path: path.into(),
            reason: e.to_string(),
        })?;
        if cfg.source.interval_seconds == 0 {
            return Err(ConfigError {
                path: path.into(),
                reason: "source.intervalSeconds must be at least 1".into(),
            });
        }
        Ok(cfg)
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.source.interval_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Load `yaml` as `agent.yaml` from a scratch directory.
    fn load(yaml: &str) -> Result<AgentConfig, ConfigError> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("agent.yaml");
        std::fs::write(&p, yaml).unwrap();
        AgentConfig::load(&p)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = load(
            "source:\n  url: git://10.0.2.2/fleet.git\nkubeconfig: /etc/cairn/agent.kubeconfig\n",
        )
        .unwrap();
        assert_eq!(c.source.branch, "main");
        assert_eq!(c.interval(), Duration::from_secs(30));
        assert_eq!(c.trust, PathBuf::from("/run/cairn/trust/allowed_signers"));
        assert_eq!(c.source.ssh, None);
    }

    #[test]
    fn ssh_source_takes_a_deploy_key_and_known_hosts() {
        let c = load(
            "source:\n  url: git@git.example.com:fleet.git\n  ssh:\n    privateKey: /etc/cairn/deploy-key\n    knownHosts: /etc/cairn/known_hosts\nkubeconfig: k\n",
        )
        .unwrap();
        let ssh = c.source.ssh.unwrap();
        assert_eq!(ssh.private_key, PathBuf::from("/etc/cairn/deploy-key"));
        assert_eq!(ssh.known_hosts, PathBuf::from("/etc/cairn/known_hosts"));
        // both are needed: a key without pinned host keys is refused
        let e = load("source:\n  url: git@h:r\n  ssh:\n    privateKey: /k\nkubeconfig: k\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("knownHosts"), "{e}");
    }

    #[test]
    fn unknown_keys_and_zero_interval_are_errors_naming_the_file() {
        let e = load("source:\n  url: x\n  intervl: 3\nkubeconfig: k\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("agent.yaml") && e.contains("intervl"), "{e}");
        assert!(
            load("source:\n  url: x\n  intervalSeconds: 0\nkubeconfig: k\n")
                .unwrap_err()
                .to_string()
                .contains("at least 1")
        );
    }
}
