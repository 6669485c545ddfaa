//! `cairnctl update status`: both slots, their versions and tries, which
//! one is booted and which one systemd-boot will start next, the update in
//! flight, and the last result.
//!
//! [`Status::new`] is pure (it takes what the caller read from the ESP,
//! the EFI variables, the state file and `/proc/cmdline`), so the output is
//! unit-tested; "default" is computed with the port of systemd-boot's
//! selection ([`crate::entry::sd_boot`]).

use std::fmt;

use crate::entry::{default_entry, sd_boot::DefaultSettings, EntryName, EntryState};
use crate::esp::Listing;
use crate::slot::Slot;
use crate::state::{Booted, Phase, UpdateState};

/// What the status is computed from.
#[derive(Debug, Clone, Copy)]
pub struct StatusInput<'a> {
    /// The persisted update state.
    pub state: &'a UpdateState,
    /// `EFI/Linux/`, sorted out.
    pub listing: &'a Listing,
    /// `loader.conf` `default` and the EFI variables.
    pub settings: &'a DefaultSettings,
    /// What is running, if known.
    pub booted: Option<&'a Booted>,
    /// Now, seconds since the epoch.
    pub now_unix: u64,
}

/// One slot's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotLine {
    /// The slot.
    pub slot: Slot,
    /// Its first entry in systemd-boot's order, if any.
    pub entry: Option<EntryName>,
    /// This slot is running.
    pub booted: bool,
    /// systemd-boot will start this slot next.
    pub default: bool,
}

/// The status report; [`fmt::Display`] renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Slot `a`, then slot `b`.
    pub slots: [SlotLine; 2],
    /// Version running (from the kernel command line).
    pub booted_version: Option<String>,
    /// The update line.
    pub update: String,
    /// The last result line, if any.
    pub last_result: Option<String>,
    /// The blocked-version line, if any.
    pub blocked: Option<String>,
    /// Things an operator should look at.
    pub warnings: Vec<String>,
}

impl Status {
    /// Compute the report.
    pub fn new(input: StatusInput<'_>) -> Status {
        let default = default_entry(&input.listing.entries, input.settings);
        let line = |slot: Slot| SlotLine {
            slot,
            entry: input.listing.of_slot(slot).first().map(|e| (*e).clone()),
            booted: input.booted.is_some_and(|b| b.slot == slot),
            default: default.as_ref().is_some_and(|d| d.slot() == slot),
        };
        let slots = [line(Slot::A), line(Slot::B)];

        let update = match &input.state.phase {
            Phase::Idle | Phase::Blessed { .. } | Phase::Failed { .. } => "idle".to_string(),
            p @ (Phase::Started { slot, version }
            | Phase::Invalidated { slot, version }
            | Phase::RootWritten { slot, version, .. }
            | Phase::Written { slot, version, .. }
            | Phase::Verified { slot, version }) => {
                format!("installing {version} into slot {slot} (phase {})", p.name())
            }
            Phase::Installed { slot, version, .. } => {
                format!("{version} installed in slot {slot}, waiting for the reboot")
            }
            Phase::RebootRequested { slot, version, .. } => {
                format!("reboot into {version} in slot {slot} requested")
            }
            Phase::BootedUnverified {
                slot,
                version,
                deadline_unix,
            } => {
                let when = if *deadline_unix > input.now_unix {
                    format!(
                        "health gate deadline in {} s",
                        deadline_unix - input.now_unix
                    )
                } else {
                    format!(
                        "health gate deadline passed {} s ago",
                        input.now_unix - deadline_unix
                    )
                };
                format!("trying {version} in slot {slot}; {when}")
            }
        };
        let last_result = input.state.last_result.as_ref().map(|r| match &r.failure {
            None => format!("{} in slot {} blessed", r.version, r.slot),
            Some(why) => format!("{} in slot {} failed: {why}", r.version, r.slot),
        });
        let blocked = input.state.blocked.as_ref().map(|b| {
            format!(
                "{} is not retried until the repository names another version",
                b.version
            )
        });

        let mut warnings = Vec::new();
        if let Some(p) = &input.settings.oneshot {
            warnings.push(format!(
                "EFI variable LoaderEntryOneShot={p:?} overrides cairn's choice for the next boot"
            ));
        }
        if let Some(p) = &input.settings.efi_default {
            warnings.push(format!(
                "EFI variable LoaderEntryDefault={p:?} overrides cairn's loader.conf default; clear it with `bootctl set-default \"\"`"
            ));
        }
        for f in &input.listing.foreign {
            warnings.push(format!(
                "foreign UKI {f} on the ESP may be ordered before cairn's entries"
            ));
        }
        for (f, why) in &input.listing.malformed {
            warnings.push(format!("malformed entry {f}: {why}"));
        }
        for f in &input.listing.temp {
            warnings.push(format!(
                "leftover temp file {f} from an interrupted install"
            ));
        }
        if let Some(b) = input.booted {
            if input.listing.of_slot(b.slot).is_empty() {
                warnings.push(format!(
                    "the running slot {} has no boot entry: it cannot be booted again",
                    b.slot
                ));
            }
        }
        if default.is_none() {
            warnings.push("no cairn boot entry on the ESP: the machine will not boot".into());
        }
        Status {
            slots,
            booted_version: input.booted.map(|b| b.version.to_string()),
            update,
            last_result,
            blocked,
            warnings,
        }
    }
}

