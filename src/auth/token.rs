//! Bearer tokens of Dockyard's own token service, pure: scopes as clients ask for them, and
//! signing and verifying tokens.
//!
//! A token is a JWT, the shape Docker's token specification describes and clients treat as
//! opaque. Only Dockyard reads its tokens back, so it is HS256 with a key kept in the
//! database. Signing and checking are `jsonwebtoken`'s: it pins the algorithm (a token whose
//! header says `none` or anything but HS256 is refused before its claims are read) and
//! compares signatures in constant time. The claims carry Docker's `access` list: the
//! repositories and the actions on each that the token grants.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The length of the signing key.
pub const KEY_LEN: usize = 32;

/// One entry of a token's `access` claim, and of a `scope` request parameter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// `repository` (or `registry` for `registry:catalog:*`).
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Access {
    pub fn grants(&self, kind: &str, name: &str, action: &str) -> bool {
        self.kind == kind && self.name == name && self.actions.iter().any(|a| a == action)
    }
}

/// Parses a `scope` parameter: space-separated `type:name:action,action` entries. The name may
/// itself contain a colon (a registry host with a port), so type is cut at the first colon and
/// the actions at the last. Malformed entries are ignored, as Distribution does.
pub fn parse_scope(scope: &str) -> Vec<Access> {
    scope
        .split(' ')
        .filter_map(|entry| {
            let (kind, rest) = entry.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            if kind.is_empty() || name.is_empty() {
                return None;
            }
            Some(Access {
                kind: kind.to_string(),
                name: name.to_string(),
                actions: actions
                    .split(',')
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// What a token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The user name, or empty for an anonymous caller.
    pub sub: String,
    pub aud: String,
    /// Unix seconds.
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<Access>,
}

impl Claims {
    pub fn subject(&self) -> Option<&str> {
        (!self.sub.is_empty()).then_some(self.sub.as_str())
    }

    pub fn grants(&self, kind: &str, name: &str, action: &str) -> bool {
        self.access.iter().any(|a| a.grants(kind, name, action))
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("bad token signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued for another service")]
    Audience,
}

pub fn sign(key: &[u8; KEY_LEN], claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(key),
    )
    .expect("HS256 signing of serializable claims cannot fail")
}

/// Checks the algorithm and the signature before reading anything else, then the audience
/// and the times. `now` is passed in (Unix seconds) so that the times are checked against
/// the same clock that issued the token, and so that tests can move it.
pub fn verify(
    key: &[u8; KEY_LEN],
    token: &str,
    service: &str,
    now: u64,
) -> Result<Claims, TokenError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[service]);
    validation.set_required_spec_claims(&["exp", "nbf", "aud"]);
    // Checked below against `now`, without leeway: one server issues and checks.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    let claims = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(key), &validation)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => TokenError::Signature,
            ErrorKind::InvalidAudience => TokenError::Audience,
            _ => TokenError::Malformed,
        })?
        .claims;
    if now >= claims.exp {
        return Err(TokenError::Expired);
    }
    if now < claims.nbf {
        return Err(TokenError::NotYetValid);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    const KEY: [u8; KEY_LEN] = [7; KEY_LEN];

    fn claims() -> Claims {
        Claims {
            iss: "dockyard".into(),
            sub: "alice".into(),
            aud: "dockyard".into(),
            exp: 1_000,
            nbf: 900,
            iat: 900,
            jti: "j".into(),
            access: parse_scope("repository:alice/app:pull,push"),
        }
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let t = sign(&KEY, &claims());
        assert_eq!(t.split('.').count(), 3, "JWT-shaped");
        let c = verify(&KEY, &t, "dockyard", 950).unwrap();
        assert_eq!(c, claims());
        assert!(c.grants("repository", "alice/app", "push"));
        assert!(!c.grants("repository", "alice/app", "delete"));
        assert!(!c.grants("repository", "alice/other", "pull"));
        assert_eq!(
            verify(&KEY, &t, "dockyard", 1_000),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(&KEY, &t, "dockyard", 899),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(verify(&KEY, &t, "other", 950), Err(TokenError::Audience));
    }

    #[test]
    fn tampering_or_another_key_is_refused() {
        let t = sign(&KEY, &claims());
        assert_eq!(
            verify(&[8; KEY_LEN], &t, "dockyard", 950),
            Err(TokenError::Signature)
        );
        // Widen the access claim and re-encode it under the old signature.
        let parts: Vec<&str> = t.split('.').collect();
        let mut c = claims();
        c.access[0].actions.push("delete".into());
        let forged_claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert_eq!(
            verify(&KEY, &forged, "dockyard", 950),
            Err(TokenError::Signature)
        );
        for junk in ["", "a", "a.b", "a.b.c", "...", &t[..t.len() - 2]] {
            assert!(verify(&KEY, junk, "dockyard", 950).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn another_algorithm_in_the_header_is_refused() {
        let t = sign(&KEY, &claims());
        let parts: Vec<&str> = t.split('.').collect();
        // alg "none" with no signature, and HS512 keyed with the same secret: both refused,
        // whatever the signature says.
        let none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        for forged in [
            format!("{none}.{}.", parts[1]),
            format!("{none}.{}.{}", parts[1], parts[2]),
        ] {
            assert_eq!(
                verify(&KEY, &forged, "dockyard", 950),
                Err(TokenError::Malformed),
                "{forged}"
            );
        }
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims(),
            &EncodingKey::from_secret(&KEY),
        )
        .unwrap();
        assert_eq!(
            verify(&KEY, &hs512, "dockyard", 950),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn scopes_parse_like_distribution() {
        assert_eq!(
            parse_scope("repository:library/alpine:pull,push"),
            vec![Access {
                kind: "repository".into(),
                name: "library/alpine".into(),
                actions: vec!["pull".into(), "push".into()],
            }]
        );
        let two = parse_scope("repository:a:pull registry:catalog:*");
        assert_eq!(two.len(), 2);
        assert_eq!(two[1].name, "catalog");
        assert_eq!(two[1].actions, vec!["*".to_string()]);
        assert_eq!(
            parse_scope("repository:host:5000/x:pull")[0].name,
            "host:5000/x"
        );
        assert!(parse_scope("garbage").is_empty());
        assert!(parse_scope(":x:pull").is_empty());
        assert!(parse_scope("").is_empty());
    }
}
