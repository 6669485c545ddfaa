//! Boot entries on the ESP: the UKI file names in `EFI/Linux/`, their boot
//! counters, and which one systemd-boot 252 will start.
//!
//! # Upstream semantics (what systemd-boot 252 really does)
//!
//! Read from systemd's sources, the v252-era `src/boot/efi/boot.c` (the
//! one with `random-seed-mode`, `secure-boot-enroll` and `efi_fnmatch`;
//! `config_entry_compare` and `config_default_entry_select` are the same in
//! v251 and v253), `src/bless-boot/bless-boot.c`,
//! `src/fundamental/bootspec-fundamental.c`,
//! `src/fundamental/string-util-fundamental.c`, `src/boot/efi/efi-string.c`,
//! `docs/AUTOMATIC_BOOT_ASSESSMENT.md`, and the Boot Loader Specification,
//! section "Boot counting"
//! (<https://uapi-group.org/specifications/specs/boot_loader_specification/#boot-counting>).
//!
//! 1. **Counter syntax** (`config_entry_parse_tries`; bless-boot
//!    `parse_counter`). The counter is found at the *last* `+` of the file
//!    name and must be followed by exactly the suffix (`.efi` for type #2
//!    UKIs, `.conf` for type #1): `NAME+LEFT.efi` or `NAME+LEFT-DONE.efi`,
//!    a missing `-DONE` meaning 0. Anything else after the digits, or a
//!    number above `INT_MAX`, and systemd-boot treats the file as having no
//!    counter at all (it still boots it, uncounted).
//! 2. **Each try** (`config_entry_bump_counters`, called in `efi_main` for
//!    the chosen entry just before `image_start`). The file is renamed to
//!    `NAME+(LEFT-1, floored at 0)-(DONE+1).efi` *before* the kernel
//!    starts, and that path is exported as the `LoaderBootCountPath` EFI
//!    variable. The new name always carries `-DONE`:
//!    `+3 → +2-1 → +1-2 → +0-3`. An entry at `+0` is still renamed
//!    (`+0-3 → +0-4`) and booted if it is chosen.
//! 3. **Good and bad** (bless-boot `make_good`, `make_bad`). Good = the
//!    counter removed (`NAME.efi`). Bad = `LEFT` set to 0, `DONE` kept:
//!    `NAME+0.efi` if DONE was 0, else `NAME+0-DONE.efi`.
//! 4. **Type #2 entries** (`config_entry_add_unified`). Every `*.efi` in
//!    `\EFI\Linux` not starting with `.` or `auto-` that has an `.osrel` PE
//!    section. The entry **id is the file name lower-cased, counter and
//!    `.efi` included** (v252 does not strip the counter from the id, so an
//!    id changes on every try). From `.osrel`
//!    (`bootspec_pick_name_version_sort_key`): sort key = `IMAGE_ID` else
//!    `ID`; version = `IMAGE_VERSION` else `VERSION` else `VERSION_ID` else
//!    `BUILD_ID`. Type #2 entries have no machine id.
//! 5. **Order** (`config_entry_compare`, entries sorted ascending, the first
//!    is preferred): (a) entries with `tries_left == 0` go last; (b) entries
//!    with a sort key before entries without; (c) if both have one: sort
//!    key ascending (`strcmp`), machine id ascending, then **version
//!    descending** (`-strverscmp_improved`); (d) id descending
//!    (`-strverscmp_improved`); (e) if both are counted: more tries left
//!    first, then fewer tries done first. Uncounted entries are in the same
//!    group as entries with tries left. [`sd_boot::compare`] is a port.
//! 6. **Default** (`config_default_entry_select`). The first entry, in that
//!    order, whose id matches the `LoaderEntryOneShot` EFI variable (which
//!    systemd-boot deletes as soon as it has read it); else the first that
//!    matches `LoaderEntryDefault` (EFI variable, set by `bootctl
//!    set-default` or the menu's `d` key; `@saved` means
//!    `LoaderEntryLastBooted`); else the first that matches `loader.conf`'s
//!    `default` (the last `default` line wins); else simply the first entry.
//!    Patterns are globs (`efi_fnmatch`: `*`, `?`, `[a-z]` sets, `\`
//!    escapes) matched against the lower-cased id; v252 lower-cases the
//!    patterns too. **A matching pattern wins even over an entry that has
//!    no tries left**: "bad entries sort last" only decides the fallback
//!    "first entry". A `default` that names one slot's entry outright
//!    therefore keeps booting it after its tries are used up — boot
//!    counting would be defeated. [`sd_boot::select_default`] is a port.
//!
//! # How cairn makes the new slot the one tried first
//!
//! cairn's UKIs carry the rootfs `os-release` as `.osrel`
//! (`image-build/src/rootfs.rs`: `ID=cairn`, `VERSION=<version>`, no
//! `IMAGE_ID`/`IMAGE_VERSION`). Both slots' entries therefore have the sort
//! key `cairn` and are ordered **by version, newest first**; the file name
//! only breaks ties. The options, checked against the rules above:
//!
//! - *A version-independent ordering prefix in the file name*: does not
//!   work. The id is compared only after the version, so a downgrade's
//!   entry sorts after the running one whatever its name. It would work only
//!   if the `.osrel` had neither `ID` nor `IMAGE_ID`, an unusual UKI whose
//!   ordering would hinge on a missing field.
//! - *`LoaderEntryOneShot`*: one try only, and deleted before the kernel
//!   starts; any second boot during the trial (a crash, a reboot by the
//!   health gate's owner) falls back to version order, i.e. for a downgrade
//!   to the old slot while the agent still thinks it is trying the new one.
//!   It also needs efivarfs writes that no unit test can exercise.
//! - *`LoaderEntryDefault`*: the same matching rules as `loader.conf`, but
//!   in NVRAM and shared with the menu's `d` key.
//! - **Chosen: `loader.conf` `default` with a pattern that only matches the
//!   trial entry while it has tries left**:
//!   `cairn-<slot>-<version>+[1-9]*.efi` ([`trial_default_pattern`]). It
//!   matches `+3`, `+2-1` and `+1-2`, so systemd-boot boots the new slot
//!   whatever the versions. It does not match `+0-3` (tries used up, or
//!   marked bad) nor the blessed name (no `+`); then systemd-boot falls back
//!   to "first entry", where the exhausted trial sorts last, so the old slot
//!   boots. Versions contain no `+` or glob characters
//!   ([`crate::OsVersion`]), so the pattern matches exactly one file. It is
//!   written through the same atomic ESP seam as the UKIs and unit-testable.
//!
//! The pattern alone would leave the old version winning again after the
//! blessing (both entries uncounted, ordered by version). So cairn keeps
//! **one live entry** outside a trial: when the new slot is blessed, the
//! old slot's entry is first *retired* (renamed to `+0`, exactly
//! bless-boot's "bad" name), then the new entry is blessed, then the
//! `default` line is removed. A retired entry sorts after every live one,
//! so the blessed slot is the default regardless of versions and of
//! `loader.conf`; it stays in the menu for a manual rollback until the next
//! update removes it. Before an update writes anything, the running slot's
//! entry must exist and be live (it is blessed if it had been retired: it
//! is what is running), so a failed trial has something to fall back to.
//!
//! Precondition: the `LoaderEntryOneShot` and `LoaderEntryDefault` EFI
//! variables must be unset, since they take precedence over `loader.conf`.
//! [`crate::esp::read_loader_efi_vars`] reads them for the agent and for
//! `cairnctl update status`, which warns when they are set.
//!
//! # cairn's file names
//!
//! `cairn-<slot>-<version>[+LEFT[-DONE]].efi`, all lowercase, for example
//! `cairn-b-1.3.0+3.efi` (fresh), `cairn-b-1.3.0+1-2.efi` (tried twice),
//! `cairn-b-1.3.0.efi` (blessed), `cairn-a-1.2.0+0.efi` (retired or bad).

