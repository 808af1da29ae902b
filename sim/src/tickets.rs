//! TLS session tickets the way Go's `crypto/tls` server issues them, which
//! is what every kube-apiserver does unless it was built otherwise
//! (`tls.Config.SessionTicketsDisabled` is false by default):
//!
//! - one TLS 1.3 `NewSessionTicket` per connection, right after the
//!   handshake, resumed connections included (`sendSessionTicket` in
//!   `handshake_server_tls13.go`; rustls sends two unless told otherwise);
//! - a ticket lifetime of 7 days (`maxSessionTicketLifetime`);
//! - tickets are the session state encrypted with a key the server made
//!   itself: a new key every 24 hours (`ticketKeyRotation`), old keys kept
//!   for 7 days (`ticketKeyLifetime`), so a ticket stays usable for up to
//!   7 days, also across the daily rotation;
//! - no server-side session cache (Go resumes TLS 1.2 sessions by ticket
//!   only).
//!
//! Go encrypts with AES-128-CTR and HMAC-SHA256; here it is AES-128-GCM,
//! which no client can tell apart: a ticket is opaque to the client.
//! A resumed connection keeps the client certificate of the session it
//! resumes (Go puts the peer certificates into the ticket; rustls does the
//! same), so a client must not resume a certificate session for a request
//! that should authenticate otherwise.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::aead::{AES_128_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};
use rustls::server::ProducesTickets;

/// Go's `maxSessionTicketLifetime` and `ticketKeyLifetime`.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Go's `ticketKeyRotation`.
pub const KEY_ROTATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Issues and opens session tickets like Go's server (see the module).
pub struct GoTicketer {
    rng: SystemRandom,
    /// Newest first; none older than [`TICKET_LIFETIME`] is used.
    keys: Mutex<Vec<(Instant, LessSafeKey)>>,
}

impl std::fmt::Debug for GoTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoTicketer").finish_non_exhaustive()
    }
}

impl GoTicketer {
    /// A ticketer with no key yet (the first ticket makes one).
    pub fn new() -> Self {
        GoTicketer {
            rng: SystemRandom::new(),
            keys: Mutex::new(Vec::new()),
        }
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, LessSafeKey)>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_key(&self) -> Option<LessSafeKey> {
        let mut bytes = [0u8; 16];
        self.rng.fill(&mut bytes).ok()?;
        Some(LessSafeKey::new(
            UnboundKey::new(&AES_128_GCM, &bytes).ok()?,
        ))
    }
}

impl Default for GoTicketer {
    fn default() -> Self {
        Self::new()
    }
}

impl ProducesTickets for GoTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(TICKET_LIFETIME.as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut keys = self.keys();
        let now = Instant::now();
        if keys
            .first()
            .is_none_or(|(made, _)| now.duration_since(*made) >= KEY_ROTATION)
        {
            let key = self.new_key()?;
            keys.insert(0, (now, key));
            keys.retain(|(made, _)| now.duration_since(*made) < TICKET_LIFETIME);
        }
        let (_, key) = keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut sealed = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            &mut sealed,
        )
        .ok()?;
        let mut ticket = nonce.to_vec();
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < NONCE_LEN + AES_128_GCM.tag_len() {
            return None;
        }
        let (nonce, sealed) = cipher.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        let now = Instant::now();
        let keys = self.keys();
        for (made, key) in keys.iter() {
            if now.duration_since(*made) >= TICKET_LIFETIME {
                continue;
            }
            let mut buffer = sealed.to_vec();
            if let Ok(plain) = key.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut buffer,
            ) {
                return Some(plain.to_vec());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_opens_with_its_key_and_not_after_tampering() {
        let t = GoTicketer::new();
        assert_eq!(t.lifetime(), 604_800, "Go's 7 days");
        let ticket = t.encrypt(b"session state").unwrap();
        assert_ne!(&ticket[NONCE_LEN..], b"session state");
        assert_eq!(t.decrypt(&ticket).unwrap(), b"session state");
        let mut bad = ticket.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(t.decrypt(&bad), None);
        assert_eq!(t.decrypt(&ticket[..10]), None);
        // Another server's tickets do not open here.
        assert_eq!(GoTicketer::new().decrypt(&ticket), None);
    }
}
