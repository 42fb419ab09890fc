//! Tokens for trying Switchboard with authentication on: `switchboard token` signs with
//! `AUTH_JWT_SECRET` the claims that [`Authenticator`](crate::Authenticator) checks
//! (PROTOCOL.md §6), so the console and a client can connect without an identity
//! provider. Production tokens come from the application's own login.

use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde::Serialize;
use switchboard_actors::{now_ms, Pattern};

/// The claims of a token: who, until when, and which rooms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenClaims {
    /// The user.
    pub sub: String,
    /// Issued at, in seconds since the epoch.
    pub iat: u64,
    /// Expiry, in seconds since the epoch.
    pub exp: u64,
    /// The audience, when the server checks one (`AUTH_JWT_AUDIENCE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Room patterns the user may subscribe to.
    pub subscribe: Vec<String>,
    /// Room patterns the user may publish in.
    pub publish: Vec<String>,
    /// What other members see of the user in a presence room (PROTOCOL.md §9).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

impl TokenClaims {
    /// `switchboard token --ttl`'s default: an hour.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
    /// The longest `--ttl`: a token for trying things out, not a credential to keep.
    pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

    /// Claims for `sub`, valid from now for `ttl`, allowed nothing yet.
    pub fn new(sub: &str, ttl: Duration) -> TokenClaims {
        let iat = now_ms() / 1000;
        TokenClaims {
            sub: sub.to_owned(),
            iat,
            exp: iat + ttl.as_secs().max(1),
            aud: None,
            subscribe: Vec::new(),
            publish: Vec::new(),
            info: None,
        }
    }

    /// The HS256 JWT of these claims, signed with `secret`.
    pub fn sign(&self, secret: &[u8]) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            self,
            &EncodingKey::from_secret(secret),
        )
        .expect("claims of strings and numbers serialize")
    }
}

/// A room pattern as the server reads it (§6: `*` one segment, a trailing `**` one or
/// more); a pattern the server would ignore is refused here instead.
pub fn parse_pattern(text: &str) -> Result<String, String> {
    match Pattern::parse(text) {
        Some(_) => Ok(text.to_owned()),
        None => Err(format!(
            "{text:?} is not a room pattern (segments of A-Z a-z 0-9 _ . - separated by `:`, \
             `*` for one segment, a trailing `**` for one or more)"
        )),
    }
}

/// A lifetime: a whole number with a unit, `90s`, `30m`, `1h`, `7d` (a bare number is
/// seconds), from one second to [`TokenClaims::MAX_TTL`].
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || format!("{text:?} is not a lifetime such as 90s, 30m, 1h or 7d");
    let number: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let ttl = Duration::from_secs(number.saturating_mul(seconds));
    if ttl.is_zero() || ttl > TokenClaims::MAX_TTL {
        return Err(format!("{text:?}: a lifetime is 1s to 366d"));
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Authenticator;
    use switchboard_actors::Room;

    const SECRET: &[u8] = b"console-secret";

    #[test]
    fn a_signed_token_grants_exactly_its_patterns() {
        let mut claims = TokenClaims::new("alice", Duration::from_secs(3600));
        claims.subscribe = vec!["match:*".into()];
        claims.publish = vec!["chat:**".into()];
        let grant = Authenticator::new(SECRET, None)
            .verify(&claims.sign(SECRET))
            .expect("the server accepts the token");
        let room = |name| Room::new(name).unwrap();
        assert_eq!(grant.sub, "alice");
        assert!(grant.may_subscribe(&room("match:42")));
        assert!(!grant.may_subscribe(&room("match:42:chat")));
        assert!(!grant.may_subscribe(&room("chat:lobby")));
        assert!(grant.may_subscribe(&room("player:alice")), "own room, §6");
        assert!(grant.may_publish(&room("chat:lobby")));
        assert!(grant.may_publish(&room("chat:eu:lobby")));
        assert!(!grant.may_publish(&room("match:42")));
        let left = grant.expires_at_ms - now_ms();
        assert!((3_590_000..=3_600_000).contains(&left), "{left} ms left");
    }

    #[test]
    fn the_audience_and_the_secret_must_match() {
        let mut claims = TokenClaims::new("bob", Duration::from_secs(60));
        claims.aud = Some("app".into());
        let token = claims.sign(SECRET);
        assert!(Authenticator::new(SECRET, Some("app".into()))
            .verify(&token)
            .is_ok());
        assert!(Authenticator::new(SECRET, None).verify(&token).is_err());
        assert!(Authenticator::new(b"other", Some("app".into()))
            .verify(&token)
            .is_err());
    }

    #[test]
    fn lifetimes_and_patterns_are_checked() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in [
            "",
            "0s",
            "h",
            "1w",
            "-1h",
            "1.5h",
            "400d",
            "99999999999999999999",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
        assert!(parse_pattern("chat:**").is_ok());
        assert!(parse_pattern("match:*").is_ok());
        for bad in ["chat:**:x", "m*", "a b", ""] {
            assert!(parse_pattern(bad).is_err(), "{bad:?}");
        }
    }
}
