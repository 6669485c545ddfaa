#!/usr/bin/env python3
"""Time python-tuf ngclient's Updater.refresh() from a fresh metadata dir.

    bench_refresh.py METADATA_URL TRUSTED_ROOT ITERATIONS

Prints {"times": [seconds, ...], "min": ..., "median": ...} for Updater
construction plus refresh (interpreter start-up and imports excluded).
"""

import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from tuf.ngclient import Updater

metadata_url, trusted_root, iterations = sys.argv[1], sys.argv[2], int(sys.argv[3])
times = []
for _ in range(iterations):
    with tempfile.TemporaryDirectory() as d:
        shutil.copyfile(trusted_root, os.path.join(d, "root.json"))
        t0 = time.perf_counter()
        Updater(d, metadata_url, bootstrap=None).refresh()
        times.append(time.perf_counter() - t0)
print(json.dumps({"times": times, "min": min(times), "median": statistics.median(times)}))
