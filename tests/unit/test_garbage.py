"""The imports' objects kept out of the garbage collector's passes (train/garbage.py), in a process of its own:
a freeze is for the whole process."""

import json
import subprocess
import sys

from helpers import REPO

PROGRAM = """
import gc, json
from mnist_dist.train.garbage import imports_uncollected
collections = []
gc.callbacks.append(lambda phase, info: collections.append(info["generation"]) if phase == "start" else None)
before = gc.get_freeze_count()
with imports_uncollected():
    import argparse, email.mime.multipart, xml.dom.minidom, json.decoder  # objects that are never garbage
    garbage = [[] for _ in range(5000)]  # enough new objects to start a collection, were the collector on
    inside = {"enabled": gc.isenabled(), "collections": len(collections)}
frozen = gc.get_freeze_count()
try:
    with imports_uncollected():
        raise ImportError("no such module")
except ImportError:
    pass
print(json.dumps({**inside, "before": before, "frozen": frozen, "restored": gc.isenabled()}))
"""


def test_no_collection_runs_during_the_imports_whose_objects_are_then_frozen():
    out = subprocess.run([sys.executable, "-c", PROGRAM], cwd=REPO, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert not result["enabled"] and result["collections"] == 0
    assert result["before"] == 0 and result["frozen"] > 10_000  # the imports' objects, out of later passes
    assert result["restored"] is True  # the collector on again after a failed import too
