//! A kustomize-compatible build, implemented natively.
//!
//! The steps follow kustomize v5's `KustTarget.AccumulateTarget`:
//! resources (files, directories) → components → generators → transformers
//! in kustomize's fixed order (patchesStrategicMerge, patches, namespace,
//! namePrefix, nameSuffix, labels/commonLabels, commonAnnotations,
//! patchesJson6902, replicas, images, replacements). When the top-level
//! build is done, generated ConfigMaps/Secrets get their content-hash suffix
//! and name references are rewritten to the final names.

mod fieldpath;
mod generator;
mod json6902;
mod nameref;
mod order;
mod replacement;
mod resource;
mod selector;
mod smp;
mod transform;
mod types;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::RenderError;
use crate::template::{render_template, TemplateContext};

pub(crate) use order::sort_for_apply;
use resource::ResId;
pub(crate) use resource::Resource;
use types::{KustKind, Kustomization};

/// File names kustomize looks for, in its order. A `.j2` suffix marks a template.
const KUSTOMIZATION_FILES: &[&str] = &[
    "kustomization.yaml",
    "kustomization.yml",
    "Kustomization",
    "kustomization.yaml.j2",
    "kustomization.yml.j2",
];

/// Reads files for one build: renders `.j2` files, keeps reads inside the
/// allowed roots, detects cycles.
pub(crate) struct Loader<'a> {
    ctx: &'a TemplateContext,
    /// Canonical directory no read may leave (the fleet repo root), if any.
    boundary: Option<PathBuf>,
    /// Canonical directories of the kustomizations being built (cycle check).
    stack: Vec<PathBuf>,
}

/// Build the kustomization in `dir`: the objects `kustomize build` prints.
pub(crate) fn build(
    dir: &Path,
    ctx: &TemplateContext,
    boundary: Option<&Path>,
) -> Result<Vec<Resource>, RenderError> {
    let boundary = match boundary {
        Some(b) => Some(b.canonicalize().map_err(|e| RenderError::io(b, e))?),
        None => None,
    };
    let mut loader = Loader {
        ctx,
        boundary,
        stack: Vec::new(),
    };
    let mut resources = loader.accumulate(dir, KustKind::Kustomization, Vec::new())?;
    generator::add_hash_suffixes(&mut resources)?;
    nameref::fix_references(&mut resources)?;
    Ok(resources)
}