fn tries(e: &EntryName) -> String {
    match e.state() {
        EntryState::Blessed => "blessed".into(),
        EntryState::Trying { left, done } => format!("{left} left, {done} done"),
        EntryState::Bad { done } => format!("none left, {done} done"),
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rows = vec![[
            "SLOT".to_string(),
            "VERSION".into(),
            "ENTRY".into(),
            "TRIES".into(),
            "".into(),
        ]];
        for s in &self.slots {
            let mut flags = Vec::new();
            if s.booted {
                flags.push("booted");
            }
            if s.default {
                flags.push("default");
            }
            let (version, entry, t) = match &s.entry {
                Some(e) => (e.version().to_string(), e.file_name(), tries(e)),
                None => ("-".into(), "(no boot entry)".into(), "-".into()),
            };
            rows.push([s.slot.to_string(), version, entry, t, flags.join(", ")]);
        }
        let mut widths = [0usize; 5];
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        for r in &rows {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(&format!("{c:<w$}", w = widths[i]));
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        writeln!(f, "update: {}", self.update)?;
        if let Some(r) = &self.last_result {
            writeln!(f, "last result: {r}")?;
        }
        if let Some(b) = &self.blocked {
            writeln!(f, "blocked: {b}")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::trial_default_pattern;
    use crate::slot::OsVersion;
    use crate::state::{Blocked, LastResult};

    fn v(s: &str) -> OsVersion {
        OsVersion::new(s).unwrap()
    }

    fn names(files: &[&str]) -> Listing {
        Listing::from_names(&files.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn trial_in_progress() {
        let listing = names(&["cairn-a-1.3.0.efi", "cairn-b-1.1.0+2-1.efi"]);
        let settings = DefaultSettings {
            conf_default: Some(trial_default_pattern(Slot::B, &v("1.1.0"))),
            ..Default::default()
        };
        let state = UpdateState {
            phase: Phase::BootedUnverified {
                slot: Slot::B,
                version: v("1.1.0"),
                deadline_unix: 1300,
            },
            last_result: Some(LastResult {
                slot: Slot::B,
                version: v("1.0.9"),
                failure: Some("health gate failed: node NotReady".into()),
            }),
            ..Default::default()
        };
        let booted = Booted {
            slot: Slot::B,
            version: v("1.1.0"),
            boot_id: "x".into(),
        };
        let s = Status::new(StatusInput {
            state: &state,
            listing: &listing,
            settings: &settings,
            booted: Some(&booted),
            now_unix: 1000,
        });
        assert_eq!(
            s.to_string(),
            "\
SLOT  VERSION  ENTRY                  TRIES
a     1.3.0    cairn-a-1.3.0.efi      blessed
b     1.1.0    cairn-b-1.1.0+2-1.efi  2 left, 1 done  booted, default
update: trying 1.1.0 in slot b; health gate deadline in 300 s
last result: 1.0.9 in slot b failed: health gate failed: node NotReady
"
        );
    }

    #[test]
    fn after_a_rollback_with_warnings() {
        let listing = names(&[
            "cairn-a-1.3.0.efi",
            "cairn-b-1.4.0+0-3.efi",
            "debian.efi",
            ".cairn-cairn-b-1.5+3.efi.tmp",
        ]);
        let settings = DefaultSettings {
            efi_default: Some("cairn-b-*".into()),
            ..Default::default()
        };
        let state = UpdateState {
            phase: Phase::Failed {
                slot: Slot::B,
                version: v("1.4.0"),
                reason: "systemd-boot fell back to slot a".into(),
                left_boot: None,
            },
            blocked: Some(Blocked {
                version: v("1.4.0"),
                reason: "x".into(),
            }),
            last_result: Some(LastResult {
                slot: Slot::B,
                version: v("1.4.0"),
                failure: Some("systemd-boot fell back to slot a".into()),
            }),
            ..Default::default()
        };
        let booted = Booted {
            slot: Slot::A,
            version: v("1.3.0"),
            boot_id: "x".into(),
        };
        let s = Status::new(StatusInput {
            state: &state,
            listing: &listing,
            settings: &settings,
            booted: Some(&booted),
            now_unix: 0,
        });
        let text = s.to_string();
        assert_eq!(
            text,
            "\
SLOT  VERSION  ENTRY                  TRIES
a     1.3.0    cairn-a-1.3.0.efi      blessed            booted
b     1.4.0    cairn-b-1.4.0+0-3.efi  none left, 3 done  default
update: idle
last result: 1.4.0 in slot b failed: systemd-boot fell back to slot a
blocked: 1.4.0 is not retried until the repository names another version
warning: EFI variable LoaderEntryDefault=\"cairn-b-*\" overrides cairn's loader.conf default; clear it with `bootctl set-default \"\"`
warning: foreign UKI debian.efi on the ESP may be ordered before cairn's entries
warning: leftover temp file .cairn-cairn-b-1.5+3.efi.tmp from an interrupted install
"
        );
        // The EFI variable really makes systemd-boot pick the bad entry.
        assert!(s.slots[1].default);
    }

    #[test]
    fn empty_esp_is_a_loud_warning() {
        let listing = names(&[]);
        let s = Status::new(StatusInput {
            state: &UpdateState::default(),
            listing: &listing,
            settings: &DefaultSettings::default(),
            booted: None,
            now_unix: 0,
        });
        let text = s.to_string();
        assert!(text.contains("a     -        (no boot entry)  -"), "{text}");
        assert!(
            text.contains("warning: no cairn boot entry on the ESP"),
            "{text}"
        );
    }
}
