//! [`Jwt`]: JSON Web Tokens, HS256 with a shared secret, RS256 or ES256 with a public key.

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Map, Value};

use super::token_file::parse_allowed;
use super::{AllowedIds, AuthError, AuthFuture, AuthRequest, Authenticator, Principal, Subject};
use crate::protocol::ClientId;

/// The smallest RSA key accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

/// `rsaEncryption` (RFC 8017).
const RSA_OID: ObjectIdentifier = rsa::pkcs1::ALGORITHM_OID;
/// `id-ecPublicKey` (RFC 5480).
const EC_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// `secp256r1`, also named P-256 and prime256v1 (RFC 5480).
const P256_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// The key that checks a token's signature, and with it the one algorithm a token may use.
///
/// Its `Debug` shows the algorithm only, never an HS256 secret.
#[derive(Clone)]
pub struct JwtKey {
    algorithm: Algorithm,
    key: DecodingKey,
}

impl JwtKey {
    /// An HS256 key: tokens signed with HMAC-SHA256 and this shared secret. Use at least 32
    /// random bytes; whoever knows the secret can mint tokens.
    pub fn hs256(secret: impl Into<Vec<u8>>) -> JwtKey {
        JwtKey { algorithm: Algorithm::HS256, key: DecodingKey::from_secret(&secret.into()) }
    }

    /// A public key in PEM: an RSA key (`BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY`, at
    /// least 2048 bits) for RS256 tokens, or an EC P-256 key (`BEGIN PUBLIC KEY`) for ES256
    /// tokens.
    ///
    /// ```
    /// use pulsewire::auth::{Jwt, JwtKey};
    ///
    /// let pem = b"-----BEGIN PUBLIC KEY-----
    /// MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEkY3Mj1mWvQgfPpgbTE9dzfPPDdeM
    /// SwLI4HdPYD6hcsQN5QhAwDUY6fomEugQw7xmSuWt9s6CxNQy73VeyUmI+g==
    /// -----END PUBLIC KEY-----
    /// ";
    /// let key = JwtKey::from_public_key_pem(pem).unwrap();
    /// assert_eq!(format!("{key:?}"), "JwtKey { algorithm: ES256, .. }");
    /// let _authenticator = Jwt::new(key);
    ///
    /// let error = JwtKey::from_public_key_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    ///     .unwrap_err();
    /// assert_eq!(error.to_string(), "the PEM holds a private key: give the public key");
    /// ```
    pub fn from_public_key_pem(pem: &[u8]) -> Result<JwtKey, JwtError> {
        JwtKey::from_pem(pem, MIN_RSA_BITS)
    }

    /// [`JwtKey::from_public_key_pem`], with RSA keys of `min_rsa_bits` accepted (tests make
    /// smaller keys than servers may use: a 2048-bit one takes seconds in a debug build).
    fn from_pem(pem: &[u8], min_rsa_bits: usize) -> Result<JwtKey, JwtError> {
        let text = std::str::from_utf8(pem).map_err(|_| JwtError::NotPem)?;
        let (label, der) = rsa::pkcs8::der::pem::decode_vec(text.as_bytes()).map_err(|_| {
            // A private key whose PEM does not even decode is still a private key.
            if text.contains("PRIVATE KEY-----") {
                JwtError::PrivateKey
            } else {
                JwtError::NotPem
            }
        })?;
        match label {
            "PUBLIC KEY" => JwtKey::from_spki_der(&der, min_rsa_bits),
            "RSA PUBLIC KEY" => {
                let key = rsa::RsaPublicKey::from_pkcs1_der(&der)
                    .map_err(|e| JwtError::InvalidKey { kind: "RSA", reason: e.to_string() })?;
                JwtKey::rs256(&key, min_rsa_bits)
            }
            label if label.ends_with("PRIVATE KEY") => Err(JwtError::PrivateKey),
            label => Err(JwtError::NotPublicKey { label: label.to_owned() }),
        }
    }

