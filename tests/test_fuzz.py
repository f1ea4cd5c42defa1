"""Fuzz suite: random and mutated input through the list reader, ``data check``, the video reader, ``gymqa score``,
config loading, export loading, ``gymqa import`` of paper-format questions and ``gymqa build`` with FineGym
annotations, with Hypothesis (derandomized: the same inputs on every run, so CI is reproducible).

Property for every input: a clean exit with one ``error:`` line (or a ``data check`` report naming the problem),
or a correct result: never a traceback, never more than a bounded amount of memory, never a silent wrong success.
Each input runs in a worker process (tests/fuzz_worker.py) whose address space is limited, so a blow-up shows as a
``MemoryError`` crash instead of the kernel killing the machine's largest process; a hang is a crash too.
"Correct result" is checked against what the input is known to be: an OK list has every content line as a sample
and no label outside its categories file, an OK video decodes whole, a score equals the one computed here, a
loaded config holds exactly the values given, a loaded export is the model its config.json describes, imported
paper questions are the entries written and built element times are the annotated ones (a file mutated into a
known-invalid one must be refused). The counts are printed in pytest's summary ("fuzz" section).
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encoder.config import RunConfig
from videos import write_video

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("fuzz_worker.py")
SHIPPED_CONFIG = ROOT / "configs" / "encoder" / "syngym_tiny.yaml"
REQUEST_TIMEOUT_S = 60

FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Worker:
    """A long-lived fuzz worker; a request that kills it or runs past the timeout restarts it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self._start()

    def _start(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
        self.proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, cwd=ROOT, env=env, text=True)
        ready = self._reply(300)
        assert ready is not None and ready.get("ready"), "the fuzz worker did not start"

    def _reply(self, timeout: float) -> dict | None:
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if readable else ""
        return json.loads(line) if line else None

    def ask(self, request: dict) -> dict:
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            reply = self._reply(REQUEST_TIMEOUT_S)
        except BrokenPipeError:
            reply = None
        if reply is None:  # killed (signal, out of memory) or hung: a crash either way
            status = "hung" if self.proc.poll() is None else f"died with status {self.proc.returncode}"
            self.close()
            self._start()
            return {"code": None, "stdout": "", "stderr": "", "fd_stderr": "", "value": None,
                    "crash": f"worker {status}"}
        return reply

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _tally(counts: dict, target: str, reply: dict, outcome: str) -> None:
    c = counts.setdefault(target, {"tried": 0, "errors": 0, "results": 0, "crashes": 0})
    c["tried"] += 1
    c["crashes" if reply["crash"] else outcome] += 1


def _clean(reply: dict, context: str) -> str:
    """Assert the reply is a clean exit; return ``"errors"`` (one error line, or a report of problems with exit
    status 1) or ``"results"`` (exit 0)."""
    assert reply["crash"] is None, f"{context}: crashed: {reply['crash']}"
    everything = reply["stderr"] + reply["fd_stderr"]
    assert "Traceback" not in everything and "ERROR" not in reply["fd_stderr"], f"{context}: {everything[-2000:]}"
    if reply["code"] == 2:
        lines = [line for line in reply["stderr"].splitlines() if line.strip()]
        assert lines and lines[0].startswith("error: "), f"{context}: {reply['stderr'][-2000:]}"
        assert all(line.startswith("  - ") for line in lines[1:]), f"{context}: {reply['stderr'][-2000:]}"
        return "errors"
    assert reply["code"] in (0, 1), f"{context}: exit {reply['code']}"
    return "errors" if reply["code"] == 1 else "results"  # 1: a report that names the problems


# ------------------------------------------------------------------------------------------------ list lines

LINE_BREAKS = re.compile(r"\r\n|\r|\n")
PATHS = st.one_of(st.sampled_from(["a.mp4", "dir/b.mp4", "/root/video/c.mp4", "x y.mp4", "./a.mp4", "d\\e.avi",
                                   "A.MP4", "v_1.avi"]),
                  st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12))
LABELS = st.one_of(st.integers(0, 40).map(str), st.integers(-5, 10**25).map(str),
                   st.sampled_from(["\u00b2", "\u0663", "1.5", "nan", "+3", "-0", "0x1", "", "1e3"]),
                   st.text(max_size=4))
TRIMS = st.one_of(st.just(""), st.tuples(st.sampled_from(["0", "1.5", "-1", "nan", "inf", "2", "1e308"]),
                                         st.sampled_from(["3", "1", "0", "nan", "inf", "1e400"])).map(
                                             lambda t: f" {t[0]} {t[1]}"))


@st.composite
def list_files(draw) -> tuple[bytes, int | None, list[tuple[str, str]]]:
    """``(file bytes, classes in categories.txt or None, [(path, label) of well-formed 'path label' lines])``."""
    lines, simple = [], []
    classes = draw(st.one_of(st.none(), st.integers(1, 40)))
    for i in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["simple"] * 24 + ["fields", "comma", "text", "special"]))
        if kind == "simple":
            folder = draw(st.sampled_from(["", "b/", "/root/video/", "f g/"]))
            path = f"{folder}clip{draw(st.integers(0, 30)) if draw(st.integers(0, 9)) == 0 else i}.mp4"
            top = (classes or 41) - 1
            label = str(draw(draw(st.sampled_from([st.integers(0, top)] * 18 + [st.integers(top + 1, 99_999),
                                                                                 st.integers(10**5, 10**25)]))))
            lines.append(f"{path} {label}")
            simple.append((path, label))
        elif kind == "fields":
            lines.append(draw(PATHS) + " " + draw(LABELS) + draw(TRIMS))
        elif kind == "comma":
            lines.append(draw(PATHS) + "," + draw(LABELS))
        elif kind == "text":
            lines.append(draw(st.text(st.characters(codec="utf-8"), max_size=30)))
        else:
            lines.append(draw(st.sampled_from(["# comment", "", "   ", "path label", "path,label,start,end",
                                               "\ufeffa.mp4 1", "a.mp4\t2"])))
    ending = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    data = (ending.join(lines) + draw(st.sampled_from(["", ending]))).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 19)) == 0:
        data = draw(st.binary(max_size=200))
    return data, classes, simple


