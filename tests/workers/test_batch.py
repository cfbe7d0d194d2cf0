from typing import Any

import pytest
from matchops_worker.batch import collapse, identity, supersedes

from .reports import at, match


def test_identity_is_the_external_id_when_there_is_one() -> None:
    assert identity(match(external_match_id="x9")) == ("external", "x9")
    assert identity(match(external_match_id="x9", home_team="Other")) == ("external", "x9")


def test_natural_identity_ignores_case_and_spacing() -> None:
    assert identity(match(home_team="philadelphia  UNION", season=" 2025-26")) == identity(match())
    assert identity(match(match_date="2025-10-05")) != identity(match())
    assert identity(match(home_team="FC Delco", away_team="Philadelphia Union")) != identity(
        match()
    )


def test_division_and_details_are_not_part_of_the_identity() -> None:
    assert identity(match(division="Northeast", location="Field 2")) == identity(match())


@pytest.mark.parametrize(
    ("new", "old", "expected"),
    [
        # Report times decide when both have different ones.
        ({"reported_at": at(12)}, {"reported_at": at(11)}, True),
        (
            {"reported_at": at(11)},
            {"reported_at": at(12), "home_score": 1, "away_score": 0},
            False,
        ),
        (
            {"reported_at": at(13), "match_status": "scheduled"},
            {"reported_at": at(12), "home_score": 1, "away_score": 0},
            True,
        ),
        # Otherwise the status never goes back...
        ({}, {"home_score": 1, "away_score": 0}, False),
        ({"match_status": "postponed"}, {}, True),
        ({}, {"match_status": "postponed"}, False),
        ({"match_status": "cancelled"}, {"match_status": "postponed"}, True),
        ({"home_score": 1, "away_score": 1}, {"match_status": "cancelled"}, True),
        # ... and at equal status the later arrival wins (a corrected score).
        ({"home_score": 2, "away_score": 1}, {"home_score": 1, "away_score": 1}, True),
        ({"reported_at": at(12)}, {"reported_at": at(12)}, True),
        ({"reported_at": at(12)}, {}, True),
        ({}, {"reported_at": at(12), "home_score": 1, "away_score": 1}, False),
    ],
)
def test_supersedes(new: dict[str, Any], old: dict[str, Any], expected: bool) -> None:
    assert supersedes(match(**new), match(**old)) is expected


def test_collapse_keeps_the_winner_per_match_in_identity_order() -> None:
    scheduled_b = match(external_match_id="b")
    completed_b = match(external_match_id="b", home_score=2, away_score=0)
    a = match(external_match_id="a")
    natural = match(home_team="Keystone FC")
    late_scheduled_b = match(external_match_id="b")
    collapsed = collapse([scheduled_b, natural, completed_b, a, late_scheduled_b])
    assert [c.identity for c in collapsed] == [
        ("external", "a"),
        ("external", "b"),
        identity(natural),
    ]
    b = collapsed[1]
    assert b.report == completed_b
    assert b.position == 2
    assert [c.position for c in collapsed] == [3, 2, 1]


def test_collapse_of_nothing() -> None:
    assert collapse([]) == []


def test_at_equal_status_the_last_arrival_of_each_match_wins() -> None:
    reports = [match(external_match_id=str(i % 3), home_score=i, away_score=0) for i in range(10)]
    collapsed = collapse(reports)
    assert [(c.identity, c.position) for c in collapsed] == [
        (("external", "0"), 9),
        (("external", "1"), 7),
        (("external", "2"), 8),
    ]
    assert all(c.report is reports[c.position] for c in collapsed)
