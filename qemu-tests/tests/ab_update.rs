//! Slow tier: A/B OS updates on a disk-booted QEMU node (OVMF + systemd-boot
//! under TCG). Run by `cargo run --release -p qemu-tests -- test`.
//!
//! A blank disk first: the machine PXE-boots with `cairn.install=/dev/vda`,
//! the power is cut while root-a is written, the next PXE boot starts the
//! install over, finishes it and reboots; then the disk boots under OVMF.
//! From there, in order: slot A runs the base version; an unsigned
//! version named in Git is refused; a signed version whose bytes were
//! tampered with on the server is refused; a good version is being written
//! into slot B when the power is cut — slot A comes back, the install
//! resumes; the power is cut again as soon as slot B's entry is on the
//! ESP, and slot B boots on trial, is gated and blessed; a bad version (its kubelet cannot
//! start) is installed into slot A, fails the health gate, is marked bad,
//! and the node comes back on slot B by itself and reports it.

use cairn_agent::os::{ANN_OS_FAILED, ANN_OS_SLOT, ANN_OS_UPDATE, ANN_OS_VERSION};
use qemu_tests::ab::{boot_disk_node, BAD, BASE, GOOD, TAMPERED, UNSIGNED, UPDATE_DEADLINE};
use qemu_tests::wait_until;