use std::cmp::Ordering;
use std::fmt;

use crate::slot::{OsVersion, Slot};

/// Every cairn UKI file name starts with this.
pub const PREFIX: &str = "cairn-";
/// Every UKI file name ends with this (systemd-boot parses counters only
/// before exactly this suffix).
pub const SUFFIX: &str = ".efi";
/// Tries a freshly installed entry gets (`+3`).
pub const INITIAL_TRIES: u32 = 3;
/// The `.osrel` sort key of cairn's UKIs (`ID=cairn`); see the module docs.
pub const OSREL_SORT_KEY: &str = "cairn";
/// Largest counter systemd-boot 252 accepts (`INT_MAX`).
const COUNTER_MAX: u64 = i32::MAX as u64;

/// A file name in `EFI/Linux/` that is not a well-formed cairn entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Not `cairn-*.efi` at all: another OS's or a hand-placed UKI.
    #[error(
        "{file:?} in EFI/Linux is not a cairn boot entry (expected \
         cairn-<slot>-<version>[+LEFT[-DONE]].efi); cairn leaves it alone, but \
         systemd-boot may order it before cairn's entries: remove it if it is not wanted"
    )]
    NotCairn {
        /// The file name.
        file: String,
    },
    /// Looks like a cairn entry but cannot be parsed.
    #[error(
        "boot entry {file:?} in EFI/Linux is malformed: {reason}; cairn did not write \
         this name: remove or rename the file by hand"
    )]
    Malformed {
        /// The file name.
        file: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Where an entry stands in the boot-counting life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// No counter: proven good (or installed uncounted).
    Blessed,
    /// Counted with tries left: being tried.
    Trying {
        /// Tries left.
        left: u32,
        /// Tries done so far.
        done: u32,
    },
    /// Counter at zero: tries used up, marked bad, or retired.
    Bad {
        /// Tries done.
        done: u32,
    },
}

/// A parsed cairn UKI file name: `cairn-<slot>-<version>[+LEFT[-DONE]].efi`.
///
/// Built only by [`EntryName::parse`] (which validates) or by the
/// constructors, so every value formats back to a name systemd-boot parses
/// the same way.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntryName {
    slot: Slot,
    version: OsVersion,
    tries_left: Option<u32>,
    tries_done: Option<u32>,
}

impl EntryName {
    /// A freshly installed entry: `cairn-<slot>-<version>+3.efi`.
    pub fn trial(slot: Slot, version: OsVersion) -> Self {
        EntryName {
            slot,
            version,
            tries_left: Some(INITIAL_TRIES),
            tries_done: None,
        }
    }

