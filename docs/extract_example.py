#!/usr/bin/env python3
"""Writes the C++ block that follows the marker <!-- example: NAME --> in a
Markdown file, so the documentation's example is the code the tests build."""
import sys


def main():
    source, name, out = sys.argv[1], sys.argv[2], sys.argv[3]
    lines = open(source, encoding="utf-8").read().splitlines()
    marker = "<!-- example: %s -->" % name
    start = lines.index(marker)
    fence = start + 1
    while not lines[fence].startswith("```"):
        fence += 1
    end = fence + 1
    while not lines[end].startswith("```"):
        end += 1
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines[fence + 1:end]) + "\n")


if __name__ == "__main__":
    main()
