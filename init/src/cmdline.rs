//! The kernel command line, as far as stage 1 cares.
//!
//! cairn-init reads only `cairn.*` keys and passes everything else through to
//! the kernel and systemd untouched. Unknown `cairn.*` keys are an error, so a
//! typo in a boot entry is seen at once instead of silently ignored.

use std::collections::BTreeMap;

use crate::InitError;

/// How the root filesystem reaches this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Network boot: the rootfs image arrived as an extra initrd and lives in
    /// the initramfs; state is on tmpfs.
    Pxe,
}

/// What to do when stage 1 fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Reboot, so boot counting can pick the other slot (the default).
    Reboot,
    /// Stop and keep the console readable (for debugging a boot by hand).
    Halt,
}

/// The parsed `cairn.*` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    pub mode: Mode,
    /// Hostname to set before systemd starts (`cairn.hostname=`), if any.
    pub hostname: Option<String>,
    pub on_failure: OnFailure,
    /// Extra modules to load on top of the image's list (`cairn.modules=a,b`).
    pub extra_modules: Vec<String>,
    /// Program to exec in the new root (`cairn.init=`), default systemd.
    pub init: String,
}

const KNOWN: &[&str] = &[
    "cairn.mode",
    "cairn.hostname",
    "cairn.on_failure",
    "cairn.modules",
    "cairn.init",
];

impl Cmdline {
    /// Parse `/proc/cmdline` content.
    pub fn parse(raw: &str) -> Result<Cmdline, InitError> {
        let mut kv = BTreeMap::new();
        for word in split_words(raw) {
            let Some(rest) = word.strip_prefix("cairn.") else {
                continue;
            };
            let (key, value) = match rest.split_once('=') {
                Some((k, v)) => (format!("cairn.{k}"), v.to_string()),
                None => (format!("cairn.{rest}"), String::new()),
            };
            if !KNOWN.contains(&key.as_str()) {
                return Err(InitError::Cmdline(format!(
                    "unknown parameter {key} (known: {})",
                    KNOWN.join(", ")
                )));
            }
            kv.insert(key, value);
        }
        let mode = match kv.get("cairn.mode").map(String::as_str) {
            None | Some("pxe") => Mode::Pxe,
            Some(other) => {
                return Err(InitError::Cmdline(format!(
                    "cairn.mode={other} is not supported (expected pxe)"
                )))
            }
        };
        let on_failure = match kv.get("cairn.on_failure").map(String::as_str) {
            None | Some("reboot") => OnFailure::Reboot,
            Some("halt") => OnFailure::Halt,
            Some(other) => {
                return Err(InitError::Cmdline(format!(
                    "cairn.on_failure={other} is not supported (expected reboot or halt)"
                )))
            }
        };
        let hostname = match kv.get("cairn.hostname") {
            None => None,
            Some(h) if valid_hostname(h) => Some(h.clone()),
            Some(h) => {
                return Err(InitError::Cmdline(format!(
                    "cairn.hostname={h:?} is not a valid hostname (lowercase letters, digits, '-' and '.', at most 63 characters)"
                )))
            }
        };
        let extra_modules = kv
            .get("cairn.modules")
            .map(|m| {
                m.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let init = kv
            .get("cairn.init")
            .cloned()
            .unwrap_or_else(|| "/usr/lib/systemd/systemd".to_string());
        Ok(Cmdline {
            mode,
            hostname,
            on_failure,
            extra_modules,
            init,
        })
    }
}

/// Split like the kernel does: on whitespace, with double quotes grouping.
fn split_words(raw: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in raw.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && !h.starts_with('-')
        && h.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_no_cairn_keys() {
        let c = Cmdline::parse("console=ttyS0 quiet root=/dev/x\n").unwrap();
        assert_eq!(c.mode, Mode::Pxe);
        assert_eq!(c.on_failure, OnFailure::Reboot);
        assert_eq!(c.hostname, None);
        assert_eq!(c.init, "/usr/lib/systemd/systemd");
        assert!(c.extra_modules.is_empty());
    }

    #[test]
    fn parses_all_keys() {
        let c = Cmdline::parse(
            "console=ttyS0 cairn.mode=pxe cairn.hostname=node1 cairn.on_failure=halt cairn.modules=e1000e,igb cairn.init=/bin/sh",
        )
        .unwrap();
        assert_eq!(c.hostname.as_deref(), Some("node1"));
        assert_eq!(c.on_failure, OnFailure::Halt);
        assert_eq!(c.extra_modules, vec!["e1000e", "igb"]);
        assert_eq!(c.init, "/bin/sh");
    }

    #[test]
    fn quotes_group_words() {
        let w = split_words("a \"b c\" d=\"e f\"");
        assert_eq!(w, vec!["a", "b c", "d=e f"]);
    }

    #[test]
    fn unknown_cairn_key_is_an_error_naming_it() {
        let e = Cmdline::parse("cairn.hostnme=x").unwrap_err();
        assert!(e.to_string().contains("cairn.hostnme"), "{e}");
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(Cmdline::parse("cairn.mode=floppy").is_err());
        assert!(Cmdline::parse("cairn.on_failure=explode").is_err());
        assert!(Cmdline::parse("cairn.hostname=Bad_Host").is_err());
        assert!(Cmdline::parse("cairn.hostname=").is_err());
    }
}
