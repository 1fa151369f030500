"""The DatasetStore contract. Subclass it and define ``make_store(tmp_path)``, returning a
store and the name of a dataset in it whose ``train`` split has at least 10 rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from galley.adapters.testing.contract import Contract
from galley.core import NotFoundError, ValidationError
from galley.ports import DatasetStore


class DatasetStoreContract(Contract):
    port = "DatasetStore"

    def make_store(self, tmp_path: Path) -> tuple[DatasetStore, str]:
        raise NotImplementedError

    def make(self) -> tuple[DatasetStore, str]:
        return self.make_store(self.fresh_folder())

    def test_implements_the_port(self) -> None:
        """It has every method of the port."""
        assert isinstance(self.make()[0], DatasetStore)

    def test_split_verbs(self) -> None:
        """take: the first n rows; skip: every row after the first n; select: rows at the
        indices, in that order; num_rows: the rows in a split."""
        store, name = self.make()
        train = store.get_split(store.load(name), "train")
        rows = store.to_list(train)
        n = store.num_rows(train)
        assert n == len(rows) >= 10
        assert store.to_list(store.take(train, 3)) == rows[:3]
        assert store.to_list(store.skip(train, n - 2)) == rows[-2:]
        assert store.to_list(store.select(train, [4, 0, 4])) == [rows[4], rows[0], rows[4]]
        assert store.to_list(store.take(store.skip(train, 2), 2)) == rows[2:4]

    def test_shuffle_is_a_seeded_permutation(self) -> None:
        """shuffle: a permutation of the rows that depends only on the rows and the seed; every
        verb leaves its argument unchanged."""
        store, name = self.make()
        train = store.load(name, "train")
        rows = store.to_list(train)
        a = store.to_list(store.shuffle(train, seed=1))
        assert a == store.to_list(store.shuffle(train, seed=1))
        assert a != store.to_list(store.shuffle(train, seed=2))
        assert sorted(map(repr, a)) == sorted(map(repr, rows))
        assert store.to_list(train) == rows  # the argument handle is unchanged

    def test_rows_are_copies(self) -> None:
        """to_list: the rows as plain dicts, copies (changing one changes no later read)."""
        store, name = self.make()
        train = store.load(name, "train")
        store.to_list(train)[0]["injected"] = True
        assert "injected" not in store.to_list(train)[0]

    def test_unknown_split_lists_the_real_ones(self) -> None:
        """get_split: NotFoundError lists the splits that exist."""
        store, name = self.make()
        with pytest.raises(NotFoundError, match="train"):
            store.get_split(store.load(name), "no-such-split")

    def test_select_out_of_range_is_refused(self) -> None:
        """select: an index out of range raises."""
        store, name = self.make()
        train = store.load(name, "train")
        with pytest.raises(ValidationError, match="out of range"):
            store.select(train, [store.num_rows(train)])
