#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Are the layers one-way? (docs/conventions.md, "Layers")

1. Includes: every project header a file includes belongs to its own module or to a
   module of a lower layer. The order of src/lib's modules is LIB_LAYERS below, lowest
   first; the other directories have fixed rules (RULES).
2. Calls (with --objects DIR): in the built library's object files, no two files of
   src/lib call each other, directly or through others (a cycle in the graph of
   "file A uses a symbol defined in file B").

Exit 0 when both hold, 1 with every violation listed.
"""
import os
import re
import subprocess
import sys

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# src/lib modules, lowest layer first. A module is a file stem or a directory; a file
# belongs to the longest-matching entry.
LIB_LAYERS = [
    "error", "util", "enums", "sock", "proc", "tool", "store", "context", "host", "cgroup", "confine", "image",
    "guest-config", "ssh", "agent-client", "net/", "egress", "vmm/", "sv-spec", "vm-config", "template",
    "image-remove",
    "vm-ports", "vm-net",
    "vm-reconcile", "vm-supervisor", "vm", "vm-ssh", "vm-agent", "vm-create", "vm-lifecycle",
    "vm-template",
    "vm-guest", "vm-egress", "doctor",
]

# Which directories a directory's files may include from (besides their own and system
# headers). "lib" means any src/lib header; "public" is src/include.
RULES = {
    "src/common": set(),
    "src/guest": {"src/common"},
    "src/lib": {"src/common", "public"},  # plus lower layers of src/lib itself
    "src/supervisor": {"src/lib", "src/common", "public"},
    "src/lua": {"public"},
    "src/cli": {"src/lua", "public"},
}

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def lib_module(rel):
    """src/lib/vm-net.c -> 'vm-net'; src/lib/vmm/qemu.c -> 'vmm/'."""
    path = rel[len("src/lib/"):]
    if "/" in path:
        return path.split("/")[0] + "/"
    stem = re.sub(r"\.(c|h)$", "", path)
    stem = re.sub(r"-internal$", "", stem)
    best = None
    for m in LIB_LAYERS:
        if m.endswith("/"):
            continue
        if stem == m or stem.startswith(m + "-") and m in ("store", "ssh"):
            if best is None or len(m) > len(best):
                best = m
    return best


def resolve(inc, src_dir):
    """Where an included header lives (relative to TOP), or None for unknown."""
    cands = [os.path.join(src_dir, inc), os.path.join("src/lib", inc), os.path.join("src/common", inc),
             os.path.join("src/include", inc), os.path.join("src/lua", inc)]
    for c in cands:
        if os.path.exists(os.path.join(TOP, c)):
            return os.path.normpath(c)
    return None


def area(rel):
    if rel.startswith("src/include/"):
        return "public"
    for d in RULES:
        if rel.startswith(d + "/"):
            return d
    return None


def check_includes():
    bad = []
    for d in RULES:
        for root, _, files in os.walk(os.path.join(TOP, d)):
            for f in sorted(files):
                if not f.endswith((".c", ".h")):
                    continue
                rel = os.path.relpath(os.path.join(root, f), TOP)
                text = open(os.path.join(TOP, rel), encoding="utf-8", errors="replace").read()
                for inc in INCLUDE.findall(text):
                    target = resolve(inc, os.path.dirname(rel))
                    if target is None:
                        bad.append(f"{rel}: includes \"{inc}\", which is not a project header")
                        continue
                    ta, fa = area(target), area(rel)
                    if ta == fa and fa != "src/lib":
                        continue
                    if fa == "src/lib" and ta == "src/lib":
                        fm, tm = lib_module(rel), lib_module(target)
                        if fm is None or tm is None:
                            bad.append(f"{rel}: module of '{rel if fm is None else target}' is not in LIB_LAYERS")
                            continue
                        if LIB_LAYERS.index(tm) > LIB_LAYERS.index(fm):
                            bad.append(f"{rel} (layer '{fm}') includes {target} of the higher layer '{tm}'")
                        continue
                    if ta not in RULES[fa]:
                        bad.append(f"{rel} ({fa}) may not include {target} ({ta})")
    return bad


def check_calls(objdir):
    """A cycle between two src/lib object files through the symbols they use."""
    objs = []
    for root, _, files in os.walk(objdir):
        for f in files:
            if f.endswith(".o") and "/src/lib/" in os.path.join(root, f) + "/":
                objs.append(os.path.join(root, f))
    if not objs:
        return [f"no src/lib object files under '{objdir}'"]
    defined, used = {}, {}
    for o in objs:
        name = re.sub(r"^.*?/src/lib/", "", o)
        name = re.sub(r"\.c\.o$", ".c", name)
        out = subprocess.run(["nm", "-g", "--defined-only", o], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3:
                defined[parts[2]] = name
        out = subprocess.run(["nm", "-g", "--undefined-only", o], capture_output=True, text=True).stdout
        used[name] = {line.split()[-1] for line in out.splitlines() if line.strip()}
    edges = {n: {defined[s] for s in syms if s in defined and defined[s] != n} for n, syms in used.items()}
    bad, state = [], {}

    def visit(n, stack):
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                cyc = stack[stack.index(m):] + [m]
                bad.append("call cycle: " + " -> ".join(cyc))
            elif m not in state:
                visit(m, stack)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n, [])
    return bad


def main():
    bad = check_includes()
    if len(sys.argv) == 3 and sys.argv[1] == "--objects":
        bad += check_calls(sys.argv[2])
    for b in bad:
        print("check-layers: " + b, file=sys.stderr)
    if not bad:
        print("check-layers: ok")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
