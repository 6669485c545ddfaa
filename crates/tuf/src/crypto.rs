//! Public keys and signature verification (no IO).
//!
//! | keytype | scheme | public key | signature |
//! | --- | --- | --- | --- |
//! | `ed25519` | `ed25519` | 32 bytes, hex | 64 bytes, hex |
//! | `ecdsa`, `ecdsa-sha2-nistp256` | `ecdsa-sha2-nistp256` | SPKI PEM | DER (or raw r‖s), hex |
//! | `rsa` | `rsassa-pss-sha256` | SPKI PEM | hex |
//! | `rsa` | `rsa-pkcs1v15-sha256` | SPKI PEM | hex |
//!
//! Any other keytype/scheme (e.g. tuf-on-ci's `sigstore-oidc` keys) parses,
//! but its signatures never count towards a threshold. A key whose material
//! cannot be decoded behaves the same way: metadata fails only if the
//! remaining valid signatures miss the threshold.

use p256::pkcs8::DecodePublicKey as _;
use rsa::pkcs1::DecodeRsaPublicKey as _;
use sha2::{Digest, Sha256};

/// A public key as listed in root or delegating targets metadata.
#[derive(Clone)]
pub struct PublicKey {
    keytype: String,
    scheme: String,
    public: String,
    material: Material,
}

#[derive(Clone)]
enum Material {
    Ed25519(ed25519_dalek::VerifyingKey),
    EcdsaP256(p256::ecdsa::VerifyingKey),
    RsaPss(rsa::RsaPublicKey),
    RsaPkcs1v15(rsa::RsaPublicKey),
    /// Unknown scheme or undecodable key: verifies nothing.
    Unusable,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("keytype", &self.keytype)
            .field("scheme", &self.scheme)
            .field("usable", &!matches!(self.material, Material::Unusable))
            .finish()
    }
}

impl PublicKey {
    /// Build a key from its `keytype`, `scheme` and `keyval.public` fields.
    /// Never fails: an unsupported or undecodable key is kept but verifies
    /// no signature.
    pub fn new(keytype: &str, scheme: &str, public: &str) -> PublicKey {
        let material = decode(keytype, scheme, public).unwrap_or(Material::Unusable);
        PublicKey {
            keytype: keytype.to_string(),
            scheme: scheme.to_string(),
            public: public.to_string(),
            material,
        }
    }

    /// The key's `keytype`.
    pub fn keytype(&self) -> &str {
        &self.keytype
    }

    /// The key's `scheme`.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The key's `keyval.public` string as listed.
    pub fn public(&self) -> &str {
        &self.public
    }

    /// Whether this client can verify signatures made with this key.
    pub fn is_supported(&self) -> bool {
        !matches!(self.material, Material::Unusable)
    }

    /// A value identifying the key material, used to count one key listed
    /// under two key ids only once.
    pub(crate) fn identity(&self) -> String {
        format!("{}\n{}\n{}", self.keytype, self.scheme, self.public.trim())
    }

    /// Verify `sig` over `msg` (the canonical bytes of `signed`).
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match &self.material {
            Material::Ed25519(key) => {
                let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
                    return false;
                };
                key.verify_strict(msg, &sig).is_ok()
            }
            Material::EcdsaP256(key) => {
                use p256::ecdsa::signature::Verifier as _;
                let sig = p256::ecdsa::Signature::from_der(sig)
                    .or_else(|_| p256::ecdsa::Signature::from_slice(sig));
                match sig {
                    Ok(sig) => key.verify(msg, &sig).is_ok(),
                    Err(_) => false,
                }
            }
            Material::RsaPss(key) => {
                let hashed = Sha256::digest(msg);
                // securesystemslib signs with a digest-length salt and
                // verifies with "auto"; other signers use the maximum salt.
                // The rsa crate needs the length, so try both.
                let em_len = (rsa::traits::PublicKeyParts::n(key).bits() - 1).div_ceil(8);
                let max_salt = em_len.saturating_sub(32 + 2);
                [32, max_salt].iter().any(|&salt| {
                    key.verify(rsa::Pss::new_with_salt::<Sha256>(salt), &hashed, sig)
                        .is_ok()
                })
            }
            Material::RsaPkcs1v15(key) => {
                let hashed = Sha256::digest(msg);
                key.verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &hashed, sig)
                    .is_ok()
            }
            Material::Unusable => false,
        }
    }
}