def _categories(n: int) -> str:
    return "".join(f"Clabel: {i}; set: 21; Glabel: {i}; (FX) element {i}\n" for i in range(n))


def _content_lines(data: bytes) -> int:
    text = data.decode("utf-8-sig")
    rows = [line.strip() for line in LINE_BREAKS.split(text)]
    rows = [r for r in rows if r and not r.startswith("#")]
    if rows and re.split(r"[,\s]+", rows[0].lower())[:2] == ["path", "label"]:
        rows = rows[1:]
    return len(rows)


@settings(FUZZ, max_examples=150)
@given(list_files())
def test_fuzz_list_lines_through_data_check(worker, workdir, fuzz_counts, generated):
    data, classes, simple = generated
    folder = workdir / "lists"
    folder.mkdir(exist_ok=True)
    (folder / "list.txt").write_bytes(data)
    categories = folder / "categories.txt"
    categories.unlink(missing_ok=True)
    if classes is not None:
        categories.write_text(_categories(classes))
    reply = worker.ask({"kind": "cli", "argv": ["data", "check", str(folder / "list.txt"), "--lists-only", "--json"]})
    outcome = _clean(reply, f"list {data[:300]!r}")
    _tally(fuzz_counts, "list lines -> data check", reply, outcome)
    if outcome == "errors":
        return
    report = json.loads(reply["stdout"])
    if not report["ok"]:
        assert reply["code"] == 1 and report["problems"]
        return
    # OK must be right: every content line is a sample, labels are inside the class list
    (listed,) = report["lists"]
    assert listed["num_samples"] == _content_lines(data)
    limit = classes if classes is not None else 100_000
    assert all(int(label) < limit for _, label in simple), (simple, classes)
    if classes is not None:
        assert listed["num_classes"] == classes


# ------------------------------------------------------------------------------------------ prediction lines

QUESTION_IDS = [f"q{i}" for i in range(5)]
ANSWERS = [i % 4 for i in range(5)]


def _write_questions(path: Path) -> None:
    from gymqa.question import Question, write_questions

    write_questions(path, [Question(id=qid, clip_id=f"c{i}", question="What?", options=("a", "b", "c", "d"),
                                    answer=ANSWERS[i], type="element", level="element")
                           for i, qid in enumerate(QUESTION_IDS)])


ANSWER_VALUES = {
    "letter": st.one_of(st.sampled_from(["A", "B", "C", "D", "E", "(b)", ""]), st.text(max_size=6), st.none(),
                        st.integers()),
    "index": st.one_of(st.integers(-2, 5), st.integers(), st.floats(), st.booleans(), st.none()),
    "text": st.one_of(st.sampled_from(["a", "b", "the answer is c", "D."]), st.text(max_size=10)),
    "loglikelihoods": st.lists(st.one_of(st.floats(), st.integers(-10**30, 10**30), st.booleans()), max_size=6),
}


@st.composite
def prediction_files(draw) -> tuple[str, dict[str, int] | None]:
    """``(file text, {id: chosen index} when every line is a valid letter/index record with a unique id)``."""
    lines, simple = [], {}
    valid = True
    for _ in range(draw(st.integers(0, 7))):
        kind = draw(st.sampled_from(["simple"] * 8 + ["record", "text", "special"]))
        if kind == "simple":
            unused = [q for q in QUESTION_IDS if q not in simple]
            qid = draw(st.sampled_from(unused if unused and draw(st.integers(0, 9)) else QUESTION_IDS))
            choice = draw(st.integers(0, 3))
            as_letter = draw(st.booleans())
            lines.append(json.dumps({"id": qid, "letter": "ABCD"[choice]} if as_letter else {"id": qid, "index": choice}))
            valid = valid and qid not in simple
            simple[qid] = choice
            continue
        valid = False
        if kind == "record":
            record = {"id": draw(st.one_of(st.sampled_from(QUESTION_IDS), st.text(max_size=4), st.integers()))}
            for key in draw(st.lists(st.sampled_from(sorted(ANSWER_VALUES)), max_size=2, unique=True)):
                record[key] = draw(ANSWER_VALUES[key])
            lines.append(json.dumps(record))
        elif kind == "text":
            lines.append(draw(st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=30)))
        else:
            lines.append(draw(st.sampled_from(["[" * 5_000, '{"id": "q0", "index": 1e400}', "{}", "null",
                                               '{"id": "q1", "index": 99999999999999999999999}', '"q0"', "[]"])))
    return "\n".join(lines) + "\n", simple if valid else None


