//! kustomize "field specs": `path` (slash-separated, `\/` escapes a slash,
//! `[]` marks a list; lists are also traversed implicitly) plus an optional
//! group/version/kind filter and `create`.

use serde_json::{Map, Value};

use super::types::FieldSpec;

/// A built-in field spec (static tables below and in other modules).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fs {
    pub path: &'static str,
    pub group: Option<&'static str>,
    pub kind: Option<&'static str>,
    pub create: bool,
}

pub(crate) const fn fs(path: &'static str, kind: Option<&'static str>, create: bool) -> Fs {
    Fs {
        path,
        group: None,
        kind,
        create,
    }
}

pub(crate) const fn fsg(
    path: &'static str,
    group: &'static str,
    kind: &'static str,
    create: bool,
) -> Fs {
    Fs {
        path,
        group: Some(group),
        kind: Some(kind),
        create,
    }
}

impl From<&FieldSpec> for OwnedFs {
    fn from(f: &FieldSpec) -> Self {
        OwnedFs::new(
            &f.path,
            f.group.as_deref(),
            f.version.as_deref(),
            f.kind.as_deref(),
            f.create,
        )
    }
}

impl From<&Fs> for OwnedFs {
    fn from(f: &Fs) -> Self {
        OwnedFs::new(f.path, f.group, None, f.kind, f.create)
    }
}

/// A field spec with owned strings (user-given or built-in).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OwnedFs {
    pub path: String,
    pub group: Option<String>,
    pub version: Option<String>,
    pub kind: Option<String>,
    pub create: bool,
    /// `path`, parsed once.
    pub segs: Vec<Seg>,
}

impl OwnedFs {
    pub fn new(
        path: &str,
        group: Option<&str>,
        version: Option<&str>,
        kind: Option<&str>,
        create: bool,
    ) -> OwnedFs {
        OwnedFs {
            path: path.to_string(),
            group: group.map(str::to_string),
            version: version.map(str::to_string),
            kind: kind.map(str::to_string),
            create,
            segs: parse_path(path),
        }
    }

    /// Does the spec's gvk filter select this group/version/kind?
    pub fn selects(&self, gvk: Gvk<'_>) -> bool {
        let ok = |want: &Option<String>, have: &str| match want {
            Some(w) if !w.is_empty() => w == have,
            _ => true,
        };
        ok(&self.group, gvk.0) && ok(&self.version, gvk.1) && ok(&self.kind, gvk.2)
    }
}

/// Borrowed (group, version, kind).
pub(crate) type Gvk<'a> = (&'a str, &'a str, &'a str);

/// One path segment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Seg {
    pub name: String,
}

/// Split `a/b\/c/d[]` into `a`, `b/c`, `d` (`[]` only documents a list).
pub(crate) fn parse_path(path: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    let mut cur = String::new();
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'/') => {
                cur.push('/');
                chars.next();
            }
            '/' => segs.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    segs.push(cur);
    segs.into_iter()
        .filter(|s| !s.is_empty())
        .map(|s| Seg {
            name: s.strip_suffix("[]").unwrap_or(&s).to_string(),
        })
        .collect()
}

/// What to create at the end of a missing path when `create` is set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Leaf {
    Map,
    Scalar,
}

/// Visit every node at `segs` under `v`, creating missing mappings (and the
/// leaf) when `create`. `f` gets the node at the end of the path.
pub(crate) fn visit(
    v: &mut Value,
    segs: &[Seg],
    create: Option<Leaf>,
    f: &mut dyn FnMut(&mut Value) -> Result<(), String>,
) -> Result<(), String> {
    let Some((first, rest)) = segs.split_first() else {
        return f(v);
    };
    match v {
        Value::Array(items) => {
            for item in items {
                visit(item, segs, create, f)?;
            }
            Ok(())
        }
        Value::Object(m) => {
            if !m.contains_key(&first.name) || m[&first.name].is_null() {
                let Some(leaf) = create else {
                    return Ok(());
                };
                let fresh = if rest.is_empty() && leaf == Leaf::Scalar {
                    Value::String(String::new())
                } else {
                    Value::Object(Map::new())
                };
                m.insert(first.name.clone(), fresh);
            }
            let child = m.get_mut(&first.name).expect("present or just inserted");
            if rest.is_empty() {
                f(child)
            } else {
                visit(child, rest, create, f)
            }
        }
        _ => Ok(()),
    }
}

/// Apply `f` at `spec` in `obj` if the spec selects `id`.
pub(crate) fn apply_fs(
    obj: &mut Value,
    gvk: Gvk<'_>,
    spec: &OwnedFs,
    leaf: Leaf,
    f: &mut dyn FnMut(&mut Value) -> Result<(), String>,
) -> Result<(), String> {
    if !spec.selects(gvk) {
        return Ok(());
    }
    visit(obj, &spec.segs, spec.create.then_some(leaf), f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn escaped_slash() {
        let s = parse_path("metadata/annotations/a.b\\/c");
        assert_eq!(s.len(), 3);
        assert_eq!(s[2].name, "a.b/c");
    }

    #[test]
    fn lists_are_traversed() {
        let mut v = json!({"spec": {"containers": [{"image": "a"}, {"image": "b"}]}});
        let mut seen = vec![];
        visit(
            &mut v,
            &parse_path("spec/containers[]/image"),
            None,
            &mut |n| {
                seen.push(n.clone());
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, vec![json!("a"), json!("b")]);
    }
}
