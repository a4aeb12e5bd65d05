//! [`redact_url`]: a connection URL fit for messages and logs. The one copy the
//! supervisor (PostgreSQL and Redis URLs) and the worker (its Redis URL) both use.

/// `url` with its password replaced by `***`: in the user-info part (`user:pw@`; for
/// Redis schemes a lone `pw@` is the password, for others it is the user name), and in a
/// `password=` or `pass=` query parameter (PostgreSQL's, and Redis's over a Unix socket).
/// Anything that is not a URL comes back as it is.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let scheme = out[..scheme_end].to_ascii_lowercase();
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo_end = rest_start + at;
            match out[rest_start..userinfo_end].find(':') {
                Some(colon) => out.replace_range(rest_start + colon + 1..userinfo_end, "***"),
                None if scheme.starts_with("redis") => {
                    out.replace_range(rest_start..userinfo_end, "***")
                }
                None => {}
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (base, query) = out.split_at(q + 1);
        let query = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _))
                    if k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("pass") =>
                {
                    format!("{k}=***")
                }
                _ => pair.to_string(),
            })
            .collect::<Vec<_>>()
            .join("&");
        out = format!("{base}{query}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted_wherever_they_are() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
            ("redis://u:p@ss@h/0", "redis://u:***@h/0"),
            // A lone user-info is Redis's password, but PostgreSQL's user name.
            ("rediss://pw@h", "rediss://***@h"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "postgres://u:secret@h:5432/db",
                "postgres://u:***@h:5432/db",
            ),
            ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
            (
                "postgres://h/db?user=u&password=p&sslmode=disable",
                "postgres://h/db?user=u&password=***&sslmode=disable",
            ),
            (
                "redis://h:6379/0?password=pw",
                "redis://h:6379/0?password=***",
            ),
            ("unix:///run/redis.sock", "unix:///run/redis.sock"),
            (
                "unix:///run/redis.sock?user=w&pass=pw",
                "unix:///run/redis.sock?user=w&pass=***",
            ),
            ("garbage", "garbage"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