    /// A blessed entry: `cairn-<slot>-<version>.efi`.
    pub fn blessed(slot: Slot, version: OsVersion) -> Self {
        EntryName {
            slot,
            version,
            tries_left: None,
            tries_done: None,
        }
    }

    /// Parse a file name from `EFI/Linux/`, the way systemd-boot reads the
    /// counter (last `+`, digits, optional `-digits`, then exactly
    /// `.efi`), but strictly: where systemd-boot would silently treat a
    /// garbled counter as "no counter", this refuses.
    pub fn parse(file: &str) -> Result<Self, EntryError> {
        let malformed = |reason: String| EntryError::Malformed {
            file: file.to_string(),
            reason,
        };
        let not_cairn = || EntryError::NotCairn {
            file: file.to_string(),
        };
        let rest = file.strip_prefix(PREFIX).ok_or_else(not_cairn)?;
        let body = match rest.strip_suffix(SUFFIX) {
            Some(body) => body,
            None if rest.to_ascii_lowercase().ends_with(SUFFIX) => {
                return Err(malformed(
                    "the suffix must be lowercase \".efi\" (systemd-boot only parses \
                     counters before exactly \".efi\")"
                        .into(),
                ))
            }
            None => return Err(not_cairn()),
        };
        let (stem, counter) = match body.rfind('+') {
            Some(i) => (&body[..i], Some(&body[i + 1..])),
            None => (body, None),
        };
        let (tries_left, tries_done) = match counter {
            None => (None, None),
            Some(c) => {
                let (left, done) = match c.split_once('-') {
                    Some((l, d)) => (l, Some(d)),
                    None => (c, None),
                };
                let left = parse_count(left)
                    .map_err(|why| malformed(format!("the tries-left counter {left:?} {why}")))?;
                let done = done
                    .map(|d| {
                        parse_count(d)
                            .map_err(|why| malformed(format!("the tries-done counter {d:?} {why}")))
                    })
                    .transpose()?;
                (Some(left), done)
            }
        };
        let (slot, version) = stem.split_once('-').ok_or_else(|| {
            malformed("expected cairn-<slot>-<version>, there is no '-' after the slot".into())
        })?;
        let slot = slot
            .parse::<Slot>()
            .map_err(|_| malformed(format!("the slot {slot:?} is not \"a\" or \"b\"")))?;
        let version = OsVersion::new(version).map_err(|e| malformed(e.to_string()))?;
        Ok(EntryName {
            slot,
            version,
            tries_left,
            tries_done,
        })
    }

    /// The slot this UKI boots.
    pub fn slot(&self) -> Slot {
        self.slot
    }

    /// The OS version this UKI boots.
    pub fn version(&self) -> &OsVersion {
        &self.version
    }

    /// Tries left, `None` when the name has no counter.
    pub fn tries_left(&self) -> Option<u32> {
        self.tries_left
    }

    /// Tries done as written in the name (`None` when there is no `-DONE`
    /// part; systemd-boot reads that as 0).
    pub fn tries_done(&self) -> Option<u32> {
        self.tries_done
    }

    /// The name without counter and suffix: `cairn-<slot>-<version>`.
    pub fn stem(&self) -> String {
        format!("{PREFIX}{}-{}", self.slot, self.version)
    }

    /// The file name in `EFI/Linux/`.
    pub fn file_name(&self) -> String {
        let counter = match (self.tries_left, self.tries_done) {
            (None, _) => String::new(),
            (Some(l), None) => format!("+{l}"),
            (Some(l), Some(d)) => format!("+{l}-{d}"),
        };
        format!("{}{counter}{SUFFIX}", self.stem())
    }

    /// systemd-boot 252's entry id: the lower-cased file name, counter
    /// included (cairn names are all lowercase already).
    pub fn id(&self) -> String {
        self.file_name()
    }

    /// Blessed, being tried, or bad.
    pub fn state(&self) -> EntryState {
        match self.tries_left {
            None => EntryState::Blessed,
            Some(0) => EntryState::Bad {
                done: self.tries_done.unwrap_or(0),
            },
            Some(left) => EntryState::Trying {
                left,
                done: self.tries_done.unwrap_or(0),
            },
        }
    }

    /// True when systemd-boot would put it in the preferred group (not
    /// `tries_left == 0`).
    pub fn is_live(&self) -> bool {
        self.tries_left != Some(0)
    }

    /// What systemd-bless-boot's "good" renames it to: the counter dropped.
    pub fn bless(&self) -> EntryName {
        EntryName {
            tries_left: None,
            tries_done: None,
            ..self.clone()
        }
    }

    /// What systemd-bless-boot's "bad" renames it to: tries left 0, tries
    /// done kept (`+0` when none were done). Also used to *retire* the old
    /// slot's blessed entry.
    pub fn mark_bad(&self) -> EntryName {
        let done = self.tries_done.filter(|d| *d > 0);
        EntryName {
            tries_left: Some(0),
            tries_done: done,
            ..self.clone()
        }
    }

    /// What systemd-boot renames it to when it starts it
    /// (`config_entry_bump_counters`); unchanged when uncounted.
    pub fn after_try(&self) -> EntryName {
        match self.tries_left {
            None => self.clone(),
            Some(left) => EntryName {
                tries_left: Some(left.saturating_sub(1)),
                tries_done: Some(
                    (u64::from(self.tries_done.unwrap_or(0)) + 1).min(COUNTER_MAX) as u32,
                ),
                ..self.clone()
            },
        }
    }

