//! When a client with a token provider asks it for a new token, and when a refusal of its token
//! is final: a plain type, so the rule is tested without sockets or time.

use crate::protocol::{ErrorCode, Token};

/// The token rule of a client with a token provider.
///
/// The provider is asked before the first connect, after every `auth-expired` (the server's
/// grace passed, or the token was already expired at `HELLO`), and once after `auth-failed` or
/// `auth-required`: the same refusal twice in a row is final, and so is the provider handing
/// back the very token the server just refused as expired. Without a provider nothing is
/// renewed, and every refusal of the token is final.
#[derive(Debug)]
pub(crate) struct TokenRenewal {
    provider: bool,
    need: bool,
    refused_in_a_row: u32,
    /// The last token refused as expired.
    expired: Option<Token>,
}

impl TokenRenewal {
    /// The rule for a client with (or without) a token provider.
    pub(crate) fn new(provider: bool) -> TokenRenewal {
        TokenRenewal { provider, need: provider, refused_in_a_row: 0, expired: None }
    }

    /// Whether the provider must be asked before the next connect attempt.
    pub(crate) fn needs_token(&self) -> bool {
        self.need
    }

    /// The provider gave a token.
    pub(crate) fn got_token(&mut self) {
        self.need = false;
    }

    /// A connection was welcomed and later lost for a reason other than its token: the next
    /// refusal counts from zero.
    pub(crate) fn was_online(&mut self) {
        self.refused_in_a_row = 0;
    }

    /// The server refused or ended the connection with `code` while it used `used`. Returns
    /// true when the provider is asked for a new token, so that the refusal is not final.
    pub(crate) fn refused(&mut self, code: &ErrorCode, used: Option<&Token>) -> bool {
        let renew = match code {
            ErrorCode::AuthExpired => {
                let again = used.is_some() && used == self.expired.as_ref();
                self.expired = used.cloned();
                !again
            }
            ErrorCode::AuthFailed | ErrorCode::AuthRequired => {
                self.refused_in_a_row += 1;
                self.refused_in_a_row < 2
            }
            _ => false,
        };
        let renew = self.provider && renew;
        self.need |= renew;
        renew
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str) -> Token {
        Token::new(text).unwrap()
    }

    #[test]
    fn the_provider_is_asked_before_the_first_connect_only_when_there_is_one() {
        assert!(TokenRenewal::new(true).needs_token());
        assert!(!TokenRenewal::new(false).needs_token());
    }

    #[test]
    fn every_expiry_asks_for_a_new_token() {
        let mut rule = TokenRenewal::new(true);
        rule.got_token();
        for n in 0..5 {
            assert!(rule.refused(&ErrorCode::AuthExpired, Some(&token(&format!("t{n}")))));
            assert!(rule.needs_token());
            rule.got_token();
            assert!(!rule.needs_token());
        }
    }

    #[test]
    fn the_same_token_refused_as_expired_twice_is_final() {
        let mut rule = TokenRenewal::new(true);
        assert!(rule.refused(&ErrorCode::AuthExpired, Some(&token("stale"))));
        rule.got_token();
        assert!(!rule.refused(&ErrorCode::AuthExpired, Some(&token("stale"))));
        assert!(!rule.needs_token());
    }

    #[test]
    fn a_failed_or_missing_token_is_asked_for_once_more_then_final() {
        for code in [ErrorCode::AuthFailed, ErrorCode::AuthRequired] {
            let mut rule = TokenRenewal::new(true);
            assert!(rule.refused(&code, Some(&token("a"))));
            rule.got_token();
            assert!(!rule.refused(&code, Some(&token("b"))), "{code}: twice in a row");
        }
    }

    #[test]
    fn a_time_online_between_two_refusals_starts_the_count_again() {
        let mut rule = TokenRenewal::new(true);
        assert!(rule.refused(&ErrorCode::AuthFailed, None));
        rule.got_token();
        rule.was_online();
        assert!(rule.refused(&ErrorCode::AuthFailed, None));
    }

    #[test]
    fn without_a_provider_and_for_other_codes_nothing_is_renewed() {
        let mut rule = TokenRenewal::new(false);
        assert!(!rule.refused(&ErrorCode::AuthExpired, Some(&token("t"))));
        assert!(!rule.needs_token());
        let mut rule = TokenRenewal::new(true);
        rule.got_token();
        assert!(!rule.refused(&ErrorCode::Forbidden, Some(&token("t"))));
        assert!(!rule.refused(&ErrorCode::Replaced, None));
        assert!(!rule.needs_token());
    }
}