#[test]
#[ignore = "slow tier: builds a disk image and boots QEMU with OVMF (run by `cargo run --release -p qemu-tests -- test`)"]
fn disk_node_updates_a_to_b_refuses_bad_bytes_and_rolls_back_a_bad_version() {
    let out = qemu_tests::repo_root().join("out/test-ab");
    let mut node = boot_disk_node(&out).expect("disk node boots slot A and applies");
    assert_eq!(node.boots(), 1);
    node.wait_running("slot A up to date", BASE, "a").unwrap();

    // 1. A version the update repository does not sign: refused, A runs on.
    node.want_version(UNSIGNED).unwrap();
    let line = wait_until(
        "the unsigned version to be refused",
        UPDATE_DEADLINE,
        || {
            node.guest.check_alive()?;
            Ok(node
                .annotation(ANN_OS_UPDATE)?
                .filter(|u| u.contains("not signed") && u.contains(UNSIGNED)))
        },
    )
    .unwrap();
    println!("unsigned: {line}");

    // 2. Signed, but the bytes on the server were changed: refused by hash.
    node.want_version(TAMPERED).unwrap();
    let line = wait_until(
        "the tampered version to be refused",
        UPDATE_DEADLINE,
        || {
            node.guest.check_alive()?;
            Ok(node
                .annotation(ANN_OS_UPDATE)?
                .filter(|u| u.contains("install failed") && u.contains("sha256")))
        },
    )
    .unwrap();
    println!("tampered: {line}");
    assert_eq!(node.boots(), 1, "a refused update must not reboot");
    assert_eq!(
        node.annotation(ANN_OS_VERSION).unwrap().as_deref(),
        Some(BASE)
    );

    // 3. A good version. The power is cut while root-b is being written:
    //    the machine comes back on slot A, the agent resumes, and slot B is
    //    then booted, gated and blessed.
    let started = std::time::Instant::now();
    node.want_version(GOOD).unwrap();
    let line = wait_until("the agent to write root-b", UPDATE_DEADLINE, || {
        node.guest.check_alive()?;
        Ok(node
            .annotation(ANN_OS_UPDATE)?
            .filter(|u| u.contains("writing root-b")))
    })
    .unwrap();
    println!("power cut while: {line}");
    let cut = std::time::Instant::now();
    node.power_cycle().unwrap();
    let stage1 = node.stage1_slot_line().unwrap();
    assert!(stage1.contains("slot a"), "after the power cut: {stage1}");
    // The new boot's agent takes the install up again (any install status
    // other than the one at the cut comes from it: the old one is dead).
    let resumed = wait_until("the agent on slot A to resume", UPDATE_DEADLINE, || {
        node.guest.check_alive()?;
        Ok(node
            .annotation(ANN_OS_UPDATE)?
            .filter(|u| u.contains("installing") && *u != line))
    })
    .unwrap();
    println!(
        "power cut → slot A up, install resumed ({resumed}): {:.0} s",
        cut.elapsed().as_secs_f64()
    );
    assert_eq!(node.boots(), 2, "the power cut boots slot A again");
    // A second cut as soon as slot B's trial entry is on the ESP (the
    // UKI's rename is what makes the slot bootable; the agent may not have
    // saved `installed` yet, nor asked for the reboot): the next boot is
    // slot B, on trial.
    let entry = format!("cairn-b-{GOOD}+3.efi");
    wait_until("slot B's trial entry on the ESP", UPDATE_DEADLINE, || {
        node.guest.check_alive()?;
        Ok(node.esp()?.entries.contains(&entry).then_some(()))
    })
    .unwrap();
    node.power_off();
    let before = node.boots();
    let esp = node.esp().unwrap();
    println!(
        "second power cut with {entry} on the ESP: entries {:?}, loader.conf {:?}",
        esp.entries, esp.loader_conf
    );
    assert!(esp.entries.contains(&entry), "{:?}", esp.entries);
    // as the firmware will read it: the signed UKI, whole
    let on_esp =
        cairn_slots::install::read_esp_file(&node.disk, &format!("EFI/Linux/{entry}")).unwrap();
    let published = std::fs::read_dir(node.tuf_www.join("targets/cairn").join(GOOD))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("uki-b.efi"))
        .expect("the published UKI for slot B");
    assert!(
        on_esp == std::fs::read(&published).unwrap(),
        "{entry} on the ESP ({} bytes) is not {} as published",
        on_esp.len(),
        published.display()
    );
    node.power_on().unwrap();
    let stage1 = node.stage1_slot_line().unwrap();
    assert!(
        stage1.contains("slot b"),
        "a power cut after slot B's entry was installed: {stage1}"
    );
    node.wait_running("the good version blessed on slot B", GOOD, "b")
        .unwrap();
    let to_blessed = started.elapsed().as_secs_f64();
    assert_eq!(
        node.boots(),
        before + 1,
        "after the second power cut, slot B boots once and is blessed"
    );
    let base_boots = node.boots();
    println!(
        "update available → blessed on B (with two power cuts: during the write, after the entry): {to_blessed:.0} s"
    );

    // 4. A bad version: installed into A, fails the gate, B comes back.
    let started = std::time::Instant::now();
    node.want_version(BAD).unwrap();
    let failed = wait_until("the bad version reported failed", UPDATE_DEADLINE, || {
        node.guest.check_alive()?;
        let v = node.annotation(ANN_OS_VERSION)?;
        let s = node.annotation(ANN_OS_SLOT)?;
        let f = node.annotation(ANN_OS_FAILED)?;
        Ok(f.filter(|f| {
            f.starts_with(BAD) && v.as_deref() == Some(GOOD) && s.as_deref() == Some("b")
        }))
    })
    .unwrap();
    let to_rollback = started.elapsed().as_secs_f64();
    println!("bad update → back on B: {to_rollback:.0} s ({failed})");
    assert!(failed.contains("kubelet.service"), "{failed}");
    assert_eq!(node.boots(), base_boots + 2, "into the bad slot and back");
    // not retried: the agent says so (after reading the same commit again)
    wait_until("the agent to report the block", UPDATE_DEADLINE, || {
        node.guest.check_alive()?;
        Ok(node
            .annotation(ANN_OS_UPDATE)?
            .filter(|u| u.contains("is not retried")))
    })
    .unwrap();
    assert_eq!(
        node.boots(),
        base_boots + 2,
        "a failed version is not retried"
    );
    let phases = serde_json::json!({
        "phases": node.phases,
        "update_to_blessed_s": to_blessed,
        "bad_update_to_rolled_back_s": to_rollback,
    });
    println!("{phases}");
}
