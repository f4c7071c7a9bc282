"""A hospital's own tables: named sites, fixed test sets, labels and preprocessing (issue 10)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tomllib

from secure_fl.errors import DataError, SpecError
from secure_fl.run.compare import run_experiment
from secure_fl.run.experiment import parse_experiment
from secure_fl.tasks.registry import build_task
from secure_fl.tasks.sites import fraction_split


def _csv(path: Path, header: str, rows: list[str]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return str(path)


def _rows(n: int, seed: int, label=lambda i, x: int(x > 0), extra: str = "") -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = rng.normal()
        out.append(f"{x:.4f},{rng.normal():.4f},{label(i, x)}{extra}")
    return out


# -- 1. named sites ---------------------------------------------------------------------------


def test_two_files_with_one_name_are_refused_not_merged(tmp_path):
    a = _csv(tmp_path / "hA" / "data.csv", "f1,f2,y", _rows(20, 0))
    b = _csv(tmp_path / "hB" / "data.csv", "f1,f2,y", _rows(20, 1))
    with pytest.raises(SpecError, match=r"would all be site 'data'.*\[\[task.sites\]\]"):
        build_task("csv", {"paths": [a, b], "label_column": "y"})
    named = [{"name": "hospA", "data": a}, {"name": "hospB", "data": b}]
    task = build_task("csv", {"sites": named, "label_column": "y"})
    assert [s.name for s in task.sites] == ["hospA", "hospB"]
    assert [s.n_train + s.n_test for s in task.sites] == [20, 20]


def test_duplicate_site_names_and_paths_refused(tmp_path):
    a = _csv(tmp_path / "a.csv", "f1,f2,y", _rows(20, 0))
    b = _csv(tmp_path / "b.csv", "f1,f2,y", _rows(20, 1))
    with pytest.raises(DataError, match=r"site name\(s\) \['A'\] given more than once"):
        build_task("csv", {"sites": [{"name": "A", "data": a}, {"name": "A", "data": b}], "label_column": "y"})
    with pytest.raises(SpecError, match=r"a.csv is used twice \(site 'A' train and site 'B' train\)"):
        build_task("csv", {"sites": [{"name": "A", "data": a}, {"name": "B", "data": a}], "label_column": "y"})
    with pytest.raises(SpecError, match="used twice"):
        build_task("csv", {"sites": [{"name": "A", "train": a, "test": a}], "label_column": "y"})
    with pytest.raises(SpecError, match="not both"):
        build_task("csv", {"sites": [{"name": "A", "data": a, "train": b}], "label_column": "y"})


def test_image_folders_with_one_name_are_refused(tmp_path):
    from PIL import Image

    for site in ("hospA", "hospB"):
        for c in ("x", "y"):
            for i in range(3):
                p = tmp_path / site / "train" / c / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((10, 10), 40 * i, dtype=np.uint8)).save(p)
    paths = [str(tmp_path / "hospA" / "train"), str(tmp_path / "hospB" / "train")]
    with pytest.raises(SpecError, match="would all be site 'train'"):
        build_task("image-folder", {"paths": paths, "image_size": [8, 8]})
    task = build_task("image-folder", {"sites": [{"name": "A", "data": paths[0]}, {"name": "B", "data": paths[1]}],
                                       "image_size": [8, 8]})
    assert [s.name for s in task.sites] == ["A", "B"]


def test_site_budget_naming_no_site_is_refused(tmp_path):
    a = _csv(tmp_path / "a.csv", "f1,f2,y", _rows(30, 0))
    b = _csv(tmp_path / "b.csv", "f1,f2,y", _rows(30, 1))
    text = f"""
