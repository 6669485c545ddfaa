//! The CEL environment policies are compiled against.
//!
//! What Kubernetes' ValidatingAdmissionPolicy offers, as far as it matters
//! for checking manifests, so expressions carry over between the two:
//!
//! * the CEL standard library and macros (`has`, `all`, `exists`,
//!   `exists_one`, `map`, `filter`), optional syntax (`a.?b.orValue(x)`),
//!   `matches` (RE2-compatible regular expressions), `duration()`;
//! * the strings extension (`split`, `lastIndexOf`, `lowerAscii`, ...);
//! * Kubernetes' semver library: `isSemver(s)`, `isSemver(s, normalize)`,
//!   `semver(s)`, `semver(s, normalize)`, and on its values `major()`,
//!   `minor()`, `patch()`, `compareTo(v)`, `isGreaterThan(v)`,
//!   `isLessThan(v)`.
//!
//! Not offered (no use offline, or not needed by any policy yet): `request`,
//! `authorizer`, the URL, IP/CIDR, quantity and format libraries.

use std::any::Any;
use std::sync::Arc;

use cel::common::types::{CelBool, CelInt, CelString, Type};
use cel::common::value::{StaticVal, Val};
use cel::{DeclarationError, Env, ExecutionError};

/// The environment every policy expression is compiled in.
pub(crate) fn policy_env() -> Arc<Env> {
    let mut env = Env::stdlib().with_optional_support(true);
    // Both are registered into an empty stdlib: a failure is a programming
    // error in this crate, caught by every test.
    env.add_extension(cel::extensions::strings)
        .expect("strings extension registers");
    env.add_extension(semver_library)
        .expect("semver library registers");
    Arc::new(env)
}

static SEMVER: Type = Type::new_unspecified_type("kubernetes.Semver");

/// A semantic version, as Kubernetes' CEL semver library has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Semver(semver::Version);

impl Val for Semver {
    fn get_type(&self) -> &Type {
        &SEMVER
    }

    fn cel_type() -> &'static Type {
        &SEMVER
    }

    fn equals(&self, other: &dyn Val) -> bool {
        other.downcast_ref::<Semver>().is_some_and(|o| o == self)
    }

    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}

impl StaticVal for Semver {}

/// Parse like Kubernetes: strict SemVer 2.0, or with `normalize` a leading
/// `v` and missing minor/patch numbers are accepted (`v1.2` = `1.2.0`).
fn parse_semver(s: &str, normalize: bool) -> Option<semver::Version> {
    if !normalize {
        return semver::Version::parse(s).ok();
    }
    let s = s.strip_prefix('v').unwrap_or(s);
    let split = s.find(['-', '+']).unwrap_or(s.len());
    let (core, rest) = s.split_at(split);
    let mut parts: Vec<&str> = core.split('.').collect();
    if parts.is_empty() || parts.len() > 3 {
        return None;
    }
    while parts.len() < 3 {
        parts.push("0");
    }
    // Kubernetes also strips leading zeros when normalizing.
    let parts: Vec<String> = parts
        .iter()
        .map(|p| {
            let t = p.trim_start_matches('0');
            if t.is_empty() && !p.is_empty() {
                "0".to_string()
            } else {
                t.to_string()
            }
        })
        .collect();
    semver::Version::parse(&format!("{}{rest}", parts.join("."))).ok()
}

fn is_semver(s: &CelString<'_>) -> CelBool {
    CelBool::from(parse_semver(s.inner(), false).is_some())
}

fn is_semver_normalize(s: &CelString<'_>, normalize: &CelBool) -> CelBool {
    CelBool::from(parse_semver(s.inner(), *normalize.inner()).is_some())
}

fn semver_of(s: &str, normalize: bool) -> Result<Semver, ExecutionError> {
    parse_semver(s, normalize).map(Semver).ok_or_else(|| {
        ExecutionError::function_error("semver", format!("{s:?} is not a valid semantic version"))
    })
}

