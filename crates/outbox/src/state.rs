//! The state of a delivery, as stored in `outbox.state`.

use std::fmt;

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for an attempt (due now or after a backoff).
    Pending,
    /// A sink answered 2xx.
    Delivered,
    /// Out of attempts (a dead letter): `verdict deliveries retry` queues it again.
    Dead,
    /// A newer decision of its session replaced it before it was delivered.
    Superseded,
}

impl State {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
            Self::Superseded => "superseded",
        }
    }

    /// From the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Dead, Self::Superseded]
            .into_iter()
            .find(|st| st.as_str() == s)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_their_stored_spelling() {
        for st in [
            State::Pending,
            State::Delivered,
            State::Dead,
            State::Superseded,
        ] {
            assert_eq!(State::parse(st.as_str()), Some(st));
        }
        assert_eq!(State::parse("lost"), None);
    }
}
