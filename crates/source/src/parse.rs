//! Pure parsers for the two untrusted formats this crate reads: a raw git
//! commit object (to split the `gpgsig` header from the signed payload) and
//! an armored SSH signature (SSHSIG). No I/O; these are the fuzz targets.

use ssh_key::{public::KeyData, HashAlg, SshSig};

/// The header git uses for the signature of a commit in a SHA-1 repository.
const SIG_HEADER: &[u8] = b"gpgsig";

/// A raw commit object split the way `git verify-commit` splits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCommit {
    /// The bytes that were signed: the object without its `gpgsig` header
    /// (and without headers of signatures for other hash algorithms, such as
    /// `gpgsig-sha256`), exactly as git reconstructs them.
    pub payload: Vec<u8>,
    /// The value of the `gpgsig` header with continuation lines joined, or
    /// `None` when the commit is unsigned.
    pub signature: Option<Vec<u8>>,
    /// The committer timestamp (seconds since the epoch): the time at which
    /// git, and this crate, check a key's `valid-after`/`valid-before`.
    pub committer_time: i64,
    /// The `tree` header (hex), which must be the first line.
    pub tree: String,
    /// The `parent` headers (hex) that directly follow `tree`, in order.
    pub parents: Vec<String>,
}

/// Why a raw commit object could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitParseError {
    /// More than one `gpgsig` header (git would concatenate them; we refuse).
    #[error("more than one gpgsig header")]
    DuplicateSignature,
    /// No `committer` header.
    #[error("no committer header")]
    MissingCommitter,
    /// The `committer` header has no parseable timestamp.
    #[error("committer header has no valid timestamp")]
    BadCommitterTime,
    /// The object does not start with a `tree` header.
    #[error("no tree header on the first line")]
    MissingTree,
    /// A `tree` or `parent` header does not hold an object id.
    #[error("tree or parent header is not a 40-digit hex object id")]
    BadObjectId,
}

/// Split a raw commit object into signed payload and signature.
///
/// Follows git's `parse_buffer_signed_by_header` (commit.c): header lines up
/// to the first empty line are scanned; a `gpgsig ` line and the lines that
/// continue it (starting with a space) form the signature, each with its
/// first byte (the header name or the continuation space) removed, and are
/// left out of the payload. Headers of other signature kinds (`gpgsig-*`)
/// and their continuations are also left out of the payload but ignored.
/// Deliberate deviation: a second `gpgsig` header is refused instead of
/// being concatenated to the first.
pub fn split_signed_commit(raw: &[u8]) -> Result<SignedCommit, CommitParseError> {
    let mut payload = Vec::with_capacity(raw.len());
    let mut signature: Option<Vec<u8>> = None;
    let mut in_signature = false;
    let mut in_other_signature = false;
    let mut committer_time = None;
    let mut tree = None;
    let mut parents = Vec::new();
    let mut in_parents = true;
    let mut pos = 0;
    while pos < raw.len() {
        let end = match raw[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => pos + i + 1,
            None => raw.len(),
        };
        let line = &raw[pos..end];
        if line == b"\n" {
            // End of headers: the message is copied as is.
            payload.extend_from_slice(&raw[pos..]);
            break;
        }
        if line.starts_with(b" ") {
            // A continuation line belongs to the previous header.
            if in_signature {
                // `in_signature` implies `signature` is `Some`.
                if let Some(sig) = signature.as_mut() {
                    sig.extend_from_slice(&line[1..]);
                }
            } else if !in_other_signature {
                payload.extend_from_slice(line);
            }
        } else {
            in_signature = false;
            in_other_signature = false;
            if let Some(value) = header_value(line, SIG_HEADER) {
                if signature.is_some() {
                    return Err(CommitParseError::DuplicateSignature);
                }
                signature = Some(value.to_vec());
                in_signature = true;
            } else if line.starts_with(SIG_HEADER) {
                in_other_signature = true;
            } else {
                if tree.is_none() {
                    let value = header_value(line, b"tree").ok_or(CommitParseError::MissingTree)?;
                    tree = Some(object_id(value)?);
                } else if let (true, Some(value)) = (in_parents, header_value(line, b"parent")) {
                    parents.push(object_id(value)?);
                } else {
                    in_parents = false;
                }
                if let Some(value) = header_value(line, b"committer") {
                    if committer_time.is_none() {
                        committer_time = Some(parse_ident_time(value)?);
                    }
                }
                payload.extend_from_slice(line);
            }
        }
        pos = end;
    }
    let tree = tree.ok_or(CommitParseError::MissingTree)?;
    let committer_time = committer_time.ok_or(CommitParseError::MissingCommitter)?;
    Ok(SignedCommit {
        payload,
        signature,
        committer_time,
        tree,
        parents,
    })
}