fn semver(s: &CelString<'_>) -> Result<Semver, ExecutionError> {
    semver_of(s.inner(), false)
}

fn semver_normalize(s: &CelString<'_>, normalize: &CelBool) -> Result<Semver, ExecutionError> {
    semver_of(s.inner(), *normalize.inner())
}

fn major(v: &Semver) -> CelInt {
    CelInt::from(v.0.major as i64)
}

fn minor(v: &Semver) -> CelInt {
    CelInt::from(v.0.minor as i64)
}

fn patch(v: &Semver) -> CelInt {
    CelInt::from(v.0.patch as i64)
}

fn compare_to(a: &Semver, b: &Semver) -> CelInt {
    CelInt::from(a.0.cmp(&b.0) as i64)
}

fn is_greater_than(a: &Semver, b: &Semver) -> CelBool {
    CelBool::from(a.0 > b.0)
}

fn is_less_than(a: &Semver, b: &Semver) -> CelBool {
    CelBool::from(a.0 < b.0)
}

fn semver_library(env: &mut Env) -> Result<(), DeclarationError> {
    env.add_type(SEMVER.to_owned())?;
    cel::add_overload!(env, fn is_semver: (CelString) -> CelBool)?;
    cel::add_overload!(env, fn is_semver_normalize: (CelString, CelBool) -> CelBool, name = "isSemver")?;
    cel::add_overload!(env, fn semver: (CelString) -> Result<Semver>)?;
    cel::add_overload!(env, fn semver_normalize: (CelString, CelBool) -> Result<Semver>, name = "semver")?;
    cel::add_member_overload!(env, fn major: (Semver) -> CelInt)?;
    cel::add_member_overload!(env, fn minor: (Semver) -> CelInt)?;
    cel::add_member_overload!(env, fn patch: (Semver) -> CelInt)?;
    cel::add_member_overload!(env, fn compare_to: (Semver, Semver) -> CelInt)?;
    cel::add_member_overload!(env, fn is_greater_than: (Semver, Semver) -> CelBool)?;
    cel::add_member_overload!(env, fn is_less_than: (Semver, Semver) -> CelBool)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use cel::{Context, Value};

    use super::*;

    fn eval(expr: &str) -> Result<Value, ExecutionError> {
        let env = policy_env();
        let p = env.compile(expr).expect("compiles");
        p.execute(&Context::with_env(env))
    }

    #[test]
    fn semver_library_matches_kubernetes() {
        for e in [
            "isSemver('1.2.3')",
            "isSemver('1.2.3-rc.1+build.5')",
            "!isSemver('1.2')",
            "!isSemver('v1.2.3')",
            "isSemver('v1.2', true)",
            "semver('v1', true) == semver('1.0.0')",
            "semver('1.2.3').major() == 1 && semver('1.2.3').minor() == 2 && semver('1.2.3').patch() == 3",
            "semver('1.10.0').compareTo(semver('1.9.0')) == 1",
            "semver('1.0.0').compareTo(semver('1.0.0')) == 0",
            "semver('1.0.0-rc.1').isLessThan(semver('1.0.0'))",
            "semver('2.0.0').isGreaterThan(semver('1.99.99'))",
        ] {
            assert_eq!(eval(e), Ok(Value::Bool(true)), "{e}");
        }
        assert!(eval("semver('one')").is_err());
    }

    #[test]
    fn strings_extension_and_regex_are_available() {
        for e in [
            "'a:b:c'.lastIndexOf(':') == 3",
            "'a/b'.split('/') == ['a', 'b']",
            "'02:30'.matches('^([01][0-9]|2[0-3]):[0-5][0-9]$')",
            "duration('1h30m') == duration('90m')",
        ] {
            assert_eq!(eval(e), Ok(Value::Bool(true)), "{e}");
        }
    }
}
