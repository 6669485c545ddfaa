//! The kernel command line, as far as stage 1 cares.
//!
//! cairn-init reads only `cairn.*` keys and passes everything else through to
//! the kernel and systemd untouched. Unknown `cairn.*` keys are an error, so a
//! typo in a boot entry is seen at once instead of silently ignored.
//!
//! Disk mode is selected by `cairn.slot=`; the UKI that systemd-boot starts
//! carries it together with `cairn.version=` and `cairn.verity=` (see
//! `cairn_image::disk` for the whole command line):
//!
//! - `cairn.slot=a|b`: the slot whose `root-<slot>` and `verity-<slot>`
//!   partitions hold the root;
//! - `cairn.version=`: the OS version of that slot (a
//!   [`cairn_slots::OsVersion`]);
//! - `cairn.verity=`: the dm-verity root hash of `root-<slot>`, 64 hex
//!   digits (sha256). The only trusted input for the root: everything else
//!   is read from the verity superblock and checked against it by the kernel.
//!
//! `cairn.install=<disk>` is for stage 2 (`cairnctl install --from-cmdline`
//! writes a PXE-booted node to that disk); stage 1 accepts it on PXE boots
//! only.

use std::collections::BTreeMap;

use cairn_slots::{OsVersion, Slot};

use crate::InitError;

/// How the root filesystem reaches this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Network boot: the rootfs image arrived as an extra initrd and lives in
    /// the initramfs; state is on tmpfs.
    Pxe,
    /// Disk boot (`cairn.slot=`): the root is a slot's erofs partition under
    /// dm-verity, state is the `state` partition.
    Disk(DiskBoot),
}

/// The disk-mode parameters, all from the booted UKI's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskBoot {
    /// `cairn.slot=`.
    pub slot: Slot,
    /// `cairn.version=`.
    pub version: OsVersion,
    /// `cairn.verity=`, lowercase hex.
    pub root_hash: String,
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
    "cairn.slot",
    "cairn.version",
    "cairn.verity",
    // read by stage 2 (cairn-install.service): install this PXE boot to the
    // named disk; stage 1 only checks it is not on a disk boot
    "cairn.install",
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
        let mode = match (
            kv.get("cairn.mode").map(String::as_str),
            kv.contains_key("cairn.slot"),
        ) {
            (None | Some("pxe"), false) => {
                for k in ["cairn.version", "cairn.verity"] {
                    if kv.contains_key(k) {
                        return Err(InitError::Cmdline(format!(
                            "{k}= is only meaningful in disk mode, which needs cairn.slot=a|b too"
                        )));
                    }
                }
                Mode::Pxe
            }
            (None | Some("disk"), true) => {
                if kv.contains_key("cairn.install") {
                    return Err(InitError::Cmdline(
                        "cairn.install= installs a PXE boot to a disk; this is a disk boot (cairn.slot=)".into(),
                    ));
                }
                Mode::Disk(disk_boot(&kv)?)
            }
            (Some("disk"), false) => {
                return Err(InitError::Cmdline(
                    "cairn.mode=disk needs cairn.slot=a|b, cairn.version= and cairn.verity=".into(),
                ))
            }
            (Some("pxe"), true) => {
                return Err(InitError::Cmdline(
                    "cairn.mode=pxe contradicts cairn.slot= (which selects disk mode)".into(),
                ))
            }
            (Some(other), _) => {
                return Err(InitError::Cmdline(format!(
                    "cairn.mode={other} is not supported (expected pxe or disk)"
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

fn disk_boot(kv: &BTreeMap<String, String>) -> Result<DiskBoot, InitError> {
    let get = |k: &str| {
        kv.get(k).ok_or_else(|| {
            InitError::Cmdline(format!(
                "disk mode (cairn.slot=) needs {k}= too; the boot entry's UKI is incomplete"
            ))
        })
    };
    let slot = match get("cairn.slot")?.as_str() {
        "a" => Slot::A,
        "b" => Slot::B,
        other => {
            return Err(InitError::Cmdline(format!(
                "cairn.slot={other} is not a slot (expected a or b)"
            )))
        }
    };
    let version = OsVersion::new(get("cairn.version")?)
        .map_err(|e| InitError::Cmdline(format!("cairn.version=: {e}")))?;
    let root_hash = get("cairn.verity")?.to_ascii_lowercase();
    if root_hash.len() != 64 || !root_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(InitError::Cmdline(format!(
            "cairn.verity={root_hash} is not a sha256 dm-verity root hash (64 hex digits)"
        )));
    }
    Ok(DiskBoot {
        slot,
        version,
        root_hash,
    })
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
    fn install_is_for_stage_2_on_pxe_boots_only() {
        let c = Cmdline::parse("cairn.hostname=n1 cairn.install=/dev/vda").unwrap();
        assert_eq!(c.mode, Mode::Pxe);
        let h = "ab".repeat(32);
        let e = Cmdline::parse(&format!(
            "cairn.slot=a cairn.version=1.0.0 cairn.verity={h} cairn.install=/dev/vda"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("disk boot"), "{e}");
    }

    #[test]
    fn slot_selects_disk_mode() {
        let h = "AB".repeat(32);
        let c = Cmdline::parse(&format!(
            "console=ttyS0 cairn.slot=b cairn.version=1.2.0 cairn.verity={h}"
        ))
        .unwrap();
        assert_eq!(
            c.mode,
            Mode::Disk(DiskBoot {
                slot: Slot::B,
                version: OsVersion::new("1.2.0").unwrap(),
                root_hash: "ab".repeat(32),
            })
        );
        let ok = format!("cairn.mode=disk cairn.slot=a cairn.version=1 cairn.verity={h}");
        assert!(matches!(Cmdline::parse(&ok).unwrap().mode, Mode::Disk(_)));
    }

    #[test]
    fn disk_mode_errors_name_the_parameter() {
        let h = "ab".repeat(32);
        let cases = [
            (
                format!("cairn.slot=c cairn.version=1 cairn.verity={h}"),
                "cairn.slot=c",
            ),
            (format!("cairn.slot=a cairn.verity={h}"), "cairn.version="),
            ("cairn.slot=a cairn.version=1".to_string(), "cairn.verity="),
            (
                "cairn.slot=a cairn.version=1 cairn.verity=abc".to_string(),
                "64 hex digits",
            ),
            (
                format!("cairn.slot=a cairn.version=1+3 cairn.verity={h}"),
                "cairn.version=",
            ),
            (format!("cairn.verity={h}"), "cairn.slot"),
            (
                format!("cairn.mode=pxe cairn.slot=a cairn.version=1 cairn.verity={h}"),
                "contradicts",
            ),
            ("cairn.mode=disk".to_string(), "cairn.mode=disk needs"),
        ];
        for (line, want) in cases {
            let e = Cmdline::parse(&line).unwrap_err().to_string();
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(Cmdline::parse("cairn.mode=floppy").is_err());
        assert!(Cmdline::parse("cairn.on_failure=explode").is_err());
        assert!(Cmdline::parse("cairn.hostname=Bad_Host").is_err());
        assert!(Cmdline::parse("cairn.hostname=").is_err());
    }
}