/// A header value that must be exactly a 40-digit lowercase hex id and `\n`.
fn object_id(value: &[u8]) -> Result<String, CommitParseError> {
    let hex = value.strip_suffix(b"\n").unwrap_or(value);
    if hex.len() == 40 && hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        // Checked ASCII above.
        Ok(String::from_utf8_lossy(hex).into_owned())
    } else {
        Err(CommitParseError::BadObjectId)
    }
}

/// `Some(value)` if `line` is the header `name` (`name SP value`).
fn header_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    line.strip_prefix(name)?.strip_prefix(b" ")
}

/// The timestamp of an ident line value `Name <email> 1700000000 +0000\n`.
fn parse_ident_time(value: &[u8]) -> Result<i64, CommitParseError> {
    let gt = value
        .iter()
        .rposition(|&b| b == b'>')
        .ok_or(CommitParseError::BadCommitterTime)?;
    let rest = &value[gt + 1..];
    let rest = trim_start(rest);
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 18 {
        return Err(CommitParseError::BadCommitterTime);
    }
    std::str::from_utf8(&rest[..digits])
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(CommitParseError::BadCommitterTime)
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|&&c| c == b' ').count();
    &b[n..]
}

/// Why an armored signature is not a usable SSH signature for git.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshSigError {
    /// Not an `-----BEGIN SSH SIGNATURE-----` block (e.g. an OpenPGP or
    /// X.509 signature).
    #[error("not an SSH signature (gpg.format=ssh is required)")]
    NotSsh,
    /// The SSHSIG blob cannot be decoded.
    #[error("cannot decode SSH signature: {0}")]
    Decode(String),
    /// The signature was made for another namespace than `git`.
    #[error("signature namespace is {0:?}, expected \"git\"")]
    Namespace(String),
    /// The signing key is not an ed25519 key.
    #[error("unsupported key type {0}")]
    UnsupportedKey(String),
    /// The signature algorithm does not match the ed25519 key.
    #[error("signature algorithm {0} does not match the ed25519 key")]
    SignatureAlgorithm(String),
}

/// A decoded SSHSIG for namespace `git` made with an ed25519 key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSignature {
    /// The public key named in the signature.
    pub key: KeyData,
    /// The raw ed25519 public key.
    pub ed25519_key: [u8; 32],
    /// The hash algorithm the message was hashed with.
    pub hash_alg: HashAlg,
    /// The raw 64-byte ed25519 signature.
    pub signature: [u8; 64],
}

/// The namespace git signs commits in.
pub const GIT_NAMESPACE: &str = "git";

/// Decode an armored SSHSIG as found in a `gpgsig` header.
///
/// Checks, in the order of PROTOCOL.sshsig: the armor, the `SSHSIG` magic
/// and version (by `ssh-key`), the namespace (`git`), then that the key and
/// signature are ed25519. Other key types give
/// [`SshSigError::UnsupportedKey`] so the caller can say so clearly.
pub fn parse_sshsig(armored: &[u8]) -> Result<SshSignature, SshSigError> {
    let text = std::str::from_utf8(armored).map_err(|_| SshSigError::NotSsh)?;
    if !text
        .trim_start()
        .starts_with("-----BEGIN SSH SIGNATURE-----")
    {
        return Err(SshSigError::NotSsh);
    }
    let sig = SshSig::from_pem(text).map_err(|e| SshSigError::Decode(e.to_string()))?;
    if sig.namespace() != GIT_NAMESPACE {
        return Err(SshSigError::Namespace(sig.namespace().to_string()));
    }
    let key = sig.public_key().clone();
    let ed25519_key = match key.ed25519() {
        Some(k) => k.0,
        None => {
            return Err(SshSigError::UnsupportedKey(
                key.algorithm().as_str().to_string(),
            ))
        }
    };
    if sig.signature().algorithm() != ssh_key::Algorithm::Ed25519 {
        return Err(SshSigError::SignatureAlgorithm(
            sig.signature().algorithm().as_str().to_string(),
        ));
    }
    let signature: [u8; 64] = sig
        .signature_bytes()
        .try_into()
        .map_err(|_| SshSigError::Decode("ed25519 signature is not 64 bytes".into()))?;
    Ok(SshSignature {
        key,
        ed25519_key,
        hash_alg: sig.hash_alg(),
        signature,
    })
}

