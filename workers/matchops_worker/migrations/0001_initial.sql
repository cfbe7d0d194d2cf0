-- Reference data is found or created by name: `name_key` is the name NFKC-normalised,
-- case-folded and with spacing collapsed (computed by the worker), so "FC  Dallas" and
-- "fc dallas" are one team. `name` keeps the spelling first seen.
CREATE TABLE teams (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    name_key text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE seasons (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    name_key text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE age_groups (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    name_key text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE divisions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    name_key text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The reference ids are not declared as foreign keys. The worker finds or creates the
-- referenced rows in the same transaction, before the matches, and matchops never deletes
-- them; a declared foreign key would check (and lock) the team, season, age group and
-- division rows again for every match written, which doubles the cost of each upsert and
-- makes concurrent workers contend on popular teams. docs/worker.md shows how to add them.
CREATE TABLE matches (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    external_match_id text UNIQUE,
    season_id bigint NOT NULL,
    age_group_id bigint NOT NULL,
    division_id bigint,
    home_team_id bigint NOT NULL,
    away_team_id bigint NOT NULL,
    match_date date NOT NULL,
    kickoff time,
    match_type text NOT NULL,
    location text,
    notes text,
    home_score integer CHECK (home_score >= 0),
    away_score integer CHECK (away_score >= 0),
    status text NOT NULL CHECK (status IN ('scheduled', 'completed', 'postponed', 'cancelled')),
    -- When the producer observed the state stored here (NULL when no report said).
    reported_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (home_team_id <> away_team_id),
    CHECK ((home_score IS NULL) = (away_score IS NULL)),
    CHECK (status <> 'completed' OR home_score IS NOT NULL)
);

-- A match without an external id is identified by season, age group, teams and date.
CREATE UNIQUE INDEX matches_natural_key ON matches
    (season_id, age_group_id, home_team_id, away_team_id, match_date)
    WHERE external_match_id IS NULL;
CREATE INDEX matches_home_team ON matches (home_team_id);
CREATE INDEX matches_away_team ON matches (away_team_id);
CREATE INDEX matches_date ON matches (match_date);

-- The stored matches with names instead of ids, for people and reports.
CREATE VIEW match_results AS
SELECT
    m.id,
    m.external_match_id,
    s.name AS season,
    a.name AS age_group,
    d.name AS division,
    m.match_date,
    m.kickoff,
    h.name AS home_team,
    w.name AS away_team,
    m.home_score,
    m.away_score,
    m.status,
    m.match_type,
    m.location,
    m.notes,
    m.reported_at,
    m.updated_at
FROM matches m
JOIN seasons s ON s.id = m.season_id
JOIN age_groups a ON a.id = m.age_group_id
LEFT JOIN divisions d ON d.id = m.division_id
JOIN teams h ON h.id = m.home_team_id
JOIN teams w ON w.id = m.away_team_id;
