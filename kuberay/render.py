"""Embed serve/configs/gpu.yaml into kuberay/rayservice.yaml as ``spec.serveConfigV2``.

    python kuberay/render.py           # rewrite the serveConfigV2 block from gpu.yaml
    python kuberay/render.py --check   # exit 1 if the block is not gpu.yaml (nothing written)

gpu.yaml is the one source of truth. A PyYAML load/dump round trip of the manifest would drop
its comments, so this script does not re-dump it: it replaces only the lines of the
``serveConfigV2: |`` block scalar with a verbatim copy of gpu.yaml (comments included), indented
two spaces deeper than the key. Every other line of the manifest stays as written by hand.
PyYAML then checks that the result parses and that the embedded string loads to the same object
as gpu.yaml.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "serve" / "configs" / "gpu.yaml"
MANIFEST = ROOT / "kuberay" / "rayservice.yaml"
KEY = re.compile(r"^( *)serveConfigV2: *\|[-+0-9]*[ \t]*(#.*)?$")


def render(manifest: str, config: str) -> str:
    """``manifest`` with its serveConfigV2 block replaced by ``config``."""
    lines = manifest.splitlines(keepends=True)
    keys = [i for i, line in enumerate(lines) if KEY.match(line.rstrip("\r\n"))]
    if len(keys) != 1:
        raise ValueError(f"expected one 'serveConfigV2: |' line in the manifest, found {len(keys)}")
    start = keys[0] + 1
    indent = len(KEY.match(lines[keys[0]].rstrip("\r\n")).group(1)) + 2
    end = start
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith(" " * indent)):
        end += 1
    while end > start and not lines[end - 1].strip():  # blank lines after the block are not ours
        end -= 1
    block = [(" " * indent + line if line.strip() else "") + "\n" for line in config.splitlines()]
    result = "".join(lines[:start] + block + lines[end:])
    embedded = yaml.safe_load(result)["spec"]["serveConfigV2"]
    if yaml.safe_load(embedded) != yaml.safe_load(config):
        raise ValueError("the rendered serveConfigV2 does not load to the same object as the config")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the manifest is stale")
    args = parser.parse_args(argv)
    current = MANIFEST.read_text(encoding="utf-8")
    rendered = render(current, CONFIG.read_text(encoding="utf-8"))
    if rendered == current:
        print(f"{MANIFEST.relative_to(ROOT)}: serveConfigV2 is up to date")
        return 0
    if args.check:
        print(f"{MANIFEST.relative_to(ROOT)}: serveConfigV2 differs from "
              f"{CONFIG.relative_to(ROOT)}; run: python kuberay/render.py", file=sys.stderr)
        return 1
    MANIFEST.write_text(rendered, encoding="utf-8")
    print(f"{MANIFEST.relative_to(ROOT)}: serveConfigV2 rewritten from {CONFIG.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
