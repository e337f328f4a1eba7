"""Declarations are validated at construction and every error names the offending value."""

import pytest

from aggregations import Aggregation, Entity, FeatureSet, FeatureVector, Registry, parse_duration
from aggregations.tiles import DAY, HOUR, MINUTE, default_period

SCHEMA = {"user_id": "string", "ts": "timestamp", "amount": "float64", "merchant": "string"}


def make_set(aggregations, name="tx", **kw):
    return FeatureSet(name, [Entity("user_id")], "ts", "tx", SCHEMA, aggregations, **kw)


@pytest.mark.parametrize("text,ms", [("90d", 90 * DAY), ("15m", 15 * MINUTE), ("30s", 30_000), ("1h", HOUR)])
def test_valid_durations(text, ms):
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["90", "d", "0d", "1.5h", "-1h", "1y", "", "1 h"])
def test_malformed_durations_name_the_value(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_unknown_op_is_named():
    with pytest.raises(ValueError, match="'median'"):
        Aggregation("amount", ["sum", "median"], windows=["1h"])


def test_period_must_divide_window():
    with pytest.raises(ValueError, match="period '7m' does not divide window '1h'"):
        Aggregation("amount", ["sum"], windows=["1h"], periods="7m")


def test_periods_of_a_set_must_chain():
    with pytest.raises(ValueError, match="divide one another"):
        make_set([Aggregation("amount", ["sum"], windows=["1h", "3h"], periods=["20m", "30m"])])


def test_duplicate_output_names_rejected():
    with pytest.raises(ValueError, match="duplicate feature name 'amount_sum_1h'"):
        make_set(
            [Aggregation("amount", ["sum"], windows=["1h"]), Aggregation("amount", ["sum"], windows=["1h"])]
        )


def test_numeric_op_on_string_column_rejected():
    with pytest.raises(ValueError, match="'avg' needs a numeric column"):
        make_set([Aggregation("merchant", ["avg"], windows=["1h"])])


def test_unknown_column_rejected():
    with pytest.raises(ValueError, match="'price' is not in the schema"):
        make_set([Aggregation("price", ["sum"], windows=["1h"])])


def test_feature_names_follow_mlrun_convention():
    fs = make_set([Aggregation("amount", ["count", "avg"], windows=["1h", "90d"])])
    assert fs.feature_names() == ["amount_count_1h", "amount_avg_1h", "amount_count_90d", "amount_avg_90d"]


def test_default_period_rule():
    assert default_period(HOUR) == 5 * MINUTE
    assert default_period(DAY) == HOUR
    assert default_period(90 * DAY) == DAY
    assert default_period(90_000) == 1_000  # 90s: 5m does not fit, 1m does not divide, 1s does


def test_vector_naming_missing_feature_rejected():
    fs = make_set([Aggregation("amount", ["sum"], windows=["1h"])])
    with pytest.raises(KeyError, match="no feature 'amount_sum_2h'"):
        Registry([fs], [FeatureVector("v", ["tx.amount_sum_2h"])])
    with pytest.raises(KeyError, match="unknown feature set 'nope'"):
        Registry([fs], [FeatureVector("v", ["nope.amount_sum_1h"])])


def test_vector_star_expands_in_order():
    fs = make_set([Aggregation("amount", ["sum", "max"], windows=["1h"])])
    assert FeatureVector("v", ["tx.*"]).resolve({"tx": fs}) == {"tx": ["amount_sum_1h", "amount_max_1h"]}


def test_malformed_vector_reference():
    with pytest.raises(ValueError, match="malformed feature 'amount_sum_1h'"):
        FeatureVector("v", ["amount_sum_1h"])


def test_names_are_safe_identifiers():
    with pytest.raises(ValueError, match=r"invalid feature set name '\.\./etc'"):
        make_set([Aggregation("amount", ["sum"], windows=["1h"])], name="../etc")


def test_fingerprint_changes_with_definition():
    a = make_set([Aggregation("amount", ["sum"], windows=["1h"])])
    b = make_set([Aggregation("amount", ["sum"], windows=["1h"])])
    c = make_set([Aggregation("amount", ["sum"], windows=["2h"])])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
