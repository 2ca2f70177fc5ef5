"""features.splits: temporal and leave-one-group-out splits, determinism and persistence."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.errors import StepMLError
from features.splits import Split, group_folds, load_splits, make_splits, save_splits, temporal_split

SIZES = {"a-gen": 10, "a-code": 7, "b-gen": 5, "c-gen": 3}


@pytest.fixture
def frame() -> pd.DataFrame:
    """Four experiments (3 models, 2 workloads, 3 shapes), rows shuffled, non-contiguous step ids."""
    rng = np.random.default_rng(7)
    parts = []
    for exp, n in SIZES.items():
        ids = np.sort(rng.choice(np.arange(1000), size=n, replace=False))
        parts.append(pd.DataFrame({"experiment_id": exp, "step.id": ids, "model": exp.split("-")[0],
                                   "workload": exp.split("-")[1], "shape": f"s{n % 3}"}))
    return pd.concat(parts, ignore_index=True).sample(frac=1.0, random_state=1).reset_index(drop=True)


def _ids(frame, idx, exp):
    rows = frame.iloc[idx]
    return rows.loc[rows["experiment_id"] == exp, "step.id"].to_numpy()


def test_temporal_split_orders_steps_within_each_experiment(frame):
    split = temporal_split(frame, data_hash="h")
    assert split.name == "temporal" and split.data_hash == "h"
    for exp in SIZES:
        train, val, test = (_ids(frame, split.part(p), exp) for p in ("train", "val", "test"))
        assert len(train) and len(val) and len(test), exp            # every experiment in every part
        assert train.max() < val.min() and val.max() < test.min(), exp


def test_temporal_split_sizes_and_partition(frame):
    split = temporal_split(frame)
    expected = {n: (int(np.floor(0.6 * n + 1e-9)), int(np.floor(0.8 * n + 1e-9))) for n in SIZES.values()}
    for exp, n in SIZES.items():
        a, b = expected[n]
        assert [len(_ids(frame, split.part(p), exp)) for p in ("train", "val", "test")] == [a, b - a, n - b]
    all_idx = np.concatenate([split.train, split.val, split.test])
    assert sorted(all_idx.tolist()) == list(range(len(frame)))
    for part in (split.train, split.val, split.test):
        assert np.all(np.diff(part) > 0)                             # sorted positions, no repeats
        assert part.dtype.kind == "i"


@pytest.mark.parametrize("spec, column", [("lomo", "model"), ("lowo", "workload"), ("logo:shape", "shape"),
                                          ("logo:experiment_id", "experiment_id")])
def test_folds_partition_the_rows(frame, spec, column):
    folds = make_splits(frame, spec, data_hash="h")
    levels = sorted(frame[column].unique())
    assert [f.fold for f in folds] == levels
    tests = [set(f.test.tolist()) for f in folds]
    assert sum(len(t) for t in tests) == len(frame)
    assert set().union(*tests) == set(range(len(frame)))            # test parts cover all rows ...
    for i, fold in enumerate(folds):
        assert fold.name == f"{spec}[{fold.fold}]" and fold.spec == spec
        assert (frame.iloc[fold.test][column] == fold.fold).all()
        train, val, test = set(fold.train.tolist()), set(fold.val.tolist()), tests[i]
        assert not train & val and not train & test and not val & test
        assert train | val | test == set(range(len(frame)))
        assert not (frame.iloc[list(train | val)][column] == fold.fold).any()     # held-out group unseen
        for j in range(i):
            assert not tests[i] & tests[j]                           # ... and are disjoint
        for exp in frame.iloc[list(train)]["experiment_id"].unique():
            tr, va = _ids(frame, fold.train, exp), _ids(frame, fold.val, exp)
            if len(va):
                assert tr.max() < va.min()


def test_fold_train_share_is_three_quarters(frame):
    fold = make_splits(frame, "lomo")[0]                            # model "a" held out: b-gen (5), c-gen (3)
    assert fold.fold == "a"
    assert len(fold.train) == 3 + 2 and len(fold.val) == 2 + 1


def test_same_input_gives_identical_indices(frame):
    for spec in ("temporal", "lomo", "logo:shape"):
        first, second = make_splits(frame, spec), make_splits(frame.copy(), spec)
        assert len(first) == len(second)
        for x, y in zip(first, second):
            assert x.fold == y.fold
            for part in ("train", "val", "test"):
                np.testing.assert_array_equal(x.part(part), y.part(part))


def test_splits_follow_rows_not_positions(frame):
    """Reordering rows changes positions but not which steps land in which part."""
    shuffled = frame.sample(frac=1.0, random_state=99).reset_index(drop=True)
    key = lambda f, idx: set(map(tuple, f.iloc[idx][["experiment_id", "step.id"]].to_numpy().tolist()))  # noqa: E731
    a, b = temporal_split(frame), temporal_split(shuffled)
    for part in ("train", "val", "test"):
        assert key(frame, a.part(part)) == key(shuffled, b.part(part))


@pytest.mark.parametrize("spec", ["temporal", "lowo", "logo:shape"])
def test_save_and_load_round_trip(tmp_path, frame, spec):
    splits = make_splits(frame, spec, data_hash="0123abcd")
    path = save_splits(splits, tmp_path / "splits")
    assert path.name == f"0123abcd-{spec.replace(':', '_')}.npz" and path.is_file()
    loaded = load_splits(path)
    assert [(s.spec, s.fold, s.data_hash) for s in loaded] == [(s.spec, s.fold, s.data_hash) for s in splits]
    for x, y in zip(splits, loaded):
        for part in ("train", "val", "test"):
            np.testing.assert_array_equal(x.part(part), y.part(part))
    assert not list((tmp_path / "splits").glob("*.tmp"))


def test_round_trip_keeps_awkward_fold_names_and_empty_hash(tmp_path):
    frame = pd.DataFrame({"experiment_id": ["e1"] * 4 + ["e2"] * 4, "step.id": list(range(8)),
                          "grp": ["12:30"] * 4 + ["org/model"] * 4})
    splits = make_splits(frame, "logo:grp")
    loaded = load_splits(save_splits(splits, tmp_path))
    assert [s.fold for s in loaded] == ["12:30", "org/model"]
    assert all(s.data_hash == "" and s.spec == "logo:grp" for s in loaded)
    np.testing.assert_array_equal(loaded[1].test, [4, 5, 6, 7])


def test_bad_split_files_are_errors(tmp_path):
    with pytest.raises(StepMLError, match=r"split file not found"):
        load_splits(tmp_path / "h-temporal.npz")
    (tmp_path / "h-temporal.npz").write_bytes(b"not a zip")
    with pytest.raises(StepMLError, match=r"not a split file"):
        load_splits(tmp_path / "h-temporal.npz")
    with pytest.raises(StepMLError, match=r"no splits to save"):
        save_splits([], tmp_path)


def test_unknown_specs_and_columns_are_errors(frame):
    with pytest.raises(StepMLError, match=r"unknown split 'shuffle'; valid: temporal, random, kfold\[:K\[:COLUMN\]\], "
                                          r"lomo, lowo, logo:COLUMN"):
        make_splits(frame, "shuffle")
    with pytest.raises(StepMLError, match=r"unknown split 'logo:'"):
        make_splits(frame, "logo:")
    with pytest.raises(StepMLError, match=r"split 'logo:gpu': unknown column 'gpu'; valid: experiment_id, step\.id"):
        make_splits(frame, "logo:gpu")
    with pytest.raises(StepMLError, match=r"split 'lomo': column 'model' has a single value \(a\)"):
        group_folds(frame[frame["model"] == "a"], "model", "lomo")
    with pytest.raises(StepMLError, match=r"unknown column 'model'"):
        make_splits(frame.drop(columns=["model"]), "lomo")


def test_split_part_names():
    split = Split("temporal", "", np.array([0]), np.array([1]), np.array([2]))
    assert split.part("validation").tolist() == [1] and split.part("test").tolist() == [2]
    with pytest.raises(StepMLError, match=r"unknown split part 'dev'; valid: train, val, test"):
        split.part("dev")


# -- random and group-aware K-fold -------------------------------------------------------------------------

def test_random_split_is_a_seeded_partition(frame):
    from features.splits import random_split

    split = make_splits(frame, "random")[0]
    assert (len(split.train), len(split.val), len(split.test)) == (15, 5, 5)
    assert np.array_equal(np.sort(np.concatenate([split.train, split.val, split.test])), np.arange(len(frame)))
    again = make_splits(frame, "random")[0]
    assert all(np.array_equal(split.part(p), again.part(p)) for p in ("train", "val", "test"))
    other = random_split(frame, seed=1)
    assert not np.array_equal(split.test, other.test)
    expected = np.sort(np.random.default_rng(0).permutation(len(frame))[20:])
    assert np.array_equal(split.test, expected)


@pytest.mark.parametrize("spec, k", [("kfold", 4), ("kfold:2", 2), ("kfold:3", 3), ("kfold:2:model", 2)])
def test_kfold_keeps_groups_whole_and_tests_each_once(frame, spec, k):
    if spec == "kfold":
        with pytest.raises(StepMLError, match=r"has 4 group\(s\), fewer than K = 5; use kfold:4"):
            make_splits(frame, spec)
        spec = "kfold:4"
    column = spec.split(":")[2] if spec.count(":") == 2 else "experiment_id"
    folds = make_splits(frame, spec, "h")
    assert [f.fold for f in folds] == [str(i) for i in range(1, k + 1)]
    tested = np.concatenate([f.test for f in folds])
    assert np.array_equal(np.sort(tested), np.arange(len(frame)))                   # every row tested exactly once
    values = frame[column].astype(str).to_numpy()
    for f in folds:
        held = set(values[f.test])
        assert held and not held & set(values[np.concatenate([f.train, f.val])])    # a group never straddles
        assert np.array_equal(np.sort(np.concatenate([f.train, f.val, f.test])), np.arange(len(frame)))
        assert f.data_hash == "h" and f.spec == spec


def test_kfold_balances_rows_greedily(frame):
    # sizes 10, 7, 5, 3 dealt largest first to the emptiest fold: {10}, {7, 5}... with K = 2: {10, 3} and {7, 5}
    folds = make_splits(frame, "kfold:2")
    held = [sorted(set(frame["experiment_id"].iloc[f.test])) for f in folds]
    assert held == [["a-gen", "c-gen"], ["a-code", "b-gen"]]


@pytest.mark.parametrize("spec, message", [("kfold:x", r"K must be a whole number"), ("kfold:1", r"K must be at least 2"),
                                           ("kfold:2:gpu", r"unknown column 'gpu'"), (None, r"unknown split None")])
def test_bad_kfold_specs(frame, spec, message):
    with pytest.raises(StepMLError, match=message):
        make_splits(frame, spec)


def test_kfold_and_random_round_trip_through_files(tmp_path, frame):
    for spec in ("random", "kfold:3"):
        saved = make_splits(frame, spec, "h")
        loaded = load_splits(save_splits(saved, tmp_path))
        assert [(s.spec, s.fold) for s in loaded] == [(s.spec, s.fold) for s in saved]
        assert all(np.array_equal(a.test, b.test) for a, b in zip(saved, loaded))
