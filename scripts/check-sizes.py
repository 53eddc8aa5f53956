#!/usr/bin/env python3
"""Holds the code to the sizes ARCHITECTURE.md promises: no non-test Rust file in core/,
server/, cli/src or bindings-*/src over 800 lines, no function there over 120 lines.

Test code does not count: files under a tests/ or benches/ folder, files declared as
`#[cfg(test)] mod name;`, and `#[cfg(test)]` modules inside a file (their lines are left out of
the file's count). Prints every offender with its
place and exits 1 if there is any; `--list N` prints the N longest functions as well.

The scan is a small Rust lexer (comments, strings, raw strings, chars and lifetimes), enough to
match braces: a function runs from the line of its `fn` to the line of its closing brace.
"""
import os
import re
import sys

ROOTS = ["core/src", "server/src", "cli/src"] + sorted(
    f"{d}/src" for d in os.listdir(".") if d.startswith("bindings-") and os.path.isdir(f"{d}/src")
)
MAX_FILE = 800
MAX_FN = 120


def tokens(src):
    """Yields (kind, text, line) for the tokens that matter: '{', '}', identifiers, '#', '[',
    ']', ';', '(' and ')'; comments and literals are skipped."""
    i, line, n = 0, 1, len(src)
    while i < n:
        c = src[i]
        if c == "\n":
            line += 1
            i += 1
        elif src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    line += src[i] == "\n"
                    i += 1
        elif c == "r" and re.match(r'r#*"', src[i:i + 20]) and not (i and (src[i - 1].isalnum() or src[i - 1] == "_")):
            m = re.match(r'r(#*)"', src[i:])
            end = '"' + m.group(1)
            j = src.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            line += src.count("\n", i, j)
            i = j
        elif c == "b" and src.startswith('b"', i) and not (i and (src[i - 1].isalnum() or src[i - 1] == "_")):
            i += 1
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            line += src.count("\n", i, j)
            i = j + 1
        elif c == "'":
            # A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            m = re.match(r"'(\\.[^']*|[^\\'])'", src[i:i + 12])
            i += len(m.group(0)) if m else 1
        elif c.isalpha() or c == "_":
            m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", src[i:])
            yield ("id", m.group(0), line)
            i += len(m.group(0))
        elif c in "{}#[];()":
            yield (c, c, line)
            i += 1
        else:
            i += 1


def scan(path):
    """(non-test line count, [(fn name, first line, lines)]) of one file."""
    src = open(path, encoding="utf-8").read()
    toks = list(tokens(src))
    total = src.count("\n") + (0 if src.endswith("\n") else 1)
    test_lines = 0
    fns = []
    # Brace-matching with a stack of what each open brace belongs to.
    stack = []  # (kind, name, line)
    pending_fn = None  # (name, line) of a `fn` whose body has not opened yet
    cfg_test = False  # the last attribute seen was #[cfg(test)]
    pending_test_mod = None
    k = 0
    while k < len(toks):
        kind, text, line = toks[k]
        if kind == "#" and k + 1 < len(toks) and toks[k + 1][0] == "[":
            # Read the attribute's tokens up to its closing bracket.
            depth, j, words = 0, k + 1, []
            while j < len(toks):
                if toks[j][0] == "[":
                    depth += 1
                elif toks[j][0] == "]":
                    depth -= 1
                    if depth == 0:
                        break
                elif toks[j][0] == "id":
                    words.append(toks[j][1])
                j += 1
            cfg_test = words[:2] == ["cfg", "test"]
            k = j + 1
            continue
        if kind == "id" and text == "mod" and cfg_test:
            pending_test_mod = line
        if kind == "id" and text == "fn" and k + 1 < len(toks) and toks[k + 1][0] == "id":
            pending_fn = (toks[k + 1][1], line)
        if kind == ";":
            pending_fn = None  # a declaration without a body (trait methods)
            pending_test_mod = None
        if kind == "{":
            if pending_test_mod is not None:
                stack.append(("test", None, pending_test_mod))
                pending_test_mod = None
            elif pending_fn is not None:
                stack.append(("fn", pending_fn[0], pending_fn[1]))
                pending_fn = None
            else:
                stack.append(("block", None, line))
        elif kind == "}":
            what, name, first = stack.pop()
            if what == "fn" and not any(s[0] == "test" for s in stack):
                fns.append((name, first, line - first + 1))
            elif what == "test" and not any(s[0] == "test" for s in stack):
                test_lines += line - first + 1
        if kind != "#":
            cfg_test = cfg_test and kind in ("id",) and text in ("mod", "pub", "tests")
        k += 1
    return total - test_lines, fns


def main():
    listing = 0
    if len(sys.argv) > 2 and sys.argv[1] == "--list":
        listing = int(sys.argv[2])
    bad = []
    every_fn = []
    test_files = set()
    decl = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+(\w+)\s*;")
    for root in ROOTS:
        for dirpath, _, files in os.walk(root):
            for f in files:
                if f.endswith(".rs"):
                    text = open(os.path.join(dirpath, f), encoding="utf-8").read()
                    base = dirpath if f in ("mod.rs", "lib.rs", "main.rs") else os.path.join(dirpath, f[:-3])
                    for name in decl.findall(text):
                        test_files.add(os.path.join(base, name + ".rs"))
                        test_files.add(os.path.join(base, name, "mod.rs"))
    for root in ROOTS:
        for dirpath, dirnames, files in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in ("tests", "benches")]
            for f in sorted(files):
                if not f.endswith(".rs"):
                    continue
                path = os.path.join(dirpath, f)
                if path in test_files:
                    continue
                lines, fns = scan(path)
                if lines > MAX_FILE:
                    bad.append(f"{path}: {lines} lines (at most {MAX_FILE})")
                for name, first, n in fns:
                    every_fn.append((n, f"{path}:{first} fn {name}"))
                    if n > MAX_FN:
                        bad.append(f"{path}:{first}: fn {name} is {n} lines (at most {MAX_FN})")
    for n, where in sorted(every_fn, reverse=True)[:listing]:
        print(f"{n:5}  {where}")
    for b in bad:
        print(b)
    if bad:
        print(f"check-sizes: {len(bad)} over the limits", file=sys.stderr)
        return 1
    print(f"check-sizes: every file within {MAX_FILE} lines, every function within {MAX_FN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