    /// How systemd-boot sees this entry, given cairn's `.osrel`
    /// (sort key [`OSREL_SORT_KEY`], version = this entry's version).
    pub fn sd_boot_entry(&self) -> sd_boot::Entry {
        sd_boot::Entry {
            id: self.id(),
            sort_key: Some(OSREL_SORT_KEY.to_string()),
            machine_id: None,
            version: Some(self.version.to_string()),
            tries_left: self.tries_left,
            tries_done: self.tries_done.unwrap_or(0),
        }
    }
}

impl fmt::Display for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_name())
    }
}

fn parse_count(s: &str) -> Result<u32, &'static str> {
    if s.is_empty() {
        return Err("is empty");
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("is not a decimal number followed by \".efi\"");
    }
    match s.parse::<u64>() {
        Ok(n) if n <= COUNTER_MAX => Ok(n as u32),
        _ => Err("is larger than systemd-boot accepts (2147483647)"),
    }
}

/// The `loader.conf` `default` pattern that makes systemd-boot boot the
/// trial entry of `slot`/`version` while it has tries left, and stop
/// matching once it has none (or is blessed). See the module docs.
pub fn trial_default_pattern(slot: Slot, version: &OsVersion) -> String {
    format!("{PREFIX}{slot}-{version}+[1-9]*{SUFFIX}")
}

/// cairn entries in the order systemd-boot 252 lists them (first = what it
/// boots when no pattern matches).
pub fn boot_order(entries: &[EntryName]) -> Vec<EntryName> {
    let mut v = entries.to_vec();
    v.sort_by(|a, b| sd_boot::compare(&a.sd_boot_entry(), &b.sd_boot_entry()));
    v
}

/// The entry systemd-boot 252 would start, given these entries and the
/// default settings; `None` when there are no entries.
pub fn default_entry(
    entries: &[EntryName],
    settings: &sd_boot::DefaultSettings,
) -> Option<EntryName> {
    let sorted = boot_order(entries);
    let view: Vec<sd_boot::Entry> = sorted.iter().map(EntryName::sd_boot_entry).collect();
    sd_boot::select_default(&view, settings).map(|i| sorted[i].clone())
}

/// A port of the parts of systemd-boot 252 that choose the entry to boot.
/// Names follow the C functions they mirror.
pub mod sd_boot {
    use std::cmp::Ordering;

