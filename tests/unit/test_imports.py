"""The import rules of STYLE.md: the model is plain torch; only megatron_ext imports megatron.core;
nothing imports data_tools or run_scripts."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def files(*dirs):
    out = [p for d in dirs for p in (ROOT / d).rglob("*.py")]
    assert out, dirs
    return out


def test_model_is_plain_torch():
    for path in files("genlip/model"):
        bad = {m for m in imports_of(path)
               if m.split(".")[0] in ("megatron", "deepspeed", "megatron_ext") or m.startswith("torch.distributed")}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_only_megatron_ext_imports_megatron():
    for path in files("genlip", "data_tools", "tests") + [ROOT / "setup.py"]:
        bad = {m for m in imports_of(path) if m.split(".")[0] == "megatron"}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_library_never_imports_applications():
    for path in files("genlip", "megatron_ext", "data_tools"):
        bad = {m for m in imports_of(path) if m.split(".")[0] in ("run_scripts", "tests")}
        if path.parts[-2] != "data_tools":
            bad |= {m for m in imports_of(path) if m.split(".")[0] == "data_tools"}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_commands_answer_before_torch_loads():
    """Every console script's module imports neither torch nor DeepSpeed: --help and argument or config mistakes
    are answered in well under a second (the heavy stack loads once the arguments are checked)."""
    import re
    import subprocess
    import sys

    modules = sorted({m for m in re.findall(r'"genlip-[a-z]+=([\w.]+):main"', (ROOT / "setup.py").read_text())})
    assert len(modules) >= 9, modules
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules) +
            "print(sorted(m for m in ('torch', 'deepspeed', 'megatron', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", f"importing {modules} loads {out.stdout.strip()}"
