"""Gym-QA building: a small FineGym-format fixture (all rules) and the real FineGym lists (counts, paper split)."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from common.errors import ConfigError, DataError, ListFormatError
from common.finegym import read_categories
from gymqa.build import (
    BuildConfig,
    build_finegym,
    build_gymqa,
    build_questions,
    clip_id_of,
    read_labeled_list,
    select_labeled,
    set_text,
)
from gymqa.options import Choice, DistractorSampler, trigram_similarity
from gymqa.paper_format import read_paper_json
from gymqa.question import Question, read_questions_jsonl
from gymqa.stats import duplicate_option_count

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(
    not (DATA / "finegym").is_dir() or not (DATA / "sefar-gymqa").is_dir(),
    reason="real FineGym / SeFAR Gym-QA files not found at ../shared/data beside the checkout",
)

# (set, glabel, event, name): names collide across events (2/6, 4/7) and inside BB (8/9, different sets).
MINI_CLASSES = [
    (1, 1, "VT", "round-off, flic-flac on, stretched salto backward off"),
    (1, 2, "VT", "round-off, flic-flac on, stretched salto backward with 1 turn off"),
    (21, 10, "FX", "switch leap with 0.5 turn"),
    (21, 11, "FX", "switch leap with 1 turn"),
    (21, 12, "FX", "split jump"),
    (22, 20, "FX", "2 turn on one leg"),
    (31, 30, "BB", "switch leap with 0.5 turn"),
    (31, 31, "BB", "split jump"),
    (33, 40, "BB", "salto backward tucked"),
    (35, 50, "BB", "salto backward tucked"),
    (41, 60, "UB", "giant circle backward"),
    (41, 61, "UB", "giant circle backward with 1 turn to handstand"),
    (44, 70, "UB", "double salto backward stretched"),
    (21, 13, "FX", "stag jump      "),
]
SET_NAMES = {1: "vault", 21: "FX_leap_jump_hop", 22: "FX_turns", 23: "FX_side_salto", 24: "FX_front_salto",
             25: "FX_back_salto", 31: "BB_leap_jump_hop", 32: "BB_turns", 33: "BB_flight_salto",
             34: "BB_flight_handspring", 35: "BB_dismounts", 41: "UB_circles", 42: "UB_fligh_same_bar",
             43: "UB_transition_flight", 44: "UB_dismounts"}


def mini_clip(label: int, i: int) -> str:
    return f"y_{label:02d}-{i}ab_E_{i:06d}_{i + 90:06d}_A_{label:04d}_{label + 2:04d}"


def write_mini_finegym(root: Path, per_class_train: int = 40, per_class_val: int = 6) -> dict[str, Path]:
    """A FineGym-format folder with 14 classes; returns the file paths by role."""
    root.mkdir(parents=True, exist_ok=True)
    paths = {name: root / file for name, file in [
        ("categories", "gym99_categories.txt"), ("set_names", "set_categories.txt"),
        ("train", "gym99_train_element_v1.1.txt"), ("val", "gym99_val_element.txt"),
        ("qtree", "finegym_glabel_to_Qtree.json"), ("labeled", "labeled.csv")]}
    paths["categories"].write_text("".join(
        f"Clabel: {c:3d}; set: {s:2d}; Glabel: {g:3d}; ({e}) {n}\n" for c, (s, g, e, n) in enumerate(MINI_CLASSES)))
    paths["set_names"].write_text("".join(f"set: {s}; {name}\n" for s, name in SET_NAMES.items()))
    train = [(mini_clip(c, i), c) for i in range(per_class_train) for c in range(len(MINI_CLASSES))]
    val = [(mini_clip(c, 1000 + i), c) for i in range(per_class_val) for c in range(len(MINI_CLASSES))]
    paths["train"].write_text("".join(f"{clip} {label}\n" for clip, label in train))
    paths["val"].write_text("".join(f"{clip} {label}\n" for clip, label in val))
    questions = ["Salto?", "With  turn?", "two feet?"]  # odd Glabels: 2 questions "10"; even: 3 questions "011"
    qtree = {str(g): {"BTcode": "10" if g % 2 else "011", "questions": questions[: 2 + (g % 2 == 0)], "code": f"1.{g}"}
             for _, g, _, _ in MINI_CLASSES}
    paths["qtree"].write_text(json.dumps(qtree))
    labeled = "".join(f"/root/video/{clip}.mp4 {label}\r\n" for clip, label in train[5:40:3])
    paths["labeled"].write_bytes(labeled.encode())
    return paths


@pytest.fixture()
def mini(tmp_path: Path) -> dict[str, Path]:
    return write_mini_finegym(tmp_path / "finegym")


def _build(mini: dict[str, Path], out: Path | None = None, **config: object):
    return build_gymqa(mini["categories"], mini["set_names"], mini["train"], mini["val"], out, qtree=mini["qtree"],
                       config=BuildConfig(**config))


ALL_TYPES = ("event", "set", "element", "yesno")


# --------------------------------------------------------------------------- building and files


def test_build_writes_files_and_round_trips(mini: dict[str, Path], tmp_path: Path) -> None:
    result = _build(mini, tmp_path / "out", types=ALL_TYPES)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json", "test.jsonl", "train.jsonl"]
    assert read_questions_jsonl(result.files["train"]) == result.train
    assert read_questions_jsonl(result.files["test"]) == result.test
    manifest = json.loads(result.files["manifest"].read_text())
    assert manifest["counts"]["test"] == {"event": 84, "set": 84, "element": 84, "yesno": 84}
    assert manifest["clips"] == {"train": 28, "test": 84, "train_pool": 560}
    assert manifest["config"]["types"] == list(ALL_TYPES)
    record = json.loads(result.files["test"].read_text().splitlines()[0])
    assert list(record)[:6] == ["id", "clip_id", "question", "options", "answer", "answer_letter"]
    assert record["answer_letter"] == "ABCD"[record["answer"]]


def test_seed_keyword_and_repr(mini: dict[str, Path], tmp_path: Path) -> None:
    result = build_gymqa(mini["categories"], mini["set_names"], mini["train"], mini["val"], tmp_path / "qa", seed=5)
    assert result.manifest["config"]["seed"] == 5 and {q.seed for q in result.test} == {5}
    assert result.test == build_gymqa(mini["categories"], None, mini["train"], mini["val"],
                                      config=BuildConfig(seed=5)).test
    assert repr(result) == f"GymQA(name='gymqa', train=28, test=84, folder={str(tmp_path / 'qa')!r})"


def test_build_is_deterministic_per_seed(mini: dict[str, Path]) -> None:
    first, again = _build(mini, types=ALL_TYPES), _build(mini, types=ALL_TYPES)
    other = _build(mini, types=ALL_TYPES, seed=1)
    assert first.test == again.test and first.train == again.train
    assert [q.options for q in first.test] != [q.options for q in other.test]
    assert [q.clip_id for q in first.train] != [q.clip_id for q in other.train]


@pytest.mark.parametrize("strategy", ["random", "same-event", "same-set", "nearest"])
@pytest.mark.parametrize("collision", ["redraw", "tag"])
def test_options_distinct_correct_and_balanced(mini: dict[str, Path], strategy: str, collision: str) -> None:
    result = _build(mini, types=ALL_TYPES, strategy=strategy, collision=collision)
    categories = read_categories(mini["categories"])
    for split in (result.train, result.test):
        assert duplicate_option_count(split) == 0
        for kind in ALL_TYPES:
            questions = [q for q in split if q.type == kind]
            counts = Counter(q.answer for q in questions)
            assert len(counts) == len(questions[0].options) and max(counts.values()) - min(counts.values()) <= 1
        for q in split:
            if q.type == "element":
                name = categories[q.clabel].name
                assert q.answer_text in (name, f"({q.event}) {name}")
                others = [o.removeprefix(f"({q.event}) ") for i, o in enumerate(q.options) if i != q.answer]
                assert name not in others or collision == "tag"  # a tagged sibling from another event may share it
                assert q.options.count(q.answer_text) == 1


def test_redraw_never_tags_and_tag_policy_tags_collisions(mini: dict[str, Path]) -> None:
    redraw = _build(mini, strategy="nearest")
    assert not any(o.startswith("(") for q in redraw.test for o in q.options)
    tagged = _build(mini, strategy="nearest", collision="tag")
    # nearest to FX "switch leap with 0.5 turn" is the BB class of the same name: both shown with their tags
    q = next(q for q in tagged.test if q.clabel == 2)
    assert q.answer_text == "(FX) switch leap with 0.5 turn" and "(BB) switch leap with 0.5 turn" in q.options
    # the two BB "salto backward tucked" classes share event and name: never both in one question
    assert not any(q.options.count("(BB) salto backward tucked") > 1 for q in tagged.test)


def test_same_set_and_same_event_draw_siblings_first(mini: dict[str, Path]) -> None:
    categories = read_categories(mini["categories"])
    by_name = {}
    for c in categories:
        by_name.setdefault(c.name, []).append(c)
    same_set = _build(mini, strategy="same-set")
    for q in (q for q in same_set.test if q.clabel == 2):  # set 21 has exactly 3 other classes
        assert {by_name[o][0].label for i, o in enumerate(q.options) if i != q.answer} == {3, 4, 13}
    same_event = _build(mini, strategy="same-event")
    for q in (q for q in same_event.test if q.event == "UB"):  # UB has exactly 3 classes: 1 fallback distractor
        events = [categories[c.label].event for i, o in enumerate(q.options) if i != q.answer for c in by_name[o]]
        assert events.count("UB") >= 2


def test_nearest_picks_most_similar_names() -> None:
    choices = [Choice(0, "giant circle backward", "UB", 41), Choice(1, "giant circle backward with 1 turn", "UB", 41),
               Choice(2, "giant circle forward", "UB", 41), Choice(3, "split jump", "FX", 21),
               Choice(4, "stag jump", "FX", 21)]
    sampler = DistractorSampler(choices, "nearest", num_options=3)
    assert [c.key for c in sampler.draw(0, random.Random(0))] == [1, 2]
    assert trigram_similarity("split jump", "split jump") == 1.0
    assert trigram_similarity("split jump", "giant circle") < trigram_similarity("split jump", "stag jump")


def test_sampler_rejects_bad_arguments_and_caps_options() -> None:
    choices = [Choice(1, "vault", "VT"), Choice(2, "floor exercise", "FX")]
    with pytest.raises(ValueError, match="unknown distractor strategy"):
        DistractorSampler(choices, "hardest")
    with pytest.raises(ValueError, match="unknown collision"):
        DistractorSampler(choices, collision="merge")
    assert DistractorSampler(choices, num_options=4).num_options == 2


def test_question_kinds(mini: dict[str, Path]) -> None:
    result = _build(mini, types=ALL_TYPES)
    categories = read_categories(mini["categories"])
    by_type = {kind: [q for q in result.test if q.type == kind] for kind in ALL_TYPES}
    event = by_type["event"][0]
    assert sorted(event.options) == ["balance beam", "floor exercise", "uneven bars", "vault"]
    assert event.level == "event" and "apparatus" in event.question
    for q in by_type["set"]:
        assert q.level == "set" and q.answer_text == set_text(q.event, SET_NAMES[q.set_id])
    for q in by_type["element"]:
        assert q.question == "What gymnastics move is this athlete performing?"
    qtree = json.loads(mini["qtree"].read_text())
    for q in by_type["yesno"]:
        entry = qtree[str(categories[q.clabel].glabel)]
        assert set(q.options) == {"yes", "no"} and q.level == "element" and q.strategy == "qtree"
        index = [" ".join(t.split()).capitalize() for t in entry["questions"]].index(q.question)
        assert q.answer_text == ("yes" if entry["BTcode"][index] == "1" else "no")
    answers = Counter(q.answer_text for q in by_type["yesno"])
    assert abs(answers["yes"] - answers["no"]) <= 4


def test_yesno_per_clip_and_id_format(mini: dict[str, Path]) -> None:
    result = _build(mini, types=("yesno",), yesno_per_clip=5)
    per_clip = Counter(q.clip_id for q in result.test)
    assert set(per_clip.values()) == {2, 3}  # capped by each clip's question-tree length
    assert [q.id for q in result.test[:2]] == ["test-0000000", "test-0000001"]
    assert len({q.id for q in result.test}) == len(result.test)


def test_set_text() -> None:
    assert set_text("FX", "FX_leap_jump_hop") == "floor exercise: leaps, jumps and hops"
    assert set_text("VT", "vault") == "vault"
    assert set_text("UB", "UB_fligh_same_bar") == "uneven bars: flight elements on the same bar"
    assert set_text("BB", "BB_new_group") == "balance beam: new group"


# --------------------------------------------------------------------------- labeled subset


def test_select_labeled_counts_and_coverage() -> None:
    items = [(f"c{i}", i % 7) for i in range(400)]
    chosen = select_labeled(items, 0.05, seed=3)
    assert len(chosen) == 20 and {label for _, label in chosen} == set(range(7))
    assert chosen == [item for item in items if item in chosen]  # input order kept
    assert select_labeled(items, 0.05, seed=3) == chosen != select_labeled(items, 0.05, seed=4)
    assert len(select_labeled(items, 0.001, seed=0)) == 7  # at least one clip per class


def test_labeled_list_gives_exact_train_clips(mini: dict[str, Path]) -> None:
    result = build_gymqa(mini["categories"], None, mini["train"], mini["val"], labeled=mini["labeled"])
    expected = [line.split()[0].rsplit("/", 1)[1][:-4] for line in mini["labeled"].read_text().splitlines()]
    assert [q.clip_id for q in result.train] == expected
    assert result.manifest["labeled"] == "list"


def test_labeled_list_errors(mini: dict[str, Path], tmp_path: Path) -> None:
    clip = mini_clip(3, 0)
    cases = [(f"{clip} 4\n", "has label 4 but 3"), (f"{mini_clip(3, 999)} 3\n", "is not in the train list"),
             (f"{clip}\n", "expected '<path or clip id> <label>'"), ("movie.mp4 3\n", "does not match")]
    for text, reason in cases:
        bad = tmp_path / "labeled.csv"
        bad.write_text(f"{mini_clip(0, 0)} 0\n\n{text}")
        with pytest.raises(ListFormatError, match=reason) as info:
            build_gymqa(mini["categories"], None, mini["train"], mini["val"], labeled=bad)
        assert info.value.line == 3
    assert read_labeled_list(mini["labeled"])[0][1] == mini_clip(5, 0)
    assert clip_id_of("C:\\videos\\ab_E_000001_000002_A_0001_0002.MP4") == "ab_E_000001_000002_A_0001_0002"
    assert clip_id_of("ab_E_000001_000002_A_0001_0002") == "ab_E_000001_000002_A_0001_0002"


# --------------------------------------------------------------------------- bad input


def test_config_validation_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        BuildConfig(num_options=1, strategy="x", types=("element", "why"), labeled_fraction=0, collision="y").validate()
    message = str(info.value)
    for part in ("num_options=1", "strategy='x'", "types=", "labeled_fraction=0", "collision='y'"):
        assert part in message


def test_missing_inputs_for_types(mini: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="set names"):
        build_gymqa(mini["categories"], None, mini["train"], mini["val"], config=BuildConfig(types=("set",)))
    with pytest.raises(ConfigError, match="question tree"):
        build_gymqa(mini["categories"], None, mini["train"], mini["val"], config=BuildConfig(types=("yesno",)))
    single = [c for c in read_categories(mini["categories"]) if c.event == "UB"]
    with pytest.raises(ConfigError, match="at least 2 distinct event"):
        build_questions([(mini_clip(10, 0), 10)], single, "test", BuildConfig(types=("event",)))


def test_label_outside_categories(mini: dict[str, Path]) -> None:
    mini["val"].write_text(f"{mini_clip(0, 5000)} 14\n")
    with pytest.raises(DataError, match="label 14, which .* does not define"):
        _build(mini)


def test_qtree_without_entry(mini: dict[str, Path]) -> None:
    mini["qtree"].write_text(json.dumps({"1": {"BTcode": "1", "questions": ["a?"], "code": "1.1"}}))
    with pytest.raises(DataError, match="no question tree entry for Glabel"):
        _build(mini, types=("yesno",))


def test_annotation_times(mini: dict[str, Path], tmp_path: Path) -> None:
    clip = mini_clip(2, 1000)  # y_02-1000ab_E_001000_001090_A_0002_0004
    youtube, rest = clip.split("_E_")
    annotation = {youtube: {f"E_{rest[:13]}": {"event": 2, "timestamps": [[1000.5, 1090.0]],
                                              "segments": {rest[14:]: {"stages": 1, "timestamps": [[2.25, 3.75]]}}}}}
    path = tmp_path / "annotation.json"
    path.write_text(json.dumps(annotation))
    result = build_gymqa(mini["categories"], None, mini["train"], mini["val"], annotations=path)
    times = {q.clip_id: q.times for q in result.test}
    assert times[clip] == (1002.75, 1004.25)
    assert sum(t is not None for t in times.values()) == 1 and result.manifest["annotated_clips"] == 1


# --------------------------------------------------------------------------- real FineGym files


@pytest.fixture(scope="module")
def real_builds() -> dict:
    if not (DATA / "finegym").is_dir() or not (DATA / "sefar-gymqa").is_dir():
        pytest.skip("real FineGym / SeFAR Gym-QA files not found at ../shared/data beside the checkout")
    return build_finegym(DATA / "finegym", sefar_dir=DATA / "sefar-gymqa")


@needs_data
def test_real_gymqa99_test_set(real_builds: dict) -> None:
    test: list[Question] = real_builds["gymqa99"].test
    assert len(test) == 8521 and len({q.clabel for q in test}) == 99
    assert len(real_builds["gymqa288"].test) == 9646


@needs_data
@pytest.mark.parametrize("classes, count", [("99", 1316), ("288", 1466)])
def test_real_labeled_list_reproduces_paper_train(real_builds: dict, classes: str, count: int) -> None:
    ours = real_builds[f"gymqa{classes}"].train
    paper = read_paper_json(DATA / "sefar-gymqa" / f"all{classes}_5" / "train.json")
    assert len(ours) == len(paper) == count
    assert [q.clip_id for q in ours] == [q.clip_id for q in paper]
    assert [q.answer_text for q in ours] == [q.answer_text for q in paper]


@needs_data
def test_real_builds_are_clean_and_balanced(real_builds: dict) -> None:
    for result in real_builds.values():
        for questions in (result.train, result.test):
            assert duplicate_option_count(questions) == 0
            counts = Counter(q.answer_letter for q in questions)
            assert sorted(counts) == ["A", "B", "C", "D"] and max(counts.values()) - min(counts.values()) <= 1
