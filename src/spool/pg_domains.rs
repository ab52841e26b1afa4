//! The domain memory of a cluster, in its PostgreSQL database
//! (`policy::memory` says what is remembered and why).
//!
//! Nodes observe the same domains at once, each from its own cache. An
//! observation is therefore not written as the node sees the record but
//! merged into the stored row in one statement (the downgrade rule of
//! `policy::memory::fold`, in SQL), under the row's lock: a fall seen by
//! one node is a downgrade for all, and an operator's confirm on any node
//! is not undone by another node's older view. Levels are kept as their
//! rank so that SQL can compare them.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::Row;

use super::SpoolError;
use super::postgres::PgSpool;
use crate::policy::memory::{
    DomainRecord, DomainStore, HostRecord, MemoryError, Select, StoreFuture,
};
use crate::qualify::Level;

const COLUMNS: &str =
    "domain, best_level, best_at, last_level, last_at, downgrade_since, confirmed_at";

const HOST_COLUMNS: &str = "domain, mx_host, address, level, shortfalls, at, valid_until";

/// The cluster's database as the domain memory's store.
pub struct SharedDomains(pub Arc<PgSpool>);

impl DomainStore for SharedDomains {
    fn shared(&self) -> bool {
        true
    }

    fn read<'a>(&'a self, domain: &'a str) -> StoreFuture<'a, Option<DomainRecord>> {
        Box::pin(async move {
            let c = self.0.client().await.map_err(shared)?;
            let sql = format!("SELECT {COLUMNS} FROM domains WHERE domain = $1");
            let statement = c.prepare_cached(&sql).await.map_err(pg)?;
            let Some(row) = c.query_opt(&statement, &[&domain]).await.map_err(pg)? else {
                return Ok(None);
            };
            Ok(with_hosts(&c, vec![record(&row)?]).await?.pop())
        })
    }

    fn observe<'a>(&'a self, r: &'a DomainRecord) -> StoreFuture<'a, DomainRecord> {
        Box::pin(async move {
            let mut c = self.0.client().await.map_err(shared)?;
            let tx = c.transaction().await.map_err(pg)?;
            // Every expression on the right reads the row as it was.
            let sql = format!(
                "INSERT INTO domains AS d (domain, best_level, best_at, last_level, last_at)
                 VALUES ($1, $2, $3, $2, $3)
                 ON CONFLICT (domain) DO UPDATE SET
                     best_level = GREATEST(d.best_level, excluded.last_level),
                     best_at = CASE WHEN excluded.last_level >= d.best_level
                                    THEN excluded.last_at ELSE d.best_at END,
                     downgrade_since = CASE
                         WHEN excluded.last_level >= d.best_level THEN NULL
                         WHEN d.best_level >= $4 THEN COALESCE(d.downgrade_since, excluded.last_at)
                         ELSE d.downgrade_since END,
                     last_level = excluded.last_level,
                     last_at = excluded.last_at
                 RETURNING {COLUMNS}"
            );
            let row = tx
                .query_one(
                    &tx.prepare_cached(&sql).await.map_err(pg)?,
                    &[
                        &r.domain,
                        &r.last.rank(),
                        &r.last_at,
                        &Level::Authenticated.rank(),
                    ],
                )
                .await
                .map_err(pg)?;
            let mut stored = record(&row)?;
            if !r.hosts.is_empty() {
                let column = |f: fn(&HostRecord) -> String| r.hosts.iter().map(f).collect();
                let (names, addresses, shortfalls): (Vec<String>, Vec<String>, Vec<String>) = (
                    column(|h| h.mx_host.clone()),
                    column(|h| h.address.clone()),
                    column(|h| serde_json::to_string(&h.shortfalls).unwrap_or_default()),
                );
                let levels: Vec<i16> = r.hosts.iter().map(|h| h.level.rank()).collect();
                let at: Vec<i64> = r.hosts.iter().map(|h| h.at).collect();
                let valid: Vec<i64> = r.hosts.iter().map(|h| h.valid_until).collect();
                // A host's newer verdict from another node is not overwritten.
                let sql = format!(
                    "INSERT INTO domain_hosts AS h ({HOST_COLUMNS})
                     SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::smallint[],
                                              $5::text[], $6::bigint[], $7::bigint[])
                     ON CONFLICT (domain, mx_host) DO UPDATE SET
                         address = excluded.address, level = excluded.level,
                         shortfalls = excluded.shortfalls, at = excluded.at,
                         valid_until = excluded.valid_until
                     WHERE h.at <= excluded.at"
                );
                tx.execute(
                    &tx.prepare_cached(&sql).await.map_err(pg)?,
                    &[
                        &r.domain,
                        &names,
                        &addresses,
                        &levels,
                        &shortfalls,
                        &at,
                        &valid,
                    ],
                )
                .await
                .map_err(pg)?;
            }
            tx.commit().await.map_err(pg)?;
            stored.hosts = r.hosts.clone();
            Ok(stored)
        })
    }

    fn confirm<'a>(&'a self, domain: &'a str, now: i64) -> StoreFuture<'a, Option<DomainRecord>> {
        Box::pin(async move {
            let c = self.0.client().await.map_err(shared)?;
            let sql = format!(
                "UPDATE domains SET best_level = last_level, best_at = $2,
                     downgrade_since = NULL, confirmed_at = $2
                 WHERE domain = $1 RETURNING {COLUMNS}"
            );
            let row = c.query_opt(&sql, &[&domain, &now]).await.map_err(pg)?;
            let Some(row) = row else { return Ok(None) };
            Ok(with_hosts(&c, vec![record(&row)?]).await?.pop())
        })
    }

    fn select<'a>(&'a self, which: Select<'a>) -> StoreFuture<'a, Vec<DomainRecord>> {
        Box::pin(async move {
            let c = self.0.client().await.map_err(shared)?;
            let rows = match which {
                Select::All => {
                    let sql = format!("SELECT {COLUMNS} FROM domains ORDER BY domain");
                    c.query(&sql, &[]).await
                }
                Select::Downgraded => {
                    let sql = format!(
                        "SELECT {COLUMNS} FROM domains
                         WHERE downgrade_since IS NOT NULL ORDER BY domain"
                    );
                    c.query(&sql, &[]).await
                }
                Select::After(after, limit) => {
                    let sql = format!(
                        "SELECT {COLUMNS} FROM domains WHERE domain > $1 ORDER BY domain LIMIT $2"
                    );
                    c.query(&sql, &[&after, &(limit as i64)]).await
                }
            }
            .map_err(pg)?;
            let records = rows.iter().map(record).collect::<Result<_, _>>()?;
            with_hosts(&c, records).await
        })
    }
}

