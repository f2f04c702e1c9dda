#!/usr/bin/env python3
"""Checks that the source tree's dependencies point one way (docs/ARCHITECTURE.md).

  tests/layout/check.py SRC_DIR [BUILD_DIR]

1. Includes: every #include "x/y.h" of a file goes to a folder its own folder may
   depend on (ALLOWED below).
2. Symbols (with BUILD_DIR): for the objects of each static library, which object
   needs a symbol another defines. Within worker/ that graph has no circle: a
   route file that takes helpers back from the file that registers it (the old
   worker/api.c circle) is a circle here, whatever the headers say. Across
   libraries, a symbol may only come from a library the folder may depend on.

Prints each problem on one line and exits 1 if there is any, else prints a
summary and exits 0.
"""
import os
import re
import subprocess
import sys

# folder -> folders it may include from (itself always allowed)
ALLOWED = {
    "common": set(),
    "coordinator": {"common"},
    "worker/wecom": {"common"},
    "worker/sync": {"common", "coordinator", "worker/wecom"},
    "worker/api": {"common", "coordinator", "worker/wecom"},
    "worker/cli": {"common", "coordinator", "worker/wecom", "worker/sync", "worker/api"},
}
LIBS = {
    "liborgsync_common.a": "common",
    "liborgsync_coordinator.a": "coordinator",
    "liborgsync_wecom.a": "worker/wecom",
    "liborgsync_sync.a": "worker/sync",
    "liborgsync_api.a": "worker/api",
    "liborgsync_cli.a": "worker/cli",
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def folder_of(rel):
    d = os.path.dirname(rel)
    return d if d in ALLOWED else None


def check_includes(src):
    problems, files = [], 0
    for top in ("common", "coordinator", "worker"):
        for root, _, names in os.walk(os.path.join(src, top)):
            for n in sorted(names):
                if not n.endswith((".c", ".h")):
                    continue
                rel = os.path.relpath(os.path.join(root, n), src)
                own = folder_of(rel)
                if own is None:
                    problems.append(f"{rel}: source file outside the known folders {sorted(ALLOWED)}")
                    continue
                files += 1
                with open(os.path.join(src, rel), encoding="utf-8") as f:
                    text = f.read()
                for inc in INCLUDE.findall(text):
                    if "/" not in inc:
                        continue  # generated headers (version.h, ...)
                    target = os.path.dirname(inc)
                    if target == own or target in ALLOWED[own]:
                        continue
                    problems.append(f"{rel}: includes {inc}, but {own}/ may only depend on "
                                    f"{', '.join(sorted(ALLOWED[own])) or 'nothing'}")
    return problems, files


def nm_objects(lib):
    """{object: (defined set, undefined set)} of one static library."""
    out = subprocess.run(["nm", "-A", "--defined-only", "-g", lib], capture_output=True,
                         text=True, check=True).stdout
    und = subprocess.run(["nm", "-A", "-u", lib], capture_output=True, text=True,
                         check=True).stdout
    objs = {}
    for line in out.splitlines():
        m = re.match(r"^[^:]+:([^:]+):\s*\S*\s+(\S)\s+(\S+)$", line)
        if m:
            objs.setdefault(m.group(1), (set(), set()))[0].add(m.group(3))
    for line in und.splitlines():
        m = re.match(r"^[^:]+:([^:]+):\s+U\s+(\S+)$", line)
        if m:
            objs.setdefault(m.group(1), (set(), set()))[1].add(m.group(2))
    return objs


def find_cycle(graph):
    """One circle of the graph as a list of nodes, or None."""
    state = {}
    stack = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if not state.get(m):
                c = visit(m)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if not state.get(n):
            c = visit(n)
            if c:
                return c
    return None


def check_symbols(build):
    problems, nobj = [], 0
    owner = {}  # symbol -> (folder, object)
    per_lib = {}
    for lib, folder in LIBS.items():
        path = os.path.join(build, lib)
        if not os.path.exists(path):
            problems.append(f"{path}: missing (build first)")
            continue
        per_lib[folder] = nm_objects(path)
        for obj, (defs, _) in per_lib[folder].items():
            for s in defs:
                owner[s] = (folder, obj)
    graph = {}
    for folder, objs in per_lib.items():
        for obj, (_, undef) in objs.items():
            nobj += 1
            node = f"{folder}/{obj}"
            graph.setdefault(node, set())
            for s in undef:
                if s not in owner:
                    continue  # a system library's
                ofolder, oobj = owner[s]
                if ofolder != folder and ofolder not in ALLOWED[folder]:
                    problems.append(f"{node}: uses {s} of {ofolder}/{oobj}, but {folder}/ may "
                                    f"not depend on {ofolder}/")
                target = f"{ofolder}/{oobj}"
                # (the generated page.c shares worker/api/page.c's member name)
                if folder.startswith("worker/") and ofolder.startswith("worker/") and target != node:
                    graph[node].add(target)
    cycle = find_cycle(graph)
    if cycle:
        problems.append("circle between objects: " + " -> ".join(cycle))
    return problems, nobj


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    problems, files = check_includes(sys.argv[1])
    nobj = 0
    if len(sys.argv) == 3:
        p, nobj = check_symbols(sys.argv[2])
        problems += p
    for p in problems:
        print(p)
    if problems:
        return 1
    print(f"layout ok: {files} files' includes, {nobj} objects' symbols, no circle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
