#!/usr/bin/env python3
"""A reader of a published site, as a web server would be: in a loop, resolve TO/current once
(open the folder it names), then read every file of that release and check it against the
release's MANIFEST (sha256sum lines written by the build). A release that does not match its
manifest, or a `current` that has gone once it existed, is a failure. Stops when STOP exists;
writes {"checks": N, "failed": N, "failures": [the first 20]} to OUT. It pauses 10 ms between
checks, to leave the daemon most of the machine.

Usage: publish_reader.py TO STOP OUT
"""
import hashlib
import json
import os
import sys
import time


def check(fd):
    """Verifies the release open at fd; returns None or what is wrong."""
    with open(os.open("MANIFEST", os.O_RDONLY, dir_fd=fd), "rb") as f:
        lines = f.read().decode().splitlines()
    listed = {}
    for line in lines:
        digest, name = line.split("  ", 1)
        listed[os.path.normpath(name)] = digest
    if not listed:
        return "empty manifest"
    found = set()
    for root, _dirs, files, rootfd in os.fwalk(".", dir_fd=fd):
        for name in files:
            rel = os.path.normpath(os.path.join(root, name))
            if rel == "MANIFEST":
                continue
            found.add(rel)
            with open(os.open(name, os.O_RDONLY, dir_fd=rootfd), "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            if listed.get(rel) != digest:
                return f"{rel}: content does not match the manifest"
    missing = set(listed) - found
    if missing:
        return f"{len(missing)} files of the manifest missing, e.g. {sorted(missing)[0]}"
    return None


def main():
    to, stop, out = sys.argv[1:4]
    current = os.path.join(to, "current")
    checks, failures, seen = 0, [], False
    while not os.path.exists(stop):
        try:
            fd = os.open(current, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            if seen:
                failures.append("current is missing")
            time.sleep(0.01)
            continue
        seen = True
        try:
            target = os.readlink(current)
            problem = check(fd)
        except OSError as e:
            problem = f"reading the release failed: {e}"
        finally:
            os.close(fd)
        checks += 1
        if problem:
            failures.append(f"{target}: {problem}")
        time.sleep(0.01)
    with open(out, "w") as f:
        json.dump({"checks": checks, "failed": len(failures), "failures": failures[:20]}, f)


if __name__ == "__main__":
    main()
