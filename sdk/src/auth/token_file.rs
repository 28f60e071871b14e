//! [`TokenFile`]: static tokens, one `client-id subject token` a line.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::{AllowedIds, AuthError, AuthFuture, AuthRequest, Authenticator, Principal, Subject};
use crate::protocol::{ClientId, Token};

/// An authenticator with a fixed set of tokens, each naming a subject and the client ids it
/// may use.
///
/// The file has one `client-id subject token` a line, the three fields separated by spaces or
/// tabs. The client id is an exact id (`desk-1`), a prefix followed by `*` (`kiosk-*`: every
/// id that starts with `kiosk-`) or `*` (any id). Blank lines and lines whose first non-blank
/// character is `#` are ignored; a `#` after the first field is part of the line (a token may
/// contain one). Every token must be a valid [`Token`] and appear once.
///
/// A presented token is compared with every token of the file, each comparison in constant
/// time, so that how long it takes tells neither how much of a token was right nor which
/// entry matched (only the lengths of the tokens in the file). Neither `Debug` nor any error
/// shows a token.
///
/// ```
/// use futures::executor::block_on;
/// use pulsewire::auth::{AllowedIds, AuthError, AuthRequest, Authenticator, TokenFile};
/// use pulsewire::protocol::{ClientId, Token};
///
/// let tokens = TokenFile::parse(
///     "# client-id  subject  token
///      desk-1       alice    s3cret-of-alice
///      kiosk-*      kiosks   fleet-token-2024
///     ",
/// )
/// .unwrap();
/// assert_eq!(tokens.len(), 2);
///
/// let hello = |id: &str, token: Option<&str>| {
///     let token = token.map(|t| Token::new(t).unwrap());
///     AuthRequest::new(ClientId::new(id).unwrap(), token, "127.0.0.1:4000".parse().unwrap(), false)
/// };
/// let kiosk = block_on(tokens.authenticate(&hello("kiosk-7", Some("fleet-token-2024")))).unwrap();
/// assert_eq!(kiosk.subject.as_str(), "kiosks");
/// assert_eq!(kiosk.allowed, AllowedIds::Prefix("kiosk-".into()));
///
/// assert_eq!(block_on(tokens.authenticate(&hello("desk-2", Some("s3cret-of-alice")))), Err(AuthError::Forbidden));
/// assert_eq!(block_on(tokens.authenticate(&hello("desk-1", Some("guess")))), Err(AuthError::Failed));
/// assert_eq!(block_on(tokens.authenticate(&hello("desk-1", None))), Err(AuthError::Required));
/// ```
pub struct TokenFile {
    entries: Vec<Entry>,
}

/// One line of a token file.
struct Entry {
    allowed: AllowedIds,
    subject: Subject,
    token: Token,
}

impl TokenFile {
    /// Reads and parses the token file at `path` (see [`TokenFile::parse`]).
    pub fn load(path: impl AsRef<Path>) -> Result<TokenFile, TokenFileError> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|source| TokenFileError::Io { path: path.to_path_buf(), source })?;
        TokenFile::parse(&text)
    }

    /// Parses the text of a token file: one `client-id subject token` a line (see
    /// [`TokenFile`]).
    pub fn parse(text: &str) -> Result<TokenFile, TokenFileError> {
        let mut entries = Vec::new();
        // Token text -> its line, to refuse a token given twice.
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line_number = index + 1;
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = trimmed.split_whitespace().collect();
            let &[id, subject, token] = fields.as_slice() else {
                return Err(TokenFileError::FieldCount { line: line_number, found: fields.len() });
            };
            let allowed = parse_allowed(id).ok_or(TokenFileError::InvalidClientId { line: line_number })?;
            let token_value = Token::new(token).ok_or(TokenFileError::InvalidToken { line: line_number })?;
            if let Some(&first) = seen.get(token) {
                return Err(TokenFileError::DuplicateToken { line: line_number, first });
            }
            seen.insert(token, line_number);
            entries.push(Entry { allowed, subject: Subject::new(subject), token: token_value });
        }
        Ok(TokenFile { entries })
    }

    /// How many tokens the file holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file holds no token (then every peer is refused).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Decides who presents `token` and asks for `client_id`.
    fn check(&self, client_id: &ClientId, token: &Token) -> Result<Principal, AuthError> {
        let presented = token.as_str().as_bytes();
        // Every entry is compared, and the matching one is picked without a branch, so the
        // time taken does not depend on which entry matched.
        let mut matched = subtle::Choice::from(0);
        let mut index = 0u64;
        for (i, entry) in self.entries.iter().enumerate() {
            let equal = entry.token.as_str().as_bytes().ct_eq(presented);
            index.conditional_assign(&(i as u64), equal);
            matched |= equal;
        }
        if !bool::from(matched) {
            return Err(AuthError::Failed);
        }
        // `index` was assigned from an enumerate() position when `matched` became true.
        let entry = &self.entries[index as usize];
        if !entry.allowed.permits(client_id) {
            return Err(AuthError::Forbidden);
        }
        Ok(Principal::new(entry.subject.clone(), entry.allowed.clone()))
    }
}

