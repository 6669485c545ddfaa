#!/usr/bin/env python3
"""Refresh and download targets with python-tuf's ngclient; print what it saw.

    ngclient.py METADATA_URL TARGETS_URL TRUSTED_ROOT WORKDIR TARGET...

Prints one JSON object: {"root_version": N, "targets": {name: {"length",
"hashes", "custom", "downloaded_sha256"} or null}}. Exits non-zero on any
failure (python's traceback says why).
"""

import hashlib
import json
import os
import shutil
import sys

from tuf.ngclient import Updater

metadata_url, targets_url, trusted_root, work, *names = sys.argv[1:]
md_dir = os.path.join(work, "metadata")
t_dir = os.path.join(work, "targets")
os.makedirs(md_dir, exist_ok=True)
os.makedirs(t_dir, exist_ok=True)
shutil.copyfile(trusted_root, os.path.join(md_dir, "root.json"))

with open(trusted_root, "rb") as f:
    bootstrap = f.read()
updater = Updater(md_dir, metadata_url, t_dir, targets_url, bootstrap=bootstrap)
updater.refresh()
result = {"targets": {}}
for name in names:
    info = updater.get_targetinfo(name)
    if info is None:
        result["targets"][name] = None
        continue
    path = updater.download_target(info)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    result["targets"][name] = {
        "length": info.length,
        "hashes": info.hashes,
        "custom": info.custom,
        "downloaded_sha256": digest,
    }
with open(os.path.join(md_dir, "root.json"), "rb") as f:
    result["root_version"] = json.load(f)["signed"]["version"]
print(json.dumps(result))
