//! Who a peer is: the server's authenticator seam, and the authenticators built in.
//!
//! A server with an [`Authenticator`] authenticates every `HELLO 2` before it looks at any
//! connection or session of that id: the authenticator turns the peer's client id, token,
//! address and transport into a [`Principal`] (a subject, an optional expiry and the client ids
//! the subject may use) or refuses it with an [`AuthError`], which the peer gets as its `ERROR`
//! code. An id that is online can then be taken over only by the same subject, and a session
//! resumes only for the same subject and client id.
//!
//! Built in: [`TokenFile`] (one `client-id subject token` a line, tokens compared in constant
//! time) and [`Jwt`] (HS256 with a shared secret, RS256 or ES256 with a public key).
//!
//! ```
//! use std::sync::Arc;
//! use pulsewire::auth::{AllowedIds, Authenticator, AuthError, AuthRequest, Principal, Subject};
//! use pulsewire::protocol::ClientId;
//!
//! /// Lets in the one client id "desk-1" with the token "let-me-in".
//! struct One;
//!
//! impl Authenticator for One {
//!     fn authenticate<'a>(&'a self, request: &'a AuthRequest) -> pulsewire::auth::AuthFuture<'a> {
//!         Box::pin(async move {
//!             match request.token.as_ref().map(|t| t.as_str()) {
//!                 None => Err(AuthError::Required),
//!                 Some("let-me-in") => Ok(Principal::new(Subject::new("alice"), AllowedIds::Exactly(request.client_id.clone()))),
//!                 Some(_) => Err(AuthError::Failed),
//!             }
//!         })
//!     }
//! }
//!
//! let authenticator: Arc<dyn Authenticator> = Arc::new(One);
//! # let _ = authenticator;
//! ```

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use crate::protocol::{ClientId, ErrorCode, Token};

mod jwt;
mod token_file;

pub use jwt::{Jwt, JwtError, JwtKey};
pub use token_file::{TokenFile, TokenFileError};

/// What an authenticator is given about a peer that sent `HELLO 2`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuthRequest {
    /// The client id the peer asks for.
    pub client_id: ClientId,
    /// Its token, if it sent one (redacted in `Debug`; never log it).
    pub token: Option<Token>,
    /// Its address.
    pub addr: SocketAddr,
    /// Whether it connected over TLS.
    pub tls: bool,
}

impl AuthRequest {
    /// A request (for tests and for authenticators that wrap others).
    pub fn new(client_id: ClientId, token: Option<Token>, addr: SocketAddr, tls: bool) -> AuthRequest {
        AuthRequest { client_id, token, addr, tls }
    }
}

/// Who a peer is, as its authenticator decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The subject: the identity the credential names (a user, a device, a service).
    pub subject: Subject,
    /// When the credential expires, if it does: past it (and a grace), the server ends the
    /// connection with `ERROR auth-expired`.
    pub expires: Option<SystemTime>,
    /// The client ids the subject may use.
    pub allowed: AllowedIds,
}

impl Principal {
    /// A principal that does not expire.
    pub fn new(subject: Subject, allowed: AllowedIds) -> Principal {
        Principal { subject, expires: None, allowed }
    }

    /// The same principal, expiring at `at`.
    pub fn expiring(self, at: SystemTime) -> Principal {
        Principal { expires: Some(at), ..self }
    }
}

/// An authenticated identity: the subject of a credential.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject(Arc<str>);

impl Subject {
    /// A subject named `name`.
    pub fn new(name: impl Into<String>) -> Subject {
        Subject(name.into().into())
    }

    /// The subject's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The client ids a subject may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedIds {
    /// Exactly this one.
    Exactly(ClientId),
    /// Every id that starts with this prefix.
    Prefix(String),
    /// Any id.
    Any,
}

impl AllowedIds {
    /// Whether `id` is among them.
    ///
    /// ```
    /// use pulsewire::auth::AllowedIds;
    /// use pulsewire::protocol::ClientId;
    /// let id = ClientId::new("desk-42").unwrap();
    /// assert!(AllowedIds::Prefix("desk-".into()).permits(&id));
    /// assert!(!AllowedIds::Exactly(ClientId::new("desk-1").unwrap()).permits(&id));
    /// assert!(AllowedIds::Any.permits(&id));
    /// ```
    pub fn permits(&self, id: &ClientId) -> bool {
        match self {
            AllowedIds::Exactly(allowed) => allowed == id,
            AllowedIds::Prefix(prefix) => id.as_str().starts_with(prefix.as_str()),
            AllowedIds::Any => true,
        }
    }
}

/// Why an authenticator refused a peer; each is the `ERROR` code the peer gets.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// No token, and one is required (`auth-required`).
    Required,
    /// The token is wrong, forged or unknown (`auth-failed`).
    Failed,
    /// The token has expired (`auth-expired`).
    Expired,
    /// The subject may not use this client id (`forbidden`).
    Forbidden,
    /// The authenticator could not decide: its backend is down, or it took too long
    /// (`auth-unavailable`). The text is for the server's log, never for the peer.
    Unavailable(String),
}

impl AuthError {
    /// The `ERROR` code the peer gets.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Required => ErrorCode::AuthRequired,
            AuthError::Failed => ErrorCode::AuthFailed,
            AuthError::Expired => ErrorCode::AuthExpired,
            AuthError::Forbidden => ErrorCode::Forbidden,
            AuthError::Unavailable(_) => ErrorCode::AuthUnavailable,
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Required => f.write_str("a token is required"),
            AuthError::Failed => f.write_str("the token was not accepted"),
            AuthError::Expired => f.write_str("the token has expired"),
            AuthError::Forbidden => f.write_str("this client id is not allowed for the token's subject"),
            AuthError::Unavailable(why) => write!(f, "authentication is unavailable: {why}"),
        }
    }
}

impl std::error::Error for AuthError {}

/// What [`Authenticator::authenticate`] returns.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<Principal, AuthError>> + Send + 'a>>;

/// Decides who a peer is. Usable as a trait object (`Arc<dyn Authenticator>`); it runs in the
/// peer's own connection task, inside the handshake timeout, so a slow one delays no pulse.
pub trait Authenticator: Send + Sync + 'static {
    /// Authenticates `request`.
    fn authenticate<'a>(&'a self, request: &'a AuthRequest) -> AuthFuture<'a>;
}
