-- A match is inserted when it is first reported (usually scheduled) and updated when its
-- result comes in. Leaving 15 % of each page of matches free keeps those updates on the
-- row's own page (a HOT update), so they add no entries to the table's five indexes and
-- write less WAL. It applies to pages written from now on: an existing table takes it as
-- its rows are rewritten, or at once with VACUUM FULL or pg_repack.
ALTER TABLE matches SET (fillfactor = 85);
