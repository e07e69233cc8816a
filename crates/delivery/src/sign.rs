//! Standard Webhooks signing (<https://www.standardwebhooks.com/>).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// A sink secret that is not `whsec_<base64 key>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No `whsec_` prefix.
    #[error("a sink secret must be a Standard Webhooks secret: whsec_<base64 key>")]
    Prefix,
    /// The key is not base64.
    #[error("the key after whsec_ is not valid base64")]
    Base64,
    /// The key is empty.
    #[error("the key after whsec_ is empty")]
    Empty,
}

/// Signs payloads for one sink. The key never appears in `Debug` output.
#[derive(Clone)]
pub struct Signer {
    key: HmacSha256,
    key_len: usize,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

impl Signer {
    /// A signer for a `whsec_<base64>` secret.
    pub fn new(secret: &str) -> Result<Self, KeyError> {
        let b64 = secret
            .trim()
            .strip_prefix("whsec_")
            .ok_or(KeyError::Prefix)?;
        let key = STANDARD.decode(b64).map_err(|_| KeyError::Base64)?;
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        let key_len = key.len();
        let key = HmacSha256::new_from_slice(&key).map_err(|_| KeyError::Empty)?;
        Ok(Self { key, key_len })
    }

    /// The key's length in bytes (after base64 decoding), so a deployment can refuse weak keys.
    pub fn key_len(&self) -> usize {
        self.key_len
    }

    /// The `webhook-signature` value: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = self.key.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of the Standard Webhooks specification (and its reference libraries).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const PY_D1: &str = "v1,xr7O/JC6evj6YniHqCCfGn9ExFiRboHJYp4MhCYV2TE=";
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn matches_the_specification_example() {
        let s = Signer::new(SECRET).unwrap();
        assert_eq!(s.sign(ID, TS, BODY), EXPECTED);
    }

    #[test]
    fn matches_pythons_hmac_for_another_message() {
        // python3 -c 'import hmac,hashlib,base64; k=base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        //   print(base64.b64encode(hmac.new(k,b"d-1.1700000000.{}",hashlib.sha256).digest()))'
        let s = Signer::new(SECRET).unwrap();
        assert_eq!(s.sign("d-1", 1_700_000_000, b"{}"), PY_D1);
    }

    #[test]
    fn bad_secrets_are_named() {
        assert_eq!(Signer::new("MfKQ9r8").err(), Some(KeyError::Prefix));
        assert_eq!(Signer::new("whsec_!!!").err(), Some(KeyError::Base64));
        assert_eq!(Signer::new("whsec_").err(), Some(KeyError::Empty));
        assert_eq!(
            format!("{:?}", Signer::new(SECRET).unwrap()),
            "Signer(<redacted>)"
        );
    }
}