name = "budgets"
protocols = ["dp-sgd-local"]
rounds = 1
[task]
name = "csv"
label_column = "y"
[[task.sites]]
name = "hospA"
data = "{a}"
[[task.sites]]
name = "hospB"
data = "{b}"
[sweep]
"privacy.site_budgets" = [{{hospA = 3.0, hospX = 2.0}}]
"""
    exp = parse_experiment(tomllib.loads(text), "budgets.toml")
    with pytest.raises(SpecError, match=r"site_budgets: unknown site\(s\) \['hospX'\]"):
        run_experiment(exp, tmp_path / "runs", show_progress=False)


# -- 2. fixed test sets -----------------------------------------------------------------------


def test_test_file_split_column_and_seeded_fraction(tmp_path):
    tr = _csv(tmp_path / "a_train.csv", "f1,f2,y", _rows(12, 0))
    te = _csv(tmp_path / "a_test.csv", "f1,f2,y", _rows(5, 1))
    split = [r + (",test" if i % 4 == 0 else ",train") for i, r in enumerate(_rows(20, 2))]
    b = _csv(tmp_path / "b.csv", "f1,f2,y,part", split)
    c = _csv(tmp_path / "c.csv", "f1,f2,y", _rows(40, 3))
    sites = [{"name": "A", "train": tr, "test": te}, {"name": "B", "data": b, "split_column": "part"},
             {"name": "C", "data": c, "test_fraction": 0.3}]
    task = build_task("csv", {"sites": sites, "label_column": "y", "split_seed": 7})
    assert [(s.n_train, s.n_test) for s in task.sites][:2] == [(12, 5), (15, 5)]
    again = build_task("csv", {"sites": sites, "label_column": "y", "split_seed": 7})
    assert np.array_equal(task.sites[2].y_test.numpy(), again.sites[2].y_test.numpy())
    assert np.array_equal(task.sites[2].x_test.numpy(), again.sites[2].x_test.numpy())
    # documented: per class, PCG64 seeded with (split_seed, crc32(name)); removing a site changes nothing
    alone = build_task("csv", {"sites": sites[2:], "label_column": "y", "split_seed": 7})
    assert np.array_equal(alone.sites[0].x_test.numpy(), task.sites[2].x_test.numpy())
    y = np.array([0] * 10 + [1] * 20)
    mask = fraction_split(y, 0.3, 7, "C")
    assert mask[:10].sum() == 3 and mask[10:].sum() == 6
    np.testing.assert_array_equal(np.flatnonzero(mask), np.flatnonzero(fraction_split(y, 0.3, 7, "C")))
    assert not np.array_equal(mask, fraction_split(y, 0.3, 8, "C"))
    bad = _csv(tmp_path / "d.csv", "f1,f2,y,part", [r + ",validation" for r in _rows(6, 4)])
    with pytest.raises(DataError, match=r"d.csv: split column 'part' line 2: 'validation'; expected 'train' or 'test'"):
        build_task("csv", {"sites": [{"name": "D", "data": bad, "split_column": "part"}], "label_column": "y"})


# -- 3. labels --------------------------------------------------------------------------------


def test_numeric_labels_compare_as_numbers(tmp_path):
    a = _csv(tmp_path / "a.csv", "f1,f2,y", _rows(20, 0))
    b = _csv(tmp_path / "b.csv", "f1,f2,y", _rows(20, 1, label=lambda i, x: f"{float(x > 0):.1f}"))
    task = build_task("csv", {"sites": [{"name": "A", "data": a}, {"name": "B", "data": b}], "label_column": "y"})
    assert task.num_classes == 2 and task.info["labels"] == ["0", "1"] and task.info["positive"] == "1"
    assert "positive class '1'" in task.describe()


def test_nan_label_refused_with_file_and_line(tmp_path):
    rows = _rows(10, 0)
    rows[3] = rows[3].rsplit(",", 1)[0] + ","
    a = _csv(tmp_path / "a.csv", "f1,f2,y", rows)
    rows_b = _rows(10, 1)
    rows_b[0] = rows_b[0].rsplit(",", 1)[0] + ",nan"
    b = _csv(tmp_path / "b.csv", "f1,f2,y", rows_b)
    both = r"(?s)2 problems:.*a.csv: label column 'y' is missing at line\(s\) 5.*b.csv: .* line\(s\) 2"
    with pytest.raises(DataError, match=both):
        build_task("csv", {"sites": [{"name": "A", "data": a}, {"name": "B", "data": b}], "label_column": "y"})


def test_label_map_makes_num_binary_and_positive_requires_binary(tmp_path):
    a = _csv(tmp_path / "a.csv", "f1,f2,num", _rows(40, 0, label=lambda i, x: i % 5))
    site = [{"name": "A", "data": a}]
    with pytest.raises(DataError, match=r"positive = '1' asks for a binary task, but label column 'num' has 5 classes"):
        build_task("csv", {"sites": site, "label_column": "num", "positive": 1})
    five = build_task("csv", {"sites": site, "label_column": "num"})
    assert five.num_classes == 5 and "positive" not in five.describe()
    label_map = {"0": 0, "1": 1, "2": 1, "3": 1, "4": 1}
    task = build_task("csv", {"sites": site, "label_column": "num", "label_map": label_map, "positive": 1})
    assert task.num_classes == 2 and task.info["labels"] == ["0", "1"]
    y = np.concatenate([task.sites[0].y_train.numpy(), task.sites[0].y_test.numpy()])
    assert (y == 1).sum() == 32  # num 1-4 -> positive
    # positive first in sorted order is moved last (class index 1 = the class AUC scores)
    flipped = build_task("csv", {"sites": site, "label_column": "num", "label_map": label_map, "positive": 0})
    assert flipped.info["labels"] == ["1", "0"]
    with pytest.raises(DataError, match=r"label '4' at line 6 is not in label_map"):
        build_task("csv", {"sites": site, "label_column": "num", "label_map": {"0": 0, "1": 1, "2": 1, "3": 1}})


# -- 4. preprocessing -------------------------------------------------------------------------


def test_inf_is_refused_with_file_column_and_line(tmp_path):
    rows = _rows(10, 0)
    rows[2] = "inf," + rows[2].split(",", 1)[1]
    a = _csv(tmp_path / "a.csv", "f1,f2,y", rows)
    with pytest.raises(DataError, match=r"a.csv: column 'f1' has non-finite values at line\(s\) 4"):
        build_task("csv", {"sites": [{"name": "A", "data": a}], "label_column": "y"})


def test_column_types_missing_values_and_statistics(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(30):
        age = "" if i == 4 else f"{50 + rng.normal() * 10:.1f}"
        cp = ["typical", "atypical", "non-anginal", "asymptomatic"][i % 4]
        ecg = ["normal", "st-t", "lvh"][i % 3]
        rows.append(f"{age},{cp},{ecg},note{i},{i % 2}")
    a = _csv(tmp_path / "a.csv", "age,cp,restecg,notes,y", rows)
    columns = {"age": "numeric", "cp": {"type": "categorical", "reference": "typical"},
               "restecg": {"type": "ordinal", "order": ["normal", "st-t", "lvh"]}, "notes": "ignore"}
    site = [{"name": "A", "data": a}]
    with pytest.raises(DataError, match=r"a.csv: column 'age' has missing values at line\(s\) 6"):
        build_task("csv", {"sites": site, "label_column": "y", "columns": columns})
    with pytest.raises(DataError, match=r"column\(s\) \['notes'\] are not declared"):
        build_task("csv", {"sites": site, "label_column": "y", "missing": "drop",
                           "columns": {k: v for k, v in columns.items() if k != "notes"}})
    dropped = build_task("csv", {"sites": site, "label_column": "y", "columns": columns, "missing": "drop"})
    assert sum(s.n_train + s.n_test for s in dropped.sites) == 29
    assert "site A: 1 row(s) dropped" in dropped.describe()
    task = build_task("csv", {"sites": site, "label_column": "y", "columns": columns, "missing": "impute"})
    assert task.info["features"] == ["age", "cp=asymptomatic", "cp=atypical", "cp=non-anginal", "restecg"]
    x = task.sites[0].x_train.numpy()
    assert set(np.unique(x[:, 1:4])) <= {0.0, 1.0}  # one-hot columns are not standardised
    np.testing.assert_allclose(x[:, [0, 4]].mean(0), 0, atol=1e-6)  # numeric and ordinal are, per site
    stats = task.info["preprocessing"]["sites"]["A"]
    assert set(stats) == {"impute", "mean", "sd"} and "age" in stats["impute"]
    with pytest.raises(DataError, match=r"column 'cp' line 2: value 'typical' is not one of"):
        build_task("csv", {"sites": site, "label_column": "y", "missing": "impute",
                           "columns": {**columns, "cp": {"type": "categorical", "levels": ["atypical", "non-anginal",
                                                                                          "asymptomatic"]}}})


def test_non_numeric_column_without_declaration_is_named(tmp_path):
    a = _csv(tmp_path / "a.csv", "f1,sex,y", [f"{i},{'M' if i % 2 else 'F'},{i % 2}" for i in range(10)])
    with pytest.raises(DataError, match=r"non-numeric feature column\(s\) \['sex'\]; declare them in \[task.columns\]"):
        build_task("csv", {"sites": [{"name": "A", "data": a}], "label_column": "y"})


def test_label_column_cannot_be_a_feature(tmp_path):
    a = _csv(tmp_path / "a.csv", "f1,f2,y", _rows(10, 0))
    with pytest.raises(SpecError, match=r"\['y'\] is the label or split column"):
        build_task("csv", {"sites": [{"name": "A", "data": a}], "label_column": "y", "feature_columns": ["f1", "y"]})


def test_european_export_with_semicolons_and_decimal_commas(tmp_path):
    rows = [f"{50 + i},{i % 3}5;{'M' if i % 2 else 'F'};{i % 2}" for i in range(12)]  # age 50,05 = 50.05
    a = _csv(tmp_path / "a.csv", "age;sex;y", rows)
    columns = {"age": "numeric", "sex": "categorical"}
    params = {"sites": [{"name": "A", "data": a}], "label_column": "y", "columns": columns}
    with pytest.raises(DataError, match=r"one column 'age;sex;y'; is the delimiter not ','"):
        build_task("csv", params)
    task = build_task("csv", {**params, "delimiter": ";", "decimal": ",", "standardise": "none"})
    site = task.sites[0]
    ages = np.sort(np.concatenate([site.x_train[:, 0].numpy(), site.x_test[:, 0].numpy()]))
    np.testing.assert_allclose(ages[:3], [50.05, 51.15, 52.25], atol=1e-4)
    assert task.info["preprocessing"]["decimal"] == ","
