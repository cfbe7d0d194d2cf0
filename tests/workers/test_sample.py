import json
from collections import Counter

from matchops_worker.contract import MatchReport, Rejection, parse_message
from matchops_worker.sample import (
    SeasonPlan,
    invalid_messages,
    mixed_stream,
    season_reports,
)


def test_a_season_is_a_double_round_robin_then_results() -> None:
    plan = SeasonPlan(teams_per_division=6, completed_share=0.5, postponed_share=0.0)
    stream = [parse_message(json.dumps(m).encode()) for m in season_reports(plan)]
    reports = [r for r in stream if isinstance(r, MatchReport)]
    assert len(reports) == len(stream)
    fixtures = reports[: 6 * 5]
    results = reports[6 * 5 :]
    assert {r.match_status for r in fixtures} == {"scheduled"}
    assert {r.match_status for r in results} == {"completed"}
    assert len(results) == 15
    pairs = Counter(frozenset((r.home_team, r.away_team)) for r in fixtures)
    assert len(pairs) == 15
    assert set(pairs.values()) == {2}
    home_away = {(r.home_team, r.away_team) for r in fixtures}
    assert len(home_away) == 30
    fixture_ids = {r.external_match_id for r in fixtures}
    assert {r.external_match_id for r in results} <= fixture_ids
    assert all(r.reported_at is not None for r in reports)
    # A team plays at most once a week.
    for day in {r.match_date for r in fixtures}:
        teams = [t for r in fixtures if r.match_date == day for t in (r.home_team, r.away_team)]
        assert len(teams) == len(set(teams))


def test_same_seed_same_season() -> None:
    assert season_reports(SeasonPlan(seed=3)) == season_reports(SeasonPlan(seed=3))
    assert season_reports(SeasonPlan(seed=3)) != season_reports(SeasonPlan(seed=4))


def test_both_namings_appear() -> None:
    messages = season_reports(SeasonPlan())
    assert any("match_id" in m for m in messages)
    assert any("external_match_id" in m for m in messages)


def test_many_divisions_have_distinct_teams() -> None:
    plan = SeasonPlan(divisions=("A", "B", "C"), teams_per_division=16)
    teams = {m["home_team"] for m in season_reports(plan)}
    assert len(teams) == 48


def test_invalid_messages_are_all_rejected() -> None:
    bad = invalid_messages(14)
    assert len(bad) == 14
    assert all(isinstance(parse_message(body), Rejection) for body in bad)


def test_mixed_stream_keeps_everything() -> None:
    reports = season_reports(SeasonPlan(teams_per_division=4))
    bad = invalid_messages(3)
    mixed = mixed_stream(reports, bad, seed=1)
    assert len(mixed) == len(reports) + 3
    assert sum(isinstance(parse_message(m), Rejection) for m in mixed) == 3
