//! The webhook outbox: events waiting for each endpoint, in order (see `events`).
//!
//! `OUTBOX` holds (endpoint id, sequence) → `EventRecord`; `OUTBOX_STATE` holds, per endpoint,
//! the next sequence, how many events wait and how many were dropped, so appending, bounding
//! and showing cost no scan. Events are appended inside the transaction of the change they
//! describe, and removed once delivered.

use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::schema::*;
use super::DbError;

/// An endpoint's outbox after an append.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Queued {
    /// Events waiting now.
    pub queued: u64,
    /// Events this append added.
    pub added: u64,
    /// Events this append dropped (the oldest) to stay within the bound.
    pub dropped: u64,
}

fn state(
    t: &impl ReadableTable<&'static str, (u64, u64, u64)>,
    id: &str,
) -> Result<(u64, u64, u64), DbError> {
    Ok(t.get(id)?.map(|v| v.value()).unwrap_or((0, 0, 0)))
}

/// Appends `event` to endpoint `id`'s outbox; when that makes more than `max` wait, drops the
/// oldest.
pub fn append(
    tx: &WriteTransaction,
    id: &str,
    max: u64,
    event: &EventRecord,
) -> Result<Queued, DbError> {
    let mut st = tx.open_table(OUTBOX_STATE)?;
    let (next, mut queued, mut dropped_total) = state(&st, id)?;
    let mut outbox = tx.open_table(OUTBOX)?;
    outbox.insert((id, next), encode(event).as_slice())?;
    queued += 1;
    let mut dropped = 0;
    while queued > max.max(1) {
        let oldest = outbox
            .range((id, 0)..=(id, u64::MAX))?
            .next()
            .transpose()?
            .map(|(k, _)| k.value().1);
        let Some(seq) = oldest else { break };
        outbox.remove((id, seq))?;
        queued -= 1;
        dropped += 1;
    }
    dropped_total += dropped;
    st.insert(id, (next + 1, queued, dropped_total))?;
    Ok(Queued {
        queued,
        added: 1,
        dropped,
    })
}

/// Up to `limit` of endpoint `id`'s oldest events, in order, and how many wait in all.
pub fn pending(
    tx: &ReadTransaction,
    id: &str,
    limit: usize,
) -> Result<(Vec<(u64, EventRecord)>, u64), DbError> {
    let (_, queued, _) = state(&tx.open_table(OUTBOX_STATE)?, id)?;
    let outbox = tx.open_table(OUTBOX)?;
    let mut out = Vec::new();
    for e in outbox.range((id, 0)..=(id, u64::MAX))?.take(limit) {
        let (k, v) = e?;
        out.push((k.value().1, decode(v.value())?));
    }
    Ok((out, queued))
}

/// Removes delivered events (those still there: the bound may have dropped some meanwhile);
/// answers how many wait now.
pub fn remove(tx: &WriteTransaction, id: &str, seqs: &[u64]) -> Result<u64, DbError> {
    let mut outbox = tx.open_table(OUTBOX)?;
    let mut st = tx.open_table(OUTBOX_STATE)?;
    let (next, mut queued, dropped) = state(&st, id)?;
    for s in seqs {
        if outbox.remove((id, *s))?.is_some() {
            queued = queued.saturating_sub(1);
        }
    }
    st.insert(id, (next, queued, dropped))?;
    Ok(queued)
}

/// Whether any endpoint not in `configured` has an outbox (which [`prune`] would drop): a
/// read, so a start with nothing to prune commits (and fsyncs) nothing.
pub fn any_unconfigured(tx: &ReadTransaction, configured: &[&str]) -> Result<bool, DbError> {
    for e in tx.open_table(OUTBOX_STATE)?.iter()? {
        if !configured.contains(&e?.0.value()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Drops the outbox of every endpoint not in `configured`: answers (id, events dropped).
pub fn prune(tx: &WriteTransaction, configured: &[&str]) -> Result<Vec<(String, u64)>, DbError> {
    let mut st = tx.open_table(OUTBOX_STATE)?;
    let gone: Vec<(String, u64)> = st
        .iter()?
        .map(|e| e.map(|(k, v)| (k.value().to_string(), v.value().1)))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|(id, _)| !configured.contains(&id.as_str()))
        .collect();
    let mut outbox = tx.open_table(OUTBOX)?;
    for (id, _) in &gone {
        let seqs: Vec<u64> = outbox
            .range((id.as_str(), 0)..=(id.as_str(), u64::MAX))?
            .map(|e| e.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        for s in seqs {
            outbox.remove((id.as_str(), s))?;
        }
        st.remove(id.as_str())?;
    }
    Ok(gone)
}

/// One endpoint's outbox as `dockyard events` shows it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Outbox {
    pub id: String,
    pub queued: u64,
    pub dropped: u64,
    /// Events appended since the outbox was created.
    pub appended: u64,
    /// The oldest waiting events (up to the asked number), in delivery order.
    pub oldest: Vec<(u64, EventRecord)>,
}

/// Every endpoint's outbox that has a row, with up to `show` of its oldest events.
pub fn outboxes(tx: &ReadTransaction, show: usize) -> Result<Vec<Outbox>, DbError> {
    let st = tx.open_table(OUTBOX_STATE)?;
    let mut out = Vec::new();
    for e in st.iter()? {
        let (k, v) = e?;
        let (next, queued, dropped) = v.value();
        let (oldest, _) = pending(tx, k.value(), show)?;
        out.push(Outbox {
            id: k.value().to_string(),
            queued,
            dropped,
            appended: next,
            oldest,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: u64) -> EventRecord {
        EventRecord {
            id: n.to_string(),
            action: "push".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_bounded_outbox_drops_the_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let db = super::super::Db::open(&dir.path().join("d.redb")).unwrap();
        let mut last = Queued::default();
        for n in 0..5 {
            last = db
                .write_blocking(|tx| Ok(append(tx, "a", 3, &ev(n))?))
                .unwrap();
        }
        db.write_blocking(|tx| Ok(append(tx, "b", 3, &ev(9))?))
            .unwrap();
        assert_eq!(
            last,
            Queued {
                queued: 3,
                added: 1,
                dropped: 1
            }
        );
        let (events, queued) = db.read_blocking(|tx| Ok(pending(tx, "a", 10)?)).unwrap();
        assert_eq!(queued, 3);
        let ids: Vec<&str> = events.iter().map(|(_, e)| e.id.as_str()).collect();
        assert_eq!(ids, ["2", "3", "4"]);
        let seqs: Vec<u64> = events.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [2, 3, 4]);
        // Removing a delivered event and one already dropped counts only the first.
        let left = db
            .write_blocking(|tx| Ok(remove(tx, "a", &[0, 2])?))
            .unwrap();
        assert_eq!(left, 2);
        let boxes = db.read_blocking(|tx| Ok(outboxes(tx, 1)?)).unwrap();
        assert_eq!(
            (boxes[0].queued, boxes[0].dropped, boxes[0].appended),
            (2, 2, 5)
        );
        assert_eq!(boxes[0].oldest.len(), 1);
        let gone = db.write_blocking(|tx| Ok(prune(tx, &["b"])?)).unwrap();
        assert_eq!(gone, [("a".to_string(), 2)]);
        let (events, _) = db.read_blocking(|tx| Ok(pending(tx, "a", 10)?)).unwrap();
        assert!(events.is_empty());
        let (events, _) = db.read_blocking(|tx| Ok(pending(tx, "b", 10)?)).unwrap();
        assert_eq!(events.len(), 1);
    }
}
