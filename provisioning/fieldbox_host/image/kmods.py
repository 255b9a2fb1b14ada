"""Which kernel modules the appliance keeps, and dropping the rest.

The keep list is ``image/kernel-modules.txt`` (globs under ``kernel/``); the
dependencies of every kept module (read from ``modules.dep``) are kept too, so
a list entry never loads half a driver.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from fieldbox_host.image.errors import ImageError


def read_patterns(path: Path) -> list[str]:
    """The non-comment lines of the keep list."""
    out: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def read_deps(modules_dep: Path) -> dict[str, list[str]]:
    """``modules.dep`` as module path -> dependency paths (paths relative to the version dir)."""
    deps: dict[str, list[str]] = {}
    for line in modules_dep.read_text(encoding="utf-8").splitlines():
        if ":" not in line:
            continue
        mod, rest = line.split(":", 1)
        deps[mod.strip()] = rest.split()
    return deps


def _strip_ext(path: str) -> str:
    """``kernel/x/y.ko.xz`` -> ``kernel/x/y.ko`` (Debian may compress modules)."""
    for ext in (".xz", ".zst", ".gz"):
        if path.endswith(ext):
            return path[: -len(ext)]
    return path


def matches(module: str, pattern: str) -> bool:
    """Whether ``module`` (``kernel/...``) is selected by one keep-list pattern."""
    rel = _strip_ext(module).removeprefix("kernel/")
    if pattern.endswith("/"):
        return rel.startswith(pattern)
    return fnmatch.fnmatchcase(rel, pattern)


def select(deps: dict[str, list[str]], patterns: list[str]) -> set[str]:
    """The modules named by ``patterns`` plus everything they depend on."""
    chosen = {m for m in deps if any(matches(m, p) for p in patterns)}
    todo = list(chosen)
    while todo:
        for dep in deps.get(todo.pop(), []):
            if dep not in chosen:
                chosen.add(dep)
                todo.append(dep)
    return chosen


def closure(deps: dict[str, list[str]], names: list[str]) -> list[str]:
    """Module paths for the module ``names`` (``virtio_blk``), dependencies first, in load order."""
    by_name = {_strip_ext(Path(m).name).removesuffix(".ko").replace("-", "_"): m for m in deps}
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for dep in deps.get(mod, []):
            visit(dep)
        order.append(mod)

    for name in names:
        key = name.replace("-", "_")
        if key not in by_name:
            raise ImageError(f"kernel module {name!r} is not in this kernel's modules.dep")
        visit(by_name[key])
    return order


def kernel_version(root: Path) -> str:
    """The one kernel version installed under ``root/lib/modules``."""
    versions = sorted(p.name for p in (root / "usr/lib/modules").iterdir() if p.is_dir())
    if len(versions) != 1:
        raise ImageError(f"expected one kernel in the rootfs, found {versions or 'none'}")
    return versions[0]


def trim(root: Path, patterns: list[str]) -> tuple[int, int]:
    """Delete modules not selected; return (kept, removed) counts. ``depmod`` must run after."""
    kdir = root / "usr/lib/modules" / kernel_version(root)
    deps = read_deps(kdir / "modules.dep")
    keep = select(deps, patterns)
    removed = 0
    for mod in deps:
        if mod not in keep:
            (kdir / mod).unlink(missing_ok=True)
            removed += 1
    # drop directories the deletions emptied
    for d in sorted((kdir / "kernel").rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    return len(keep), removed
