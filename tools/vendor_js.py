"""Vendor the JavaScript the built book needs, so that it renders math and widgets with no network.

``make vendor`` runs this. It fetches pinned npm packages with ``npm pack`` (the npm
registry only), keeps only the files a page loads, with their licenses, and writes
``vendor/`` plus ``vendor/MANIFEST.json`` (package, version, npm integrity, files and
their sha256). The book's small Sphinx extension, ``tools/sphinx_vendor.py``, copies
``vendor/`` into the built site and points MathJax and the widget manager at it.

    python tools/vendor_js.py [--check]     # --check: verify vendor/ against its manifest

- ``mathjax`` (Apache-2.0): the ``tex-chtml`` component, the TeX extensions it can
  autoload, and its WOFF fonts;
- ``@jupyter-widgets/html-manager`` (BSD-3-Clause): the ``embed-amd`` bundle that renders
  saved widget state (ipywidgets 8), and the icon fonts it references;
- ``requirejs`` (MIT): the AMD loader the widget bundle needs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "vendor"

PACKAGES = {
    "mathjax": {
        "version": "3.2.2",
        "folder": "mathjax",
        "files": [
            "es5/tex-chtml.js",
            "es5/output/chtml/fonts/woff-v2/*.woff",
            "es5/input/tex/extensions/*.js",
            "LICENSE",
        ],
        "strip": "es5/",
    },
    "@jupyter-widgets/html-manager": {
        "version": "1.0.15",
        "folder": "jupyter-widgets",
        "files": ["dist/embed-amd.js", "dist/*.woff2", "dist/*.woff", "dist/embed.js.LICENSE.txt"],
        "strip": "dist/",
        # the npm package has no LICENSE file; ipywidgets' BSD-3-Clause text
        "license": """Copyright (c) 2015 Project Jupyter Contributors
All rights reserved.

Redistribution and use in source and binary forms, with or without modification, are
permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this list of
   conditions and the following disclaimer.
2. Redistributions in binary form must reproduce the above copyright notice, this list of
   conditions and the following disclaimer in the documentation and/or other materials
   provided with the distribution.
3. Neither the name of the copyright holder nor the names of its contributors may be used
   to endorse or promote products derived from this software without specific prior
   written permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS
OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF
MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE
COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL,
EXEMPLARY, OR CONSEQUENTIAL DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE
GOODS OR SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED
AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING
NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED
OF THE POSSIBILITY OF SUCH DAMAGE.
""",
    },
    "requirejs": {
        "version": "2.3.8",
        "folder": "requirejs",
        "files": ["require.js"],  # MIT; the license is in the file's header
        "strip": "",
    },
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pack(name: str, version: str, workdir: Path) -> tuple[Path, dict]:
    """``npm pack name@version`` into workdir; the unpacked ``package/`` folder and npm's record."""
    done = subprocess.run(
        ["npm", "pack", "--json", f"{name}@{version}"], cwd=workdir, capture_output=True, text=True, check=True
    )
    record = json.loads(done.stdout)[0]
    folder = workdir / record["filename"].removesuffix(".tgz")
    with tarfile.open(workdir / record["filename"]) as tar:
        tar.extractall(folder)
    return folder / "package", record


def vendor(out: Path = VENDOR) -> dict:
    manifest = {"generated_by": "tools/vendor_js.py (make vendor)", "packages": {}}
    with tempfile.TemporaryDirectory() as tmp:
        if out.exists():
            shutil.rmtree(out)
        for name, spec in PACKAGES.items():
            package, record = _pack(name, spec["version"], Path(tmp))
            target = out / spec["folder"]
            files = {}
            for pattern in spec["files"]:
                matches = sorted(package.glob(pattern))
                if not matches:
                    raise FileNotFoundError(f"{name}@{spec['version']} has no {pattern}")
                for source in matches:
                    relative = source.relative_to(package).as_posix().removeprefix(spec["strip"])
                    (target / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, target / relative)
                    files[relative] = _sha256(target / relative)
            if "license" in spec:
                (target / "LICENSE").write_text(spec["license"])
                files["LICENSE"] = _sha256(target / "LICENSE")
            manifest["packages"][name] = {
                "version": spec["version"],
                "folder": spec["folder"],
                "integrity": record.get("integrity"),
                "license": json.loads((package / "package.json").read_text()).get("license"),
                "files": files,
            }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def check(out: Path = VENDOR) -> list[str]:
    """Problems with vendor/: missing or changed files, or versions that differ from PACKAGES."""
    manifest_path = out / "MANIFEST.json"
    if not manifest_path.exists():
        return [f"{manifest_path} is missing (run make vendor)"]
    manifest = json.loads(manifest_path.read_text())
    problems = []
    for name, spec in PACKAGES.items():
        entry = manifest["packages"].get(name)
        if entry is None or entry["version"] != spec["version"]:
            problems.append(f"{name}: vendored {entry and entry['version']}, pinned {spec['version']}")
            continue
        for relative, digest in entry["files"].items():
            path = out / entry["folder"] / relative
            if not path.exists() or _sha256(path) != digest:
                problems.append(f"{path.relative_to(ROOT)} is missing or changed")
    return problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify vendor/ against its manifest")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        print("\n".join(problems) or "vendor/ matches its manifest")
        return 1 if problems else 0
    manifest = vendor()
    size = sum(p.stat().st_size for p in VENDOR.rglob("*") if p.is_file())
    for name, entry in manifest["packages"].items():
        print(f"{name}@{entry['version']}: {len(entry['files'])} files")
    print(f"vendor/: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
