//! Server-side apply of a rendered object set, the way a fleet needs it.
//!
//! * [`plan`] validates and orders objects into stages (Namespaces and CRDs
//!   first, webhooks last); objects of one stage are applied concurrently.
//! * [`Applier::apply`] applies under the one field manager `cairn`,
//!   tracks membership with an ApplySet ([`applyset`], KEP-3659) so it can
//!   prune what the repository no longer renders, skips members that are
//!   unchanged since the last apply (zero writes on a no-op), corrects
//!   drift, refuses conflicts with other *declarative* managers unless
//!   forced, recreates objects whose immutable fields changed only when
//!   they opt in, and waits for [`health`] with kstatus semantics.
//! * [`lease`]: one writer for cluster-scoped state among many agents.
//! * [`diff`]: server-side dry run rendered as unified diffs.

pub mod applyset;
pub mod diff;
mod engine;
pub mod health;
pub mod lease;
pub mod plan;

pub use applyset::ParentRef;
pub use engine::{Applier, Options, Report, RECREATE_ANNOTATION};
pub use plan::{plan, stage_of, Planned};

/// The one field manager cairn applies with.
pub const FIELD_MANAGER: &str = "cairn";

/// How many objects of one stage are in flight at once (default).
pub const CONCURRENCY: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("object #{index} ({what}): {reason}")]
    InvalidObject {
        index: usize,
        what: String,
        reason: String,
    },
    #[error(
        "the rendered set is empty: applying it would prune every object this repository applied; \
         if that is intended, set `apply: {{allowEmpty: true}}` in fleet.yaml (or pass --allow-empty)"
    )]
    EmptySet,
    #[error("ApplySet parent Secret {namespace}/{name}: {reason}")]
    Parent {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
}
