"""The training recipe is a leaf: no stage module imports it, so the run-folder readers never need it."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("common", "encoder", "gymqa", "bridge", "demo")
DRIVERS = {"encoder/train.py", "bridge/train.py"}  # the recipes themselves (the quickstart lives in pipelines/)


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def stage_files():
    for stage in STAGES:
        for path in sorted((REPO / stage).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel not in DRIVERS:
                yield rel, path


def test_no_stage_module_imports_the_recipe():
    offenders = [rel for rel, path in stage_files() if "encoder.train" in imported_modules(path)]
    assert offenders == []


def test_no_stage_module_imports_the_bridge_recipe():
    """bridge.train is a leaf too: only drivers (the CLI, pipelines/, bench/) import it."""
    offenders = [rel for rel, path in stage_files() if "bridge.train" in imported_modules(path)]
    assert offenders == []


def test_the_scan_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from encoder.train import train\n    import encoder.train as t\n")
    assert "encoder.train" in imported_modules(module)
    module.write_text("def f():\n    from encoder import train\n")
    assert "encoder.train" in imported_modules(module)


def test_run_folder_readers_do_not_import_evaluation_or_export():
    """encoder.run sits below evaluate/export/features: no circle through it."""
    imports = imported_modules(REPO / "encoder" / "run.py")
    assert not any(m.startswith(("encoder.evaluate", "encoder.export", "encoder.features", "bridge")) for m in imports)