@settings(FUZZ, max_examples=150)
@given(prediction_files())
def test_fuzz_prediction_lines_through_gymqa_score(worker, workdir, fuzz_counts, generated):
    text, simple = generated
    questions, predictions, report_path = workdir / "q.jsonl", workdir / "p.jsonl", workdir / "score.json"
    if not questions.exists():
        _write_questions(questions)
    predictions.write_text(text)
    report_path.unlink(missing_ok=True)
    reply = worker.ask({"kind": "cli", "argv": ["gymqa", "score", str(questions), str(predictions),
                                                "--out", str(report_path)]})
    outcome = _clean(reply, f"predictions {text[:300]!r}")
    _tally(fuzz_counts, "prediction lines -> gymqa score", reply, outcome)
    if simple is not None and not simple:
        assert outcome == "errors", "a file answering no question must not score 0%"
    if outcome == "errors":
        assert not report_path.exists()
        return
    assert reply["code"] == 0
    report = json.loads(report_path.read_text())
    assert report["overall"]["n"] == len(QUESTION_IDS)
    assert report["answered"] + report["unparsed"] + report["missing"] == len(QUESTION_IDS)
    if simple is not None:
        correct = sum(simple.get(qid) == ANSWERS[i] for i, qid in enumerate(QUESTION_IDS))
        assert report["overall"]["correct"] == correct and report["answered"] == len(simple)


# ------------------------------------------------------------------------------------------ config overrides


def _config_keys() -> list[str]:
    import dataclasses

    def walk(cls: type, prefix: str) -> list[str]:
        out = []
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            out += walk(type(default), f"{prefix}{f.name}.") if dataclasses.is_dataclass(default) else [prefix + f.name]
        return out

    return walk(RunConfig, "")


CONFIG_KEYS = _config_keys()
VALUES = st.one_of(
    st.integers(-3, 100).map(str), st.integers(-10**30, 10**30).map(str), st.floats().map(repr),
    st.sampled_from(["nan", "-inf", "1e400", "0", "-1", "0.5", "true", "false", "null", "[abc]", "[1, 2]",
                     "[8]", "[1.0, 1.2]", "{a: 1}", "[", "&a [*a]", "!!python/object:os.system", "''", "x: y",
                     "tiny", "sgd", "2-2-4", "supervised", "[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]"]),
    st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=10),
)
def _default(key: str) -> object:
    node: object = RunConfig()
    for part in key.split("."):
        node = getattr(node, part)
    return node


@st.composite
def plausible(draw, key: str) -> str:
    """A value of the right type for ``key`` and often in range (so that many overrides load)."""
    default = _default(key)
    if isinstance(default, bool):
        return draw(st.sampled_from(["true", "false"]))
    if isinstance(default, int):
        return str(draw(st.integers(0, 64)))
    if isinstance(default, float):
        return repr(draw(st.floats(0.0, 1.0)))
    if isinstance(default, str):
        return draw(st.sampled_from([default, "x"]))
    return str(default).replace("(", "[").replace(")", "]") if isinstance(default, tuple) else "null"


@st.composite
def overrides(draw) -> list[tuple[str, str]]:
    out = []
    for _ in range(draw(st.integers(0, 5))):
        key = draw(st.sampled_from(CONFIG_KEYS) if draw(st.integers(0, 9)) else st.sampled_from(
            ["optim", "nokey", "a.b.c", "optim.lrr", "", "data..x"]))
        value = draw(plausible(key)) if key in CONFIG_KEYS and draw(st.integers(0, 2)) else draw(VALUES)
        if key not in dict(out):
            out.append((key, value))
    return out


OVERRIDES = overrides()


YAML12_BOOLS = ("true", "True", "TRUE", "false", "False", "FALSE")


def _expected(value_text: str) -> object:
    """What a plain scalar override means, or ``None`` when it is not a plain scalar."""
    try:
        value = yaml.safe_load(value_text)
        if isinstance(value, bool) and (scalar := yaml.compose(value_text).value) not in YAML12_BOOLS:
            value = scalar  # configs read booleans as YAML 1.2 does: no/yes/on/off are strings
    except yaml.YAMLError:
        return None
    return value if isinstance(value, (bool, int, float, str)) else None


def _same(expected: object, loaded: object) -> bool:
    if isinstance(expected, str) and isinstance(loaded, float):  # "1e-05": a float to OmegaConf, a str to PyYAML
        try:
            expected = float(expected)
        except ValueError:
            return False
    if isinstance(expected, bool) or isinstance(loaded, bool):
        return expected is loaded
    if isinstance(expected, (int, float)) and isinstance(loaded, (int, float)):
        return expected == loaded or (math.isnan(expected) and math.isnan(loaded))
    if isinstance(loaded, str):
        return str(expected) == loaded
    return False


@settings(FUZZ, max_examples=150)
@given(OVERRIDES, st.booleans())
def test_fuzz_config_overrides(worker, fuzz_counts, pairs, with_file):
    texts = [f"{key}={value}" for key, value in pairs]
    keys = [key for key, _ in pairs if key in CONFIG_KEYS]
    reply = worker.ask({"kind": "config", "path": str(SHIPPED_CONFIG) if with_file else None,
                        "overrides": texts, "keys": keys})
    outcome = _clean(reply, f"overrides {texts}")
    _tally(fuzz_counts, "overrides -> config loading", reply, outcome)
    if outcome == "errors":
        problems = reply["stderr"].splitlines()[1:]
        assert len(problems) >= 1 and all("=" in p or ":" in p for p in problems), reply["stderr"]
        return
    assert set(keys) == {key for key, _ in pairs}, "an unknown key was accepted"
    for key, value_text in pairs:  # loaded exactly as given, not coerced (nesterov=3 is not true)
        expected = _expected(value_text)
        if expected is not None and not isinstance(reply["value"][key], list):
            assert _same(expected, reply["value"][key]), (key, value_text, reply["value"][key])