fn decode(keytype: &str, scheme: &str, public: &str) -> Option<Material> {
    match (keytype, scheme) {
        ("ed25519", "ed25519") => {
            let bytes: [u8; 32] = hex::decode(public).ok()?.try_into().ok()?;
            ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                .ok()
                .map(Material::Ed25519)
        }
        ("ecdsa" | "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256") => {
            p256::ecdsa::VerifyingKey::from_public_key_pem(public.trim())
                .ok()
                .or_else(|| {
                    // Some older repositories list the SEC1 point in hex.
                    let bytes = hex::decode(public.trim()).ok()?;
                    p256::ecdsa::VerifyingKey::from_sec1_bytes(&bytes).ok()
                })
                .map(Material::EcdsaP256)
        }
        ("rsa", "rsassa-pss-sha256") => decode_rsa(public).map(Material::RsaPss),
        ("rsa", "rsa-pkcs1v15-sha256") => decode_rsa(public).map(Material::RsaPkcs1v15),
        _ => None,
    }
}

fn decode_rsa(public: &str) -> Option<rsa::RsaPublicKey> {
    let pem = public.trim();
    rsa::RsaPublicKey::from_public_key_pem(pem)
        .ok()
        .or_else(|| rsa::RsaPublicKey::from_pkcs1_pem(pem).ok())
}

/// The TUF key id of a key: hex SHA-256 of the canonical JSON of
/// `{"keytype", "scheme", "keyval": {"public"}}` (what python-tuf and
/// securesystemslib compute for new keys). Clients do not recompute key ids
/// of listed keys; this is for the repository side.
pub fn key_id(keytype: &str, scheme: &str, public: &str) -> String {
    let value = serde_json::json!({
        "keytype": keytype,
        "scheme": scheme,
        "keyval": {"public": public},
    });
    let canonical =
        crate::canonical::to_canonical_vec(&value).expect("strings have a canonical form");
    hex::encode(Sha256::digest(canonical))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer as _;

    #[test]
    fn ed25519_round_trip() {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let key = PublicKey::new(
            "ed25519",
            "ed25519",
            &hex::encode(sk.verifying_key().as_bytes()),
        );
        assert!(key.is_supported());
        let sig = sk.sign(b"msg").to_bytes();
        assert!(key.verify(b"msg", &sig));
        assert!(!key.verify(b"msh", &sig));
        assert!(!key.verify(b"msg", &sig[..63]));
    }

    #[test]
    fn unknown_and_broken_keys_verify_nothing() {
        let k = PublicKey::new("sigstore-oidc", "Fulcio", "x");
        assert!(!k.is_supported());
        assert!(!k.verify(b"m", b"s"));
        let k = PublicKey::new("ed25519", "ed25519", "zz");
        assert!(!k.is_supported());
        let k = PublicKey::new("rsa", "rsassa-pss-sha256", "not pem");
        assert!(!k.is_supported());
    }

    #[test]
    fn ecdsa_der_signatures() {
        use p256::ecdsa::signature::Signer as _;
        use p256::pkcs8::EncodePublicKey as _;
        let sk = p256::ecdsa::SigningKey::from_slice(&[9; 32]).unwrap();
        let pem = sk
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        let key = PublicKey::new("ecdsa", "ecdsa-sha2-nistp256", &pem);
        let sig: p256::ecdsa::Signature = sk.sign(b"hello");
        assert!(key.verify(b"hello", sig.to_der().as_bytes()));
        assert!(!key.verify(b"hellp", sig.to_der().as_bytes()));
    }
}