    /// What systemd-boot knows about an entry when it sorts and selects.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Entry {
        /// Lower-cased file name (type #2), counter included.
        pub id: String,
        /// `.osrel` `IMAGE_ID` else `ID`.
        pub sort_key: Option<String>,
        /// Always `None` for type #2 entries.
        pub machine_id: Option<String>,
        /// `.osrel` `IMAGE_VERSION` else `VERSION` else `VERSION_ID` else
        /// `BUILD_ID`.
        pub version: Option<String>,
        /// `None` when the name has no (valid) counter.
        pub tries_left: Option<u32>,
        /// 0 when the counter has no `-DONE` part.
        pub tries_done: u32,
    }

    /// The default-selection inputs (`config_load_defaults`).
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct DefaultSettings {
        /// `LoaderEntryOneShot` EFI variable.
        pub oneshot: Option<String>,
        /// `LoaderEntryDefault` EFI variable (`@saved` allowed).
        pub efi_default: Option<String>,
        /// `loader.conf` `default` (`@saved` allowed).
        pub conf_default: Option<String>,
        /// `LoaderEntryLastBooted` EFI variable (used by `@saved`).
        pub last_booted: Option<String>,
    }

    fn cmp_bool(a: bool, b: bool) -> Ordering {
        a.cmp(&b)
    }

    fn is_valid_version_char(c: u8) -> bool {
        c.is_ascii_digit() || c.is_ascii_alphabetic() || b"~-^.".contains(&c)
    }

    /// `strverscmp_improved()` from
    /// `src/fundamental/string-util-fundamental.c`: RPM-like version
    /// comparison where `~` sorts oldest, `-` before `^` before `.`, numeric
    /// segments compare by value and beat alphabetic ones.
    pub fn strverscmp_improved(a: &str, b: &str) -> Ordering {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.is_empty() || b.is_empty() {
            return a.cmp(b);
        }
        let at = |s: &[u8], k: usize| s.get(k).copied().unwrap_or(0);
        let (mut i, mut j) = (0usize, 0usize);
        loop {
            // Drop leading invalid characters.
            while at(a, i) != 0 && !is_valid_version_char(at(a, i)) {
                i += 1;
            }
            while at(b, j) != 0 && !is_valid_version_char(at(b, j)) {
                j += 1;
            }
            // '~': pre-release, oldest.
            if at(a, i) == b'~' || at(b, j) == b'~' {
                let r = cmp_bool(at(a, i) != b'~', at(b, j) != b'~');
                if r != Ordering::Equal {
                    return r;
                }
                i += 1;
                j += 1;
            }
            // At the end of either: the longer is newer.
            if at(a, i) == 0 || at(b, j) == 0 {
                return at(a, i).cmp(&at(b, j));
            }
            for sep in [b'-', b'^', b'.'] {
                if at(a, i) == sep || at(b, j) == sep {
                    let r = cmp_bool(at(a, i) != sep, at(b, j) != sep);
                    if r != Ordering::Equal {
                        return r;
                    }
                    i += 1;
                    j += 1;
                }
            }
            let (aa, bb);
            if at(a, i).is_ascii_digit() || at(b, j).is_ascii_digit() {
                while at(a, i) == b'0' {
                    i += 1;
                }
                while at(b, j) == b'0' {
                    j += 1;
                }
                let mut x = i;
                while at(a, x).is_ascii_digit() {
                    x += 1;
                }
                let mut y = j;
                while at(b, y).is_ascii_digit() {
                    y += 1;
                }
                let r = (x - i).cmp(&(y - j));
                if r != Ordering::Equal {
                    return r;
                }
                let r = a[i..x].cmp(&b[j..y]);
                if r != Ordering::Equal {
                    return r;
                }
                (aa, bb) = (x, y);
            } else {
                let mut x = i;
                while at(a, x).is_ascii_alphabetic() {
                    x += 1;
                }
                let mut y = j;
                while at(b, y).is_ascii_alphabetic() {
                    y += 1;
                }
                let m = (x - i).min(y - j);
                let r = a[i..i + m].cmp(&b[j..j + m]);
                if r != Ordering::Equal {
                    return r;
                }
                let r = (x - i).cmp(&(y - j));
                if r != Ordering::Equal {
                    return r;
                }
                (aa, bb) = (x, y);
            }
            i = aa;
            j = bb;
        }
    }

    /// `strverscmp_improved` with C's NULL handling (`strcmp_ptr`: NULL
    /// sorts before any string).
    fn vers_opt(a: Option<&str>, b: Option<&str>) -> Ordering {
        match (a, b) {
            (Some(a), Some(b)) => strverscmp_improved(a, b),
            (a, b) => a.is_some().cmp(&b.is_some()),
        }
    }

    /// `config_entry_compare()`: `Less` means `a` is listed (and preferred)
    /// before `b`.
    pub fn compare(a: &Entry, b: &Entry) -> Ordering {
        // Order entries that have no tries left to the end of the list.
        let r = cmp_bool(a.tries_left == Some(0), b.tries_left == Some(0));
        if r != Ordering::Equal {
            return r;
        }
        // New-style (sort key) before old-style.
        let r = cmp_bool(a.sort_key.is_none(), b.sort_key.is_none());
        if r != Ordering::Equal {
            return r;
        }
        if let (Some(ka), Some(kb)) = (&a.sort_key, &b.sort_key) {
            let r = ka.as_bytes().cmp(kb.as_bytes());
            if r != Ordering::Equal {
                return r;
            }
            let r = a.machine_id.cmp(&b.machine_id);
            if r != Ordering::Equal {
                return r;
            }
            // Version downwards, newest first.
            let r = vers_opt(a.version.as_deref(), b.version.as_deref()).reverse();
            if r != Ordering::Equal {
                return r;
            }
        }
        // Id downwards.
        let r = strverscmp_improved(&a.id, &b.id).reverse();
        if r != Ordering::Equal {
            return r;
        }
        let (Some(la), Some(lb)) = (a.tries_left, b.tries_left) else {
            return Ordering::Equal;
        };
        // More tries left first, then fewer tries done first.
        let r = lb.cmp(&la);
        if r != Ordering::Equal {
            return r;
        }
        a.tries_done.cmp(&b.tries_done)
    }

    /// `config_default_entry_select()` over entries already sorted with
    /// [`compare`]: the index systemd-boot boots without user input.
    pub fn select_default(sorted: &[Entry], settings: &DefaultSettings) -> Option<usize> {
        let find = |pattern: Option<&String>| -> Option<usize> {
            let pattern = pattern?.to_lowercase();
            sorted.iter().position(|e| fnmatch(&pattern, &e.id))
        };
        let saved = |p: &Option<String>| p.as_deref() == Some("@saved");
        if let Some(i) = find(settings.oneshot.as_ref()) {
            return Some(i);
        }
        let efi = if saved(&settings.efi_default) {
            settings.last_booted.as_ref()
        } else {
            settings.efi_default.as_ref()
        };
        if let Some(i) = find(efi) {
            return Some(i);
        }
        let conf = if saved(&settings.conf_default) {
            // "No need to do the same thing twice."
            (!saved(&settings.efi_default))
                .then_some(settings.last_booted.as_ref())
                .flatten()
        } else {
            settings.conf_default.as_ref()
        };
        if let Some(i) = find(conf) {
            return Some(i);
        }
        (!sorted.is_empty()).then_some(0)
    }

    /// `efi_fnmatch()`: `*`, `?`, `[set]` with `a-z` ranges, `\` escapes;
    /// the whole string must match.
    pub fn fnmatch(pattern: &str, haystack: &str) -> bool {
        let p: Vec<char> = pattern.chars().collect();
        let h: Vec<char> = haystack.chars().collect();
        glob(&p, &h, 0)
    }

    fn glob(p: &[char], h: &[char], depth: u32) -> bool {
        // efi_fnmatch limits recursion to 32 stars.
        if depth > 32 {
            return false;
        }
        match p.first() {
            None => h.is_empty(),
            Some('*') => (0..=h.len()).any(|k| glob(&p[1..], &h[k..], depth + 1)),
            Some('?') => !h.is_empty() && glob(&p[1..], &h[1..], depth),
            Some('[') => {
                let Some(&c) = h.first() else { return false };
                let Some((matched, used)) = set(&p[1..], c) else {
                    return false;
                };
                matched && glob(&p[1 + used..], &h[1..], depth)
            }
            Some('\\') => match (p.get(1), h.first()) {
                (Some(pc), Some(hc)) if pc == hc => glob(&p[2..], &h[1..], depth),
                _ => false,
            },
            Some(pc) => h.first() == Some(pc) && glob(&p[1..], &h[1..], depth),
        }
    }

    /// Match `c` against a set body (after `[`); returns (matched, chars
    /// used including `]`), or `None` when the set is unterminated.
    fn set(p: &[char], c: char) -> Option<(bool, usize)> {
        let mut k = 0;
        let mut matched = false;
        while k < p.len() {
            let x = p[k];
            if x == ']' {
                return Some((matched, k + 1));
            }
            if p.get(k + 1) == Some(&'-') && p.get(k + 2).is_some_and(|e| *e != ']') {
                let hi = p[k + 2];
                if x <= c && c <= hi {
                    matched = true;
                }
                k += 3;
                continue;
            }
            if x == c {
                matched = true;
            }
            k += 1;
        }
        None
    }

    /// The name systemd-boot renames a type #2 file to when it boots it
    /// (`config_entry_parse_tries` + `config_entry_bump_counters`), or
    /// `None` if it has no counter systemd-boot recognises.
    pub fn name_after_try(file: &str) -> Option<String> {
        const SUFFIX: &str = ".efi";
        let plus = file.rfind('+')?;
        let counter = &file[plus + 1..];
        let (left, rest) = split_number(counter)?;
        let (done, rest) = match rest.strip_prefix('-') {
            Some(r) => split_number(r)?,
            None => (0, rest),
        };
        if rest != SUFFIX {
            return None;
        }
        Some(format!(
            "{}+{}-{}{SUFFIX}",
            &file[..plus],
            left.saturating_sub(1),
            (done + 1).min(super::COUNTER_MAX)
        ))
    }

    fn split_number(s: &str) -> Option<(u64, &str)> {
        let n = s.bytes().take_while(u8::is_ascii_digit).count();
        let v: u64 = s[..n].parse().ok()?;
        (v <= super::COUNTER_MAX).then_some((v, &s[n..]))
    }
}