impl Authenticator for TokenFile {
    fn authenticate<'a>(&'a self, request: &'a AuthRequest) -> AuthFuture<'a> {
        let result = match &request.token {
            None => Err(AuthError::Required),
            Some(token) => self.check(&request.client_id, token),
        };
        Box::pin(std::future::ready(result))
    }
}

impl fmt::Debug for TokenFile {
    /// Lists each entry's client ids and subject; never a token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenFile").field("entries", &self.entries).finish()
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry").field("allowed", &self.allowed).field("subject", &self.subject).finish_non_exhaustive()
    }
}

/// Parses a client-id pattern: an exact id, `prefix*` or `*`.
pub(super) fn parse_allowed(pattern: &str) -> Option<AllowedIds> {
    if pattern == "*" {
        return Some(AllowedIds::Any);
    }
    match pattern.strip_suffix('*') {
        // A prefix is made of the characters of a client id, and is no longer than one.
        Some(prefix) => ClientId::new(prefix).ok().map(|_| AllowedIds::Prefix(prefix.to_owned())),
        None => ClientId::new(pattern).ok().map(AllowedIds::Exactly),
    }
}

/// Why a token file could not be loaded. Its messages name the line, never a token.
#[derive(Debug)]
#[non_exhaustive]
pub enum TokenFileError {
    /// The file could not be read.
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A line does not have three fields.
    FieldCount {
        /// The line, from 1.
        line: usize,
        /// How many fields it has.
        found: usize,
    },
    /// A line's first field is neither a client id, a prefix followed by `*`, nor `*`.
    InvalidClientId {
        /// The line, from 1.
        line: usize,
    },
    /// A line's token is not a valid [`Token`] (1 to [`Token::MAX_LEN`] printable ASCII
    /// characters).
    InvalidToken {
        /// The line, from 1.
        line: usize,
    },
    /// A line repeats the token of an earlier line.
    DuplicateToken {
        /// The line, from 1.
        line: usize,
        /// The earlier line with the same token.
        first: usize,
    },
}

impl TokenFileError {
    /// The line the error is on, from 1 (`None` for an I/O error).
    pub fn line(&self) -> Option<usize> {
        match self {
            TokenFileError::Io { .. } => None,
            TokenFileError::FieldCount { line, .. }
            | TokenFileError::InvalidClientId { line }
            | TokenFileError::InvalidToken { line }
            | TokenFileError::DuplicateToken { line, .. } => Some(*line),
        }
    }
}

impl fmt::Display for TokenFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenFileError::Io { path, source } => write!(f, "cannot read token file {}: {source}", path.display()),
            TokenFileError::FieldCount { line, found } => {
                write!(f, "line {line}: expected 3 fields (client-id subject token), found {found}")
            }
            TokenFileError::InvalidClientId { line } => write!(
                f,
                "line {line}: invalid client id: expected an id of A-Z a-z 0-9 . _ : -, such a prefix followed by `*`, or `*`"
            ),
            TokenFileError::InvalidToken { line } => write!(
                f,
                "line {line}: invalid token: expected 1-{} printable ASCII characters without spaces",
                Token::MAX_LEN
            ),
            TokenFileError::DuplicateToken { line, first } => {
                write!(f, "line {line}: the same token as line {first}")
            }
        }
    }
}

impl std::error::Error for TokenFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TokenFileError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use futures::executor::block_on;

    use super::*;

    const FILE: &str = "\
# client-id  subject  token
desk-1       alice    alice-token

kiosk-*\tkiosks\tkiosk-token
   # an indented comment
