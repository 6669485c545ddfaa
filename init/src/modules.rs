//! Kernel module dependency resolution from `modules.dep` and `modules.builtin`.
//!
//! Pure: the loader in [`crate::sys`] does the `finit_module` calls in the
//! order [`ModuleIndex::load_order`] returns.

use std::collections::{BTreeMap, BTreeSet};

use crate::InitError;

/// Module names are compared with `-` and `_` treated alike, as the kernel does.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The parsed index of one kernel's modules.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    /// normalized name -> (path relative to the modules dir, direct dependency names)
    modules: BTreeMap<String, (String, Vec<String>)>,
    builtin: BTreeSet<String>,
    /// normalized name -> soft dependencies loaded before it (names or aliases)
    softdep_pre: BTreeMap<String, Vec<String>>,
    /// alias -> module names, in file order
    aliases: BTreeMap<String, Vec<String>>,
}

fn name_of(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file
        .strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))
        .or_else(|| file.strip_suffix(".ko.zst"))
        .or_else(|| file.strip_suffix(".ko.gz"))
        .unwrap_or(file);
    normalize(stem)
}

impl ModuleIndex {
    /// Parse `modules.dep` and `modules.builtin` text.
    pub fn parse(modules_dep: &str, modules_builtin: &str) -> Result<ModuleIndex, InitError> {
        let mut modules = BTreeMap::new();
        for (n, line) in modules_dep.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((path, deps)) = line.split_once(':') else {
                return Err(InitError::Modules(format!(
                    "modules.dep line {}: expected 'path: deps', got {line:?}",
                    n + 1
                )));
            };
            let deps = deps.split_whitespace().map(name_of).collect();
            modules.insert(name_of(path), (path.to_string(), deps));
        }
        let builtin = modules_builtin
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(name_of)
            .collect();
        Ok(ModuleIndex {
            modules,
            builtin,
            ..Default::default()
        })
    }

    /// Add `modules.softdep` (`softdep NAME pre: A B post: C`) and
    /// `modules.alias` (`alias ALIAS NAME`). Pre soft dependencies are loaded
    /// before the module when they can be found; a missing one is skipped,
    /// as modprobe does. (`libcrc32c` needs `crc32c` this way, and erofs
    /// needs libcrc32c.)
    pub fn with_soft_deps(mut self, softdep: &str, alias: &str) -> ModuleIndex {
        for line in softdep.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(name) = words.next() else { continue };
            let mut pre = Vec::new();
            let mut in_pre = false;
            for w in words {
                match w {
                    "pre:" => in_pre = true,
                    "post:" => in_pre = false,
                    w if in_pre => pre.push(w.to_string()),
                    _ => {}
                }
            }
            self.softdep_pre
                .entry(normalize(name))
                .or_default()
                .extend(pre);
        }
        for line in alias.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(a), Some(m)) = (words.next(), words.next(), words.next()) {
                self.aliases
                    .entry(a.to_string())
                    .or_default()
                    .push(normalize(m));
            }
        }
        self
    }

    /// A soft dependency's module: the name itself, else the first alias
    /// target that is loadable or built in.
    fn resolve_soft(&self, dep: &str) -> Option<String> {
        let n = normalize(dep);
        if self.modules.contains_key(&n) || self.builtin.contains(&n) {
            return Some(n);
        }
        self.aliases
            .get(dep)
            .into_iter()
            .flatten()
            .find(|m| self.modules.contains_key(*m) || self.builtin.contains(*m))
            .cloned()
    }

    /// The `modules.alias` lines whose module is in `names` (for a small initramfs).
    pub fn aliases_for(&self, names: &BTreeSet<String>) -> String {
        let mut out = String::new();
        for (a, ms) in &self.aliases {
            for m in ms {
                if names.contains(m) {
                    out.push_str(&format!("alias {a} {m}\n"));
                }
            }
        }
        out
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize(name))
    }

    /// Path (relative to `/lib/modules/<release>`) of a loadable module.
    pub fn path(&self, name: &str) -> Option<&str> {
        self.modules.get(&normalize(name)).map(|(p, _)| p.as_str())
    }

    /// The module files to load, dependencies before dependents, each once.
    /// Built-in modules are satisfied already and produce no entry; a module
    /// that is neither loadable nor built in is an error naming it.
    pub fn load_order(&self, wanted: &[String]) -> Result<Vec<String>, InitError> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        for w in wanted {
            self.visit(&normalize(w), &mut done, &mut Vec::new(), &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), InitError> {
        if done.contains(name) {
            return Ok(());
        }
        if stack.iter().any(|s| s == name) {
            return Err(InitError::Modules(format!(
                "dependency cycle: {} -> {name}",
                stack.join(" -> ")
            )));
        }
        let Some((path, deps)) = self.modules.get(name) else {
            if self.builtin.contains(name) {
                done.insert(name.to_string());
                return Ok(());
            }
            return Err(InitError::Modules(format!(
                "module {name} is neither in modules.dep nor built in{}",
                stack
                    .last()
                    .map(|p| format!(" (needed by {p})"))
                    .unwrap_or_default()
            )));
        };
        stack.push(name.to_string());
        for soft in self.softdep_pre.get(name).into_iter().flatten() {
            if let Some(m) = self.resolve_soft(soft) {
                if !stack.contains(&m) {
                    self.visit(&m, done, stack, order)?;
                }
            }
        }
        for d in deps {
            self.visit(d, done, stack, order)?;
        }
        stack.pop();
        done.insert(name.to_string());
        order.push(path.clone());
        Ok(())
    }

    /// Every module file the wanted set needs, for building an initramfs.
    pub fn closure(&self, wanted: &[String]) -> Result<Vec<String>, InitError> {
        self.load_order(wanted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/erofs/erofs.ko: kernel/lib/lz4/lz4_decompress.ko
kernel/lib/lz4/lz4_decompress.ko:
kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko
kernel/drivers/md/dm-bufio.ko:
kernel/drivers/md/dm-mod.ko:
kernel/drivers/block/virtio_blk.ko:
kernel/fs/overlayfs/overlay.ko:
";
    const BUILTIN: &str = "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_pci.ko\n";

    fn idx() -> ModuleIndex {
        ModuleIndex::parse(DEP, BUILTIN).unwrap()
    }

    #[test]
    fn dependencies_come_first_and_once() {
        let order = idx()
            .load_order(&["erofs".into(), "dm_verity".into(), "dm-mod".into()])
            .unwrap();
        assert_eq!(
            order,
            vec![
                "kernel/lib/lz4/lz4_decompress.ko",
                "kernel/fs/erofs/erofs.ko",
                "kernel/drivers/md/dm-bufio.ko",
                "kernel/drivers/md/dm-mod.ko",
                "kernel/drivers/md/dm-verity.ko",
            ]
        );
    }

    #[test]
    fn dash_and_underscore_are_the_same_module() {
        let i = idx();
        assert_eq!(i.path("dm_mod"), Some("kernel/drivers/md/dm-mod.ko"));
        assert_eq!(i.path("dm-verity"), i.path("dm_verity"));
    }

    #[test]
    fn builtin_modules_need_no_file() {
        let i = idx();
        assert!(i.is_builtin("virtio_pci"));
        assert_eq!(
            i.load_order(&["virtio_pci".into()]).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn missing_module_is_named_with_its_dependent() {
        let i = ModuleIndex::parse("kernel/a.ko: kernel/b.ko\n", "").unwrap();
        let e = i.load_order(&["a".into()]).unwrap_err().to_string();
        assert!(e.contains("module b") && e.contains("needed by a"), "{e}");
    }

    #[test]
    fn pre_soft_dependencies_load_first_through_aliases_and_missing_ones_are_skipped() {
        let i = ModuleIndex::parse(
            "kernel/fs/erofs/erofs.ko: kernel/lib/libcrc32c.ko\nkernel/lib/libcrc32c.ko:\nkernel/crypto/crc32c_generic.ko:\n",
            "",
        )
        .unwrap()
        .with_soft_deps(
            "softdep libcrc32c pre: crc32c post: nothing\nsoftdep erofs pre: not-there\n",
            "alias crypto-crc32c crc32c_generic\nalias crc32c crc32c_generic\nalias other unrelated\n",
        );
        assert_eq!(
            i.load_order(&["erofs".into()]).unwrap(),
            vec![
                "kernel/crypto/crc32c_generic.ko",
                "kernel/lib/libcrc32c.ko",
                "kernel/fs/erofs/erofs.ko"
            ]
        );
        let names: BTreeSet<String> = ["crc32c_generic".to_string()].into();
        assert_eq!(
            i.aliases_for(&names),
            "alias crc32c crc32c_generic\nalias crypto-crc32c crc32c_generic\n"
        );
    }

    #[test]
    fn cycles_are_reported() {
        let i =
            ModuleIndex::parse("kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\n", "").unwrap();
        assert!(i
            .load_order(&["a".into()])
            .unwrap_err()
            .to_string()
            .contains("cycle"));
    }

    #[test]
    fn malformed_line_is_an_error_with_line_number() {
        let e = ModuleIndex::parse("kernel/a.ko\n", "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
