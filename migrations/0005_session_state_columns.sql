-- No change to the tables: this version marks a change of what `sessions.state` holds.
-- From here on the state JSON leaves out the values the row keeps as columns (`session_id`,
-- `vendor_status`, `updated_at`; readers fill them from the columns) and stores order keys as
-- `[vendor_time, terminal, seq]` arrays. Rows written before still read the same. The version
-- is raised so that an older verdict, which would read the new rows without those values,
-- refuses the file ("written by a newer verdict") instead of folding into blank sessions.
SELECT 1;