*            ops      ops#token
";

    fn id(text: &str) -> ClientId {
        ClientId::new(text).unwrap()
    }

    fn request(client_id: &str, token: Option<&str>) -> AuthRequest {
        let addr: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        AuthRequest::new(id(client_id), token.map(|t| Token::new(t).unwrap()), addr, false)
    }

    fn authenticate(file: &TokenFile, client_id: &str, token: Option<&str>) -> Result<Principal, AuthError> {
        block_on(file.authenticate(&request(client_id, token)))
    }

    #[test]
    fn parse_reads_exact_ids_prefixes_and_any_and_skips_comments_and_blank_lines() {
        let file = TokenFile::parse(FILE).unwrap();
        assert_eq!(file.len(), 3);
        assert!(!file.is_empty());
        let allowed: Vec<&AllowedIds> = file.entries.iter().map(|e| &e.allowed).collect();
        assert_eq!(
            allowed,
            [&AllowedIds::Exactly(id("desk-1")), &AllowedIds::Prefix("kiosk-".into()), &AllowedIds::Any]
        );
    }

    #[test]
    fn an_empty_file_holds_no_token_and_refuses_every_peer() {
        let file = TokenFile::parse("\n# nothing here\n   \n").unwrap();
        assert!(file.is_empty());
        assert_eq!(file.len(), 0);
        assert_eq!(authenticate(&file, "desk-1", Some("alice-token")), Err(AuthError::Failed));
    }

    #[test]
    fn crlf_line_ends_are_accepted() {
        let file = TokenFile::parse("desk-1 alice alice-token\r\ndesk-2 bob bob-token\r\n").unwrap();
        assert_eq!(file.len(), 2);
        assert!(authenticate(&file, "desk-2", Some("bob-token")).is_ok());
    }

    #[test]
    fn a_matching_token_for_a_permitted_id_gives_its_subject_without_expiry() {
        let file = TokenFile::parse(FILE).unwrap();
        assert_eq!(
            authenticate(&file, "desk-1", Some("alice-token")),
            Ok(Principal { subject: Subject::new("alice"), expires: None, allowed: AllowedIds::Exactly(id("desk-1")) })
        );
        let kiosk = authenticate(&file, "kiosk-42", Some("kiosk-token")).unwrap();
        assert_eq!(kiosk.subject.as_str(), "kiosks");
        assert_eq!(kiosk.allowed, AllowedIds::Prefix("kiosk-".into()));
        let ops = authenticate(&file, "anything.at:all", Some("ops#token")).unwrap();
        assert_eq!((ops.subject.as_str(), ops.allowed), ("ops", AllowedIds::Any));
    }

    #[test]
    fn a_matching_token_for_an_id_it_does_not_permit_is_forbidden() {
        let file = TokenFile::parse(FILE).unwrap();
        assert_eq!(authenticate(&file, "desk-2", Some("alice-token")), Err(AuthError::Forbidden));
        assert_eq!(authenticate(&file, "kiosk", Some("kiosk-token")), Err(AuthError::Forbidden));
        assert_eq!(authenticate(&file, "desk-1", Some("kiosk-token")), Err(AuthError::Forbidden));
    }

    #[test]
    fn an_unknown_token_fails_even_for_an_id_of_the_file() {
        let file = TokenFile::parse(FILE).unwrap();
        assert_eq!(authenticate(&file, "desk-1", Some("alice-tokeN")), Err(AuthError::Failed));
        assert_eq!(authenticate(&file, "desk-1", Some("alice-token2")), Err(AuthError::Failed));
        assert_eq!(authenticate(&file, "desk-1", Some("alice")), Err(AuthError::Failed));
    }

    #[test]
    fn no_token_is_required() {
        let file = TokenFile::parse(FILE).unwrap();
        assert_eq!(authenticate(&file, "desk-1", None), Err(AuthError::Required));
    }

    #[test]
    fn the_last_entry_matches_as_well_as_the_first() {
        let text: String = (0..50).map(|i| format!("desk-{i} user-{i} token-{i}\n")).collect();
        let file = TokenFile::parse(&text).unwrap();
        for i in [0, 1, 25, 49] {
            let principal = authenticate(&file, &format!("desk-{i}"), Some(&format!("token-{i}"))).unwrap();
            assert_eq!(principal.subject.as_str(), format!("user-{i}"));
        }
    }

    #[test]
    fn a_line_without_three_fields_is_refused_with_its_number() {
        let error = TokenFile::parse("desk-1 alice alice-token\n\ndesk-2 bob\n").unwrap_err();
        assert!(matches!(error, TokenFileError::FieldCount { line: 3, found: 2 }), "{error:?}");
        assert_eq!(error.line(), Some(3));
        let error = TokenFile::parse("desk-1 alice alice-token extra\n").unwrap_err();
        assert!(matches!(error, TokenFileError::FieldCount { line: 1, found: 4 }), "{error:?}");
    }

    #[test]
    fn an_invalid_client_id_pattern_is_refused() {
        let too_long = "x".repeat(65);
        for pattern in ["desk/1", "de*sk", "**", "desk-**", "é", &too_long] {
            let error = TokenFile::parse(&format!("{pattern} alice alice-token\n")).unwrap_err();
            assert!(matches!(error, TokenFileError::InvalidClientId { line: 1 }), "{pattern}: {error:?}");
        }
    }

    #[test]
    fn an_invalid_token_is_refused() {
        let long = "t".repeat(Token::MAX_LEN + 1);
        let error = TokenFile::parse(&format!("desk-1 alice {long}\n")).unwrap_err();
        assert!(matches!(error, TokenFileError::InvalidToken { line: 1 }), "{error:?}");
        let error = TokenFile::parse("desk-1 alice tökén\n").unwrap_err();
        assert!(matches!(error, TokenFileError::InvalidToken { line: 1 }), "{error:?}");
        assert!(TokenFile::parse(&format!("desk-1 alice {}\n", "t".repeat(Token::MAX_LEN))).is_ok());
    }

    #[test]
    fn the_same_token_twice_is_refused_with_both_lines() {
        let error = TokenFile::parse("desk-1 alice same-token\n# gap\ndesk-2 bob same-token\n").unwrap_err();
        assert!(matches!(error, TokenFileError::DuplicateToken { line: 3, first: 1 }), "{error:?}");
    }

    #[test]
    fn error_messages_name_the_line_and_never_the_token() {
        let cases = [
            ("desk-1 alice secret-one\ndesk-2 secret-two\n", "line 2: expected 3 fields"),
            ("secret*one desk-1 alice\n", "line 1: invalid client id"),
            ("desk-1 alice secret-\u{7f}one\n", "line 1: invalid token"),
            ("desk-1 alice secret-one\ndesk-2 bob secret-one\n", "line 2: the same token as line 1"),
        ];
        for (text, expected) in cases {
            let message = TokenFile::parse(text).unwrap_err().to_string();
            assert!(message.starts_with(expected), "{message}");
            assert!(!message.contains("secret"), "{message}");
        }
    }

    #[test]
    fn debug_shows_ids_and_subjects_but_no_token() {
        let file = TokenFile::parse(FILE).unwrap();
        let debug = format!("{file:?}");
        assert!(debug.contains("alice") && debug.contains("kiosk-"), "{debug}");
        for token in ["alice-token", "kiosk-token", "ops#token"] {
            assert!(!debug.contains(token), "{debug}");
        }
    }

    #[test]
    fn load_reads_a_file_and_names_the_path_when_it_cannot() {
        let dir = std::env::temp_dir().join(format!("pulsewire-token-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens");
        std::fs::write(&path, FILE).unwrap();
        let file = TokenFile::load(&path).unwrap();
        assert_eq!(file.len(), 3);
        std::fs::remove_file(&path).unwrap();

        let error = TokenFile::load(&path).unwrap_err();
        assert!(
            matches!(&error, TokenFileError::Io { path: p, source } if *p == path && source.kind() == io::ErrorKind::NotFound)
        );
        assert_eq!(error.line(), None);
        assert!(error.to_string().contains(&*path.to_string_lossy()), "{error}");
        assert!(std::error::Error::source(&error).is_some());
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn a_line_error_from_a_loaded_file_is_the_same_as_from_parse() {
        let dir = std::env::temp_dir().join(format!("pulsewire-token-file-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens");
        std::fs::write(&path, "desk-1 alice\n").unwrap();
        let error = TokenFile::load(&path).unwrap_err();
        assert!(matches!(error, TokenFileError::FieldCount { line: 1, found: 2 }), "{error:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parse_allowed_reads_the_three_kinds_of_pattern() {
        assert_eq!(parse_allowed("*"), Some(AllowedIds::Any));
        assert_eq!(parse_allowed("desk-*"), Some(AllowedIds::Prefix("desk-".into())));
        assert_eq!(parse_allowed("desk-1"), Some(AllowedIds::Exactly(id("desk-1"))));
        assert_eq!(parse_allowed(""), None);
        assert_eq!(parse_allowed("a b"), None);
        assert_eq!(parse_allowed("*desk"), None);
    }
}
