use rusqlite::{Connection, TransactionBehavior};

use crate::StoreError;

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// The schema version this build brings the database to (the number of migrations).
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Applies, in one immediate transaction, every migration the database has not seen yet
/// (tracked by `PRAGMA user_version`). Returns the version before migrating. Safe to call from
/// several processes at once: the second waits for the first and then finds nothing to do.
pub fn migrate(conn: &mut Connection) -> Result<u32, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: u32 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tracing::info!(migration = name, "applying migration");
        tx.execute_batch(sql)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )?;
    }
    tx.commit()?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_is_idempotent() -> Result<(), StoreError> {
        let mut conn = Connection::open_in_memory()?;
        assert_eq!(migrate(&mut conn)?, 0);
        assert_eq!(migrate(&mut conn)?, SCHEMA_VERSION);
        let v: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        assert_eq!(v, SCHEMA_VERSION);
        Ok(())
    }

    #[test]
    fn refuses_a_newer_schema() -> Result<(), StoreError> {
        let mut conn = Connection::open_in_memory()?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)?;
        assert!(matches!(
            migrate(&mut conn),
            Err(StoreError::SchemaTooNew { .. })
        ));
        Ok(())
    }
}
