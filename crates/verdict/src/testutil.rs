//! Helpers for this crate's unit tests.

/// SQLite's plan of `sql` with `params` bound: its lines (`EXPLAIN QUERY PLAN`'s detail
/// column) joined with `; `.
pub fn query_plan(conn: &rusqlite::Connection, sql: &str, params: impl rusqlite::Params) -> String {
    let lines: Vec<String> = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap()
        .query_map(params, |r| r.get(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    lines.join("; ")
}
