//! Who the clients are: the embedded server's JWT signing key, the main client's token
//! provider ([`Minter`]) and the embedded server's authenticator ([`DemoJwt`]), which carries
//! the expire-token fault.
//!
//! The key is drawn from the operating system once, when the app starts, and kept across
//! server restarts, so that a restarted server still accepts the tokens the clients hold. Only
//! this app knows it: a client pointed at an external server sends no token.
//!
//! Over TLS (the main client's default) a token travels encrypted; over the plaintext listener
//! (the TLS switch off, the extra clients, the hijacker) the SDK's server accepts one from
//! loopback only.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pulsewire::auth::{AuthFuture, AuthRequest, Authenticator, Jwt, JwtKey, Principal};

use crate::feed::{Feed, Input};

/// The subject the main client's tokens name.
pub const SUBJECT: &str = "alice";

/// The subject of the hijacker's token.
pub const HIJACKER: &str = "mallory";

/// How long past its expiry a credential may stay connected on the embedded server, before the
/// server ends the connection with `ERROR auth-expired`. Short, so that an expiry is seen.
pub const AUTH_GRACE: Duration = Duration::from_secs(2);

/// How long a credential has left once the expire-token fault cut it short.
pub const CUT_SHORT_TO: Duration = Duration::from_secs(1);

/// The embedded server's HS256 secret. Its `Debug` never shows it.
#[derive(Clone)]
pub struct SigningKey(Arc<[u8; 32]>);

impl SigningKey {
    /// 32 random bytes from the operating system.
    pub fn random() -> std::io::Result<SigningKey> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)
            .map_err(|error| std::io::Error::other(format!("no random bytes for the JWT secret: {error}")))?;
        Ok(SigningKey(Arc::new(secret)))
    }

    /// A token for `subject`, allowed `client_ids` (`None`: only the id equal to the subject),
    /// expiring `lifetime` from now (`None`: never).
    pub fn mint(&self, subject: &str, client_ids: Option<&[&str]>, lifetime: Option<Duration>) -> String {
        Jwt::mint_hs256(&self.0[..], subject, client_ids, lifetime)
    }

    /// The authenticator of the tokens this key signs.
    fn jwt(&self) -> Jwt {
        // No leeway: a token expires when its `exp` says, which is what the window counts down.
        Jwt::new(JwtKey::hs256(self.0.to_vec())).leeway(Duration::ZERO)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

/// The `exp` that [`Jwt::mint_hs256`] writes for a token minted at `now` with `lifetime`:
/// whole seconds since the epoch, rounded down.
pub fn exp_claim(now: SystemTime, lifetime: Duration) -> SystemTime {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default().saturating_add(lifetime);
    UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs())
}

/// The main client's token provider: mints a token for [`SUBJECT`] and the client's id with
/// the lifetime set in the settings, and reports each one (its number and expiry) through the
/// feed. Clones share the count and the lifetime.
#[derive(Clone)]
pub struct Minter {
    key: SigningKey,
    client_id: String,
    generation: u64,
    feed: Feed,
    state: Arc<Mutex<MintState>>,
}

#[derive(Debug)]
struct MintState {
    lifetime: Duration,
    minted: u32,
}

impl Minter {
    /// A provider for the main client `generation`, whose id is `client_id`.
    pub fn new(key: SigningKey, client_id: &str, generation: u64, lifetime: Duration, feed: Feed) -> Minter {
        let state = Arc::new(Mutex::new(MintState { lifetime, minted: 0 }));
        Minter { key, client_id: client_id.to_owned(), generation, feed, state }
    }

    /// The lifetime of the tokens minted from now on.
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).lifetime = lifetime;
    }

    /// A new token, reported to the window.
    pub fn mint(&self) -> String {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.minted += 1;
        let lifetime = state.lifetime;
        let (now, at) = (SystemTime::now(), Instant::now());
        let token = self.key.mint(SUBJECT, Some(&[self.client_id.as_str()]), Some(lifetime));
        // The same clock reading as the token's, give or take the microseconds between the two
        // reads (which could put a second's boundary between them: then the window says 1 s
        // too little).
        let left = exp_claim(now, lifetime).duration_since(now).unwrap_or_default();
        self.feed.send(Input::TokenMinted {
            generation: self.generation,
            n: state.minted,
            subject: SUBJECT.to_owned(),
            lifetime,
            expires: at + left,
        });
        token
    }
}

impl fmt::Debug for Minter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minter").field("client_id", &self.client_id).field("generation", &self.generation).finish()
    }
}

/// The embedded server's authenticator: the SDK's [`Jwt`] (HS256, no leeway), and the
/// expire-token fault: once armed for a client id and subject, the next credential it accepts
/// for them expires [`CUT_SHORT_TO`] after that `HELLO` (sooner if its token says so), as when
/// an identity service ends a login early.
pub struct DemoJwt {
    jwt: Jwt,
    feed: Feed,
    /// The client id and subject whose next credential is cut short.
    armed: Mutex<Option<(String, String)>>,
}

impl DemoJwt {
    /// An authenticator of the tokens `key` signs.
    pub fn new(key: &SigningKey, feed: Feed) -> DemoJwt {
        DemoJwt { jwt: key.jwt(), feed, armed: Mutex::new(None) }
    }

    /// Arms the fault: the next credential accepted for `client_id` and `subject` expires soon.
    pub fn cut_short_next(&self, client_id: &str, subject: &str) {
        *self.armed.lock().unwrap_or_else(PoisonError::into_inner) = Some((client_id.to_owned(), subject.to_owned()));
    }

