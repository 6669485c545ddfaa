//! What the node knows about itself at boot: hostname, machine id, MACs.

use std::path::Path;

use cairn_render::NodeIdentity;

/// Read the identity from a root (`/` on a node; a temp dir in tests).
pub fn read(root: &Path) -> NodeIdentity {
    let hostname = std::fs::read_to_string(root.join("proc/sys/kernel/hostname"))
        .or_else(|_| std::fs::read_to_string(root.join("etc/hostname")))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let machine_id = std::fs::read_to_string(root.join("etc/machine-id"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let mut macs = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root.join("sys/class/net")) {
        for e in entries.flatten() {
            if e.file_name() == "lo" {
                continue;
            }
            if let Ok(mac) = std::fs::read_to_string(e.path().join("address")) {
                let mac = mac.trim().to_ascii_lowercase();
                if !mac.is_empty() && mac != "00:00:00:00:00:00" {
                    macs.push(mac);
                }
            }
        }
    }
    macs.sort();
    macs.dedup();
    NodeIdentity {
        hostname,
        machine_id,
        macs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hostname_machine_id_and_macs_skipping_loopback() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("proc/sys/kernel")).unwrap();
        std::fs::write(r.join("proc/sys/kernel/hostname"), "node1\n").unwrap();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("etc/machine-id"), "abc\n").unwrap();
        for (dev, mac) in [
            ("lo", "00:00:00:00:00:00"),
            ("ens3", "52:54:00:12:34:56"),
            ("cni0", "0A:00:00:00:00:01"),
        ] {
            std::fs::create_dir_all(r.join("sys/class/net").join(dev)).unwrap();
            std::fs::write(
                r.join("sys/class/net").join(dev).join("address"),
                format!("{mac}\n"),
            )
            .unwrap();
        }
        let id = read(r);
        assert_eq!(id.hostname, "node1");
        assert_eq!(id.machine_id.as_deref(), Some("abc"));
        assert_eq!(id.macs, vec!["0a:00:00:00:00:01", "52:54:00:12:34:56"]);
    }
}
