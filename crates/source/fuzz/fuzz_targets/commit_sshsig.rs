//! Fuzz the untrusted-input parsers: a raw commit object is split into
//! payload and `gpgsig` signature, the signature decoded as SSHSIG, and the
//! signed data computed. None of it may panic; the splitter's output must
//! be consistent with its input.
#![no_main]

use cairn_source::parse::{parse_sshsig, split_signed_commit, sshsig_signed_data};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = split_signed_commit(data) {
        // The payload is the object minus the signature headers.
        assert!(c.payload.len() <= data.len());
        if let Some(sig) = &c.signature {
            assert!(sig.len() <= data.len());
            if let Ok(s) = parse_sshsig(sig) {
                let _ = sshsig_signed_data(s.hash_alg, &c.payload);
            }
        } else {
            assert_eq!(c.payload.len(), data.len() - other_sig_len(data));
        }
    }
    // The SSHSIG decoder on its own, too.
    let _ = parse_sshsig(data);
});

/// Bytes of `gpgsig-*` headers (and their continuations) before the
/// message, which the splitter drops even from unsigned commits.
fn other_sig_len(data: &[u8]) -> usize {
    let mut n = 0;
    let mut in_other = false;
    for line in data.split_inclusive(|&b| b == b'\n') {
        if line == b"\n" {
            break;
        }
        if line.starts_with(b" ") {
            if in_other {
                n += line.len();
            }
        } else {
            in_other = line.starts_with(b"gpgsig");
            if in_other {
                n += line.len();
            }
        }
    }
    n
}