# ------------------------------------------------------------------------------------- videos and random bytes

FRAMES = 12
CONTAINERS = {
    "faststart.mp4": dict(codec="libx264", options={"movflags": "faststart"}),
    "plain.mp4": dict(codec="libx264"),
    "clip.avi": dict(codec="mpeg4"),
    "clip.gif": dict(codec="gif", pix_fmt="rgb8"),
    "clip.webm": dict(codec="libvpx"),
}


@pytest.fixture(scope="module")
def originals(workdir) -> dict[str, bytes]:
    folder = workdir / "originals"
    folder.mkdir()
    return {name: write_video(folder / name, n=FRAMES, size=(32, 48), **kw).read_bytes()
            for name, kw in CONTAINERS.items()}


@st.composite
def mutations(draw, names: list[str]) -> dict:
    name = draw(st.sampled_from(names))
    kind = draw(st.sampled_from(["cut", "cut", "flip", "swap", "bytes", "rename"]))
    return {"name": name, "kind": kind, "fraction": draw(st.floats(0.0, 1.0)),
            "flips": draw(st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 7)), min_size=1, max_size=8)),
            "other": draw(st.sampled_from(names)), "header": draw(st.integers(1, 512)),
            "bytes": draw(st.binary(max_size=3000)), "suffix": draw(st.sampled_from([".mp4", ".avi", ".gif", ".webm",
                                                                                     ".mkv"]))}


def _mutate(originals: dict[str, bytes], m: dict) -> tuple[bytes, str]:
    data, suffix = originals[m["name"]], Path(m["name"]).suffix
    if m["kind"] == "cut":
        return data[: int(len(data) * m["fraction"])], suffix
    if m["kind"] == "flip":
        out = bytearray(data)
        for where, bit in m["flips"]:
            out[min(len(out) - 1, int(where * len(out)))] ^= 1 << bit
        return bytes(out), suffix
    if m["kind"] == "swap":  # another container's header on this one's body
        head = originals[m["other"]][: m["header"]]
        return head + data[len(head):], suffix
    if m["kind"] == "bytes":
        return m["bytes"], m["suffix"]
    return data, m["suffix"]  # rename: the right bytes under another container's suffix


@settings(FUZZ, max_examples=120)
@given(st.data())
def test_fuzz_videos_through_reader_and_data_check(worker, workdir, originals, fuzz_counts, data):
    m = data.draw(mutations(sorted(CONTAINERS)))
    content, suffix = _mutate(originals, m)
    folder = workdir / "videos"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    clip = folder / f"clip{suffix}"
    clip.write_bytes(content)
    (folder / "list.txt").write_text(f"{clip.name} 0\n")
    deep = m["kind"] != "cut"
    argv = ["data", "check", str(folder / "list.txt"), "--json", *(["--deep"] if deep else [])]
    context = f"{m['kind']} of {m['name']} ({len(content)} bytes as {suffix})"
    reply = worker.ask({"kind": "cli", "argv": argv})
    outcome = _clean(reply, context)
    _tally(fuzz_counts, "videos -> data check", reply, outcome)
    decoded = worker.ask({"kind": "decode", "path": str(clip)})
    _tally(fuzz_counts, "videos -> reader", decoded, _clean(decoded, context))
    if outcome == "errors" or not json.loads(reply["stdout"])["ok"]:
        return
    # data check said OK: the clip must decode whole
    assert decoded["code"] == 0, f"{context}: data check passed it but reading fails: {decoded['stderr']}"
    if m["kind"] in ("cut", "rename"):
        assert decoded["value"] == FRAMES, f"{context}: data check passed it but {decoded['value']} frames decode"


# ------------------------------------------------------------------------------------------ export config.json


@pytest.fixture(scope="module")
def export_config(workdir) -> tuple[Path, dict]:
    """A tiny export folder and its ``config.json``."""
    from common.finegym import Category
    from encoder.export import PreprocessConfig, build_export_config, save_export
    from encoder.timesformer import create_model

    model = create_model("tiny", 3, img_size=32)
    categories = [Category(i, 10 + i, 21, "FX", f"element {i}") for i in range(3)]
    config = build_export_config(model.cfg, PreprocessConfig(8, 32, (0.5,) * 3, (0.5,) * 3),
                                 [c.full_name for c in categories], categories)
    return save_export(workdir / "export", model, config), config


def _json_leaves(value: object, path: tuple = ()) -> list[tuple]:
    if isinstance(value, dict):
        return [path] + [p for k, v in value.items() for p in _json_leaves(v, (*path, k))]
    if isinstance(value, list) and value:
        return [path] + [p for i, v in enumerate(value) for p in _json_leaves(v, (*path, i))]
    return [path]


JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 70), st.integers(-10**30, 10**30),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
                        st.lists(st.integers(-2, 4), max_size=4), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                   max_size=2))


