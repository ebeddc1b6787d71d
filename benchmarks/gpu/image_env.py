"""A virtual environment that holds only what the GPU node's image holds, taken from this environment.

The GPU node this project borrows runs its own image (Python 3.12, torch + CUDA, torchaudio, transformers,
onnxruntime, ...; see IMAGE_PACKAGES) and installs nothing from the network. To check here that the carry-on
bundle (bundle.py) brings everything else, :func:`make_image_venv` builds a venv whose only site folder
beside its own is a folder of symbolic links to exactly the IMAGE_PACKAGES distributions installed in the
running interpreter and their own dependencies (computed from their installed metadata). Nothing else of this
environment is importable there: a folder that a distribution outside that set shares (a namespace package)
is rebuilt as a real folder linking only the entries the set owns.

    python benchmarks/gpu/image_env.py DEST     # then DEST/bin/python has the image's packages only
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

# What the GPU image has (distribution names), and pip: every Python image brings it.
IMAGE_PACKAGES = ("torch", "torchaudio", "transformers", "onnxruntime", "pandas", "pyarrow", "scipy", "numpy",
                  "pyyaml", "psutil", "fsspec", "einops", "lightning", "torchmetrics", "huggingface-hub", "pip")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed() -> dict[str, metadata.Distribution]:
    out = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and canonical(name) not in out:  # the first on sys.path wins, as for imports
            out[canonical(name)] = dist
    return out


def closure(names=IMAGE_PACKAGES, skip: set[str] = frozenset()) -> dict[str, metadata.Distribution]:
    """The installed distributions ``names`` and, recursively, the installed requirements they declare for
    this interpreter (markers evaluated, requested extras followed), never entering ``skip`` (canonical
    names). A requirement that is not installed is left out: the image was built without it too."""
    from packaging.requirements import Requirement

    installed = _installed()
    found: dict[str, metadata.Distribution] = {}
    todo = [(canonical(n), frozenset()) for n in names]
    seen: set = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen or name not in installed or name in skip:
            continue
        seen.add((name, extras))
        dist = found[name] = installed[name]
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                continue
            todo.append((canonical(req.name), frozenset(req.extras)))
    return found


def _files(dist: metadata.Distribution) -> list[str]:
    """The distribution's files, relative to its site folder; those installed outside it (scripts) left out."""
    return [str(f) for f in dist.files or [] if not str(f).startswith("..")]


def link_site(dists: dict[str, metadata.Distribution], dest: Path) -> int:
    """Fill ``dest`` with links to every top-level entry the distributions ``dists`` install, each as deep as
    needed for no other installed distribution's file to show through. Returns the number of links."""
    owners: dict[str, set[str]] = {}  # path prefix -> distributions with files under it
    roots = {}
    for name, dist in _installed().items():
        for f in _files(dist):
            parts = Path(f).parts
            for i in range(1, len(parts) + 1):
                owners.setdefault("/".join(parts[:i]), set()).add(name)
        if name in dists:
            roots[name] = Path(str(dist.locate_file("")))
    wanted = {("/".join(Path(f).parts[:1]), name) for name, dist in dists.items() for f in _files(dist)}
    count = 0

    def place(prefix: str, name: str) -> None:
        nonlocal count
        target, link = roots[name] / prefix, dest / prefix
        if link.is_symlink() or (link.exists() and not link.is_dir()):
            return
        if owners.get(prefix, {name}) <= set(dists) or not target.is_dir():
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(target)
                count += 1
            return
        link.mkdir(parents=True, exist_ok=True)  # shared with a distribution outside the set: go one deeper
        for f in _files(dists[name]):
            parts = Path(f).parts
            depth = len(Path(prefix).parts)
            if len(parts) > depth and "/".join(parts[:depth]) == prefix:
                place("/".join(parts[:depth + 1]), name)

    for prefix, name in sorted(wanted):
        if prefix != "__pycache__":  # byte code of top-level modules: never imported without the source
            place(prefix, name)
    return count


def make_image_venv(dest: Path, names=IMAGE_PACKAGES) -> Path:
    """A venv at ``dest`` (no pip of its own: the linked one serves) whose packages are ``names``' closure
    in this interpreter's environment; returns its python."""
    dest = Path(dest)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(dest)], check=True)
    python = dest / "bin" / "python"
    site_dir = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
    image_site = dest / "image-site"
    image_site.mkdir(exist_ok=True)
    link_site(closure(names), image_site)
    # a site folder (its .pth files processed), as the image's own site-packages would be
    Path(site_dir, "image_site.pth").write_text(f"import site; site.addsitedir({str(image_site)!r})\n")
    return python


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest", help="folder of the new virtual environment")
    args = ap.parse_args()
    python = make_image_venv(Path(args.dest))
    dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in closure().values())
    print(f"{python}: {len(dists)} distributions: {' '.join(dists)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
