"""Train/validation/test splits: k-fold, leave-one-group-out, and a validation split carved from training data."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import LeaveOneGroupOut, StratifiedKFold, StratifiedShuffleSplit, train_test_split


def fold_splits(labels, *, folds: int, seed: int, groups=None, leave_one_group_out: bool = False):
    """``[(train_idx, test_idx), ...]``: stratified k-fold, leave-one-group-out, or one stratified 80/20 split."""
    labels = np.asarray(labels)
    idx = np.arange(len(labels))
    if leave_one_group_out:
        if groups is None:
            raise ValueError("--folds logo needs a dataset with groups (e.g. iemocap sessions); this one has none")
        if len(set(groups)) < 2:
            raise ValueError("leave-one-group-out needs at least 2 groups")
        return [(tr, te) for tr, te in LeaveOneGroupOut().split(idx, labels, groups)]
    if not isinstance(folds, int) or folds < 1:
        raise ValueError(f"folds must be a positive int (or 'logo'), got {folds!r}")
    counts = np.bincount(labels)
    if folds == 1:
        n_test = int(np.ceil(0.2 * len(labels)))  # as train_test_split rounds it
        ok = counts[counts > 0].min() >= 2 and min(n_test, len(labels) - n_test) >= np.count_nonzero(counts)
        tr, te = train_test_split(idx, test_size=0.2, random_state=seed, stratify=labels if ok else None)
        return [(np.sort(tr), np.sort(te))]
    if counts[counts > 0].min() < folds:
        raise ValueError(
            f"the smallest class has {counts[counts > 0].min()} examples, fewer than folds={folds}; "
            "lower --folds or raise --max-samples"
        )
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in skf.split(idx, labels)]


def carve_validation(train_idx, labels, *, fraction: float, seed: int):
    """Split training indices into (train, validation), stratified when every class has >= 2 examples."""
    train_idx = np.asarray(train_idx)
    y = np.asarray(labels)[train_idx]
    n_val = max(1, int(round(fraction * len(train_idx))))
    counts = np.bincount(y)
    if counts[counts > 0].min() >= 2 and n_val >= len(counts[counts > 0]):
        sss = StratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
        tr, va = next(sss.split(train_idx, y))
    else:
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(train_idx))
        va, tr = perm[:n_val], perm[n_val:]
    return np.sort(train_idx[tr]), np.sort(train_idx[va])
