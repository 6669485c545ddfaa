//! The one error type of this crate.
//!
//! Every variant names what it was working on: a file (with a line when the
//! parser or template engine knows it), a Kubernetes object (`Kind/namespace/name`),
//! a kustomization field, or a fleet entry. A render that returns an error
//! produced nothing that may be applied.

use std::path::PathBuf;

/// Why a fleet load, node resolution or render failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A YAML document did not parse.
    #[error("{}{}: invalid YAML: {message}", path.display(), fmt_line(*line))]
    Yaml {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },

    /// A `.j2` template failed: syntax error, undefined variable (strict mode), bad filter...
    #[error("{}{}: template error: {message}", path.display(), fmt_line(*line))]
    Template {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },

    /// A fleet file (`fleet.yaml`, `clusters/*/cluster.yaml`, `groups/*.yaml`,
    /// `nodes/*.yaml`) has the wrong shape or an invalid value.
    #[error("{}: invalid fleet file: {message}", path.display())]
    FleetFile { path: PathBuf, message: String },

    /// Two node entries claim the same MAC address, hostname or machine id.
    #[error("node entries {first} and {second} both match {key} {value:?}")]
    DuplicateNodeMatch {
        key: &'static str,
        value: String,
        first: String,
        second: String,
    },

    /// A node entry refers to a cluster or node group that does not exist.
    #[error("node entry {node}: unknown {what} {name:?} (expected {})", expected.display())]
    UnknownReference {
        node: String,
        what: &'static str,
        name: String,
        expected: PathBuf,
    },

    /// No node entry matches this machine.
    #[error("no node entry in {} matches this machine ({identity})", nodes_dir.display())]
    NoNodeEntry {
        nodes_dir: PathBuf,
        identity: String,
    },

    /// No node entry has this name (`--node NAME`).
    #[error("no node entry named {name:?} in {}", nodes_dir.display())]
    UnknownNode { nodes_dir: PathBuf, name: String },

    /// Several entries match at the same precedence level.
    #[error("node identity is ambiguous: {by} matches entries {}", candidates.join(", "))]
    AmbiguousNode {
        by: &'static str,
        candidates: Vec<String>,
    },

    /// A directory used as a kustomization has no kustomization file.
    #[error("{}: no kustomization.yaml, kustomization.yml or Kustomization in this directory", dir.display())]
    NotAKustomization { dir: PathBuf },

    /// A kustomization uses a field cairn does not implement. Never ignored.
    #[error("{}: unsupported kustomization field `{field}`{}", file.display(), fmt_hint(hint))]
    UnsupportedField {
        file: PathBuf,
        field: String,
        hint: Option<String>,
    },

    /// A kustomization field has an invalid value.
    #[error("{}: field `{field}`: {message}", file.display())]
    InvalidField {
        file: PathBuf,
        field: String,
        message: String,
    },

    /// A `resources`/`components`/patch/generator entry could not be used.
    #[error("{}: {field} entry {entry:?}: {message}", file.display())]
    BadEntry {
        file: PathBuf,
        field: &'static str,
        entry: String,
        message: String,
    },

    /// Kustomizations include each other in a loop.
    #[error("{}: kustomization cycle: {} is already being built", file.display(), dir.display())]
    Cycle { file: PathBuf, dir: PathBuf },

    /// A document is not a Kubernetes object (no apiVersion/kind/metadata.name).
    #[error("{}: document {index}: {message}", path.display())]
    InvalidObject {
        path: PathBuf,
        index: usize,
        message: String,
    },

    /// Two objects with the same group/kind/namespace/name.
    #[error("{}: object {object} is defined twice (also in {})", file.display(), other.display())]
    DuplicateObject {
        file: PathBuf,
        object: String,
        other: PathBuf,
    },

    /// A patch could not be applied, or a strategic merge patch has no target.
    #[error("{}: patch {patch}: {message}", file.display())]
    Patch {
        file: PathBuf,
        patch: String,
        message: String,
    },

    /// A transformer found a field of the wrong type in an object.
    #[error("{}: object {object}: field {field}: {message}", file.display())]
    Transform {
        file: PathBuf,
        object: String,
        field: String,
        message: String,
    },

    /// A configMapGenerator/secretGenerator entry failed.
    #[error("{}: {generator} {name:?}: {message}", file.display())]
    Generator {
        file: PathBuf,
        generator: &'static str,
        name: String,
        message: String,
    },

    /// A replacement failed (missing source, ambiguous source, bad path).
    #[error("{}: replacement {index}: {message}", file.display())]
    Replacement {
        file: PathBuf,
        index: usize,
        message: String,
    },

    /// A name reference matches several renamed objects.
    #[error("object {object}: field {field}: {message}")]
    NameReference {
        object: String,
        field: String,
        message: String,
    },
}

fn fmt_line(line: Option<usize>) -> String {
    match line {
        Some(l) => format!(":{l}"),
        None => String::new(),
    }
}

fn fmt_hint(hint: &Option<String>) -> String {
    match hint {
        Some(h) => format!(" ({h})"),
        None => String::new(),
    }
}

impl RenderError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RenderError::Io {
            path: path.into(),
            source,
        }
    }
}
