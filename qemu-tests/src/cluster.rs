//! The host's view of the node: its API server through QEMU's port forward.

use std::path::Path;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};

pub struct Cluster {
    pub client: Client,
    rt: tokio::runtime::Runtime,
}

impl Cluster {
    pub fn connect(kubeconfig: &Path) -> Result<Cluster> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let client = rt
            .block_on(cairn_agent::client_from_kubeconfig(kubeconfig))
            .context("host kubeconfig")?;
        Ok(Cluster { client, rt })
    }

    /// Run one API call with a deadline; a slow or refused call is an error
    /// the waiters retry, never a hang.
    fn block<T>(&self, f: impl std::future::Future<Output = Result<T, kube::Error>>) -> Result<T> {
        match self
            .rt
            .block_on(async { tokio::time::timeout(std::time::Duration::from_secs(20), f).await })
        {
            Ok(r) => Ok(r?),
            Err(_) => anyhow::bail!("API call took over 20 s"),
        }
    }

    /// The node, if the API server answers and the node is registered.
    pub fn node(&self, name: &str) -> Result<Option<Node>> {
        let api: Api<Node> = Api::all(self.client.clone());
        self.block(api.get_opt(name))
    }

    pub fn node_ready(&self, name: &str) -> Result<bool> {
        Ok(self.node(name)?.is_some_and(|n| {
            n.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        }))
    }

    pub fn node_annotation(&self, name: &str, key: &str) -> Result<Option<String>> {
        Ok(self
            .node(name)?
            .and_then(|n| n.metadata.annotations)
            .and_then(|a| a.get(key).cloned()))
    }

    pub fn deployment(&self, ns: &str, name: &str) -> Result<Option<Deployment>> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        self.block(api.get_opt(name))
    }

    /// (desired replicas, ready replicas) once the Deployment exists.
    pub fn deployment_replicas(&self, ns: &str, name: &str) -> Result<Option<(i32, i32)>> {
        Ok(self.deployment(ns, name)?.map(|d| {
            let want = d.spec.and_then(|s| s.replicas).unwrap_or(1);
            let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            (want, ready)
        }))
    }
}
