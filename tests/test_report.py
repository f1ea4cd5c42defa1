"""Result files and the report made from them: docs/results.md and the README's quickstart tables are exactly what
``python -m bench.report`` makes of bench/results/, every result file says where it came from, and the README
stays a front page whose commands exist."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bench import report
from common.errors import DataError
from common.results import Table, format_table, provenance, read_result, write_result

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_published_report_matches_the_result_files():
    """A number in docs/results.md or in the README's quickstart block always has a result file behind it."""
    assert (ROOT / "docs" / "results.md").read_text(encoding="utf-8") == report.render(), \
        "docs/results.md is out of date: run python -m bench.report"
    readme = README.read_text(encoding="utf-8")
    assert readme == report.with_readme_block(readme, report.quickstart_block()), \
        "the README's quickstart tables are out of date: run python -m bench.report"


def test_every_committed_result_file_has_provenance():
    files = report.result_files()
    assert files, "no result files under bench/results"
    for path in files:
        prov = read_result(path)["provenance"]
        commands = ("python -m bench.", "sefar ", "python -m sefar ", "make ")
        assert prov["command"].startswith(commands), (path, prov["command"])
        assert re.fullmatch(r"[0-9a-f]{7,40}(\+changes)?", prov["commit"]), (path, prov["commit"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", prov["date"]), (path, prov["date"])


def test_write_then_render_in_order_with_history(tmp_path, capsys):
    t = Table("main", ["method", "top-1"])
    t.add("SeFAR", "25.0")
    write_result(tmp_path / "zeta.json", "Zeta", [t], {"x": 1}, argv=["bench/zeta.py", "--seed", "0"])
    write_result(tmp_path / "decode.json", "Decode", [Table("", ["a"], [[1]])], argv=[str(ROOT / "bench" / "decode.py")])
    assert "| SeFAR | 25.0 |" in capsys.readouterr().out  # a result prints what it writes
    (tmp_path / "history.json").write_text(json.dumps({"entries": [
        {"date": "2026-01-01", "commit": "abc1234", "what": "an old run"}]}))
    text = report.render(tmp_path)
    assert text.index("## Decode") < text.index("## Zeta") < text.index("## History")  # ORDER, then by name
    assert "`python -m bench.decode`" in text and "- 2026-01-01, `abc1234`: an old run" in text
    assert "| SeFAR | 25.0 |" in text


def test_check_mode_fails_on_a_stale_report(tmp_path, capsys):
    write_result(tmp_path / "results" / "decode.json", "Decode", [Table("", ["a"], [[1]])])
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{report.BEGIN}\n{report.END}\n")
    args = ["--results", str(tmp_path / "results"), "--out", str(tmp_path / "results.md"), "--readme", str(readme)]
    assert report.main([*args, "--check"]) == 1
    assert report.main(args) == 0
    assert report.main([*args, "--check"]) == 0
    (tmp_path / "results.md").write_text("edited by hand\n")
    assert report.main([*args, "--check"]) == 1
    assert "out of date" in capsys.readouterr().err


def test_result_files_refuse_non_finite_numbers_and_missing_provenance(tmp_path):
    with pytest.raises(ValueError):
        write_result(tmp_path / "nan.json", "NaN", [Table("", ["a"], [[float("nan")]])])
    with pytest.raises(ValueError):
        write_result(tmp_path / "nan.json", "NaN", [], {"loss": float("inf")})
    assert not (tmp_path / "nan.json").exists()  # nothing half-written
    bad = tmp_path / "bad.json"
    bad.write_text('{"title": "t", "provenance": {"command": "x", "machine": "m", "commit": "c", "date": "d"}, '
                   '"tables": [], "data": {"v": NaN}}')
    with pytest.raises(DataError, match="NaN is not a JSON number"):
        read_result(bad)
    bad.write_text('{"title": "t", "provenance": {"command": "x"}, "tables": []}')
    with pytest.raises(DataError, match="provenance lacks machine, commit, date"):
        read_result(bad)
    bad.write_text('{"title": "t", "provenance": {"command": "x", "machine": "m", "commit": "c", "date": "d"}, '
                   '"tables": [{"title": "", "columns": ["a", "b"], "rows": [[1]]}]}')
    with pytest.raises(DataError, match="wrong number of cells"):
        read_result(bad)


def test_provenance_names_commands_as_a_user_types_them():
    assert provenance([str(ROOT / "bench" / "decode.py"), "--clips", "12"])["command"] == \
        "python -m bench.decode --clips 12"
    assert provenance(["/somewhere/.venv/bin/sefar", "quickstart", f"--out={Path.cwd() / 'outputs' / 'q'}"])[
        "command"] == "sefar quickstart --out=outputs/q"
    assert format_table(Table("", ["n", "x"], [[12345, 0.5]])).splitlines()[-1] == "| 12,345 | 0.50 |"


def _readme_commands() -> list[str]:
    """Each command line of the README's bash blocks (continuations joined, comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line:
                commands.append(line)
    return commands


def test_readme_is_a_front_page():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / link).is_file(), f"README links to a missing {link}"


@pytest.mark.slow
def test_every_readme_command_exists():
    """Every ``sefar ...`` and ``python -m bench.*`` line of the README answers ``--help`` (so its group, action
    and the module exist on a fresh clone); ``make`` lines name real targets."""
    commands = _readme_commands()
    sefar = [c for c in commands if c.startswith("sefar ")]
    bench = [c for c in commands if c.startswith("python -m bench.")]
    assert len(sefar) >= 20 and len(bench) >= 8
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for c in commands:
        if c.startswith("make "):
            assert re.search(rf"^{c.split()[1]}:", makefile, flags=re.M), c
    argvs: dict[tuple[str, ...], str] = {}  # each distinct command line once, with the README line it checks
    for c in sefar + bench:
        words = shlex.split(c)
        if c.startswith("sefar "):
            head = [w for w in words[1:3] if not w.startswith(("-", "["))]
            argv = (sys.executable, "-m", "sefar", *head, "--help")
        else:
            argv = (sys.executable, "-m", words[2], "--help")
        argvs.setdefault(argv, c)

    def run(argv):  # interpreter start-ups, two at a time
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for (argv, c), done in zip(argvs.items(), pool.map(run, argvs)):
            assert done.returncode == 0 and "usage:" in done.stdout, (c, done.stderr[-2000:])


def test_machine_description_names_the_widest_vector_extension():
    from common.results import _cpuinfo

    def cpuinfo(flags):
        return f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n\nprocessor\t: 1\nmodel name\t: other\n"

    assert _cpuinfo(cpuinfo("fpu sse2 avx avx2 fma")) == ("AMD EPYC", "AVX2")
    assert _cpuinfo(cpuinfo("avx2 avx512f avx512bw")) == ("AMD EPYC", "AVX512")
    assert _cpuinfo(cpuinfo("avx2 avx512f avx512_bf16")) == ("AMD EPYC", "AVX512-BF16")
    assert _cpuinfo(cpuinfo("avx2 avx512f avx512_bf16 amx_tile amx_bf16")) == ("AMD EPYC", "AMX-BF16")
    assert _cpuinfo(cpuinfo("neon asimd")) == ("AMD EPYC", None)
    assert _cpuinfo("") == (None, None)