    /// A key from a DER `SubjectPublicKeyInfo`.
    fn from_spki_der(der: &[u8], min_rsa_bits: usize) -> Result<JwtKey, JwtError> {
        let spki = SubjectPublicKeyInfoRef::try_from(der)
            .map_err(|e| JwtError::InvalidKey { kind: "public", reason: e.to_string() })?;
        match spki.algorithm.oid {
            RSA_OID => {
                let key = rsa::RsaPublicKey::from_public_key_der(der)
                    .map_err(|e| JwtError::InvalidKey { kind: "RSA", reason: e.to_string() })?;
                JwtKey::rs256(&key, min_rsa_bits)
            }
            EC_OID => match spki.algorithm.parameters_oid() {
                Ok(P256_OID) => {
                    let key = p256::PublicKey::from_public_key_der(der)
                        .map_err(|e| JwtError::InvalidKey { kind: "EC P-256", reason: e.to_string() })?;
                    let point = key.to_encoded_point(false);
                    Ok(JwtKey { algorithm: Algorithm::ES256, key: DecodingKey::from_ec_der(point.as_bytes()) })
                }
                Ok(curve) => Err(JwtError::UnsupportedKey { algorithm: format!("an EC key on curve {curve}") }),
                Err(e) => Err(JwtError::InvalidKey { kind: "EC", reason: e.to_string() }),
            },
            other => Err(JwtError::UnsupportedKey { algorithm: format!("algorithm {other}") }),
        }
    }

    /// An RS256 key, if `key` has at least `min_bits`.
    fn rs256(key: &rsa::RsaPublicKey, min_bits: usize) -> Result<JwtKey, JwtError> {
        let bits = key.n().bits();
        if bits < min_bits {
            return Err(JwtError::RsaKeyTooSmall { bits });
        }
        let key = DecodingKey::from_rsa_raw_components(&key.n().to_bytes_be(), &key.e().to_bytes_be());
        Ok(JwtKey { algorithm: Algorithm::RS256, key })
    }
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKey").field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

/// Why [`JwtKey::from_public_key_pem`] refused a key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwtError {
    /// The bytes are not PEM text.
    NotPem,
    /// The PEM holds a private key; the server needs only the public one.
    PrivateKey,
    /// The PEM holds something other than a key (a certificate, say).
    NotPublicKey {
        /// The PEM's label (`CERTIFICATE`).
        label: String,
    },
    /// A public key for neither RS256 nor ES256.
    UnsupportedKey {
        /// What the key is.
        algorithm: String,
    },
    /// An RSA key smaller than 2048 bits.
    RsaKeyTooSmall {
        /// Its size.
        bits: usize,
    },
    /// A public key that does not decode.
    InvalidKey {
        /// The kind of key (`RSA`, `EC P-256`).
        kind: &'static str,
        /// Why it does not decode.
        reason: String,
    },
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::NotPem => f.write_str("the key is not PEM text (-----BEGIN PUBLIC KEY----- ...)"),
            JwtError::PrivateKey => f.write_str("the PEM holds a private key: give the public key"),
            JwtError::NotPublicKey { label } => write!(f, "the PEM holds a {label}, not a public key"),
            JwtError::UnsupportedKey { algorithm } => write!(
                f,
                "unsupported public key ({algorithm}): expected an RSA key (RS256) or an EC P-256 key (ES256)"
            ),
            JwtError::RsaKeyTooSmall { bits } => {
                write!(f, "the RSA key has {bits} bits: at least {MIN_RSA_BITS} are required")
            }
            JwtError::InvalidKey { kind, reason } => write!(f, "invalid {kind} key: {reason}"),
        }
    }
}

impl std::error::Error for JwtError {}

