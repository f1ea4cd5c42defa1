"""Gym-QA and the dataset indexes are pure Python: importing them must not import torch."""

import subprocess
import sys

MODULES = ["common.errors", "common.distributed", "common.textio", "common.clipid", "common.finegym", "gymqa.build", "gymqa.score", "gymqa.stats", "gymqa.paper_format", "common.finegym",
           "encoder.data.splits", "encoder.data.lists", "encoder.data.finediving", "encoder.data.sampling"]


def test_pure_python_modules_do_not_import_torch():
    code = f"import sys, importlib; [importlib.import_module(m) for m in {MODULES!r}]; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_gymqa_imports_no_other_stage():
    gymqa = [m for m in MODULES if m.startswith("gymqa.")] + ["gymqa"]
    code = (f"import sys, importlib; [importlib.import_module(m) for m in {gymqa!r}]; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'encoder', 'bridge', 'demo', 'torch'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
