"""Copy committed result tables into README.md between ``<!-- NAME -->`` / ``<!-- /NAME -->`` markers.

Usage: python benchmarks/update_readme.py [--demo DEMO_OUT]
  DEMO_TABLE   <- DEMO_OUT/results.md (default demo_out/results.md; also copied to benchmarks/results/demo.md)
  KERNEL_TABLE <- benchmarks/results/daam_kernel.md
  SCALE_TABLE  <- benchmarks/results/scale_out.md
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name} -->\n).*?(<!-- /{name} -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"README.md has no <!-- {name} --> block")
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", default=str(ROOT / "demo_out"), help="demo output folder")
    args = parser.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text()
    demo_md = Path(args.demo) / "results.md"
    results = ROOT / "benchmarks" / "results"
    if demo_md.exists():
        shutil.copy(demo_md, results / "demo.md")
        shutil.copy(Path(args.demo) / "results.json", results / "demo.json")
    if (results / "demo.md").exists():
        body = (results / "demo.md").read_text().split("\n", 2)[2]  # drop the title line
        text = replace_block(text, "DEMO_TABLE", body.replace("\n## ", "\n#### "))
    kernel = results / "daam_kernel.md"
    if kernel.exists():
        text = replace_block(text, "KERNEL_TABLE", kernel.read_text())
    scale = results / "scale_out.md"
    if scale.exists():
        text = replace_block(text, "SCALE_TABLE", scale.read_text())
    readme.write_text(text)


if __name__ == "__main__":
    main()
