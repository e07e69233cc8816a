use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use crate::fact::{Fact, Recorded, read};
use crate::session::{Change, Session, fact_session};

/// Every session, in memory: what `verdict replay` builds and what the tests compare.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Projection {
    /// Boxed: the map's nodes then hold a key and a pointer per session. Sessions mostly
    /// arrive in id order, which leaves a B-tree's nodes about half full; a node of whole
    /// sessions (~300 bytes each) half empty made a replay of a million events fault in
    /// ~250 MB more fresh memory, a large part of its fold time on a VM.
    sessions: BTreeMap<String, Box<Session>>,
    /// Newest seq applied.
    pub last_seq: u64,
    /// Quarantined entries, with or without a session.
    pub quarantined: u64,
}

impl Projection {
    /// Reads and applies one entry; returns the session it touched and what changed.
    pub fn apply(&mut self, r: &Recorded<'_>) -> Option<(&Session, Change)> {
        let fact = read(r);
        self.apply_fact(r, &fact)
    }

    /// Applies an already-read fact.
    pub fn apply_fact(&mut self, r: &Recorded<'_>, fact: &Fact) -> Option<(&Session, Change)> {
        if r.seq <= self.last_seq {
            return None;
        }
        self.last_seq = r.seq;
        if matches!(fact, Fact::Quarantined { .. }) {
            self.quarantined += 1;
        }
        let id = fact_session(fact)?;
        let session = self
            .sessions
            .entry(id.to_owned())
            .or_insert_with(|| Box::new(Session::new(id)));
        let change = session.apply(r, fact);
        Some((&**session, change))
    }

    /// One session.
    pub fn session(&self, id: &str) -> Option<&Session> {
        self.sessions.get(id).map(|s| &**s)
    }

    /// Every session, by id.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values().map(|s| &**s)
    }

    /// Puts a session (loaded from storage) into the projection.
    pub fn insert(&mut self, session: Session) {
        self.sessions
            .insert(session.session_id.clone(), Box::new(session));
    }

    /// SHA-256 (hex) over the order-independent view of every session, in id order, and the
    /// quarantine count.
    pub fn digest(&self) -> String {
        digest(self.sessions(), self.quarantined)
    }
}

/// The digest of sessions given in id order (see [`Projection::digest`]).
pub fn digest<'a>(sessions: impl Iterator<Item = &'a Session>, quarantined: u64) -> String {
    let mut h = Sha256::new();
    for s in sessions {
        // Serialising plain data cannot fail.
        let line = serde_json::to_vec(&s.view()).unwrap_or_default();
        h.update(&line);
        h.update(b"\n");
    }
    h.update(quarantined.to_be_bytes());
    hex::encode(h.finalize())
}
