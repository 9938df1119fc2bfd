//! Match routes and session affinity: requests a rule sends to the canary whatever the
//! weight (A/B testing, as Flagger's `match` and Argo Rollouts' `setHeaderRoute`), and a
//! cookie that keeps a user on the version the weight first gave them (Flagger's
//! `sessionAffinity`).
//!
//! Both apply only while there is a canary: with an empty canary pool (after a promotion
//! or a rollback) a matched or canary-cookied request goes to stable like any other, so a
//! cookie handed out during a canary stops mattering by itself. The controller installs
//! the rules at the start of a deploy and clears them when it rolls back; the armed guard
//! clears them when it trips, in the same call that takes the canary's weight away.
//!
//! Kept off the hot path: [`crate::routing::Router`] holds an atomic flag that is false
//! without rules, so a proxy without any pays one load per request and allocates nothing.

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::routing::Version;

/// One header condition: the header must be present with a value equal to `exact`, or
/// starting with `prefix` (one of them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderMatch {
    /// Header name (case-insensitive).
    pub name: String,
    /// The whole value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The start of the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// A cookie that must be sent with this value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CookieMatch {
    /// Cookie name.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// One rule: every header condition and the cookie (when given) hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchRule {
    /// Header conditions, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// A cookie condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<CookieMatch>,
}

/// Session affinity: the proxy sets `cookie` (`TOKEN-canary` or `TOKEN-stable`) on a
/// response it routed by weight during a canary, valid for `max_age_secs`, and routes
/// requests that carry it to that version for as long as the canary lasts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affinity {
    /// Cookie name.
    pub cookie: String,
    /// Cookie lifetime, seconds (`Max-Age`).
    pub max_age_secs: u64,
    /// Names the canary the cookie belongs to (Slipway gives the release plan's digest):
    /// a cookie an earlier canary set — the rejected version's users, or a stable
    /// assignment made against another release — is not honoured by this one, and its
    /// request is routed by weight and told anew. Empty: plain `canary`/`stable`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
}

impl Affinity {
    /// The cookie's value for a version.
    fn value(&self, v: Version) -> String {
        if self.token.is_empty() {
            v.as_str().to_owned()
        } else {
            format!("{}-{}", self.token, v.as_str())
        }
    }
}

/// `PUT /admin/routes`: the rules in force (an empty document clears them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routes {
    /// Requests matching any of these go to the canary, and are counted apart from the
    /// numbers canary analysis judges.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<MatchRule>,
    /// Session affinity by cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

impl Routes {
    /// Neither rules nor affinity.
    pub fn is_empty(&self) -> bool {
        self.matches.is_empty() && self.affinity.is_none()
    }
}

/// Why a [`Routes`] document cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutesError {
    #[error("`{0}` is not a valid HTTP header name")]
    HeaderName(String),
    #[error("header `{0}` needs exactly one of `exact` or `prefix`")]
    HeaderCondition(String),
    #[error("`{0}` is not a valid cookie name")]
    CookieName(String),
    #[error("the value of cookie `{0}` holds a character a cookie value cannot")]
    CookieValue(String),
    #[error("a match rule has no condition: it would send every request to the canary")]
    EmptyRule,
    #[error("the affinity token `{0}` holds a character a cookie value cannot")]
    AffinityToken(String),
}

/// How a request was routed, which decides how it is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Routed {
    /// By weight: counted in analysis; gets the affinity cookie when one is configured.
    Weighted,
    /// By its affinity cookie: counted in analysis (a user the weight assigned earlier).
    Sticky,
    /// By a match rule: counted apart.
    Matched,
    /// By the trusted route header: counted apart.
    Forced,
}

#[derive(Debug)]
struct CompiledHeader {
    name: HeaderName,
    exact: bool,
    value: Vec<u8>,
}

#[derive(Debug)]
struct CompiledRule {
    headers: Vec<CompiledHeader>,
    cookie: Option<(String, String)>,
}

#[derive(Debug)]
pub(crate) struct CompiledAffinity {
    name: String,
    /// The cookie values this canary honours: index by [`Version::index`].
    values: [Vec<u8>; 2],
    /// `Set-Cookie` values, rendered once: index by [`Version::index`].
    set: [HeaderValue; 2],
}

impl CompiledAffinity {
    pub(crate) fn set_cookie(&self, version: Version) -> &HeaderValue {
        &self.set[version.index()]
    }
}

