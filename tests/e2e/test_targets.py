"""How the end-to-end scenarios find a cluster of the user's (kind), and what they expect of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from matchops_devenv.images import PROJECT_IMAGE
from matchops_devenv.pipeline import split_image
from matchops_devenv.season import (
    MatchState,
    Season,
    by_external_id,
    expected_reason,
    final_states,
)
from matchops_devenv.targets import (
    HOST_ADDRESS_ENV,
    IMAGE_ENV,
    KUBECONFIG_ENV,
    ExternalCluster,
    TargetError,
    current_server,
    external_cluster,
)

KIND_KUBECONFIG = {
    "current-context": "kind-matchops-e2e",
    "contexts": [
        {"name": "kind-matchops-e2e", "context": {"cluster": "kind-matchops-e2e", "user": "u"}}
    ],
    "clusters": [
        {"name": "other", "cluster": {"server": "https://10.0.0.1:6443"}},
        {"name": "kind-matchops-e2e", "cluster": {"server": "https://127.0.0.1:41234"}},
    ],
}


def test_no_kubeconfig_means_the_local_cluster() -> None:
    assert external_cluster({HOST_ADDRESS_ENV: "172.18.0.1"}) is None


def test_a_kind_cluster_from_the_environment(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("{}")
    env = {KUBECONFIG_ENV: str(kubeconfig), HOST_ADDRESS_ENV: "172.18.0.1"}
    assert external_cluster(env) == ExternalCluster(kubeconfig, "172.18.0.1", PROJECT_IMAGE)
    env[IMAGE_ENV] = "registry.example/matchops:0.1.0"
    found = external_cluster(env)
    assert found is not None
    assert found.image == "registry.example/matchops:0.1.0"


@pytest.mark.parametrize("address", ["", "localhost", "fc00:f853::1", "172.18.0.300"])
def test_the_host_address_must_be_an_ipv4_address(tmp_path: Path, address: str) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("{}")
    with pytest.raises(TargetError, match=HOST_ADDRESS_ENV):
        external_cluster({KUBECONFIG_ENV: str(kubeconfig), HOST_ADDRESS_ENV: address})


def test_a_missing_kubeconfig_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(TargetError, match=f"{missing}: no such file"):
        external_cluster({KUBECONFIG_ENV: str(missing), HOST_ADDRESS_ENV: "172.18.0.1"})


def test_the_server_of_the_current_context() -> None:
    assert current_server(KIND_KUBECONFIG) == "https://127.0.0.1:41234"
    with pytest.raises(TargetError, match="'elsewhere'"):
        current_server({**KIND_KUBECONFIG, "current-context": "elsewhere"})


@pytest.mark.parametrize(
    ("image", "parts"),
    [
        ("localhost/matchops:dev", ("localhost/matchops", "dev")),
        (
            "registry.example:5000/team/matchops:0.1.0",
            ("registry.example:5000/team/matchops", "0.1.0"),
        ),
        ("registry.example:5000/matchops", ("registry.example:5000/matchops", "latest")),
    ],
)
def test_an_image_as_the_charts_repository_and_tag(image: str, parts: tuple[str, str]) -> None:
    assert split_image(image) == parts


def test_the_final_state_is_each_matchs_last_report_under_either_naming() -> None:
    league = {"season": "2025-26", "age_group": "U14"}
    reports: list[dict[str, Any]] = [
        {**league, "external_match_id": "a", "home_team": "H", "away_team": "A",
         "match_date": "2025-09-06", "match_status": "scheduled"},
        {**league, "match_id": "b", "home_team": "X", "away_team": "Y", "date": "2025-09-13",
         "status": "scheduled"},
        {**league, "match_id": "a", "home_team": "H", "away_team": "A", "date": "2025-09-06",
         "status": "completed", "score_home": 2, "score_away": 1},
        {**league, "home_team": "H", "away_team": "X", "date": "2025-09-20",
         "status": "scheduled"},
    ]  # fmt: skip
    assert final_states(reports) == {
        ("external", "a"): MatchState("2025-26", "U14", "H", "A", "2025-09-06", "completed", 2, 1),
        ("external", "b"): MatchState(
            "2025-26", "U14", "X", "Y", "2025-09-13", "scheduled", None, None
        ),
        ("natural", "2025-26", "U14", "H", "X", "2025-09-20"): MatchState(
            "2025-26", "U14", "H", "X", "2025-09-20", "scheduled", None, None
        ),
    }
    assert sorted(by_external_id(final_states(reports).items())) == ["a", "b"]


def test_the_scraper_publishes_the_season_and_its_invalid_messages() -> None:
    season = Season(divisions=("Northeast",), teams=4, invalid=3)
    # A double round robin of 4 teams: 12 fixtures, half of them reported again with a result.
    assert len(season.final_state()) == 12
    assert season.message_count() == 12 + 6 + 3
    assert season.scraper_args()[:3] == ["matchops", "sample-season", "--publish"]
    assert [expected_reason(body) for body in (b"{not json", b"\xff\xfe", b"{}")] == [
        "invalid-json",
        "invalid-encoding",
        "contract",
    ]