impl PgSpool {
    /// `sealgate storage migrate`: a single node's memory written as it
    /// is (a row already there, from a node of the cluster, is kept).
    pub async fn import_domains(&self, records: &[DomainRecord]) -> Result<u64, SpoolError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let mut copied = 0;
        for r in records {
            copied += tx
                .execute(
                    &format!(
                        "INSERT INTO domains ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
                         ON CONFLICT (domain) DO NOTHING"
                    ),
                    &[
                        &r.domain,
                        &r.best.rank(),
                        &r.best_at,
                        &r.last.rank(),
                        &r.last_at,
                        &r.downgrade_since,
                        &r.confirmed_at,
                    ],
                )
                .await?;
            for h in &r.hosts {
                tx.execute(
                    &format!(
                        "INSERT INTO domain_hosts ({HOST_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
                         ON CONFLICT (domain, mx_host) DO NOTHING"
                    ),
                    &[
                        &r.domain,
                        &h.mx_host,
                        &h.address,
                        &h.level.rank(),
                        &serde_json::to_string(&h.shortfalls).unwrap_or_default(),
                        &h.at,
                        &h.valid_until,
                    ],
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(copied)
    }
}

/// The hosts of `records`, in one query.
async fn with_hosts(
    c: &deadpool_postgres::ClientWrapper,
    mut records: Vec<DomainRecord>,
) -> Result<Vec<DomainRecord>, MemoryError> {
    if records.is_empty() {
        return Ok(records);
    }
    let names: Vec<&str> = records.iter().map(|r| r.domain.as_str()).collect();
    let sql = format!(
        "SELECT {HOST_COLUMNS} FROM domain_hosts WHERE domain = ANY($1) ORDER BY domain, mx_host"
    );
    let rows = c
        .query(&c.prepare_cached(&sql).await.map_err(pg)?, &[&names])
        .await
        .map_err(pg)?;
    let mut hosts: HashMap<String, Vec<HostRecord>> = HashMap::new();
    for row in &rows {
        let shortfalls: String = row.try_get(4).map_err(pg)?;
        hosts
            .entry(row.try_get(0).map_err(pg)?)
            .or_default()
            .push(HostRecord {
                mx_host: row.try_get(1).map_err(pg)?,
                address: row.try_get(2).map_err(pg)?,
                level: level(row.try_get(3).map_err(pg)?)?,
                shortfalls: serde_json::from_str(&shortfalls).unwrap_or_default(),
                at: row.try_get(5).map_err(pg)?,
                valid_until: row.try_get(6).map_err(pg)?,
            });
    }
    for r in &mut records {
        r.hosts = hosts.remove(&r.domain).unwrap_or_default();
    }
    Ok(records)
}

fn record(row: &Row) -> Result<DomainRecord, MemoryError> {
    Ok(DomainRecord {
        domain: row.try_get(0).map_err(pg)?,
        best: level(row.try_get(1).map_err(pg)?)?,
        best_at: row.try_get(2).map_err(pg)?,
        last: level(row.try_get(3).map_err(pg)?)?,
        last_at: row.try_get(4).map_err(pg)?,
        downgrade_since: row.try_get(5).map_err(pg)?,
        confirmed_at: row.try_get(6).map_err(pg)?,
        hosts: Vec::new(),
    })
}

fn level(rank: i16) -> Result<Level, MemoryError> {
    Level::from_rank(rank)
        .ok_or_else(|| MemoryError::Shared(format!("level rank {rank} is not a level")))
}

fn pg(e: tokio_postgres::Error) -> MemoryError {
    shared(SpoolError::Postgres(e))
}

fn shared(e: SpoolError) -> MemoryError {
    MemoryError::Shared(crate::util::error_chain(&e))
}
