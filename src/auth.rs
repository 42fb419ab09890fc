//! Authentication and authorization (PROTOCOL.md §6): HS256 JWTs and room patterns.

use std::{fmt, sync::Arc};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;
use switchboard_actors::{now_ms, Pattern, Room};

/// Checks tokens. Built once from `AUTH_JWT_SECRET` and `AUTH_JWT_AUDIENCE`.
#[derive(Clone)]
pub struct Authenticator {
    key: DecodingKey,
    audience: Option<String>,
    validation: Validation,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("Authenticator")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// Why a token was refused. Its text never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a well-formed HS256 JWT with our signature.
    #[error("invalid token")]
    Invalid,
    /// Past its `exp` (no leeway).
    #[error("token expired")]
    Expired,
    /// Its `aud` does not fit `AUTH_JWT_AUDIENCE` (RFC 7519 §4.1.3).
    #[error("token is for another audience")]
    WrongAudience,
}

/// What a valid token grants: who, until when, and which rooms.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The user (`sub`).
    pub sub: String,
    /// `exp`, in ms since the epoch.
    pub expires_at_ms: u64,
    /// The `info` claim, any JSON (a presence member's `info`, PROTOCOL.md §9).
    pub info: Option<Arc<RawValue>>,
    subscribe: Vec<Pattern>,
    publish: Vec<Pattern>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
}

impl Authenticator {
    /// An authenticator for tokens signed with `secret`, for `audience` if set.
    pub fn new(secret: &[u8], audience: Option<String>) -> Authenticator {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        // The audience rule of §6 is stricter than the library's: checked below.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Authenticator {
            key: DecodingKey::from_secret(secret),
            audience,
            validation,
        }
    }

    /// Checks a token and returns what it grants.
    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            })?
            .claims;
        let expires_at_ms = claims.exp.saturating_mul(1000);
        if expires_at_ms <= now_ms() {
            return Err(AuthError::Expired);
        }
        let audience_ok = match (&self.audience, &claims.aud) {
            (None, None) => true,
            (Some(want), Some(Audience::One(aud))) => aud == want,
            (Some(want), Some(Audience::Many(auds))) => auds.contains(want),
            _ => false,
        };
        if !audience_ok {
            return Err(AuthError::WrongAudience);
        }
        Ok(Grant {
            subscribe: claims
                .subscribe
                .iter()
                .filter_map(|p| Pattern::parse(p))
                .collect(),
            publish: claims
                .publish
                .iter()
                .filter_map(|p| Pattern::parse(p))
                .collect(),
            sub: claims.sub,
            expires_at_ms,
            // `"info": null` is no info.
            info: claims
                .info
                .filter(|info| info.get() != "null")
                .map(Arc::from),
        })
    }
}

/// Grants are equal when their claims are; `info` compared as its JSON text.
impl PartialEq for Grant {
    fn eq(&self, other: &Grant) -> bool {
        let info = |grant: &Grant| grant.info.as_ref().map(|info| info.get().to_owned());
        self.sub == other.sub
            && self.expires_at_ms == other.expires_at_ms
            && self.subscribe == other.subscribe
            && self.publish == other.publish
            && info(self) == info(other)
    }
}

impl Eq for Grant {}

impl Grant {
    /// Whether the user may subscribe to `room`: a `subscribe` pattern matches, or it
    /// is the user's own `player:{sub}`.
    pub fn may_subscribe(&self, room: &Room) -> bool {
        let own = room.as_str().strip_prefix("player:") == Some(self.sub.as_str())
            && Room::is_segment(&self.sub);
        own || self.subscribe.iter().any(|p| p.matches(room.as_str()))
    }