impl PartialOrd for EntryName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Ordered as systemd-boot 252 lists cairn entries (see [`boot_order`]);
/// ties (impossible for distinct names in one directory) by file name.
impl Ord for EntryName {
    fn cmp(&self, other: &Self) -> Ordering {
        sd_boot::compare(&self.sd_boot_entry(), &other.sd_boot_entry())
            .then_with(|| self.file_name().cmp(&other.file_name()))
    }
}

#[cfg(test)]
mod tests {
    use super::sd_boot::{self, DefaultSettings};
    use super::*;

    fn v(s: &str) -> OsVersion {
        OsVersion::new(s).unwrap()
    }

    fn e(s: &str) -> EntryName {
        EntryName::parse(s).unwrap()
    }

    #[test]
    fn parse_and_format_round_trip() {
        /// (file, slot, version, tries left, tries done)
        type Row = (&'static str, Slot, &'static str, Option<u32>, Option<u32>);
        let table: &[Row] = &[
            ("cairn-a-1.2.0.efi", Slot::A, "1.2.0", None, None),
            ("cairn-b-1.3.0+3.efi", Slot::B, "1.3.0", Some(3), None),
            ("cairn-b-1.3.0+2-1.efi", Slot::B, "1.3.0", Some(2), Some(1)),
            ("cairn-b-1.3.0+0-3.efi", Slot::B, "1.3.0", Some(0), Some(3)),
            ("cairn-a-1.2.0+0.efi", Slot::A, "1.2.0", Some(0), None),
            (
                "cairn-a-2026.11.22-1+3-0.efi",
                Slot::A,
                "2026.11.22-1",
                Some(3),
                Some(0),
            ),
            ("cairn-b-1.0~rc1+10.efi", Slot::B, "1.0~rc1", Some(10), None),
        ];
        for &(file, slot, version, left, done) in table {
            let n = EntryName::parse(file).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(n.slot(), slot, "{file}");
            assert_eq!(n.version().as_str(), version, "{file}");
            assert_eq!(n.tries_left(), left, "{file}");
            assert_eq!(n.tries_done(), done, "{file}");
            assert_eq!(n.file_name(), file, "{file} must format back unchanged");
            assert_eq!(n.stem(), format!("cairn-{slot}-{version}"));
        }
    }

