"""Copy tensorrt-stubs (10.13.0.35.1) into a build folder and patch them so mypy can read them.

    python scripts/patch_trt_stubs.py SRC DEST

SRC holds the unpacked wheel (`pip install --no-deps --target SRC tensorrt-stubs==10.13.0.35.1`:
never into the venv's site-packages, where its `tensorrt/` folder without __init__.py makes
`import tensorrt` succeed as an empty namespace package and hides that TensorRT is missing).
DEST (e.g. .venv/typings) gets `tensorrt/` and `tensorrt_bindings/`, for MYPYPATH. The patches,
each needed for mypy to parse or resolve the stubs as shipped:
- parameters named `in` (a keyword) in plugin methods -> `in_`;
- a parameter without a default after one with a default (`add_scale_nd`'s channel_axis) -> `= ...`;
- `import tensorrt_libs` (the runtime libraries package, no stubs) -> removed;
- annotations `bool` -> `builtins.bool`: the module's own `bool` (the DataType `trt.bool`)
  shadows the builtin, so every `-> bool` was an invalid type (Any) as shipped.
Every patched file must then parse (ast), or the script fails.
"""

from __future__ import annotations

import ast
import re
import shutil
import sys
from pathlib import Path

PACKAGES = ("tensorrt", "tensorrt_bindings")
VERSION = "10.13.0.35.1"


def split_params(params: str) -> list[str]:
    """Split a parameter list at its top-level commas."""
    out, depth, cur = [], 0, ""
    for ch in params:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur)
    return out


BOOL = re.compile(r"(:\s*|->\s*|\[|,\s*)bool\b(?!\s*=)")
DEF = re.compile(r"^(\s*def \w+\()(.*)(\)\s*(->.*)?:\s*)$")


def patch_def(line: str) -> str:
    """One `def` line with `in` renamed and defaults added after the first defaulted parameter."""
    m = DEF.match(line)
    if not m:
        return line
    params = [re.sub(r"^(\s*)in(\s*:)", r"\1in_\2", p) for p in split_params(m.group(2))]
    params = [BOOL.sub(r"\1builtins.bool", p) for p in params]
    seen_default = False
    for i, p in enumerate(params):
        name = p.split(":")[0].strip()
        if name.startswith("*"):
            break  # *args / **kwargs end the positional run
        if "=" in p:
            seen_default = True
        elif seen_default:
            params[i] = p.rstrip() + " = ..."
    return m.group(1) + ",".join(params) + BOOL.sub(r"\1builtins.bool", m.group(3))


def patch_text(text: str) -> tuple[str, int]:
    lines, changed = [], 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\n")
        if re.match(r"^import tensorrt_libs\b", body):
            changed += 1
            continue
        new = patch_def(body)
        if new == body and re.match(r"^\s+\w+: bool\b", body):  # a class attribute annotated bool
            new = body.replace(": bool", ": builtins.bool", 1)
        changed += new != body
        lines.append(new + ("\n" if line.endswith("\n") else ""))
    text = "".join(lines)
    if "builtins.bool" in text:
        text = text.replace("from __future__ import annotations\n", "from __future__ import annotations\nimport builtins\n", 1)
    return text, changed


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        return 2
    src, dest = Path(argv[0]), Path(argv[1])
    missing = [p for p in PACKAGES if not (src / p / "__init__.pyi").is_file()]
    if missing:
        print(f"patch_trt_stubs: {src} has no {', '.join(missing)} stubs: pip install --no-deps --target {src} "
              f"tensorrt-stubs=={VERSION}", file=sys.stderr)
        return 1
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    total = 0
    for pkg in PACKAGES:
        shutil.copytree(src / pkg, tmp / pkg)
        for f in sorted((tmp / pkg).glob("*.pyi")):
            text, n = patch_text(f.read_text())
            try:
                ast.parse(text, str(f), feature_version=(3, 10))
            except SyntaxError as e:
                print(f"patch_trt_stubs: {f.name} still does not parse after patching: {e}", file=sys.stderr)
                return 1
            f.write_text(text)
            total += n
        (tmp / pkg / "py.typed").write_text("")  # only for a site-packages copy: MYPYPATH needs none
    for pkg in PACKAGES:  # replace the previous copy only once the new one is complete
        shutil.rmtree(dest / pkg, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    for pkg in PACKAGES:
        (tmp / pkg).rename(dest / pkg)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"patch_trt_stubs: tensorrt-stubs {VERSION} -> {dest} ({total} lines patched)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