/// [`Routes`] checked and made ready for matching.
#[derive(Debug, Default)]
pub(crate) struct Compiled {
    pub(crate) spec: Routes,
    rules: Vec<CompiledRule>,
    pub(crate) affinity: Option<CompiledAffinity>,
}

/// A cookie name is an RFC 6265 token.
fn cookie_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// A cookie value: RFC 6265 cookie-octets.
fn cookie_value_ok(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b"\",;\\".contains(&b))
}

impl Compiled {
    pub(crate) fn new(spec: Routes) -> Result<Self, RoutesError> {
        let mut rules = Vec::with_capacity(spec.matches.len());
        for rule in &spec.matches {
            if rule.headers.is_empty() && rule.cookie.is_none() {
                return Err(RoutesError::EmptyRule);
            }
            let mut headers = Vec::with_capacity(rule.headers.len());
            for h in &rule.headers {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| RoutesError::HeaderName(h.name.clone()))?;
                let (exact, value) = match (&h.exact, &h.prefix) {
                    (Some(v), None) => (true, v.as_bytes().to_vec()),
                    (None, Some(v)) => (false, v.as_bytes().to_vec()),
                    _ => return Err(RoutesError::HeaderCondition(h.name.clone())),
                };
                headers.push(CompiledHeader { name, exact, value });
            }
            let cookie = match &rule.cookie {
                Some(c) if !cookie_name_ok(&c.name) => {
                    return Err(RoutesError::CookieName(c.name.clone()));
                }
                Some(c) if !cookie_value_ok(&c.value) => {
                    return Err(RoutesError::CookieValue(c.name.clone()));
                }
                Some(c) => Some((c.name.clone(), c.value.clone())),
                None => None,
            };
            rules.push(CompiledRule { headers, cookie });
        }
        let affinity = match &spec.affinity {
            Some(a) if !cookie_name_ok(&a.cookie) => {
                return Err(RoutesError::CookieName(a.cookie.clone()));
            }
            Some(a) if !cookie_value_ok(&a.token) => {
                return Err(RoutesError::AffinityToken(a.token.clone()));
            }
            Some(a) => {
                let render = |v: Version| {
                    HeaderValue::from_str(&format!(
                        "{}={}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax",
                        a.cookie,
                        a.value(v),
                        a.max_age_secs
                    ))
                    .map_err(|_| RoutesError::CookieName(a.cookie.clone()))
                };
                Some(CompiledAffinity {
                    name: a.cookie.clone(),
                    values: [
                        a.value(Version::Stable).into_bytes(),
                        a.value(Version::Canary).into_bytes(),
                    ],
                    set: [render(Version::Stable)?, render(Version::Canary)?],
                })
            }
            None => None,
        };
        Ok(Self {
            spec,
            rules,
            affinity,
        })
    }

    /// Whether any rule matches the request's headers.
    pub(crate) fn matches(&self, headers: &HeaderMap) -> bool {
        self.rules.iter().any(|rule| {
            rule.headers.iter().all(|h| {
                headers.get_all(&h.name).iter().any(|v| {
                    let v = v.as_bytes();
                    if h.exact {
                        v == h.value.as_slice()
                    } else {
                        v.starts_with(&h.value)
                    }
                })
            }) && rule
                .cookie
                .as_ref()
                .is_none_or(|(name, value)| cookie(headers, name) == Some(value.as_bytes()))
        })
    }

    /// The version the request's affinity cookie names, if it carries one.
    pub(crate) fn sticky(&self, headers: &HeaderMap) -> Option<Version> {
        let a = self.affinity.as_ref()?;
        let v = cookie(headers, &a.name)?;
        [Version::Stable, Version::Canary]
            .into_iter()
            .find(|version| a.values[version.index()] == v)
    }
}

