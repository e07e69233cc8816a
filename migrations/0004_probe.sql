-- One row the log writer rewrites to check that the file is writable again after a failed
-- append (a full disk, a file-size limit), so verdict turns ready again without traffic.
CREATE TABLE probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at INTEGER NOT NULL                     -- unix ms of the last successful probe
);