@settings(FUZZ, max_examples=60)
@given(st.data())
def test_fuzz_export_config_through_loading(worker, workdir, export_config, fuzz_counts, data):
    folder, config = export_config
    paths = [p for p in _json_leaves(config) if p]
    changed = json.loads(json.dumps(config))
    edits = data.draw(st.lists(st.tuples(st.sampled_from(paths), st.one_of(JSON_VALUES, st.just("<delete>"))),
                               min_size=1, max_size=3))
    applied = []
    for path, value in edits:
        node = changed
        try:
            for key in path[:-1]:
                node = node[key]
            if value == "<delete>":
                node.pop(path[-1])
            else:
                node[path[-1]] = value
            applied.append((path, value))
        except (KeyError, IndexError, TypeError):  # an earlier edit replaced the parent
            continue
    damaged = workdir / "damaged_export"
    damaged.mkdir(exist_ok=True)
    (damaged / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (damaged / "config.json").write_text(json.dumps(changed))
    reply = worker.ask({"kind": "export", "path": str(damaged)})
    outcome = _clean(reply, f"export config edits {applied}")
    _tally(fuzz_counts, "export config.json -> loading", reply, outcome)
    if outcome == "results":  # loaded: the model is the one config.json describes
        arch = changed["architecture"]
        assert all(reply["value"]["architecture"][k] == v for k, v in arch.items()), (applied, reply["value"])
        assert reply["value"]["class_names"] == changed["class_names"]


# ------------------------------------------------------------------------------------ paper-format questions

PAPER_OPTIONS = ["split jump", "stag jump", "salto backward tucked", "giant circle backward", "round-off, flic-flac",
                 "switch leap with 0.5 turn"]
# A number JSON has no room for, written raw into the file (json.dumps would refuse or rewrite it).
RAW_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e999", "-2e400", "9" * 400, "-" + "7" * 5000]
RAW = "\u0000raw:"  # marks a string that stands for the raw JSON text after it


def _paper_entry(key: str, draw) -> dict:
    options = draw(st.lists(st.sampled_from(PAPER_OPTIONS), min_size=2, max_size=5))  # repeats allowed (as released)
    answer = draw(st.integers(0, len(options) - 1))
    prompt = "What gymnastics move is this athlete performing? " + " ".join(
        f"{'ABCDE'[i]}.{text}" for i, text in enumerate(options))
    return {"answer": "ABCDE"[answer], "question": prompt, "answer_type": "what", "question_id": key,
            "dataset": "finegym", "video": f"yt{key}_E_000010_000040_A_0001_0003",
            "frame_length": draw(st.integers(0, 500))}


WRONG_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(allow_nan=False),
                         st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(),
                                                                                  max_size=1),
                         st.sampled_from([RAW + n for n in RAW_NUMBERS]))