/// An authenticator of JSON Web Tokens (RFC 7519), signed with HS256, RS256 or ES256: the
/// one of its [`JwtKey`]; a token with another algorithm, `none` included, fails.
///
/// A token's claims:
/// - `sub` (required, a string): the subject.
/// - `exp` (optional): when the token expires; past it by more than the leeway, the token is
///   refused with [`AuthError::Expired`]. It becomes the principal's expiry (without the
///   leeway). Without `exp` the token does not expire.
/// - `nbf` (optional): before it, less the leeway, the token fails.
/// - `client_ids` (optional; the name is set with [`Jwt::ids_claim`]): the client ids the
///   subject may use, a string or an array of strings, each an exact id, a prefix followed by
///   `*`, or `*`. Without it the client id must equal `sub`. The principal's
///   [`allowed`](Principal::allowed) is the first entry that permits the requested id.
///
/// A token with an `aud` claim fails: this authenticator has no audience to match it with.
/// `iss` and `iat` are not checked. Tokens are never logged nor shown by any error.
///
/// | token | error |
/// |---|---|
/// | none | [`AuthError::Required`] |
/// | malformed, bad signature, another algorithm, `nbf` ahead, `aud`, claims of the wrong type | [`AuthError::Failed`] |
/// | `exp` past | [`AuthError::Expired`] |
/// | valid, but the client id is not among its ids | [`AuthError::Forbidden`] |
///
/// ```
/// use std::time::Duration;
/// use futures::executor::block_on;
/// use pulsewire::auth::{AllowedIds, AuthError, AuthRequest, Authenticator, Jwt, JwtKey};
/// use pulsewire::protocol::{ClientId, Token};
///
/// let secret = b"a shared secret of 32 bytes or more";
/// let jwt = Jwt::new(JwtKey::hs256(secret.to_vec())).leeway(Duration::from_secs(10));
///
/// let token = Jwt::mint_hs256(secret, "alice", Some(&["desk-*"]), Some(Duration::from_secs(3600)));
/// let hello = |id: &str| {
///     let token = Token::new(token.as_str()).unwrap();
///     AuthRequest::new(ClientId::new(id).unwrap(), Some(token), "127.0.0.1:4000".parse().unwrap(), false)
/// };
/// let alice = block_on(jwt.authenticate(&hello("desk-42"))).unwrap();
/// assert_eq!(alice.subject.as_str(), "alice");
/// assert_eq!(alice.allowed, AllowedIds::Prefix("desk-".into()));
/// assert!(alice.expires.is_some());
///
/// assert_eq!(block_on(jwt.authenticate(&hello("kiosk-1"))), Err(AuthError::Forbidden));
/// ```
pub struct Jwt {
    key: JwtKey,
    leeway: Duration,
    ids_claim: String,
    validation: Validation,
}

impl Jwt {
    /// The default leeway: how far a token's `exp` and `nbf` may be off the server's clock.
    pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

    /// The default name of the claim with the client ids.
    pub const DEFAULT_IDS_CLAIM: &'static str = "client_ids";

    /// An authenticator of tokens signed with `key`.
    pub fn new(key: JwtKey) -> Jwt {
        let mut validation = Validation::new(key.algorithm);
        // `sub`, `exp` and `nbf` are checked here, against a clock given as an argument.
        validation.required_spec_claims = HashSet::new();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        Jwt { key, leeway: Jwt::DEFAULT_LEEWAY, ids_claim: Jwt::DEFAULT_IDS_CLAIM.to_owned(), validation }
    }

    /// How far `exp` and `nbf` may be off the server's clock (default 30 s).
    pub fn leeway(mut self, leeway: Duration) -> Jwt {
        self.leeway = leeway;
        self
    }

    /// The name of the claim with the client ids (default `client_ids`).
    pub fn ids_claim(mut self, name: &str) -> Jwt {
        self.ids_claim = name.to_owned();
        self
    }

    /// An HS256 token for demos and tests: `sub` is `subject`, `iat` now, `exp` now plus
    /// `lifetime` when given, and `client_ids` the given client ids (always under the default
    /// name, whatever a verifier's [`Jwt::ids_claim`] is).
    pub fn mint_hs256(secret: &[u8], subject: &str, client_ids: Option<&[&str]>, lifetime: Option<Duration>) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut claims = Map::new();
        claims.insert("sub".into(), subject.into());
        claims.insert("iat".into(), now.as_secs().into());
        if let Some(lifetime) = lifetime {
            claims.insert("exp".into(), now.saturating_add(lifetime).as_secs().into());
        }
        if let Some(ids) = client_ids {
            claims.insert(Jwt::DEFAULT_IDS_CLAIM.into(), ids.iter().map(|&id| Value::from(id)).collect());
        }
        // Cannot fail: a JSON value always serializes, and HMAC takes a secret of any length.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))
            .expect("an HS256 token of JSON claims can always be signed")
    }

    /// Decides who presents `token` and asks for `client_id`, at `now`.
    fn check(&self, token: &str, client_id: &ClientId, now: SystemTime) -> Result<Principal, AuthError> {
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key.key, &self.validation)
            .map_err(|_| AuthError::Failed)?
            .claims;
        let subject = match claims.get("sub") {
            Some(Value::String(subject)) if !subject.is_empty() => subject,
            _ => return Err(AuthError::Failed),
        };
        if let Some(nbf) = claims.get("nbf") {
            // An `nbf` too far ahead to be a time is never reached.
            let ahead = match numeric_date(nbf)? {
                Some(nbf) => now.checked_add(self.leeway).is_some_and(|latest| nbf > latest),
                None => true,
            };
            if ahead {
                return Err(AuthError::Failed);
            }
        }
        // An `exp` too far ahead to be a time is never reached: no expiry.
        let expires = claims.get("exp").map(numeric_date).transpose()?.flatten();
        if expires.is_some_and(|exp| exp.checked_add(self.leeway).is_some_and(|limit| limit < now)) {
            return Err(AuthError::Expired);
        }
        let allowed = match claims.get(&self.ids_claim) {
            None => ClientId::new(subject.as_str()).ok().map(AllowedIds::Exactly).filter(|a| a.permits(client_id)),
            Some(Value::String(pattern)) => {
                Some(parse_allowed(pattern).ok_or(AuthError::Failed)?).filter(|a| a.permits(client_id))
            }
            Some(Value::Array(patterns)) => {
                let mut first = None;
                for pattern in patterns {
                    let allowed = pattern.as_str().and_then(parse_allowed).ok_or(AuthError::Failed)?;
                    if first.is_none() && allowed.permits(client_id) {
                        first = Some(allowed);
                    }
                }
                first
            }
            Some(_) => return Err(AuthError::Failed),
        };
        let allowed = allowed.ok_or(AuthError::Forbidden)?;
        Ok(Principal { subject: Subject::new(subject.as_str()), expires, allowed })
    }
}