/// The value of cookie `name` in the request's `Cookie` headers (the first one sent).
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers.get_all(header::COOKIE).iter().find_map(|v| {
        v.as_bytes().split(|b| *b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            let (k, rest) = pair.split_at(eq);
            (k.trim_ascii() == name.as_bytes()).then(|| {
                let v = rest.get(1..).unwrap_or_default().trim_ascii();
                // RFC 6265 allows a value in double quotes.
                v.strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(v)
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(matches: Vec<MatchRule>) -> Compiled {
        Compiled::new(Routes {
            matches,
            affinity: None,
        })
        .unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn header_and_cookie_rules() {
        let r = routes(vec![
            MatchRule {
                headers: vec![HeaderMatch {
                    name: "X-Canary".into(),
                    exact: Some("always".into()),
                    prefix: None,
                }],
                cookie: None,
            },
            MatchRule {
                headers: vec![HeaderMatch {
                    name: "user-agent".into(),
                    exact: None,
                    prefix: Some("Tester/".into()),
                }],
                cookie: Some(CookieMatch {
                    name: "canary".into(),
                    value: "always".into(),
                }),
            },
        ]);
        assert!(r.matches(&headers(&[("x-canary", "always")])));
        assert!(!r.matches(&headers(&[("x-canary", "Always")])));
        assert!(!r.matches(&headers(&[("x-canary", "always-not")])));
        assert!(r.matches(&headers(&[
            ("user-agent", "Tester/2"),
            ("cookie", "a=1; canary=always; b=2")
        ])));
        // Both conditions of a rule must hold.
        assert!(!r.matches(&headers(&[("user-agent", "Tester/2")])));
        assert!(!r.matches(&headers(&[
            ("user-agent", "curl"),
            ("cookie", "canary=always")
        ])));
        assert!(r.matches(&headers(&[
            ("user-agent", "Tester/1"),
            ("cookie", "x=y"),
            ("cookie", "canary=\"always\"")
        ])));
        assert!(!r.matches(&HeaderMap::new()));
    }

    #[test]
    fn bad_documents_are_refused() {
        let bad_header = Routes {
            matches: vec![MatchRule {
                headers: vec![HeaderMatch {
                    name: "x canary".into(),
                    exact: Some("1".into()),
                    prefix: None,
                }],
                cookie: None,
            }],
            affinity: None,
        };
        assert!(matches!(
            Compiled::new(bad_header),
            Err(RoutesError::HeaderName(_))
        ));
        let empty = Routes {
            matches: vec![MatchRule::default()],
            affinity: None,
        };
        assert!(matches!(Compiled::new(empty), Err(RoutesError::EmptyRule)));
        let cookie = Routes {
            matches: vec![],
            affinity: Some(Affinity {
                cookie: String::new(),
                max_age_secs: 1,
                token: String::new(),
            }),
        };
        assert!(matches!(
            Compiled::new(cookie),
            Err(RoutesError::CookieName(_))
        ));
        let token = Routes {
            matches: vec![],
            affinity: Some(Affinity {
                cookie: "sticky".into(),
                max_age_secs: 1,
                token: "a;b".into(),
            }),
        };
        assert!(matches!(
            Compiled::new(token),
            Err(RoutesError::AffinityToken(_))
        ));
    }

    #[test]
    fn affinity_cookie_is_read_and_rendered() {
        let r = Compiled::new(Routes {
            matches: vec![],
            affinity: Some(Affinity {
                cookie: "sticky".into(),
                max_age_secs: 600,
                token: String::new(),
            }),
        })
        .unwrap();
        assert_eq!(
            r.sticky(&headers(&[("cookie", "sticky=canary")])),
            Some(Version::Canary)
        );
        assert_eq!(
            r.sticky(&headers(&[("cookie", "other=1;sticky=stable")])),
            Some(Version::Stable)
        );
        assert_eq!(r.sticky(&headers(&[("cookie", "sticky=blue")])), None);
        assert_eq!(
            r.affinity.as_ref().unwrap().set_cookie(Version::Canary),
            "sticky=canary; Max-Age=600; Path=/; HttpOnly; SameSite=Lax"
        );
    }

    #[test]
    fn a_tokened_affinity_honours_only_its_own_canarys_cookies() {
        let r = Compiled::new(Routes {
            matches: vec![],
            affinity: Some(Affinity {
                cookie: "sticky".into(),
                max_age_secs: 600,
                token: "9f2c".into(),
            }),
        })
        .unwrap();
        assert_eq!(
            r.sticky(&headers(&[("cookie", "sticky=9f2c-canary")])),
            Some(Version::Canary)
        );
        assert_eq!(
            r.sticky(&headers(&[("cookie", "sticky=9f2c-stable")])),
            Some(Version::Stable)
        );
        // An earlier canary's cookies, tokened or not, assign nothing.
        for stale in ["sticky=canary", "sticky=stable", "sticky=77aa-canary"] {
            assert_eq!(r.sticky(&headers(&[("cookie", stale)])), None, "{stale}");
        }
        assert_eq!(
            r.affinity.as_ref().unwrap().set_cookie(Version::Canary),
            "sticky=9f2c-canary; Max-Age=600; Path=/; HttpOnly; SameSite=Lax"
        );
    }
}
