from decimal import Decimal

from deepretrieval_trainer.sql.results import results_match


def test_multiset_equality_ignores_row_order_but_counts_duplicates():
    assert results_match([(1,), (2,)], [(2,), (1,)], ordered=False)
    assert not results_match([(1,), (1,), (2,)], [(1,), (2,), (2,)], ordered=False)
    assert not results_match([(1,)], [(1,), (1,)], ordered=False)


def test_order_matters_only_where_the_gold_query_orders():
    assert not results_match([(1,), (2,)], [(2,), (1,)], ordered=True)
    assert results_match([(2,), (1,)], [(2,), (1,)], ordered=True)


def test_columns_may_come_in_another_order():
    assert results_match([("a", 1), ("b", 2)], [(1, "a"), (2, "b")], ordered=False)
    assert not results_match([("a", 2), ("b", 1)], [(1, "a"), (2, "b")], ordered=False)
    assert not results_match([(1, "a")], [(1,)], ordered=False)


def test_values_normalize_across_engines():
    assert results_match([(Decimal("2.50"), True)], [(2.5, 1)], ordered=False)
    assert results_match([(3.0,)], [(3,)], ordered=False)
    assert results_match([(1 / 3,)], [(0.3333333333,)], ordered=False)
    assert not results_match([(0.5,)], [(0.6,)], ordered=False)


def test_empty_results_match_each_other_only():
    assert results_match([], [], ordered=False)
    assert not results_match([], [(1,)], ordered=False)
