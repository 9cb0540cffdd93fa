"""Atomic CSV writing keeps every row, whatever the cells hold."""

from __future__ import annotations

import pandas as pd

from textune._atomic import write_csv


def test_carriage_return_in_a_cell_stays_in_its_row(tmp_path):
    # found by the fuzz test: an id "0\r" written unquoted came back as two rows
    df = pd.DataFrame({"id": ["0\r", "a\nb", "plain"], "label": ["Business", "World", "Sports"], "p": [0.5, 1, 2]})
    path = write_csv(tmp_path / "sub.csv", df)
    back = pd.read_csv(path, keep_default_na=False)
    assert back["id"].tolist() == df["id"].tolist() and back["label"].tolist() == df["label"].tolist()
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


def test_plain_cells_are_not_quoted(tmp_path):
    path = write_csv(tmp_path / "sub.csv", pd.DataFrame({"id": ["a", "b"], "label": ["x", "y"]}))
    assert path.read_text() == "id,label\na,x\nb,y\n"


def test_replacing_a_directory_never_touches_a_users_old_folder(tmp_path):
    from textune import _atomic

    dst, mine, new = tmp_path / "model", tmp_path / "model.old", tmp_path / "new"
    for d, text in ((dst, "v1"), (mine, "my backup"), (new, "v2")):
        d.mkdir()
        (d / "f.txt").write_text(text)
    _atomic.replace_dir(new, dst)
    assert (dst / "f.txt").read_text() == "v2" and (mine / "f.txt").read_text() == "my backup"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.old"]
