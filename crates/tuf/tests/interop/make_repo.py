#!/usr/bin/env python3
"""Build a TUF repository with python-tuf's metadata API, for cairn's client.

    make_repo.py OUT_DIR

Writes OUT_DIR/metadata/ (consistent snapshots, three root versions),
OUT_DIR/targets/ (hash-prefixed files) and OUT_DIR/expected.json, which says
which targets a conforming client finds (and through which role) and which
it must not find. Keys: ed25519, ecdsa-sha2-nistp256, rsassa-pss-sha256 and
rsa-pkcs1v15-sha256; delegations: terminating, nested, path-hash-prefixed.
"""

import hashlib
import json
import os
import sys
from datetime import datetime, timedelta, timezone

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

out = sys.argv[1]
md_dir = os.path.join(out, "metadata")
t_dir = os.path.join(out, "targets")
os.makedirs(md_dir, exist_ok=True)
os.makedirs(t_dir, exist_ok=True)
expires = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=30)

signers = {
    "root": [
        CryptoSigner.generate_ed25519(),
        CryptoSigner.generate_ecdsa(),
        CryptoSigner.generate_rsa(scheme="rsassa-pss-sha256"),
    ],
    "timestamp": [CryptoSigner.generate_ed25519()],
    "snapshot": [CryptoSigner.generate_rsa(scheme="rsassa-pss-sha256")],
    "targets": [CryptoSigner.generate_ecdsa()],
}
delegated_signers = {
    "images": CryptoSigner.generate_ecdsa(),
    "nested": CryptoSigner.generate_rsa(scheme="rsa-pkcs1v15-sha256"),
    "fallback": CryptoSigner.generate_ed25519(),
    "hashed": CryptoSigner.generate_ecdsa(),
}

root = Root(expires=expires, consistent_snapshot=True)
for role, ss in signers.items():
    for s in ss:
        root.add_key(s.public_key, role)
root.roles["root"].threshold = 2

targets_by_role = {name: Targets(expires=expires) for name in ["targets", *delegated_signers]}
expected = {"found": {}, "not_found": []}


def add_target(role, path, data, custom=None, find=True):
    tf = TargetFile.from_data(path, data, ["sha256", "sha512"])
    if custom is not None:
        tf.unrecognized_fields["custom"] = custom
    targets_by_role[role].targets[path] = tf
    dirname, sep, base = path.rpartition("/")
    dest = os.path.join(t_dir, dirname, f"{tf.hashes['sha256']}.{base}")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest, "wb") as f:
        f.write(data)
    if find:
        expected["found"][path] = {
            "role": role,
            "length": len(data),
            "sha256": tf.hashes["sha256"],
            "custom": custom,
        }


def delegate(delegator, name, paths=None, prefixes=None, terminating=False):
    t = targets_by_role[delegator]
    if t.delegations is None:
        t.delegations = Delegations(keys={}, roles={})
    signer = delegated_signers[name]
    t.delegations.roles[name] = DelegatedRole(
        name, [], 1, terminating, paths=paths, path_hash_prefixes=prefixes
    )
    t.add_key(signer.public_key, name)


# Top-level targets.
add_target("targets", "file1.txt", b"hello from python-tuf\n")
# Terminating delegation for images/, with a nested delegation under it.
delegate("targets", "images", paths=["images/*", "images/*/*"], terminating=True)
add_target(
    "images",
    "images/cairn-0.2.0.rootfs",
    b"pretend rootfs image\n" * 100,
    custom={"version": "0.2.0", "rootfs_hash": "sha256:00", "min_agent_version": "0.1.0"},
)
delegate("images", "nested", paths=["images/nested/*"])
add_target("nested", "images/nested/deep.bin", b"deep")
# Non-terminating catch-all after it: must not be consulted for images/*.
delegate("targets", "fallback", paths=["*", "*/*"])
add_target("fallback", "images/shadowed", b"shadowed by a terminating role", find=False)
expected["not_found"].append("images/shadowed")
add_target("fallback", "other/thing.txt", b"other")
# Path-hash-prefix delegation.
prefix = hashlib.sha256(b"prefixed.txt").hexdigest()[:2]
delegate("targets", "hashed", prefixes=[prefix])
add_target("hashed", "prefixed.txt", b"found through a hash prefix")
expected["not_found"].append("does/not/exist")

ser = JSONSerializer()


def write(name, md):
    with open(os.path.join(md_dir, name), "wb") as f:
        f.write(md.to_bytes(ser))


# Targets metadata (version 1 each), snapshot, timestamp.
snapshot = Snapshot(expires=expires)
for name, t in targets_by_role.items():
    md = Metadata(t)
    md.sign(signers["targets"][0] if name == "targets" else delegated_signers[name], append=True)
    data = md.to_bytes(ser)
    write(f"{t.version}.{name}.json", md)
    # Lengths and hashes for some entries, versions only for others.
    if name in ("targets", "images"):
        snapshot.meta[f"{name}.json"] = MetaFile(
            t.version, len(data), {"sha256": hashlib.sha256(data).hexdigest()}
        )
    else:
        snapshot.meta[f"{name}.json"] = MetaFile(t.version)
snap_md = Metadata(snapshot)
snap_md.sign(signers["snapshot"][0], append=True)
snap_bytes = snap_md.to_bytes(ser)
write(f"{snapshot.version}.snapshot.json", snap_md)

# Root v1, then v2 (one root key and the timestamp key rotated), then v3
# (root threshold 3). Each new root is signed by the old and new root keys.
def sign_root(keys):
    md = Metadata(root)
    for s in keys:
        md.sign(s, append=True)
    write(f"{root.version}.root.json", md)


sign_root(signers["root"])
old_root_signers = list(signers["root"])

new_root_key = CryptoSigner.generate_ed25519()
root.revoke_key(signers["root"][0].public_key.keyid, "root")
root.add_key(new_root_key.public_key, "root")
signers["root"][0] = new_root_key
new_ts = CryptoSigner.generate_ed25519()
root.revoke_key(signers["timestamp"][0].public_key.keyid, "timestamp")
root.add_key(new_ts.public_key, "timestamp")
signers["timestamp"] = [new_ts]
root.version = 2
sign_root(old_root_signers + [new_root_key])

root.roles["root"].threshold = 3
root.version = 3
sign_root(signers["root"])

timestamp = Timestamp(expires=expires)
timestamp.snapshot_meta = MetaFile(
    snapshot.version, len(snap_bytes), {"sha256": hashlib.sha256(snap_bytes).hexdigest()}
)
ts_md = Metadata(timestamp)
ts_md.sign(signers["timestamp"][0], append=True)
write("timestamp.json", ts_md)

expected["root_version"] = 3
with open(os.path.join(out, "expected.json"), "w") as f:
    json.dump(expected, f, indent=1)