/// The bytes an SSHSIG signature is computed over (PROTOCOL.sshsig §
/// "Signed Data"): `"SSHSIG" || string(namespace) || string(reserved="") ||
/// string(hash_alg) || string(H(message))`. Like OpenSSH, the reserved field
/// is always empty here, whatever the signature blob carries.
pub fn sshsig_signed_data(hash_alg: HashAlg, message: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let digest: Vec<u8> = match hash_alg {
        HashAlg::Sha256 => sha2::Sha256::digest(message).to_vec(),
        // `HashAlg` is non-exhaustive; SHA-512 is what git uses.
        _ => sha2::Sha512::digest(message).to_vec(),
    };
    let mut out = Vec::with_capacity(6 + 4 + 3 + 4 + 4 + 6 + 4 + digest.len());
    out.extend_from_slice(b"SSHSIG");
    put_string(&mut out, GIT_NAMESPACE.as_bytes());
    put_string(&mut out, b"");
    put_string(&mut out, hash_alg.as_str().as_bytes());
    put_string(&mut out, &digest);
    out
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    // Lengths here are at most 64 bytes: the cast cannot truncate.
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNED: &[u8] = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
author A <a@example.com> 1700000000 +0100\n\
committer C <c@example.com> 1700000123 +0100\n\
gpgsig -----BEGIN SSH SIGNATURE-----\n \
AAAA\n \n \
-----END SSH SIGNATURE-----\n\
\n\
message\n";

    #[test]
    fn splits_signature_from_payload() {
        let c = split_signed_commit(SIGNED).unwrap();
        assert_eq!(
            c.signature.as_deref(),
            Some(&b"-----BEGIN SSH SIGNATURE-----\nAAAA\n\n-----END SSH SIGNATURE-----\n"[..])
        );
        assert_eq!(
            c.payload,
            b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
author A <a@example.com> 1700000000 +0100\n\
committer C <c@example.com> 1700000123 +0100\n\
\n\
message\n"
        );
        assert_eq!(c.committer_time, 1700000123);
    }

    #[test]
    fn unsigned_commit_has_no_signature() {
        let raw = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
committer C <c@example.com> 5 +0000\n\ngpgsig in the message\n";
        let c = split_signed_commit(raw).unwrap();
        assert_eq!(c.signature, None);
        assert_eq!(c.payload, raw);
    }

    #[test]
    fn other_signature_headers_are_dropped_not_used() {
        let raw = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
committer C <c@example.com> 5 +0000\n\
gpgsig-sha256 -----BEGIN SSH SIGNATURE-----\n X\n -----END SSH SIGNATURE-----\n\
\nmsg\n";
        let c = split_signed_commit(raw).unwrap();
        assert_eq!(c.signature, None);
        assert_eq!(
            c.payload,
            b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
committer C <c@example.com> 5 +0000\n\nmsg\n"
        );
    }

    #[test]
    fn duplicate_signature_is_refused() {
        let raw = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\ncommitter C <c> 5 +0000\ngpgsig a\ngpgsig b\n\nm";
        assert_eq!(
            split_signed_commit(raw),
            Err(CommitParseError::DuplicateSignature)
        );
    }

    #[test]
    fn committer_is_required() {
        assert_eq!(
            split_signed_commit(b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\nm"),
            Err(CommitParseError::MissingCommitter)
        );
        assert_eq!(
            split_signed_commit(
                b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\ncommitter C <c> x +0000\n\nm"
            ),
            Err(CommitParseError::BadCommitterTime)
        );
    }

    #[test]
    fn non_ssh_signature_is_named() {
        assert_eq!(
            parse_sshsig(b"-----BEGIN PGP SIGNATURE-----\nabc\n-----END PGP SIGNATURE-----\n"),
            Err(SshSigError::NotSsh)
        );
    }
}

#[cfg(test)]
mod sshsig_tests {
    use super::*;

    /// `echo hello | ssh-keygen -Y sign -n git -f key` (70-column armor).
    const SIG: &str = "-----BEGIN SSH SIGNATURE-----
U1NIU0lHAAAAAQAAADMAAAALc3NoLWVkMjU1MTkAAAAg6koI1zcsqzurPY/8HskSatBkBP
By+8r8vlEvEYvCdNgAAAADZ2l0AAAAAAAAAAZzaGE1MTIAAABTAAAAC3NzaC1lZDI1NTE5
AAAAQLoT4atWetq8tQmsJs1zZokouviDgYV6zLIMwbpL0U/+EA/pYWPPsC0yo44rxZVFAL
OeNNIxtjNk55GuLAx9JAE=
-----END SSH SIGNATURE-----
";

    #[test]
    fn ssh_keygen_signature_verifies() {
        let sig = parse_sshsig(SIG.as_bytes()).unwrap();
        assert_eq!(sig.hash_alg, HashAlg::Sha512);
        let data = sshsig_signed_data(sig.hash_alg, b"hello\n");
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&sig.ed25519_key).unwrap();
        vk.verify_strict(&data, &ed25519_dalek::Signature::from_bytes(&sig.signature))
            .unwrap();
        let bad = sshsig_signed_data(sig.hash_alg, b"hellO\n");
        assert!(vk
            .verify_strict(&bad, &ed25519_dalek::Signature::from_bytes(&sig.signature))
            .is_err());
    }
}