    #[test]
    fn malformed_names_are_refused_naming_the_file() {
        // (file, is a cairn name at all, words the message must contain)
        let table: &[(&str, bool, &str)] = &[
            ("debian-6.1.efi", false, "not a cairn boot entry"),
            ("cairn-a-1.2.0.conf", false, "not a cairn boot entry"),
            ("cairn-a-1.2.0.EFI", true, "lowercase"),
            ("cairn-c-1.2.0.efi", true, "slot \"c\""),
            ("cairn-a.efi", true, "no '-' after the slot"),
            ("cairn-a-.efi", true, "empty"),
            (
                "cairn-a-1.2.0+.efi",
                true,
                "tries-left counter \"\" is empty",
            ),
            ("cairn-a-1.2.0+x.efi", true, "not a decimal number"),
            (
                "cairn-a-1.2.0+3-.efi",
                true,
                "tries-done counter \"\" is empty",
            ),
            (
                "cairn-a-1.2.0+3-1-1.efi",
                true,
                "tries-done counter \"1-1\"",
            ),
            ("cairn-a-1.2.0+3x.efi", true, "not a decimal number"),
            (
                "cairn-a-1.2.0+2147483648.efi",
                true,
                "larger than systemd-boot accepts",
            ),
            ("cairn-a-1+2+3.efi", true, "'+' is reserved"),
            ("cairn-a-1.2.0-RC1.efi", true, "uppercase"),
        ];
        for &(file, cairn, words) in table {
            let err = EntryName::parse(file).expect_err(file);
            match (&err, cairn) {
                (EntryError::NotCairn { file: f }, false) => assert_eq!(f, file),
                (EntryError::Malformed { file: f, .. }, true) => assert_eq!(f, file),
                _ => panic!("{file}: wrong variant {err:?}"),
            }
            let msg = err.to_string();
            assert!(msg.contains(&format!("{file:?}")), "{msg}");
            assert!(msg.contains(words), "{file}: {msg}");
        }
    }

    #[test]
    fn bless_and_mark_bad_follow_bless_boot() {
        // (from, blessed, bad)
        let table = [
            (
                "cairn-b-1.3.0+2-1.efi",
                "cairn-b-1.3.0.efi",
                "cairn-b-1.3.0+0-1.efi",
            ),
            (
                "cairn-b-1.3.0+3.efi",
                "cairn-b-1.3.0.efi",
                "cairn-b-1.3.0+0.efi",
            ),
            (
                "cairn-b-1.3.0+3-0.efi",
                "cairn-b-1.3.0.efi",
                "cairn-b-1.3.0+0.efi",
            ),
            (
                "cairn-a-1.2.0.efi",
                "cairn-a-1.2.0.efi",
                "cairn-a-1.2.0+0.efi",
            ),
            (
                "cairn-b-1.3.0+0-3.efi",
                "cairn-b-1.3.0.efi",
                "cairn-b-1.3.0+0-3.efi",
            ),
        ];
        for (from, good, bad) in table {
            assert_eq!(e(from).bless().file_name(), good, "{from}");
            assert_eq!(e(from).mark_bad().file_name(), bad, "{from}");
            assert_eq!(
                e(from).mark_bad().state(),
                EntryState::Bad {
                    done: e(bad).tries_done().unwrap_or(0)
                }
            );
        }
    }

    #[test]
    fn tries_count_down_like_systemd_boot() {
        let mut n = EntryName::trial(Slot::B, v("1.3.0"));
        let mut seen = vec![n.file_name()];
        for _ in 0..4 {
            let by_port = sd_boot::name_after_try(&n.file_name());
            n = n.after_try();
            assert_eq!(by_port.as_deref(), Some(n.file_name().as_str()));
            seen.push(n.file_name());
        }
        assert_eq!(
            seen,
            [
                "cairn-b-1.3.0+3.efi",
                "cairn-b-1.3.0+2-1.efi",
                "cairn-b-1.3.0+1-2.efi",
                "cairn-b-1.3.0+0-3.efi",
                "cairn-b-1.3.0+0-4.efi",
            ]
        );
        assert_eq!(
            EntryName::blessed(Slot::A, v("1")).after_try().file_name(),
            "cairn-a-1.efi"
        );
        assert_eq!(sd_boot::name_after_try("cairn-a-1.efi"), None);
        assert_eq!(
            sd_boot::name_after_try("x+3.conf"),
            None,
            "wrong suffix: no counter"
        );
        assert_eq!(sd_boot::name_after_try("x+3a.efi"), None);
    }

