//! The one error type of this crate.
//!
//! Every variant names the file (and, once it is known, the policy) it is
//! about, so a user knows what to fix. A policy set that fails to load is never
//! partly used: the caller gets the error and nothing to check with.

use std::path::PathBuf;

/// Why a policy set could not be loaded, or a tree could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A document is not valid YAML, or does not have the shape of a policy
    /// file document (unknown field, missing field, wrong type, unknown kind).
    #[error("{}: document {doc}: {message}", path.display())]
    Format {
        path: PathBuf,
        /// 1-based index of the YAML document in the file.
        doc: usize,
        message: String,
    },

    /// A policy field has an invalid value (name, severity, match, ...).
    #[error("{}: policy {policy:?}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        policy: String,
        message: String,
    },

    /// A CEL expression of a policy does not compile, or refers to a name
    /// that does not exist.
    #[error("{}: policy {policy:?}: {field}: {message}", path.display())]
    Expression {
        path: PathBuf,
        policy: String,
        /// `expression`, `messageExpression` or `variables[NAME]`.
        field: String,
        message: String,
    },

    /// Two policies of the same origin (both baked, or both from the
    /// repository) have the same name.
    #[error("policy {name:?} is defined twice: in {} and in {}", first.display(), second.display())]
    DuplicateName {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },

    /// A repository policy has the name of a baked policy but is not the same
    /// rule with the same or a higher severity.
    #[error(
        "{}: policy {policy:?} would weaken the baked policy of the same name ({}): {what}; \
         a repository may only raise a baked policy's severity (warn -> deny) or add policies \
         with new names",
        path.display(),
        baked.display()
    )]
    Weakens {
        path: PathBuf,
        policy: String,
        baked: PathBuf,
        /// What differs, e.g. `lowers the severity from deny to warn`.
        what: String,
    },

    /// A repository file carries parameters: they come from the image only.
    #[error(
        "{}: document {doc}: PolicyParams may only be baked into the image; \
         a repository cannot change policy parameters",
        path.display()
    )]
    ParamsInRepo { path: PathBuf, doc: usize },

    /// The baked set has more than one PolicyParams document.
    #[error("PolicyParams is defined twice: in {} and in {}", first.display(), second.display())]
    DuplicateParams { first: PathBuf, second: PathBuf },

    /// Rendering the tree to check failed (see [`cairn_render::RenderError`]).
    #[error("render failed: {0}")]
    Render(#[from] cairn_render::RenderError),
}
