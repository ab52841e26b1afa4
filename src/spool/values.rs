//! A message's values as both spools store them: sealed (spool::at_rest)
//! before the writer is asked, recipient states as numbers, risk classes
//! by name, and ids that follow the clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::at_rest::{Cipher, Field, Row};
use super::{NewMessage, QueueId, SpoolError};
use crate::policy::RiskClass;

pub(super) const PENDING: i64 = 0;
pub(super) const DELIVERED: i64 = 1;
pub(super) const FAILED: i64 = 2;

pub(super) fn class_of(name: String) -> RiskClass {
    // A name this version does not know is treated as the highest class:
    // never less protection than the writer meant.
    name.parse().unwrap_or(RiskClass::Confidential)
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A message's values as they are stored, sealed (spool::at_rest).
pub(super) struct Sealed {
    pub sender: Vec<u8>,
    pub env_id: Option<Vec<u8>>,
    pub client: Vec<u8>,
    pub body: Vec<u8>,
    /// Address and ORCPT of each recipient.
    pub recipients: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Seals a message's values; done before the writer thread is asked, so
/// that the encryption of many sessions runs beside the one writer.
pub(super) fn seal_message(cipher: &Cipher, m: &NewMessage) -> Result<Sealed, SpoolError> {
    let e = &m.envelope;
    let id = m.id.0 as i64;
    let at = Row(id, 0);
    let recipients = e
        .recipients
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let at = Row(id, i as i64);
            Ok((
                cipher.seal_text(Field::Address, at, &r.address)?,
                sealed_opt(cipher, Field::Orcpt, at, r.orcpt.as_deref())?,
            ))
        })
        .collect::<Result<_, SpoolError>>()?;
    Ok(Sealed {
        sender: cipher.seal_text(Field::Sender, at, &e.sender)?,
        env_id: sealed_opt(cipher, Field::EnvId, at, e.env_id.as_deref())?,
        client: cipher.seal_text(Field::Client, at, &m.client)?,
        body: cipher.seal(Field::Body, at, &m.body)?,
        recipients,
    })
}

pub(super) fn sealed_opt(
    cipher: &Cipher,
    field: Field,
    at: Row,
    value: Option<&str>,
) -> Result<Option<Vec<u8>>, SpoolError> {
    Ok(match value {
        Some(v) => Some(cipher.seal_text(field, at, v)?),
        None => None,
    })
}

/// Queue ids: time-ordered (microseconds) and unique within this process;
/// with a node slot, unique across the nodes of one database too (the
/// slot is the low 8 bits).
#[derive(Debug, Default)]
pub(super) struct IdClock {
    last: AtomicU64,
    slot: Option<u8>,
}

impl IdClock {
    /// Starting after the largest id the spool holds.
    pub fn after(last: u64) -> IdClock {
        IdClock {
            last: AtomicU64::new(last),
            slot: None,
        }
    }

    /// Ids that end in `slot`.
    pub fn with_slot(self, slot: u8) -> IdClock {
        let last = self.last.into_inner() >> 8;
        IdClock {
            last: AtomicU64::new(last),
            slot: Some(slot),
        }
    }

    /// At least one past the last id handed out, and never behind the clock.
    pub fn next(&self) -> QueueId {
        let now = now_micros();
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(prev + 1);
            match self
                .last
                .compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    return QueueId(match self.slot {
                        Some(slot) => next << 8 | slot as u64,
                        None => next,
                    });
                }
                Err(actual) => prev = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_grow_and_carry_the_slot() {
        let plain = IdClock::after(u64::MAX >> 9);
        let a = plain.next();
        assert!(plain.next() > a);
        let slotted = IdClock::after(0).with_slot(7);
        let (x, y) = (slotted.next(), slotted.next());
        assert!(y > x);
        assert_eq!((x.0 & 0xff, y.0 & 0xff), (7, 7));
        // Behind the largest stored id, a restart goes on after it.
        let again = IdClock::after(y.0).with_slot(7);
        assert!(again.next() > y);
    }
}
