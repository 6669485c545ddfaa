//! What a check found.

use std::collections::BTreeMap;
use std::fmt;

use crate::objects::ObjectRef;
use crate::set::Origin;
use crate::spec::Severity;

/// One policy an object did not satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub object: ObjectRef,
    pub policy: String,
    pub severity: Severity,
    /// Where the policy comes from (a baked policy raised by the repository
    /// is still `Baked`).
    pub origin: Origin,
    /// The policy's message (or what its `messageExpression` produced).
    pub message: String,
    /// The part of the expression that was not `true`, with the element of
    /// an `all()` it failed for, when cairn could narrow it down; else the
    /// whole expression. For an evaluation error, the error.
    pub failing: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.severity {
            Severity::Deny => "DENY",
            Severity::Warn => "WARN",
        };
        write!(
            f,
            "{tag} {} [{}] {}\n     failing: {}",
            self.object, self.policy, self.message, self.failing
        )
    }
}

/// The outcome of checking one rendered set (and the fleet settings).
///
/// Any `deny` violation means nothing of the set may be applied
/// ([`Report::has_deny`]); warnings are reported and the set is applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// In object order (render order, fleet settings last), then policy order.
    pub violations: Vec<Violation>,
    /// Objects checked (the fleet settings count as one).
    pub objects: usize,
    /// Policies in the set.
    pub policies: usize,
    /// How many objects each policy was evaluated on (policies that matched
    /// nothing are absent).
    pub evaluated: BTreeMap<String, usize>,
}

impl Report {
    /// True when at least one violation is a `deny`: apply nothing.
    pub fn has_deny(&self) -> bool {
        self.violations.iter().any(|v| v.severity == Severity::Deny)
    }

    pub fn denies(&self) -> impl Iterator<Item = &Violation> {
        self.violations
            .iter()
            .filter(|v| v.severity == Severity::Deny)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Violation> {
        self.violations
            .iter()
            .filter(|v| v.severity == Severity::Warn)
    }

    /// Merge another report into this one (e.g. several nodes' renders).
    pub fn extend(&mut self, other: Report) {
        self.violations.extend(other.violations);
        self.objects += other.objects;
        self.policies = self.policies.max(other.policies);
        for (k, v) in other.evaluated {
            *self.evaluated.entry(k).or_default() += v;
        }
    }

    /// The one-line summary that ends [`Display`](fmt::Display).
    pub fn summary(&self) -> String {
        let denies = self.denies().count();
        let warns = self.warnings().count();
        format!(
            "{} objects checked against {} policies: {} denied, {} warning{}{}",
            self.objects,
            self.policies,
            denies,
            warns,
            if warns == 1 { "" } else { "s" },
            if denies > 0 {
                " -> nothing will be applied"
            } else {
                ""
            }
        )
    }
}

impl fmt::Display for Report {
    /// Every violation (denies first, then warnings), then the summary.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for v in self.denies().chain(self.warnings()) {
            writeln!(f, "{v}")?;
        }
        writeln!(f, "{}", self.summary())
    }
}