    /// `principal`, accepted for `request` at `now`, cut short if the fault is armed for it.
    fn judge(&self, request: &AuthRequest, principal: Principal, now: SystemTime, at: Instant) -> Principal {
        let mut armed = self.armed.lock().unwrap_or_else(PoisonError::into_inner);
        let aimed = armed.as_ref().is_some_and(|(client_id, subject)| {
            client_id == request.client_id.as_str() && subject == principal.subject.as_str()
        });
        if !aimed {
            return principal;
        }
        *armed = None;
        let soon = now + CUT_SHORT_TO;
        let expires = principal.expires.map_or(soon, |expires| expires.min(soon));
        let left = expires.duration_since(now).unwrap_or_default();
        self.feed.send(Input::CredentialCutShort { client_id: request.client_id.to_string(), expires: at + left });
        principal.expiring(expires)
    }
}

impl Authenticator for DemoJwt {
    fn authenticate<'a>(&'a self, request: &'a AuthRequest) -> AuthFuture<'a> {
        Box::pin(async move {
            let principal = self.jwt.authenticate(request).await?;
            Ok(self.judge(request, principal, SystemTime::now(), Instant::now()))
        })
    }
}

impl fmt::Debug for DemoJwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemoJwt").field("jwt", &self.jwt).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::{self, Inbox};
    use futures::executor::block_on;
    use pulsewire::auth::{AllowedIds, AuthError};
    use pulsewire::protocol::{ClientId, Token};

    fn key() -> SigningKey {
        SigningKey::random().expect("random bytes")
    }

    fn hello(id: &str, token: &str) -> AuthRequest {
        let token = Token::new(token).expect("a valid token");
        let id = ClientId::new(id).expect("a valid id");
        AuthRequest::new(id, Some(token), "127.0.0.1:4000".parse().expect("an address"), false)
    }

    fn quiet() -> (Feed, Inbox) {
        feed::channel(Arc::new(|_| {}))
    }

    #[test]
    fn exp_is_the_whole_second_the_token_names() {
        let now = UNIX_EPOCH + Duration::from_millis(1_000_900);
        assert_eq!(exp_claim(now, Duration::from_secs(30)), UNIX_EPOCH + Duration::from_secs(1030));
        assert_eq!(exp_claim(now, Duration::ZERO), UNIX_EPOCH + Duration::from_secs(1000));
    }

    #[test]
    fn the_minter_counts_its_tokens_and_the_server_accepts_them_for_alice_and_this_id_only() {
        let key = key();
        let (feed, inbox) = quiet();
        let minter = Minter::new(key.clone(), "desk-1", 3, Duration::from_secs(30), feed.clone());
        let token = minter.mint();
        minter.set_lifetime(Duration::from_secs(5));
        let _second = minter.mint();
        let minted: Vec<(u64, u32, Duration)> = inbox
            .drain()
            .filter_map(|stamped| match stamped.input {
                Input::TokenMinted { generation, n, lifetime, expires, .. } => {
                    assert!(expires <= stamped.at + lifetime, "never later than the lifetime");
                    Some((generation, n, lifetime))
                }
                _ => None,
            })
            .collect();
        assert_eq!(minted, [(3, 1, Duration::from_secs(30)), (3, 2, Duration::from_secs(5))]);

        let server = DemoJwt::new(&key, feed);
        let alice = block_on(server.authenticate(&hello("desk-1", &token))).expect("accepted");
        assert_eq!(
            (alice.subject.as_str(), alice.allowed.clone()),
            (SUBJECT, AllowedIds::Exactly(ClientId::new("desk-1").expect("id")))
        );
        assert!(alice.expires.is_some());
        assert_eq!(block_on(server.authenticate(&hello("desk-2", &token))), Err(AuthError::Forbidden));
        let forged = SigningKey::random().expect("random bytes").mint(SUBJECT, Some(&["desk-1"]), None);
        assert_eq!(block_on(server.authenticate(&hello("desk-1", &forged))), Err(AuthError::Failed));
    }

    #[test]
    fn an_armed_fault_cuts_the_next_credential_of_that_subject_short_once() {
        let key = key();
        let (feed, inbox) = quiet();
        let server = DemoJwt::new(&key, feed);
        let alice = key.mint(SUBJECT, Some(&["desk-1"]), Some(Duration::from_secs(3600)));
        let mallory = key.mint(HIJACKER, Some(&["*"]), Some(Duration::from_secs(3600)));
        server.cut_short_next("desk-1", SUBJECT);

        let before = SystemTime::now();
        let other = block_on(server.authenticate(&hello("desk-1", &mallory))).expect("a valid token");
        assert!(other.expires.is_some_and(|at| at > before + Duration::from_secs(3000)), "another subject: untouched");
        let cut = block_on(server.authenticate(&hello("desk-1", &alice))).expect("accepted");
        let expires = cut.expires.expect("an expiry");
        assert!(expires <= SystemTime::now() + CUT_SHORT_TO && expires >= before, "{expires:?}");
        assert!(inbox.drain().any(|stamped| matches!(stamped.input, Input::CredentialCutShort { .. })));
        let again = block_on(server.authenticate(&hello("desk-1", &alice))).expect("accepted");
        assert!(again.expires.is_some_and(|at| at > before + Duration::from_secs(3000)), "the fault fires once");
    }

    #[test]
    fn the_key_never_shows_in_debug() {
        assert_eq!(format!("{:?}", key()), "SigningKey(..)");
    }
}
