"""Every torch / transformers / diffusers / torchao name the engine and its benchmark use exists in the installed
releases.

The CUDA branches (events, streams, pinned uploads, fp8, cuDNN switches) never run on this CPU, and the GPU image
has older releases (torch 2.11, transformers 5.17) than the ones the suite is developed on: a misspelt or
newer-than-the-image name there would first fail on the GPU, in minutes that are scarce. This reads the code
instead of running it: each `from lib import name` must import, and each attribute chain rooted at a library module
must resolve down to the first value that is neither a module nor a class (what an instance holds is not knowable
from here). torchao, installed only on the GPU machine, is the one library that may be absent here. The GPU run's
smoke stage runs this file with the image's own packages.
"""

from __future__ import annotations

import ast
import importlib
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCES = [REPO / "engine" / "kleinserve_engine", REPO / "bench" / "engine"]
LIBRARIES = ("torch", "transformers", "diffusers", "torchao", "safetensors", "peft", "huggingface_hub")


def _installed(root: str) -> bool:
    try:
        importlib.import_module(root)
        return True
    except ImportError:
        return False


def _import_longest_prefix(parts: list[str]):
    for i in range(len(parts), 0, -1):
        try:
            return importlib.import_module(".".join(parts[:i])), parts[i:]
        except ImportError:
            continue
    return None, parts


def _attribute_chain(node: ast.Attribute) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else None


def _unresolved(path: Path, root: Path = REPO) -> tuple[list[str], set[str]]:
    """(names that do not exist, libraries not installed) for one source file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    where = lambda node: f"{path.relative_to(root)}:{node.lineno}"  # noqa: E731
    aliases: dict[str, str] = {}
    problems, absent = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for name in node.names:
                top = name.name.split(".")[0]
                if top in LIBRARIES:  # `import a.b` binds `a`; `import a.b as c` binds `c` to a.b
                    aliases[name.asname or top] = name.name if name.asname else top
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] in LIBRARIES:
            library = node.module.split(".")[0]
            if not _installed(library):
                absent.add(library)
                continue
            try:
                module = importlib.import_module(node.module)
            except ImportError as exc:
                problems.append(f"{where(node)}: from {node.module} import ...: {exc}")
                continue
            for name in node.names:
                try:
                    if not hasattr(module, name.name):
                        importlib.import_module(f"{node.module}.{name.name}")
                except ImportError as exc:
                    problems.append(f"{where(node)}: from {node.module} import {name.name}: {exc}")
                aliases[name.asname or name.name] = f"{node.module}.{name.name}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain = _attribute_chain(node)
        if not chain or chain[0] not in aliases:
            continue
        full = aliases[chain[0]].split(".") + chain[1:]
        if not _installed(full[0]):
            absent.add(full[0])
            continue
        obj, rest = _import_longest_prefix(full)
        for attr in rest:
            if not hasattr(obj, attr):
                if not isinstance(obj, type):  # a class's instances may hold what the class does not
                    problems.append(f"{where(node)}: {'.'.join(full)} ({attr} is missing)")
                break
            obj = getattr(obj, attr)
            if not isinstance(obj, (type, types.ModuleType)):
                break
    return problems, absent


def _sources() -> list[Path]:
    return sorted(f for root in SOURCES for f in root.rglob("*.py"))


def test_every_library_name_the_engine_uses_exists_in_the_installed_releases():
    problems, absent = [], set()
    for path in _sources():
        p, a = _unresolved(path)
        problems += p
        absent |= a
    assert not problems, "names missing from the installed libraries:\n" + "\n".join(problems)
    # torchao is on the GPU machine only (carried there): its names are checked by the smoke stage's run of this file
    assert absent <= {"torchao"}, f"libraries the engine names that are not installed: {sorted(absent)}"


def test_the_check_finds_a_name_that_does_not_exist(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import torch\nfrom torch.nn import functional as F\n"
        "def f(device):\n"
        "    if device.type == 'cuda':\n"
        "        torch.cuda.Evnt(enable_timing=True)\n"
        "    return F.scaled_dot_product_atention\n"
        "from torch.cuda import no_such_thing\n"
    )
    problems, _ = _unresolved(bad, root=tmp_path)
    assert any("torch.cuda.Evnt" in p for p in problems)
    assert any("scaled_dot_product_atention" in p for p in problems)
    assert any("no_such_thing" in p for p in problems)
    assert len(problems) == 3
