#!/usr/bin/env python3
"""Compiles every installed public header alone, as a user of the installed
library would: only a copy of the installed include/tally tree and the
pkg-config flags of the packages tally.pc requires are on the include path,
so a public header that includes a header meson does not install fails.
Each compiles a second time with a decoy tree ahead of it on the -I path, as
a user's own engine/ and log/ folders may be: a copy of every other public
header's path that stops the compile, so a header that finds a sibling
through -I rather than tally.pc's -iquote fails.

Run by `meson test --suite headers` (docs/meson.build) with the same header
list that install_headers() installs (tally_public_headers, meson.build)."""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source-root", required=True,
                        help="the directory the header paths are relative to")
    parser.add_argument("--cxx", nargs="+", required=True,
                        help="the C++ compiler command (meson's cmd_array())")
    parser.add_argument("--pkg-config", required=True)
    parser.add_argument("--requires", nargs="*", default=[],
                        help="the packages tally.pc requires")
    parser.add_argument("--headers", nargs="+", required=True,
                        help="the installed headers, e.g. engine/ledger.h")
    return parser.parse_args()


def dependency_flags(pkg_config, packages):
    """The compile flags a user's `pkg-config --cflags tally` adds besides
    -I$(includedir)/tally: those of the packages tally.pc requires."""
    if not packages:
        return []
    result = subprocess.run([pkg_config, "--cflags"] + packages,
                            check=True, capture_output=True, text=True)
    return result.stdout.split()


def install_tree(source_root, headers, include_dir):
    """Copies the headers as install_headers(subdir : 'tally',
    preserve_path : true) lays them out: include/tally/<folder>/<name>.h."""
    tally_dir = os.path.join(include_dir, "tally")
    for header in headers:
        target = os.path.join(tally_dir, header)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(source_root, header), target)
    return tally_dir


def decoy_tree(work_dir, headers, header):
    """A directory holding every public header but `header` at its path,
    each an #error."""
    decoy_dir = os.path.join(work_dir, "decoy-" + header.replace("/", "_"))
    for other in headers:
        if other == header:
            continue
        target = os.path.join(decoy_dir, other)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w", encoding="utf-8") as f:
            f.write('#error "the user\'s own %s, not tally\'s"\n' % other)
    return decoy_dir


def compile_alone(cxx, flags, work_dir, header):
    """Returns the compiler's complaint about a file that includes only
    `header`, or None if it compiles."""
    unit = os.path.join(work_dir, header.replace("/", "_") + ".cc")
    with open(unit, "w", encoding="utf-8") as f:
        f.write("#include <%s>\n" % header)
    result = subprocess.run(cxx + ["-std=c++20", "-fsyntax-only"] + flags + [unit],
                            capture_output=True, text=True)
    if result.returncode == 0:
        return None
    return result.stdout + result.stderr


def main():
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="tally-headers-") as work_dir:
        include_dir = os.path.join(work_dir, "include")
        tally_dir = install_tree(args.source_root, args.headers, include_dir)
        # As tally.pc gives them.
        tally_flags = ["-I" + tally_dir, "-iquote" + tally_dir]
        dependencies = dependency_flags(args.pkg_config, args.requires)
        failed = []
        for header in args.headers:
            decoy = ["-I" + decoy_tree(work_dir, args.headers, header)]
            complaint = (compile_alone(args.cxx, tally_flags + dependencies, work_dir, header) or
                         compile_alone(args.cxx, decoy + tally_flags + dependencies, work_dir,
                                       header))
            if complaint is None:
                print("ok    %s" % header)
                continue
            print("FAIL  %s\n%s" % (header, complaint))
            failed.append(header)
    if failed:
        print("%d of %d installed headers do not compile alone against the installed "
              "tree: %s.\nA header they include is missing from tally_public_headers "
              "(meson.build), or is not meant to be public, or is found through -I "
              "instead of tally.pc's -iquote." %
              (len(failed), len(args.headers), ", ".join(failed)))
        return 1
    print("all %d installed headers compile alone" % len(args.headers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
