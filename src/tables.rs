//! Small tables that live in whichever database the gateway uses: the
//! node's SQLite file, or the PostgreSQL database a cluster shares (so
//! that, say, a console account added on one node logs in on every node).
//!
//! One SQL text serves both: it is written for SQLite with numbered
//! parameters (`?1`), which become PostgreSQL's (`$1`); values cross as
//! [`Value`]. Only what both engines read alike belongs here: plain
//! `INSERT`/`UPDATE`/`DELETE`/`SELECT`, `ON CONFLICT … DO NOTHING` or
//! `DO UPDATE SET c = excluded.c`, `LIKE`, no casts, no engine's own
//! functions. The SQLite schema is made by the module
//! that owns the table; the PostgreSQL one is a migration of
//! `spool::postgres`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use rusqlite::Connection;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// A value in a row or a parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
    Bool(bool),
}

impl Value {
    pub fn text(self) -> Option<String> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    pub fn bytes(self) -> Option<Vec<u8>> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// SQLite answers a comparison with 0 or 1, PostgreSQL with a boolean.
    pub fn truth(&self) -> bool {
        self.int().is_some_and(|n| n != 0)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Int(n)
    }
}

impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Value {
        Value::Bytes(b)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("storage database error: {}", crate::util::error_chain(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// No connection to the shared database could be had.
    #[error("storage database unavailable: {}", crate::util::error_chain(.0))]
    Unavailable(#[from] deadpool_postgres::PoolError),
    #[error("a column holds {0}, not a value a table here keeps")]
    Column(String),
}

/// The database the small tables are in.
#[derive(Clone)]
pub enum Tables {
    Sqlite(Arc<Mutex<Connection>>),
    /// The pool of the cluster's database (spool::Storage hands it out).
    Postgres(deadpool_postgres::Pool),
}

impl Tables {
    /// The node's SQLite file, with `schema` applied.
    pub fn sqlite(db: &Path, schema: &str) -> Result<Tables, TableError> {
        let conn = Connection::open(db)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // Small tables read by key: a small cache, whatever the file's size.
        conn.pragma_update(None, "cache_size", -256)?;
        conn.execute_batch("PRAGMA foreign_keys = ON;")?;
        conn.execute_batch(schema)?;
        Ok(Tables::Sqlite(Arc::new(Mutex::new(conn))))
    }

    /// Rows changed.
    pub async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, TableError> {
        match self {
            Tables::Sqlite(conn) => {
                let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
                let n = conn
                    .prepare_cached(sql)?
                    .execute(rusqlite::params_from_iter(params.iter()))?;
                Ok(n as u64)
            }
            Tables::Postgres(pool) => {
                let c = pool.get().await?;
                let statement = c.prepare_cached(&dollars(sql)).await?;
                Ok(c.execute(&statement, &refs(params)).await?)
            }
        }
    }

    pub async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, TableError> {
        match self {
            Tables::Sqlite(conn) => {
                let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
                let mut stmt = conn.prepare_cached(sql)?;
                let width = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    let mut values = Vec::with_capacity(width);
                    for i in 0..width {
                        use rusqlite::types::ValueRef;
                        values.push(match row.get_ref(i)? {
                            ValueRef::Null => Value::Null,
                            ValueRef::Integer(n) => Value::Int(n),
                            ValueRef::Text(t) => {
                                Value::Text(String::from_utf8_lossy(t).into_owned())
                            }
                            ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
                            ValueRef::Real(_) => return Err(TableError::Column("a real".into())),
                        });
                    }
                    out.push(values);
                }
                Ok(out)
            }
            Tables::Postgres(pool) => {
                let c = pool.get().await?;
                let statement = c.prepare_cached(&dollars(sql)).await?;
                let rows = c.query(&statement, &refs(params)).await?;
                rows.iter()
                    .map(|row| {
                        (0..row.len())
                            .map(|i| pg_value(row, i))
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .collect()
            }
        }
    }

    /// The first row, if any.
    pub async fn row(&self, sql: &str, params: &[Value]) -> Result<Option<Vec<Value>>, TableError> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(n) => ToSqlOutput::Borrowed(ValueRef::Integer(*n)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Bytes(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
            Value::Bool(b) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*b))),
        })
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(n) => match *ty {
                Type::INT2 => i16::try_from(*n)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*n)?.to_sql(ty, out),
                _ => n.to_sql(ty, out),
            },
            Value::Text(s) => s.to_sql(ty, out),
            Value::Bytes(b) => b.to_sql(ty, out),
            Value::Bool(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Each variant checks its own type when it is written.
        true
    }

    to_sql_checked!();
}

fn pg_value(row: &tokio_postgres::Row, i: usize) -> Result<Value, TableError> {
    let ty = row.columns()[i].type_().clone();
    let v = match ty {
        Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Value::Int),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)?
            .map(|n| Value::Int(n.into())),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)?
            .map(|n| Value::Int(n.into())),
        Type::TEXT | Type::VARCHAR => row.try_get::<_, Option<String>>(i)?.map(Value::Text),
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Bytes),
        Type::BOOL => row.try_get::<_, Option<bool>>(i)?.map(Value::Bool),
        other => return Err(TableError::Column(other.name().to_string())),
    };
    Ok(v.unwrap_or(Value::Null))
}

fn refs(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// `?1` → `$1`. The SQL here is ours, with no `?` in a string literal.
fn dollars(sql: &str) -> String {
    sql.replace('?', "$")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_parameters_become_postgresqls() {
        assert_eq!(
            dollars("SELECT a FROM t WHERE b = ?1 AND c = ?2"),
            "SELECT a FROM t WHERE b = $1 AND c = $2"
        );
    }

    #[tokio::test]
    async fn sqlite_rows_come_back_as_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = Tables::sqlite(
            &dir.path().join("t.db"),
            "CREATE TABLE t (a TEXT PRIMARY KEY, b INTEGER, c BLOB)",
        )
        .expect("open");
        let n = t
            .execute(
                "INSERT INTO t (a, b, c) VALUES (?1, ?2, ?3) ON CONFLICT (a) DO NOTHING",
                &["x".into(), 7i64.into(), Value::Null],
            )
            .await
            .expect("insert");
        assert_eq!(n, 1);
        let row = t
            .row(
                "SELECT a, b, c, b IS NOT NULL FROM t WHERE a = ?1",
                &["x".into()],
            )
            .await
            .expect("select")
            .expect("a row");
        assert_eq!(row[..3], [Value::from("x"), Value::Int(7), Value::Null]);
        assert!(row[3].truth());
    }
}