    /// Whether the user may publish in `room`.
    pub fn may_publish(&self, room: &Room) -> bool {
        self.publish.iter().any(|p| p.matches(room.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret";

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn in_an_hour() -> u64 {
        now_ms() / 1000 + 3600
    }

    #[test]
    fn patterns_match_whole_segments() {
        let p = |s| Pattern::parse(s).unwrap();
        assert!(p("match:*").matches("match:42"));
        assert!(!p("match:*").matches("match:42:chat"));
        assert!(!p("match:*").matches("match"));
        assert!(p("match:**").matches("match:42:chat"));
        assert!(p("match:**").matches("match:42"));
        assert!(!p("match:**").matches("match"));
        assert!(p("leaderboard:updates").matches("leaderboard:updates"));
        assert!(!p("leaderboard:updates").matches("leaderboard:updates2"));
        assert!(p("*:events").matches("match:events"));
        assert!(p("**").matches("anything:at:all"));
        assert!(Pattern::parse("m*").is_none(), "no partial segments");
        assert!(Pattern::parse("a:**:b").is_none());
        assert!(Pattern::parse("a::b").is_none());
    }

    /// An independent reading of §6: recursive, over the raw strings.
    fn oracle(pattern: &str, room: &str) -> bool {
        fn go(p: &[&str], r: &[&str]) -> bool {
            match (p, r) {
                ([], []) => true,
                (["**"], rest) => !rest.is_empty(),
                ([head, p_rest @ ..], [seg, r_rest @ ..]) => {
                    (*head == "*" || head == seg) && *head != "**" && go(p_rest, r_rest)
                }
                _ => false,
            }
        }
        let p: Vec<&str> = pattern.split(':').collect();
        let r: Vec<&str> = room.split(':').collect();
        p.iter().all(|s| !s.is_empty()) && r.iter().all(|s| !s.is_empty()) && go(&p, &r)
    }

    #[test]
    fn a_thousand_random_users_and_rooms_get_the_right_answer() {
        let mut rng = fastrand::Rng::with_seed(7);
        let pick = |rng: &mut fastrand::Rng, from: &[&str], max: usize| -> String {
            let n = rng.usize(1..=max);
            (0..n)
                .map(|_| from[rng.usize(..from.len())])
                .collect::<Vec<_>>()
                .join(":")
        };
        let mut checked = 0;
        for _ in 0..1000 {
            let sub = ["u1", "u2", "a"][rng.usize(..3)].to_owned();
            let patterns: Vec<String> = (0..rng.usize(0..4))
                .map(|_| pick(&mut rng, &["a", "b", "player", "*", "**"], 4))
                .collect();
            let room_name = if rng.bool() {
                pick(&mut rng, &["a", "b", "player", "u1", "u2"], 4)
            } else {
                format!("player:{}", ["u1", "u2", "a"][rng.usize(..3)])
            };
            let room = Room::new(&room_name).unwrap();
            let grant = Grant {
                sub: sub.clone(),
                expires_at_ms: u64::MAX,
                info: None,
                subscribe: patterns.iter().filter_map(|p| Pattern::parse(p)).collect(),
                publish: patterns.iter().filter_map(|p| Pattern::parse(p)).collect(),
            };
            let by_pattern = patterns.iter().any(|p| oracle(p, &room_name));
            let own = room_name == format!("player:{sub}");
            assert_eq!(
                grant.may_subscribe(&room),
                by_pattern || own,
                "{sub} {patterns:?} {room_name}"
            );
            assert_eq!(
                grant.may_publish(&room),
                by_pattern,
                "{sub} {patterns:?} {room_name}"
            );
            checked += 1;
        }
        assert_eq!(checked, 1000);
    }

    #[test]
    fn grants_follow_the_claims_and_the_own_player_room() {
        let auth = Authenticator::new(SECRET, None);
        let grant = auth
            .verify(&token(json!({"sub": "u1", "exp": in_an_hour(), "subscribe": ["match:*"], "publish": ["chat:**"]})))
            .unwrap();
        let room = |s| Room::new(s).unwrap();
        assert!(grant.may_subscribe(&room("match:9")));
        assert!(grant.may_subscribe(&room("player:u1")));
        assert!(!grant.may_subscribe(&room("player:u2")));
        assert!(!grant.may_subscribe(&room("leaderboard:updates")));
        assert!(grant.may_publish(&room("chat:a:b")));
        assert!(!grant.may_publish(&room("match:9")));
    }

    #[test]
    fn refuses_bad_expired_and_foreign_tokens() {
        let auth = Authenticator::new(SECRET, None);
        assert_eq!(auth.verify("not a jwt"), Err(AuthError::Invalid));
        let past = token(json!({"sub": "u", "exp": now_ms() / 1000 - 1}));
        assert_eq!(auth.verify(&past), Err(AuthError::Expired));
        let other = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "u", "exp": in_an_hour()}),
            &EncodingKey::from_secret(b"other"),
        )
        .unwrap();
        assert_eq!(auth.verify(&other), Err(AuthError::Invalid));
        assert_eq!(
            auth.verify(&token(json!({"exp": in_an_hour()}))),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn audience_follows_rfc_7519() {
        let exp = in_an_hour();
        let with = |aud: serde_json::Value| token(json!({"sub": "u", "exp": exp, "aud": aud}));
        let without = token(json!({"sub": "u", "exp": exp}));
        let open = Authenticator::new(SECRET, None);
        assert!(open.verify(&without).is_ok());
        assert_eq!(
            open.verify(&with(json!("app"))),
            Err(AuthError::WrongAudience)
        );
        let strict = Authenticator::new(SECRET, Some("app".into()));
        assert!(strict.verify(&with(json!("app"))).is_ok());
        assert!(strict.verify(&with(json!(["x", "app"]))).is_ok());
        assert_eq!(
            strict.verify(&with(json!("web"))),
            Err(AuthError::WrongAudience)
        );
        assert_eq!(strict.verify(&without), Err(AuthError::WrongAudience));
    }
}
