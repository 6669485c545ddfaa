//! Fuzz the metadata parser: any bytes through the envelope parser, the
//! typed views and target look-ups must return an error, never panic; and
//! whatever parses must canonicalise exactly like the serde_json-based
//! encoder.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cairn_tuf::metadata::parse_any(data);
    if let Ok(env) = cairn_tuf::metadata::Envelope::parse(data, "fuzz") {
        if let Ok(ours) = cairn_tuf::canonical::to_canonical_vec(&env.signed_value()) {
            assert_eq!(ours, env.canonical(), "canonical forms differ");
        }
    }
});