@st.composite
def paper_files(draw) -> tuple[str, dict | None]:
    """``(file text, {key: entry} when every entry is known valid, else None)``; ``known_bad`` entries are
    mutations that must be refused."""
    entries = {f"{n:07d}": _paper_entry(f"{n:07d}", draw) for n in range(draw(st.integers(1, 4)))}
    known_bad = False
    unknown = False
    touched: set[str] = set()
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(sorted(entries)))
        entry = entries[key]
        kind = draw(st.sampled_from(["type", "type", "empty options", "answer", "frame_length", "drop", "id",
                                     "harmless", "leaf"]))
        if kind == "type":
            field = draw(st.sampled_from(["question", "answer_type", "video", "dataset", "answer"]))
            entry[field] = draw(WRONG_VALUES)
            known_bad = True
        elif kind == "empty options":
            blanks = draw(st.sampled_from(["A. B. C. D.", "A.x B.  C.y D.z", "A.  B.b"]))
            entry["question"] = "What gymnastics move is this athlete performing? " + blanks
            entry["answer"] = "A"
            known_bad = True
        elif kind == "answer":
            entry["answer"] = draw(st.sampled_from(["F", "", "a", "AB", " A"]))
            known_bad = True
        elif kind == "frame_length":
            entry["frame_length"] = draw(st.one_of(st.sampled_from([-1, True, 2.5, None, "12"]),
                                                   st.sampled_from([RAW + n for n in RAW_NUMBERS])))
            known_bad = True
        elif kind == "drop":
            required = sorted(set(entry) & {"answer", "question", "answer_type", "question_id", "dataset", "video",
                                            "frame_length"})
            if required:
                entry.pop(draw(st.sampled_from(required)))
                known_bad = True
        elif kind == "id":
            entry["question_id"] = draw(st.sampled_from(["x", "0000099", 7]))
            known_bad = True
        elif kind == "harmless":
            if key not in touched:  # (would undo an earlier mutation of the video)
                entry["video"] = draw(st.sampled_from(["clip_7", "ab-c_E_000001_000002_A_0000_0001"]))
            entry["extra"] = draw(WRONG_VALUES.filter(lambda v: not (isinstance(v, str) and v.startswith(RAW))))
        else:
            entry[draw(st.sampled_from(sorted(entry)))] = draw(JSON_VALUES)
            unknown = True
            known_bad = known_bad and key not in touched  # (may have undone an earlier mutation of this entry)
        touched.add(key)
    text = json.dumps(entries, indent=4)
    text = re.sub(r'"\\u0000raw:([^"]*)"', r"\1", text)  # the raw numbers, unquoted
    if draw(st.integers(0, 14)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
        unknown = True
    return text, ("bad" if known_bad else None) if (known_bad or unknown) else entries


@settings(FUZZ, max_examples=100)
@given(paper_files())
def test_fuzz_paper_questions_through_gymqa_import(worker, workdir, fuzz_counts, generated):
    from common.jsonio import read_jsonl

    text, expected = generated
    folder = workdir / "paper"
    folder.mkdir(exist_ok=True)
    paper, out = folder / "test.json", folder / "questions.jsonl"
    paper.write_text(text)
    out.unlink(missing_ok=True)
    reply = worker.ask({"kind": "cli", "argv": ["gymqa", "import", str(paper), str(out)]})
    outcome = _clean(reply, f"paper file {text[:600]!r}")
    _tally(fuzz_counts, "paper questions -> gymqa import", reply, outcome)
    if expected == "bad":
        assert outcome == "errors", f"a malformed paper file was accepted: {text[:600]!r}"
    if outcome == "errors":
        assert not out.exists()
        return
    rows = [record for _, record in read_jsonl(out)]  # strict: nothing non-finite was written
    if isinstance(expected, dict):  # every entry known valid: imported exactly
        want = []
        for key, entry in expected.items():
            options = entry["question"].split("performing? ", 1)[1]
            texts = [t[2:] for t in re.split(r" (?=[A-E]\.)", options)]
            want.append((key, entry["video"], texts, "ABCDE".index(entry["answer"]), entry["frame_length"]))
        assert [(r["id"], r["clip_id"], r["options"], r["answer"], r["frame_length"]) for r in rows] == want


# ------------------------------------------------------------------------------------ FineGym annotations

ANNOTATED_LABELS = (0, 2, 5, 10)  # classes of the mini FineGym folder whose first val clip gets times


@pytest.fixture(scope="module")
def mini_finegym(workdir) -> dict[str, Path]:
    from test_gymqa_build import write_mini_finegym

    return write_mini_finegym(workdir / "finegym", per_class_train=4, per_class_val=1)


def _valid_annotation(draw) -> tuple[dict, dict[str, tuple[float, float]]]:
    """A valid annotation of some val clips of the mini folder and their expected absolute times."""
    from test_gymqa_build import mini_clip

    annotation, times = {}, {}
    for label in draw(st.lists(st.sampled_from(ANNOTATED_LABELS), min_size=1, max_size=3, unique=True)):
        clip = mini_clip(label, 1000)
        youtube, rest = clip.split("_E_")
        start = 1000 + draw(st.sampled_from([0, 0.25, 0.5]))
        stages = draw(st.sampled_from([1, 1, 3]))
        a = label + draw(st.sampled_from([0, 0.25]))
        b = a + draw(st.sampled_from([0.5, 1.75]))
        cuts = [a + (b - a) * k / stages for k in range(stages + 1)]
        element = {"stages": stages, "timestamps": [[cuts[k], cuts[k + 1]] for k in range(stages)]}
        event = {"event": 1 if stages == 3 else 2, "timestamps": [[start, 1090.0]], "segments": {rest[14:]: element}}
        annotation.setdefault(youtube, {})[f"E_{rest[:13]}"] = event
        times[clip] = (start + a, start + b)
    if draw(st.booleans()):  # an event without element annotation
        annotation.setdefault("other_yt", {})["E_000001_000009"] = {"event": 3, "timestamps": [[1.5, 9.0]],
                                                                    "segments": None}
    return annotation, times


@st.composite
def annotation_files(draw) -> tuple[str, dict | str | None]:
    """``(file text, expected)``: the clip times when the file is known valid, ``"bad"`` when a mutation makes it
    invalid, ``None`` when unknown."""
    annotation, times = _valid_annotation(draw)
    verdict: dict | str | None = times
    for _ in range(draw(st.integers(0, 2))):
        try:
            verdict = _mutate_annotation(draw, annotation, verdict)
        except (TypeError, KeyError, IndexError, AttributeError):  # an earlier mutation changed the structure
            continue
    text = re.sub(r'"\\u0000raw:([^"]*)"', r"\1", json.dumps(annotation))
    return text, verdict


def _mutate_annotation(draw, annotation: dict, verdict: dict | str | None) -> dict | str | None:
    """Apply one mutation; returns the new verdict (see :func:`annotation_files`)."""
    youtube = draw(st.sampled_from(sorted(annotation)))
    event_key = draw(st.sampled_from(sorted(annotation[youtube])))
    event = annotation[youtube][event_key]
    element = next(iter(event["segments"].values())) if event["segments"] else None
    kind = draw(st.sampled_from(["number", "number", "negative", "outside", "stages", "shape", "event", "leaf",
                                 "extra"]))
    if kind == "number":
        target = element["timestamps"] if element and draw(st.booleans()) else event["timestamps"]
        target[draw(st.integers(0, len(target) - 1))][draw(st.integers(0, 1))] = RAW + draw(
            st.sampled_from(RAW_NUMBERS))
        verdict = "bad"
    elif kind == "negative":
        event["timestamps"][0][0] = -draw(st.sampled_from([0.5, 3, 1000]))
        verdict = "bad"
    elif kind == "outside" and element:
        element["timestamps"][-1][1] = 200.0  # the event is at most 90 s long
        verdict = "bad"
    elif kind == "stages" and element:
        element["stages"] = draw(st.sampled_from([0, 2, 4, True, "1", None, 1.0]))
        verdict = "bad"
    elif kind == "shape":
        target = element if element and draw(st.booleans()) else event
        target["timestamps"] = draw(st.sampled_from([[], [[1]], [[1, 2, 3]], "1-2", [["1", "2"]], None,
                                                     [[5, 1]]]))
        verdict = "bad"
    elif kind == "event":
        event["event"] = draw(st.sampled_from([0, 5, "2", None, 2.0, True]))
        verdict = "bad"
    elif kind == "extra":
        event[draw(st.sampled_from(["note", "judges"]))] = draw(WRONG_VALUES.filter(
            lambda v: not (isinstance(v, str) and v.startswith(RAW))))
    elif kind == "leaf":
        leaves = [p for p in _json_leaves(annotation) if p]
        path = draw(st.sampled_from(leaves))
        node = annotation
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = draw(JSON_VALUES)
        verdict = None  # unknown (it may even have undone an earlier mutation)
    return verdict


@settings(FUZZ, max_examples=80)
@given(annotation_files())
def test_fuzz_finegym_annotations_through_gymqa_build(worker, workdir, mini_finegym, fuzz_counts, generated):
    import shutil

    from common.jsonio import read_jsonl

    text, expected = generated
    folder = workdir / "annotations"
    folder.mkdir(exist_ok=True)
    path, out = folder / "annotation.json", folder / "out"
    path.write_text(text)
    shutil.rmtree(out, ignore_errors=True)
    argv = ["gymqa", "build", "--categories", str(mini_finegym["categories"]), "--train", str(mini_finegym["train"]),
            "--val", str(mini_finegym["val"]), "--types", "element", "--annotations", str(path), "--out", str(out)]
    reply = worker.ask({"kind": "cli", "argv": argv})
    outcome = _clean(reply, f"annotation {text[:600]!r}")
    _tally(fuzz_counts, "FineGym annotations -> gymqa build", reply, outcome)
    if expected == "bad":
        assert outcome == "errors", f"a malformed annotation was accepted: {text[:600]!r}"
    if outcome == "errors":
        assert not out.exists()
        return
    test = [record for _, record in read_jsonl(out / "test.jsonl")]  # strict: no NaN was written
    got = {r["clip_id"]: tuple(r["times"]) for r in test if r.get("times") is not None}
    assert all(math.isfinite(t) for pair in got.values() for t in pair)
    if isinstance(expected, dict):
        assert set(got) == set(expected), (text, got)
        assert all(got[clip] == pytest.approx(times) for clip, times in expected.items()), (text, got)


# ------------------------------------------------------------------------------------------------ the bridge


@pytest.fixture(scope="module")
def bridge_inputs(workdir) -> dict:
    """A tiny LLaMA folder, an adapter export, a feature cache and a Gym-QA JSONL (all valid)."""
    import torch
    from bridge_fixtures import LAYOUT_224, fake_features, tiny_adapter_config, tiny_llama
    from safetensors.torch import save_file

    from bridge.adapter import QFormerAdapter
    from bridge.export import write_adapter_export

    root = workdir / "bridge"
    llama = tiny_llama(root / "llama")
    torch.manual_seed(0)
    adapter = write_adapter_export(root / "adapter", QFormerAdapter(tiny_adapter_config()), llm={"path": str(llama)},
                                   template="vicuna_v1.1", features={"kind": "sefar", "layout": LAYOUT_224},
                                   prompt={"question": "q", "objective": "name"})
    cache = root / "cache"
    cache.mkdir()
    tensors = {f"c{i}/{k}": v for i in range(2) for k, v in fake_features(seed=i).items()}
    save_file(tensors, str(cache / "shard_00000.safetensors"), metadata={"clips": '["c0", "c1"]', "skipped": "{}"})
    manifest = {"format": "sefar-features", "format_version": 1, "dtype": "float32", "shard_size": 256,
                "num_shards": 1, "shapes": {k: list(v.shape) for k, v in fake_features().items()},
                "layout": LAYOUT_224, "clips": {"c0": 0, "c1": 0}, "done_shards": [0], "skipped": {}, "complete": True}
    questions = [{"id": f"q{i}", "clip_id": f"c{i}", "question": "What move is this?", "options": PAPER_OPTIONS[:4],
                  "answer": i, "type": "element", "level": "element"} for i in range(3)]
    return {"llama": llama, "adapter": adapter, "cache": cache, "manifest": manifest, "questions": questions}


def _edit_json(data, value, draw) -> tuple[object, list]:
    """``value`` with 1-3 leaves replaced by fuzzed JSON values (or deleted); the edits applied."""
    changed = json.loads(json.dumps(value))
    paths = [p for p in _json_leaves(changed) if p]
    applied = []
    for path, new in draw(st.lists(st.tuples(st.sampled_from(paths), st.one_of(JSON_VALUES, st.just("<delete>"))),
                                   min_size=1, max_size=3)):
        node = changed
        try:
            for key in path[:-1]:
                node = node[key]
            if new == "<delete>":
                node.pop(path[-1])
            else:
                node[path[-1]] = new
            applied.append((path, new))
        except (KeyError, IndexError, TypeError, AttributeError):
            continue
    return changed, applied


def _raw(text: str, draw) -> tuple[str, bool]:
    """``text`` with one number replaced by a raw JSON number that must be refused (sometimes); whether it was."""
    numbers = list(re.finditer(r"(?<![\w.\"-])\d+(?![\w.\"])", text))
    if not numbers or draw(st.integers(0, 3)):
        return text, False
    m = draw(st.sampled_from(numbers))
    return text[: m.start()] + draw(st.sampled_from(RAW_NUMBERS)) + text[m.end():], True


@settings(FUZZ, max_examples=60)
@given(st.data())
def test_fuzz_bridge_questions(worker, workdir, bridge_inputs, fuzz_counts, data):
    records = [dict(r) for r in bridge_inputs["questions"]]
    i = data.draw(st.integers(0, len(records) - 1))
    kind = data.draw(st.sampled_from(["edit", "text", "text", "raw", "truncate"]))
    if kind == "edit":
        records, applied = _edit_json(data, records, data.draw)
    elif kind == "text":
        records[i]["question"] = data.draw(st.one_of(
            st.text(max_size=40), st.sampled_from(["<video>", "<video> <video-1>", "x" * 5000, "salto " * 400])))
    text = "".join(json.dumps(r) + "\n" for r in records)
    bad = False
    if kind == "raw":
        text, bad = _raw(text, data.draw)
    elif kind == "truncate":
        text = text[: data.draw(st.integers(0, len(text)))]
    path = workdir / "bridge_questions.jsonl"
    path.write_text(text)
    reply = worker.ask({"kind": "bridge", "what": "questions", "path": str(path)})
    outcome = _clean(reply, f"questions {text[:600]!r}")
    _tally(fuzz_counts, "bridge question JSONL -> read_question_set", reply, outcome)
    if bad:
        assert outcome == "errors", text[:600]
    if outcome == "results":
        got = {q[0]: (q[1], q[2]) for q in reply["value"]}
        for r in records:
            if r.get("id") in got:
                assert got[r["id"]] == (r["question"], list(r["options"]))
                assert len(r["question"]) <= 256 * 16


@settings(FUZZ, max_examples=50)
@given(st.data())
def test_fuzz_bridge_feature_manifests(worker, workdir, bridge_inputs, fuzz_counts, data):
    import shutil

    folder = workdir / "bridge_cache"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(bridge_inputs["cache"], folder)
    manifest, applied = _edit_json(data, bridge_inputs["manifest"], data.draw)
    text, bad = _raw(json.dumps(manifest), data.draw)
    (folder / "manifest.json").write_text(text)
    if data.draw(st.integers(0, 4)) == 0:
        shard = (folder / "shard_00000.safetensors").read_bytes()
        (folder / "shard_00000.safetensors").write_bytes(shard[: data.draw(st.integers(0, len(shard)))])
    reply = worker.ask({"kind": "bridge", "what": "cache", "path": str(folder)})
    outcome = _clean(reply, f"manifest edits {applied} {text[:300]!r}")
    _tally(fuzz_counts, "bridge feature manifest -> FeatureCache", reply, outcome)
    if bad:
        assert outcome == "errors", text[:600]
    if outcome == "results":
        assert all(shapes == manifest["shapes"] for shapes in reply["value"].values())


@settings(FUZZ, max_examples=50)
@given(st.data())
def test_fuzz_bridge_adapter_exports(worker, workdir, bridge_inputs, fuzz_counts, data):
    source = bridge_inputs["adapter"]
    folder = workdir / "bridge_adapter"
    folder.mkdir(exist_ok=True)
    config = json.loads((source / "config.json").read_text())
    applied = []
    if data.draw(st.booleans()):
        config["adapter"], applied = _edit_json(data, config["adapter"], data.draw)
    text, bad = _raw(json.dumps(config), data.draw)
    (folder / "config.json").write_text(text)
    weights = (source / "adapter.safetensors").read_bytes()
    if data.draw(st.integers(0, 3)) == 0:
        weights = weights[: data.draw(st.integers(0, len(weights)))]
        bad = bad or len(weights) < len((source / "adapter.safetensors").read_bytes())
    (folder / "adapter.safetensors").write_bytes(weights)
    reply = worker.ask({"kind": "bridge", "what": "adapter", "path": str(folder)})
    outcome = _clean(reply, f"adapter edits {applied} {text[:300]!r}")
    _tally(fuzz_counts, "bridge adapter export -> load_adapter", reply, outcome)
    if bad:
        assert outcome == "errors", (applied, text[:600])
    if outcome == "results":
        assert all(reply["value"][k] == v for k, v in config["adapter"].items()), (applied, reply["value"])


@settings(FUZZ, max_examples=40)
@given(st.data())
def test_fuzz_bridge_llm_folders(worker, workdir, bridge_inputs, fuzz_counts, data):
    import shutil

    folder = workdir / "bridge_llm"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(bridge_inputs["llama"], folder, ignore=shutil.ignore_patterns("spm"))
    config = json.loads((folder / "config.json").read_text())
    keys = ["vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "model_type",
            "num_attention_heads", "tie_word_embeddings", "max_position_embeddings"]
    applied = []
    kind = data.draw(st.sampled_from(["config", "config", "truncate", "drop"]))
    if kind == "config":
        for key in data.draw(st.lists(st.sampled_from(keys), min_size=1, max_size=2)):
            config[key] = data.draw(st.one_of(JSON_VALUES, st.sampled_from(["bert", "llama", 0, 1, 320, 64, 128])))
            applied.append((key, config[key]))
    (folder / "config.json").write_text(json.dumps(config))
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    if kind != "config":
        name = data.draw(st.sampled_from(files))
        applied.append((kind, name))
        if kind == "drop":
            (folder / name).unlink()
        else:
            blob = (folder / name).read_bytes()
            (folder / name).write_bytes(blob[: data.draw(st.integers(0, max(0, len(blob) - 1)))])
    reply = worker.ask({"kind": "bridge", "what": "llm", "path": str(folder)})
    outcome = _clean(reply, f"LLM folder changes {applied}")
    _tally(fuzz_counts, "bridge LLM folder -> load_llm", reply, outcome)
    if outcome == "results":
        assert reply["value"]["width"] == config["hidden_size"], applied
        assert reply["value"]["vocab"] == config["vocab_size"], applied