    #[test]
    fn strverscmp_matches_the_upstream_table() {
        // The ordering listed in strverscmp_improved()'s comment, oldest first.
        let ordered = [
            "122.1",
            "123~rc1-1",
            "123",
            "123-a",
            "123-a.1",
            "123-1",
            "123-1.1",
            "123^post1",
            "123.a-1",
            "123.1-1",
            "123a-1",
            "124-1",
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(sd_boot::strverscmp_improved(a, b), i.cmp(&j), "{a} vs {b}");
            }
        }
        use std::cmp::Ordering::*;
        assert_eq!(sd_boot::strverscmp_improved("1.10", "1.9"), Greater);
        assert_eq!(sd_boot::strverscmp_improved("00123", "123"), Equal);
        assert_eq!(sd_boot::strverscmp_improved("123_a", "123a"), Equal);
        assert_eq!(sd_boot::strverscmp_improved("", "1"), Less);
    }

    #[test]
    fn fnmatch_supports_what_efi_fnmatch_supports() {
        let table = [
            ("cairn-b-1.3.0+[1-9]*.efi", "cairn-b-1.3.0+3.efi", true),
            ("cairn-b-1.3.0+[1-9]*.efi", "cairn-b-1.3.0+2-1.efi", true),
            ("cairn-b-1.3.0+[1-9]*.efi", "cairn-b-1.3.0+1-2.efi", true),
            ("cairn-b-1.3.0+[1-9]*.efi", "cairn-b-1.3.0+0-3.efi", false),
            ("cairn-b-1.3.0+[1-9]*.efi", "cairn-b-1.3.0.efi", false),
            ("cairn-b-1.3.0+[1-9]*.efi", "cairn-b-1.3.0.1+3.efi", false),
            ("cairn-b-1.3.0+[1-9]*.efi", "cairn-a-1.3.0+3.efi", false),
            ("a?c", "abc", true),
            ("a\\*c", "a*c", true),
            ("a\\*c", "abc", false),
            ("[abc]", "b", true),
            ("[abc", "b", false),
            ("*", "", true),
        ];
        for (p, s, want) in table {
            assert_eq!(sd_boot::fnmatch(p, s), want, "{p} ~ {s}");
        }
    }

    #[test]
    fn version_decides_between_live_entries_not_the_name() {
        // A downgrade's fresh entry sorts after the running one: this is why
        // cairn cannot rely on ordering alone.
        let old = e("cairn-a-1.3.0.efi");
        let new = e("cairn-b-1.2.0+3.efi");
        assert_eq!(
            boot_order(&[new.clone(), old.clone()]),
            [old.clone(), new.clone()]
        );
        let none = DefaultSettings::default();
        assert_eq!(
            default_entry(&[new.clone(), old.clone()], &none),
            Some(old.clone())
        );
        // With the trial pattern it is the new one.
        let trial = DefaultSettings {
            conf_default: Some(trial_default_pattern(Slot::B, new.version())),
            ..Default::default()
        };
        assert_eq!(
            default_entry(&[new.clone(), old.clone()], &trial),
            Some(new.clone())
        );
        // Exhausted: the pattern stops matching and the bad entry sorts last.
        let spent = e("cairn-b-1.2.0+0-3.efi");
        assert_eq!(
            default_entry(&[spent.clone(), old.clone()], &trial),
            Some(old.clone())
        );
        assert_eq!(
            boot_order(&[spent.clone(), old.clone()]),
            [old.clone(), spent]
        );
    }

    #[test]
    fn a_plain_default_would_defeat_boot_counting() {
        // Documented upstream behaviour the design avoids: an exact default
        // keeps selecting an entry with no tries left.
        let old = e("cairn-a-1.2.0.efi");
        let spent = e("cairn-b-1.3.0+0-3.efi");
        let exact = DefaultSettings {
            conf_default: Some("cairn-b-*".into()),
            ..Default::default()
        };
        assert_eq!(default_entry(&[old, spent.clone()], &exact), Some(spent));
    }

    #[test]
    fn efi_variables_take_precedence_over_loader_conf() {
        let a = e("cairn-a-1.2.0.efi");
        let b = e("cairn-b-1.3.0+3.efi");
        let conf = Some(trial_default_pattern(Slot::B, b.version()));
        let s = DefaultSettings {
            efi_default: Some("cairn-a-*".into()),
            conf_default: conf.clone(),
            ..Default::default()
        };
        assert_eq!(default_entry(&[a.clone(), b.clone()], &s), Some(a.clone()));
        let s = DefaultSettings {
            oneshot: Some("CAIRN-A-1.2.0.EFI".into()),
            efi_default: Some("cairn-b-*".into()),
            conf_default: conf,
            ..Default::default()
        };
        assert_eq!(
            default_entry(&[a.clone(), b.clone()], &s),
            Some(a.clone()),
            "patterns are lower-cased"
        );
        let s = DefaultSettings {
            efi_default: Some("@saved".into()),
            last_booted: Some(b.id()),
            ..Default::default()
        };
        assert_eq!(default_entry(&[a.clone(), b.clone()], &s), Some(b));
        assert_eq!(default_entry(&[], &DefaultSettings::default()), None);
    }

    #[test]
    fn compare_tie_breaks_follow_upstream() {
        let base = sd_boot::Entry {
            id: "x.efi".into(),
            sort_key: None,
            machine_id: None,
            version: None,
            tries_left: Some(2),
            tries_done: 1,
        };
        let more_left = sd_boot::Entry {
            tries_left: Some(3),
            ..base.clone()
        };
        let fewer_done = sd_boot::Entry {
            tries_done: 0,
            ..base.clone()
        };
        let keyed = sd_boot::Entry {
            sort_key: Some("zzz".into()),
            id: "a.efi".into(),
            ..base.clone()
        };
        let newer_id = sd_boot::Entry {
            id: "y.efi".into(),
            ..base.clone()
        };
        use std::cmp::Ordering::*;
        assert_eq!(sd_boot::compare(&more_left, &base), Less);
        assert_eq!(sd_boot::compare(&fewer_done, &base), Less);
        assert_eq!(sd_boot::compare(&keyed, &base), Less, "sort key first");
        assert_eq!(sd_boot::compare(&newer_id, &base), Less, "id descending");
        let uncounted = sd_boot::Entry {
            tries_left: None,
            ..base.clone()
        };
        assert_eq!(sd_boot::compare(&uncounted, &base), Equal);
        let zero = sd_boot::Entry {
            tries_left: Some(0),
            sort_key: Some("a".into()),
            ..base.clone()
        };
        assert_eq!(
            sd_boot::compare(&base, &zero),
            Less,
            "no tries left goes last"
        );
    }
}
