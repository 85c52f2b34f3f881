//! One RFC 7662 call: the request (the token, and the client's credentials the way
//! `auth_method` says) and its answer, read into the token's claims or "not active".

use serde::Deserialize;
use serde_json::Value;

use crate::policy::auth::jwt::Claims;

/// How the gateway authenticates to the introspection endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// `Authorization: Basic` with the form-encoded id and secret.
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Basic => "basic",
            AuthMethod::Post => "post",
        }
    }
}

/// The client's credentials, encoded once at load; never logged.
pub struct Credentials {
    /// The `Authorization` header's value (`basic`).
    authorization: Option<String>,
    /// What the form body ends with (`post`).
    form: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

impl Credentials {
    pub fn new(method: AuthMethod, id: &str, secret: &[u8]) -> Credentials {
        let secret = String::from_utf8_lossy(secret);
        match method {
            AuthMethod::Basic => {
                use base64::Engine;
                let pair = format!("{}:{}", form_encode(id), form_encode(&secret));
                Credentials {
                    authorization: Some(format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(pair)
                    )),
                    form: String::new(),
                }
            }
            AuthMethod::Post => Credentials {
                authorization: None,
                form: format!(
                    "&client_id={}&client_secret={}",
                    form_encode(id),
                    form_encode(&secret)
                ),
            },
        }
    }

    pub fn authorization(&self) -> Option<&str> {
        self.authorization.as_deref()
    }

    /// The request body for `token`.
    pub fn form(&self, token: &str) -> String {
        format!(
            "token={}&token_type_hint=access_token{}",
            form_encode(token),
            self.form
        )
    }
}

/// `application/x-www-form-urlencoded`: unreserved characters as they are, the rest `%XX`.
fn form_encode(s: &str) -> String {
    crate::policy::path::escape(s.as_bytes())
}

/// The endpoint's answer: the token's members (claims) when `active: true`, `None` when not
/// active, or why the answer is not one (a status other than 200, not a JSON object, no
/// boolean `active`).
pub fn read(status: u16, body: &[u8]) -> Result<Option<Claims>, String> {
    if status != 200 {
        let hint = match status {
            401 | 403 => ": it refused the gateway's client_id/client_secret",
            _ => "",
        };
        return Err(format!("answered {status}, not 200{hint}"));
    }
    let mut claims = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err("the answer is not a JSON object".into()),
        Err(e) => return Err(format!("the answer is not JSON: {e}")),
    };
    match claims.remove("active") {
        Some(Value::Bool(true)) => Ok(Some(claims)),
        Some(Value::Bool(false)) => Ok(None),
        _ => Err("the answer has no boolean \"active\" (RFC 7662 §2.2)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_where_the_method_says_form_encoded() {
        let b = Credentials::new(AuthMethod::Basic, "gw", b"a:b&c");
        // base64("gw:a%3Ab%26c")
        assert_eq!(b.authorization(), Some("Basic Z3c6YSUzQWIlMjZj"));
        assert_eq!(
            b.form("t.o+k/en="),
            "token=t.o%2Bk%2Fen%3D&token_type_hint=access_token"
        );
        let p = Credentials::new(AuthMethod::Post, "gw", b"a:b&c");
        assert_eq!(p.authorization(), None);
        assert_eq!(
            p.form("tok"),
            "token=tok&token_type_hint=access_token&client_id=gw&client_secret=a%3Ab%26c"
        );
        assert_eq!(format!("{p:?}"), "Credentials(..)");
    }

    #[test]
    fn an_answer_is_active_with_claims_inactive_or_unusable() {
        let c = read(200, br#"{"active":true,"sub":"alice","scope":"read"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(c["sub"], "alice");
        assert!(!c.contains_key("active"));
        assert!(read(200, br#"{"active":false}"#).unwrap().is_none());
        for (status, body) in [
            (200, &br#"{"active":"true"}"#[..]),
            (200, br#"{"sub":"x"}"#),
            (200, b"[true]"),
            (200, b"<html>"),
            (500, br#"{"active":true}"#),
        ] {
            assert!(read(status, body).is_err(), "{status} {body:?}");
        }
        assert!(read(401, b"").unwrap_err().contains("client_id"));
    }
}