impl Loader<'_> {
    fn canonical(
        &self,
        path: &Path,
        file: &Path,
        field: &'static str,
    ) -> Result<PathBuf, RenderError> {
        let c = path.canonicalize().map_err(|e| RenderError::BadEntry {
            file: file.to_path_buf(),
            field,
            entry: path.display().to_string(),
            message: format!("cannot be read: {e}"),
        })?;
        if let Some(b) = &self.boundary {
            if !c.starts_with(b) {
                return Err(RenderError::BadEntry {
                    file: file.to_path_buf(),
                    field,
                    entry: path.display().to_string(),
                    message: format!("is outside the repository root {}", b.display()),
                });
            }
        }
        Ok(c)
    }

    /// Resolve `entry` (relative to the kustomization directory `dir`) to a
    /// file that must be inside `dir` (kustomize's default load restriction).
    fn file_in(
        &self,
        dir: &Path,
        entry: &str,
        kfile: &Path,
        field: &'static str,
    ) -> Result<PathBuf, RenderError> {
        if is_remote(entry) {
            return Err(remote_err(kfile, field, entry));
        }
        let path = join(dir, entry);
        let c = self.canonical(&path, kfile, field)?;
        let cdir = self.canonical(dir, kfile, field)?;
        if !c.starts_with(&cdir) {
            return Err(RenderError::BadEntry {
                file: kfile.to_path_buf(),
                field,
                entry: entry.to_string(),
                message: format!(
                    "is not in or below {} (kustomize's load restriction; move the file or use a base directory)",
                    dir.display()
                ),
            });
        }
        if !c.is_file() {
            return Err(RenderError::BadEntry {
                file: kfile.to_path_buf(),
                field,
                entry: entry.to_string(),
                message: "is not a file".into(),
            });
        }
        Ok(path)
    }

    /// Read a file; `.j2` files are rendered with the template context.
    pub(crate) fn read(&self, path: &Path) -> Result<String, RenderError> {
        let text = std::fs::read_to_string(path).map_err(|e| RenderError::io(path, e))?;
        if path.extension().and_then(|e| e.to_str()) == Some("j2") {
            render_template(&text, path, self.ctx)
        } else {
            Ok(text)
        }
    }

    /// Read raw bytes (generator files); `.j2` files are rendered.
    pub(crate) fn read_bytes(&self, path: &Path) -> Result<Vec<u8>, RenderError> {
        if path.extension().and_then(|e| e.to_str()) == Some("j2") {
            return self.read(path).map(String::into_bytes);
        }
        std::fs::read(path).map_err(|e| RenderError::io(path, e))
    }

    fn kustomization_file(&self, dir: &Path) -> Result<PathBuf, RenderError> {
        let found: Vec<PathBuf> = KUSTOMIZATION_FILES
            .iter()
            .map(|f| dir.join(f))
            .filter(|p| p.is_file())
            .collect();
        match found.len() {
            0 => Err(RenderError::NotAKustomization {
                dir: dir.to_path_buf(),
            }),
            1 => Ok(found.into_iter().next().expect("one element")),
            _ => Err(RenderError::InvalidField {
                file: found[0].clone(),
                field: "(file)".into(),
                message: format!(
                    "found several kustomization files in {}: {}",
                    dir.display(),
                    found
                        .iter()
                        .map(|p| p
                            .file_name()
                            .unwrap_or_default()
                            .to_string_lossy()
                            .into_owned())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }

    /// Build one kustomization (or apply one component to `input`).
    fn accumulate(
        &mut self,
        dir: &Path,
        expect: KustKind,
        input: Vec<Resource>,
    ) -> Result<Vec<Resource>, RenderError> {
        let kfile = self.kustomization_file(dir)?;
        let text = self.read(&kfile)?;
        let doc = crate::yaml::parse_single(&text, &kfile)?;
        let k = Kustomization::parse(doc, &kfile)?;
        if k.kind != expect {
            return Err(RenderError::InvalidField {
                file: kfile,
                field: "kind".into(),
                message: match expect {
                    KustKind::Kustomization => {
                        "a Component can only be used from `components`, not `resources`".into()
                    }
                    KustKind::Component => "`components` entries must have kind: Component".into(),
                },
            });
        }
        let cdir = self.canonical(dir, &kfile, "resources")?;
        if self.stack.contains(&cdir) {
            return Err(RenderError::Cycle {
                file: kfile,
                dir: dir.to_path_buf(),
            });
        }
        self.stack.push(cdir);
        let result = self.accumulate_inner(dir, &kfile, &k, input);
        self.stack.pop();
        result
    }

    fn accumulate_inner(
        &mut self,
        dir: &Path,
        kfile: &Path,
        k: &Kustomization,
        mut rm: Vec<Resource>,
    ) -> Result<Vec<Resource>, RenderError> {
        // 1. resources: files and directories, in order.
        let mut seen: HashMap<IdKey, usize> = HashMap::new();
        for (i, r) in rm.iter().enumerate() {
            seen.insert(id_key(&r.id()), i);
        }
        for entry in &k.resources {
            if is_remote(entry) {
                return Err(remote_err(kfile, "resources", entry));
            }
            let path = join(dir, entry);
            if path.is_dir() {
                self.canonical(&path, kfile, "resources")?;
                let sub = self.accumulate(&path, KustKind::Kustomization, Vec::new())?;
                for r in sub {
                    append(&mut rm, &mut seen, r)?;
                }
            } else if path.is_file() {
                let path = self.file_in(dir, entry, kfile, "resources")?;
                for r in self.load_objects(&path)? {
                    append(&mut rm, &mut seen, r)?;
                }
            } else {
                return Err(RenderError::BadEntry {
                    file: kfile.to_path_buf(),
                    field: "resources",
                    entry: entry.clone(),
                    message: "no such file or directory".into(),
                });
            }
        }
        // 2. components, each applied to everything accumulated so far.
        for entry in &k.components {
            if is_remote(entry) {
                return Err(remote_err(kfile, "components", entry));
            }
            let path = join(dir, entry);
            if !path.is_dir() {
                return Err(RenderError::BadEntry {
                    file: kfile.to_path_buf(),
                    field: "components",
                    entry: entry.clone(),
                    message: "is not a directory".into(),
                });
            }
            self.canonical(&path, kfile, "components")?;
            rm = self.accumulate(&path, KustKind::Component, rm)?;
        }
        // 3. generators.
        generator::run(self, dir, kfile, k, &mut rm)?;
        // 4. transformers, in kustomize's order.
        smp::run_patches_strategic_merge(self, dir, kfile, k, &mut rm)?;
        smp::run_patches(self, dir, kfile, k, &mut rm)?;
        if let Some(ns) = &k.namespace {
            transform::namespace(kfile, ns, &mut rm)?;
        }
        if let Some(p) = &k.name_prefix {
            transform::prefix_suffix(p, "", &mut rm);
        }
        if let Some(s) = &k.name_suffix {
            transform::prefix_suffix("", s, &mut rm);
        }
        transform::labels(kfile, k, &mut rm)?;
        transform::annotations(kfile, &k.common_annotations, &mut rm)?;
        json6902::run_patches_json6902(self, dir, kfile, k, &mut rm)?;
        transform::replicas(kfile, &k.replicas, &mut rm)?;
        transform::images(kfile, &k.images, &mut rm)?;
        replacement::run(self, dir, kfile, &k.replacements, &mut rm)?;
        Ok(rm)
    }

    /// Parse a resource file into objects (a `kind: List` is expanded).
    fn load_objects(&self, path: &Path) -> Result<Vec<Resource>, RenderError> {
        let text = self.read(path)?;
        let mut out = Vec::new();
        for (index, doc) in crate::yaml::parse_stream(&text, path)?
            .into_iter()
            .enumerate()
        {
            let is_list = doc.get("kind").and_then(Value::as_str) == Some("List")
                || (doc
                    .get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.ends_with("List"))
                    && doc.get("items").is_some_and(Value::is_array));
            if is_list {
                let items = doc
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for item in items {
                    out.push(Resource::new(item, path.to_path_buf(), index)?);
                }
            } else {
                out.push(Resource::new(doc, path.to_path_buf(), index)?);
            }
        }
        Ok(out)
    }
}

/// Refuse two objects with the same id (objects of several builds).
pub(crate) fn check_unique(all: &[Resource]) -> Result<(), RenderError> {
    let mut seen: HashMap<IdKey, usize> = HashMap::new();
    for (i, r) in all.iter().enumerate() {
        if let Some(&j) = seen.get(&id_key(&r.id())) {
            return Err(RenderError::DuplicateObject {
                file: r.file.clone(),
                object: r.id().to_string(),
                other: all[j].file.clone(),
            });
        }
        seen.insert(id_key(&r.id()), i);
    }
    Ok(())
}

/// What makes two objects "the same": group, version, kind, name and
/// effective namespace.
type IdKey = (String, String, String, String, String);

fn id_key(id: &ResId) -> IdKey {
    (
        id.group.clone(),
        id.version.clone(),
        id.kind.clone(),
        id.name.clone(),
        id.effective_namespace().to_string(),
    )
}

/// Add a resource, refusing a second object with the same id.
fn append(
    rm: &mut Vec<Resource>,
    seen: &mut HashMap<IdKey, usize>,
    r: Resource,
) -> Result<(), RenderError> {
    let id = r.id();
    let key = id_key(&id);
    if let Some(&i) = seen.get(&key) {
        return Err(RenderError::DuplicateObject {
            file: r.file.clone(),
            object: id.to_string(),
            other: rm[i].file.clone(),
        });
    }
    seen.insert(key, rm.len());
    rm.push(r);
    Ok(())
}

/// `dir.join(entry)`, cleaned lexically like Go's `filepath.Join`
/// (`a/b/../c` → `a/c`), so messages show readable paths.
pub(crate) fn join(dir: &Path, entry: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in dir.join(entry).components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                let last_is_normal = matches!(
                    out.components().next_back(),
                    Some(std::path::Component::Normal(_))
                );
                if last_is_normal {
                    out.pop();
                } else {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn is_remote(entry: &str) -> bool {
    entry.contains("://")
        || entry.starts_with("git@")
        || entry.starts_with("github.com/")
        || entry.starts_with("gitlab.com/")
        || entry.starts_with("bitbucket.org/")
}

fn remote_err(kfile: &Path, field: &'static str, entry: &str) -> RenderError {
    RenderError::BadEntry {
        file: kfile.to_path_buf(),
        field,
        entry: entry.to_string(),
        message: "remote resources are not supported: the fleet repository must be self-contained (vendor the base into the repo)".into(),
    }
}
