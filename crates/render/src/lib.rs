//! cairn's render engine: turns a fleet repository (or any kustomization
//! directory) into the list of Kubernetes objects a node must apply.
//!
//! * [`Fleet`] reads the fleet repo (`fleet.yaml`, `clusters/`, `groups/`,
//!   `nodes/`) and [`Fleet::resolve`]s a booting machine to its [`NodePlan`].
//! * [`render_node`] builds the plan's kustomization directories; [`render_dir`]
//!   builds one directory without a fleet (`cairnctl render DIR`).
//! * Rendering is kustomize-compatible (native, no `kustomize` binary): see
//!   `crates/render/README.md` for the supported fields and merge keys.
//!   Files ending in `.j2` are rendered with minijinja (strict undefined)
//!   before kustomize sees them.
//! * Output is deterministic and in apply order (Namespaces, then CRDs, then
//!   kustomize's legacy kind order, custom resources, webhooks last); see
//!   [`Rendered`].
//!
//! A render either returns every object or an error: callers never apply a
//! partial result. An empty [`Rendered`] means "nothing to apply", which is
//! distinct from `Err`.

#![forbid(unsafe_code)]

mod error;
mod fleet;
mod kust;
mod template;
mod yaml;

use std::path::Path;

pub use error::RenderError;
pub use fleet::{
    normalize_mac, parse_duration_seconds, ApplyPolicy, Fleet, FleetSettings, HealthChecks,
    MaintenanceWindow, MatchedBy, NodeIdentity, NodeMetadata, NodePlan, ObjectRef, OsSettings,
    Taint, UpdatePolicy, ROLES,
};
pub use template::{merge_values, TemplateContext};

/// The rendered objects of one render, in apply order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rendered {
    /// Each a full Kubernetes object (apiVersion, kind, metadata, ...).
    pub objects: Vec<serde_json::Value>,
}

impl Rendered {
    /// The objects as a YAML stream (`---` between documents, keys sorted),
    /// like `kustomize build` prints. Empty string when there are no objects.
    pub fn to_yaml_stream(&self) -> String {
        let mut out = String::new();
        for (i, o) in self.objects.iter().enumerate() {
            if i > 0 {
                out.push_str("---\n");
            }
            out.push_str(&yaml::to_yaml_doc(o));
        }
        out
    }

    /// True when the render succeeded and produced no objects.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

/// Render the node's desired objects, in apply order.
///
/// Every directory of `plan.entries` (relative to `repo_root`) is built as a
/// kustomization with `plan.context` for `.j2` files; no file outside
/// `repo_root` may be read. Two entries producing the same object is an error.
pub fn render_node(repo_root: &Path, plan: &NodePlan) -> Result<Rendered, RenderError> {
    let mut all: Vec<kust::Resource> = Vec::new();
    for entry in &plan.entries {
        let dir = repo_root.join(entry);
        if !dir.is_dir() {
            return Err(RenderError::NotAKustomization { dir });
        }
        all.extend(kust::build(&dir, &plan.context, Some(repo_root))?);
    }
    kust::check_unique(&all)?;
    Ok(finish(all))
}

/// Plain kustomize build of a directory (no fleet), with `ctx` for `.j2` files.
pub fn render_dir(dir: &Path, ctx: &TemplateContext) -> Result<Rendered, RenderError> {
    if !dir.is_dir() {
        return Err(RenderError::NotAKustomization {
            dir: dir.to_path_buf(),
        });
    }
    Ok(finish(kust::build(dir, ctx, None)?))
}

fn finish(resources: Vec<kust::Resource>) -> Rendered {
    let mut objects: Vec<serde_json::Value> = resources.into_iter().map(|r| r.obj).collect();
    kust::sort_for_apply(&mut objects);
    Rendered { objects }
}
