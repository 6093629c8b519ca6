"""Task data: loaders for the real formats (on local files written here), the embedded data, the data contract."""

import csv

import pytest

from gfn_trl.tasks import infill


def _write_stories(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["storyid", "storytitle"] + infill.SENTENCES)
        for i, r in enumerate(rows):
            w.writerow([f"id{i}", "title"] + r)


def test_embedded_stories_load_and_map_to_the_contract():
    stories = infill.load_stories()
    assert len(stories) == 120
    train, held_out = infill.split(stories, num_eval=20)
    assert len(train) == 100 and len(held_out) == 20
    assert set(train["sentence1"]).isdisjoint(held_out["sentence1"])
    rows = infill.to_contract(held_out)
    r, s = rows[0], held_out[0]
    assert r["prompt"] == (
        f"Beginning: {s['sentence1']} {s['sentence2']} {s['sentence3']}\nEnding: {s['sentence5']}\nMiddle:"
    )
    assert r["reward_prompt"] == f"{s['sentence1']} {s['sentence2']} {s['sentence3']}"
    assert r["suffix"] == " " + s["sentence5"] and r["gold"] == " " + s["sentence4"]


def test_rocstories_csv_and_the_paper_split(tmp_path):
    path = tmp_path / "stories.csv"
    _write_stories(path, [[f"S{i} {k}." for k in range(1, 6)] for i in range(1200)])
    train, held_out = infill.split(infill.load_stories(str(path)))
    assert held_out["sentence1"][0] == "S0 1." and len(held_out) == 100  # rows 0-99 evaluate
    assert train["sentence1"][0] == "S100 1." and len(train) == 900  # rows 100-999 train


def test_malformed_story_files_give_clear_errors(tmp_path):
    bad_columns = tmp_path / "bad.csv"
    bad_columns.write_text("storyid,text\n1,hello\n")
    with pytest.raises(ValueError, match=r"lacks the ROCStories columns \['sentence1'"):
        infill.load_stories(str(bad_columns))
    empty_sentence = tmp_path / "empty.csv"
    _write_stories(empty_sentence, [["A.", "B.", "C.", "D.", "E."], ["A.", "B.", "", "D.", "E."]])
    with pytest.raises(ValueError, match="Row 1 .* empty sentence3"):
        infill.load_stories(str(empty_sentence))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        infill.load_stories(str(tmp_path / "missing.csv"))
    tiny = tmp_path / "tiny.csv"
    _write_stories(tiny, [["A.", "B.", "C.", "D.", "E."]] * 3)
    with pytest.raises(ValueError, match="cannot give 8 evaluation stories"):
        infill.split(infill.load_stories(str(tiny)), num_eval=8)


def test_every_recipe_task_declares_its_run_card_summary():
    """The run card's one-line description of the task lives with the task (`TaskSpec.summary`), not in the runner:
    every recipe's task has one that names its paper section or says it goes beyond the paper."""
    from gfn_trl.runner.pipeline import get_task

    for name in ("infill", "continuation", "subjectivity", "arithmetic", "diverse_reasoning"):
        summary = get_task(name).spec.summary
        assert summary and ("Hu et al. 2024, §4" in summary or "beyond the paper" in summary), name