/// A JSON NumericDate (seconds since the epoch, maybe fractional): `None` when it is too far
/// ahead for a `SystemTime`, [`AuthError::Failed`] when it is not a non-negative number.
fn numeric_date(value: &Value) -> Result<Option<SystemTime>, AuthError> {
    let since_epoch = match value.as_u64() {
        Some(seconds) => Duration::from_secs(seconds),
        None => {
            let seconds = value.as_f64().ok_or(AuthError::Failed)?;
            match Duration::try_from_secs_f64(seconds) {
                Ok(since_epoch) => since_epoch,
                Err(_) if seconds.is_finite() && seconds > 0.0 => return Ok(None),
                Err(_) => return Err(AuthError::Failed),
            }
        }
    };
    Ok(UNIX_EPOCH.checked_add(since_epoch))
}

impl Authenticator for Jwt {
    fn authenticate<'a>(&'a self, request: &'a AuthRequest) -> AuthFuture<'a> {
        let result = match &request.token {
            None => Err(AuthError::Required),
            Some(token) => self.check(token.as_str(), &request.client_id, SystemTime::now()),
        };
        Box::pin(std::future::ready(result))
    }
}

impl fmt::Debug for Jwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwt")
            .field("key", &self.key)
            .field("leeway", &self.leeway)
            .field("ids_claim", &self.ids_claim)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::OnceLock;

    use futures::executor::block_on;
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
    use rsa::rand_core::OsRng;
    use serde_json::json;

    use super::*;
    use crate::protocol::Token;

    const SECRET: &[u8] = b"test secret, 32 bytes or longer!";
    /// A fixed clock for the tests that give `check` their own `now`.
    const NOW_SECS: u64 = 1_750_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW_SECS)
    }

    fn id(text: &str) -> ClientId {
        ClientId::new(text).unwrap()
    }

    fn hs256(claims: &Value) -> String {
        sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET), claims)
    }

    fn sign(algorithm: Algorithm, key: &EncodingKey, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(algorithm), claims, key).unwrap()
    }

    fn jwt() -> Jwt {
        Jwt::new(JwtKey::hs256(SECRET))
    }

    fn check(jwt: &Jwt, token: &str, client_id: &str) -> Result<Principal, AuthError> {
        jwt.check(token, &id(client_id), now())
    }

    fn authenticate(jwt: &Jwt, token: Option<&str>, client_id: &str) -> Result<Principal, AuthError> {
        let addr: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let request = AuthRequest::new(id(client_id), token.map(|t| Token::new(t).unwrap()), addr, true);
        block_on(jwt.authenticate(&request))
    }

    #[test]
    fn a_valid_hs256_token_gives_its_subject_expiry_and_ids() {
        let token = hs256(&json!({ "sub": "alice", "exp": NOW_SECS + 600, "client_ids": "desk-1" }));
        assert_eq!(
            check(&jwt(), &token, "desk-1"),
            Ok(Principal {
                subject: Subject::new("alice"),
                expires: Some(UNIX_EPOCH + Duration::from_secs(NOW_SECS + 600)),
                allowed: AllowedIds::Exactly(id("desk-1")),
            })
        );
    }

    #[test]
    fn a_token_without_exp_does_not_expire() {
        let token = hs256(&json!({ "sub": "desk-1" }));
        assert_eq!(check(&jwt(), &token, "desk-1").unwrap().expires, None);
    }

    #[test]
    fn a_fractional_exp_is_read_to_the_subsecond() {
        let token = hs256(&json!({ "sub": "desk-1", "exp": NOW_SECS as f64 + 0.5 }));
        let expires = check(&jwt(), &token, "desk-1").unwrap().expires.unwrap();
        assert_eq!(expires.duration_since(UNIX_EPOCH).unwrap(), Duration::from_millis(NOW_SECS * 1000 + 500));
    }

    #[test]
    fn an_exp_too_far_ahead_for_a_system_time_means_no_expiry() {
        let token = hs256(&json!({ "sub": "desk-1", "exp": u64::MAX }));
        assert_eq!(check(&jwt(), &token, "desk-1").unwrap().expires, None);
    }

    #[test]
    fn no_token_is_required() {
        assert_eq!(authenticate(&jwt(), None, "desk-1"), Err(AuthError::Required));
    }

    #[test]
    fn a_token_signed_with_another_secret_fails() {
        let claims = json!({ "sub": "desk-1" });
        let forged = sign(Algorithm::HS256, &EncodingKey::from_secret(b"another secret"), &claims);
        assert_eq!(check(&jwt(), &forged, "desk-1"), Err(AuthError::Failed));
    }

    #[test]
    fn a_token_whose_claims_were_changed_after_signing_fails() {
        let token = hs256(&json!({ "sub": "alice" }));
        let mut parts: Vec<&str> = token.split('.').collect();
        let bob = hs256(&json!({ "sub": "bob" }));
        parts[1] = bob.split('.').nth(1).unwrap();
        assert_eq!(check(&jwt(), &parts.join("."), "bob"), Err(AuthError::Failed));
    }

    #[test]
    fn a_malformed_token_fails() {
        let token = hs256(&json!({ "sub": "desk-1" }));
        let (unsigned, _) = token.rsplit_once('.').unwrap();
        for malformed in ["garbage", "a.b.c", "a.b", unsigned, &format!("{token}.extra"), &format!("{unsigned}.")] {
            assert_eq!(check(&jwt(), malformed, "desk-1"), Err(AuthError::Failed), "{malformed}");
        }
    }

    #[test]
    fn an_unsigned_token_with_alg_none_fails() {
        // `{"alg":"none","typ":"JWT"}`, base64url.
        const NONE_HEADER: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
        let token = hs256(&json!({ "sub": "desk-1" }));
        let claims = token.split('.').nth(1).unwrap();
        assert_eq!(check(&jwt(), &format!("{NONE_HEADER}.{claims}."), "desk-1"), Err(AuthError::Failed));
        let signature = token.rsplit('.').next().unwrap();
        assert_eq!(check(&jwt(), &format!("{NONE_HEADER}.{claims}.{signature}"), "desk-1"), Err(AuthError::Failed));
    }

    #[test]
    fn a_token_of_another_algorithm_fails() {
        let claims = json!({ "sub": "desk-1" });
        let hs384 = sign(Algorithm::HS384, &EncodingKey::from_secret(SECRET), &claims);
        assert_eq!(check(&jwt(), &hs384, "desk-1"), Err(AuthError::Failed));

        // An HS256 token "signed" with an ES256 key's public PEM: the classic confusion.
        let (_, public_pem) = p256_key();
        let es256 = Jwt::new(JwtKey::from_public_key_pem(public_pem.as_bytes()).unwrap());
        let confused = sign(Algorithm::HS256, &EncodingKey::from_secret(public_pem.as_bytes()), &claims);
        assert_eq!(check(&es256, &confused, "desk-1"), Err(AuthError::Failed));
    }

    #[test]
    fn a_token_expired_beyond_the_leeway_is_expired() {
        let token = hs256(&json!({ "sub": "desk-1", "exp": NOW_SECS - 31 }));
        assert_eq!(check(&jwt(), &token, "desk-1"), Err(AuthError::Expired));
        let token = hs256(&json!({ "sub": "desk-1", "exp": NOW_SECS - 3600 }));
        assert_eq!(check(&jwt().leeway(Duration::from_secs(3599)), &token, "desk-1"), Err(AuthError::Expired));
    }

    #[test]
    fn a_token_expired_within_the_leeway_is_accepted_with_its_own_expiry() {
        let token = hs256(&json!({ "sub": "desk-1", "exp": NOW_SECS - 30 }));
        let principal = check(&jwt(), &token, "desk-1").unwrap();
        assert_eq!(principal.expires, Some(UNIX_EPOCH + Duration::from_secs(NOW_SECS - 30)));
        let token = hs256(&json!({ "sub": "desk-1", "exp": NOW_SECS - 1 }));
        assert_eq!(check(&jwt().leeway(Duration::ZERO), &token, "desk-1"), Err(AuthError::Expired));
    }

    #[test]
    fn a_token_not_yet_valid_beyond_the_leeway_fails() {
        let token = hs256(&json!({ "sub": "desk-1", "nbf": NOW_SECS + 31 }));
        assert_eq!(check(&jwt(), &token, "desk-1"), Err(AuthError::Failed));
        let token = hs256(&json!({ "sub": "desk-1", "nbf": NOW_SECS + 30 }));
        assert!(check(&jwt(), &token, "desk-1").is_ok());
        let token = hs256(&json!({ "sub": "desk-1", "nbf": NOW_SECS - 5 }));
        assert!(check(&jwt().leeway(Duration::ZERO), &token, "desk-1").is_ok());
        let token = hs256(&json!({ "sub": "desk-1", "nbf": u64::MAX }));
        assert_eq!(check(&jwt(), &token, "desk-1"), Err(AuthError::Failed));
    }

    #[test]
    fn the_default_leeway_is_30_seconds() {
        assert_eq!(jwt().leeway, Duration::from_secs(30));
        assert_eq!(jwt().ids_claim, "client_ids");
    }

    #[test]
    fn claims_of_the_wrong_type_fail() {
        for claims in [
            json!({}),
            json!({ "sub": 42 }),
            json!({ "sub": "" }),
            json!({ "sub": "desk-1", "exp": "tomorrow" }),
            json!({ "sub": "desk-1", "exp": -1 }),
            json!({ "sub": "desk-1", "nbf": "yesterday" }),
            json!({ "sub": "alice", "client_ids": 7 }),
            json!({ "sub": "alice", "client_ids": null }),
            json!({ "sub": "alice", "client_ids": ["desk-1", 7] }),
            json!({ "sub": "alice", "client_ids": "desk 1" }),
            json!({ "sub": "alice", "client_ids": ["desk-1", "de*sk"] }),
        ] {
            assert_eq!(check(&jwt(), &hs256(&claims), "desk-1"), Err(AuthError::Failed), "{claims}");
        }
    }

    #[test]
    fn a_token_with_an_audience_fails() {
        let token = hs256(&json!({ "sub": "desk-1", "aud": "another-service" }));
        assert_eq!(check(&jwt(), &token, "desk-1"), Err(AuthError::Failed));
    }

    #[test]
    fn without_an_ids_claim_the_client_id_must_be_the_subject() {
        let token = hs256(&json!({ "sub": "desk-1" }));
        assert_eq!(check(&jwt(), &token, "desk-1").unwrap().allowed, AllowedIds::Exactly(id("desk-1")));
        assert_eq!(check(&jwt(), &token, "desk-2"), Err(AuthError::Forbidden));
        // A subject that is no client id permits none.
        let token = hs256(&json!({ "sub": "alice@example.com" }));
        assert_eq!(check(&jwt(), &token, "alice"), Err(AuthError::Forbidden));
    }

    #[test]
    fn an_ids_claim_string_permits_one_pattern() {
        let exact = hs256(&json!({ "sub": "alice", "client_ids": "desk-1" }));
        assert!(check(&jwt(), &exact, "desk-1").is_ok());
        assert_eq!(check(&jwt(), &exact, "desk-10"), Err(AuthError::Forbidden));
        assert_eq!(check(&jwt(), &exact, "alice"), Err(AuthError::Forbidden), "the claim replaces sub");

        let prefix = hs256(&json!({ "sub": "alice", "client_ids": "desk-*" }));
        assert_eq!(check(&jwt(), &prefix, "desk-10").unwrap().allowed, AllowedIds::Prefix("desk-".into()));
        assert_eq!(check(&jwt(), &prefix, "kiosk-1"), Err(AuthError::Forbidden));

        let any = hs256(&json!({ "sub": "ops", "client_ids": "*" }));
        assert_eq!(check(&jwt(), &any, "whatever").unwrap().allowed, AllowedIds::Any);
    }

    #[test]
    fn an_ids_claim_array_permits_any_of_its_patterns_and_reports_the_first_that_matches() {
        let token = hs256(&json!({ "sub": "alice", "client_ids": ["desk-1", "kiosk-*", "kiosk-7"] }));
        let jwt = jwt();
        assert_eq!(check(&jwt, &token, "desk-1").unwrap().allowed, AllowedIds::Exactly(id("desk-1")));
        assert_eq!(check(&jwt, &token, "kiosk-7").unwrap().allowed, AllowedIds::Prefix("kiosk-".into()));
        assert_eq!(check(&jwt, &token, "desk-2"), Err(AuthError::Forbidden));

        let empty = hs256(&json!({ "sub": "desk-1", "client_ids": [] }));
        assert_eq!(check(&jwt, &empty, "desk-1"), Err(AuthError::Forbidden), "an empty list permits nothing");
    }

    #[test]
    fn the_ids_claim_can_be_renamed() {
        let jwt = jwt().ids_claim("pulsewire/ids");
        let token = hs256(&json!({ "sub": "alice", "pulsewire/ids": ["desk-*"], "client_ids": ["kiosk-*"] }));
        assert!(check(&jwt, &token, "desk-3").is_ok());
        assert_eq!(check(&jwt, &token, "kiosk-3"), Err(AuthError::Forbidden));
    }

    #[test]
    fn mint_hs256_makes_a_token_the_authenticator_accepts() {
        let token = Jwt::mint_hs256(SECRET, "alice", Some(&["desk-1", "desk-2"]), Some(Duration::from_secs(60)));
        let principal = authenticate(&jwt(), Some(&token), "desk-2").unwrap();
        assert_eq!(principal.subject.as_str(), "alice");
        assert_eq!(principal.allowed, AllowedIds::Exactly(id("desk-2")));
        let left = principal.expires.unwrap().duration_since(SystemTime::now()).unwrap();
        assert!(left > Duration::from_secs(55) && left <= Duration::from_secs(60), "{left:?}");

        let claims = jsonwebtoken::dangerous::insecure_decode::<Value>(&token).unwrap().claims;
        assert!(claims["iat"].as_u64().is_some(), "{claims}");

        let forever = Jwt::mint_hs256(SECRET, "desk-9", None, None);
        assert_eq!(authenticate(&jwt(), Some(&forever), "desk-9").unwrap().expires, None);
        assert_eq!(authenticate(&jwt(), Some(&forever), "desk-8"), Err(AuthError::Forbidden));
        assert!(Token::new(forever).is_some(), "a minted token fits in a HELLO");
    }

    #[test]
    fn an_expired_minted_token_is_expired() {
        let token = Jwt::mint_hs256(SECRET, "desk-1", None, Some(Duration::ZERO));
        let jwt = jwt().leeway(Duration::ZERO);
        let later = SystemTime::now() + Duration::from_secs(2);
        assert_eq!(jwt.check(&token, &id("desk-1"), later), Err(AuthError::Expired));
    }

    /// A fresh P-256 key: its PKCS#8 DER private key and its public key PEM.
    fn p256_key() -> (Vec<u8>, String) {
        let secret = p256::SecretKey::random(&mut OsRng);
        let private = secret.to_pkcs8_der().unwrap().as_bytes().to_vec();
        let public = secret.public_key().to_public_key_pem(LineEnding::LF).unwrap();
        (private, public)
    }

    #[test]
    fn es256_tokens_are_checked_with_a_p256_public_key() {
        let (private, public) = p256_key();
        let key = JwtKey::from_public_key_pem(public.as_bytes()).unwrap();
        assert_eq!(key.algorithm, Algorithm::ES256);
        let jwt = Jwt::new(key);
        let claims = json!({ "sub": "alice", "client_ids": ["desk-*"], "exp": NOW_SECS + 60 });
        let token = sign(Algorithm::ES256, &EncodingKey::from_ec_der(&private), &claims);
        assert_eq!(check(&jwt, &token, "desk-1").unwrap().subject.as_str(), "alice");
        assert_eq!(check(&jwt, &token, "kiosk-1"), Err(AuthError::Forbidden));

        let (other, _) = p256_key();
        let forged = sign(Algorithm::ES256, &EncodingKey::from_ec_der(&other), &claims);
        assert_eq!(check(&jwt, &forged, "desk-1"), Err(AuthError::Failed));
    }

    /// A 1024-bit RSA key, made once per test run: big enough for RS256 to work, and quick
    /// to make in a debug build (a 2048-bit one takes seconds).
    fn rsa_key() -> &'static rsa::RsaPrivateKey {
        static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| rsa::RsaPrivateKey::new(&mut OsRng, 1024).unwrap())
    }

    #[test]
    fn rs256_tokens_are_checked_with_an_rsa_public_key_in_either_pem() {
        let private = rsa_key();
        let public = private.to_public_key();
        let spki = public.to_public_key_pem(LineEnding::LF).unwrap();
        let pkcs1 = public.to_pkcs1_pem(LineEnding::LF).unwrap();
        assert!(spki.starts_with("-----BEGIN PUBLIC KEY-----"), "{spki}");
        assert!(pkcs1.starts_with("-----BEGIN RSA PUBLIC KEY-----"), "{pkcs1}");

        let signing = EncodingKey::from_rsa_der(private.to_pkcs1_der().unwrap().as_bytes());
        let claims = json!({ "sub": "desk-1", "exp": NOW_SECS + 60 });
        let token = sign(Algorithm::RS256, &signing, &claims);
        for pem in [&spki, &pkcs1] {
            let key = JwtKey::from_pem(pem.as_bytes(), 1024).unwrap();
            assert_eq!(key.algorithm, Algorithm::RS256);
            let jwt = Jwt::new(key);
            assert_eq!(check(&jwt, &token, "desk-1").unwrap().subject.as_str(), "desk-1");
            assert_eq!(check(&jwt, &token, "desk-2"), Err(AuthError::Forbidden));
            let ps256 = sign(Algorithm::PS256, &signing, &claims);
            assert_eq!(check(&jwt, &ps256, "desk-1"), Err(AuthError::Failed), "only RS256");
            let expired = sign(Algorithm::RS256, &signing, &json!({ "sub": "desk-1", "exp": NOW_SECS - 60 }));
            assert_eq!(check(&jwt, &expired, "desk-1"), Err(AuthError::Expired));
            let other = EncodingKey::from_secret(pem.as_bytes());
            assert_eq!(check(&jwt, &sign(Algorithm::HS256, &other, &claims), "desk-1"), Err(AuthError::Failed));
        }
    }

    #[test]
    fn an_rsa_key_under_2048_bits_is_refused() {
        for pem in [
            rsa_key().to_public_key().to_public_key_pem(LineEnding::LF).unwrap(),
            rsa_key().to_public_key().to_pkcs1_pem(LineEnding::LF).unwrap(),
        ] {
            let error = JwtKey::from_public_key_pem(pem.as_bytes()).unwrap_err();
            assert_eq!(error, JwtError::RsaKeyTooSmall { bits: 1024 });
            assert_eq!(error.to_string(), "the RSA key has 1024 bits: at least 2048 are required");
        }
    }

    #[test]
    fn a_key_of_another_kind_is_refused_with_a_readable_error() {
        // The Ed25519 public key of RFC 8410, section 10.1.
        let ed25519 = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        let error = JwtKey::from_public_key_pem(ed25519.as_bytes()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "unsupported public key (algorithm 1.3.101.112): expected an RSA key (RS256) or an EC P-256 key (ES256)"
        );

        let p384 = p384::SecretKey::random(&mut OsRng).public_key().to_public_key_pem(LineEnding::LF).unwrap();
        let error = JwtKey::from_public_key_pem(p384.as_bytes()).unwrap_err();
        assert_eq!(error, JwtError::UnsupportedKey { algorithm: "an EC key on curve 1.3.132.0.34".into() });

        let secret = p256::SecretKey::random(&mut OsRng);
        let private = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        assert_eq!(JwtKey::from_public_key_pem(private.as_bytes()).unwrap_err(), JwtError::PrivateKey);

        let certificate = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        let error = JwtKey::from_public_key_pem(certificate.as_bytes()).unwrap_err();
        assert_eq!(error.to_string(), "the PEM holds a CERTIFICATE, not a public key");

        assert_eq!(JwtKey::from_public_key_pem(b"not a key").unwrap_err(), JwtError::NotPem);
        assert_eq!(JwtKey::from_public_key_pem(&[0xff, 0xfe]).unwrap_err(), JwtError::NotPem);

        let truncated = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9E\n-----END PUBLIC KEY-----\n";
        let error = JwtKey::from_public_key_pem(truncated.as_bytes()).unwrap_err();
        assert!(matches!(error, JwtError::InvalidKey { .. }), "{error:?}");
        assert!(error.to_string().starts_with("invalid public key: "), "{error}");
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let jwt = Jwt::new(JwtKey::hs256("very-secret-value"));
        let debug = format!("{jwt:?}");
        assert!(!debug.contains("very-secret-value") && !debug.contains("118, 101, 114"), "{debug}");
        assert!(debug.contains("HS256") && debug.contains("client_ids"), "{debug}");
    }
}
