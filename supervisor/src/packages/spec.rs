//! Requirement lines: the shape `warden package add` and `package sync` accept, checked
//! before anything is stored, and the normalised distribution name each is stored under.
//!
//! Accepted (PEP 508's shape): `NAME`, `NAME[extra,...]`, then either nothing, version
//! clauses (`>=2.31,<3`, `==2.9.*`, `~=1.4`, optionally in parentheses), or `@ URL`;
//! then optionally `; MARKER`. pip is what finally reads the line (at install time,
//! where an unknown version or an unsatisfiable set fails the install and leaves the
//! previous set in use): this check catches what is not a requirement at all (a typo,
//! a pip option such as `-e` or `--index-url`, a stray word) at the command, naming the
//! line. Not checked here: marker grammar (only that one is present after `;`) and
//! whether a URL resolves.
//!
//! Hand-written rather than `pep508_rs`: that crate pulls a URL and a Unicode stack into
//! the supervisor to answer a question pip answers authoritatively anyway; the shape
//! check is a few dozen lines, unit-tested below.

/// One checked requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// PEP 503 normalised name: lower case, each run of `-`, `_`, `.` as one `-`.
    pub name: String,
    /// The line as given, trimmed (what pip is given).
    pub line: String,
}

/// Why a line is not a requirement, for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line:?} is not a requirement: {reason}")]
pub struct SpecError {
    pub line: String,
    pub reason: String,
}

const OPERATORS: &[&str] = &["===", "~=", "==", "!=", "<=", ">=", "<", ">"];

/// Checks one requirement line (see the module comment).
pub fn parse(line: &str) -> Result<Requirement, SpecError> {
    let text = line.trim();
    let err = |reason: &str| SpecError {
        line: text.to_string(),
        reason: reason.to_string(),
    };
    if text.is_empty() {
        return Err(err("it is empty"));
    }
    if text.starts_with('-') {
        return Err(err(
            "pip options (-e, -r, --index-url, ...) are not accepted; configure the index \
             in pip's own configuration (/etc/pip.conf) on each supervisor host",
        ));
    }
    let (body, marker) = match text.split_once(';') {
        Some((b, m)) => (b.trim(), Some(m.trim())),
        None => (text, None),
    };
    if marker == Some("") {
        return Err(err(
            "nothing follows `;` (an environment marker was expected)",
        ));
    }
    let name_end = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .unwrap_or(body.len());
    let name = &body[..name_end];
    if !valid_name(name) {
        return Err(err(
            "a requirement starts with a distribution name (letters, digits, `.`, `_`, `-`; \
             starting and ending with a letter or digit)",
        ));
    }
    let mut rest = body[name_end..].trim_start();
    if let Some(after) = rest.strip_prefix('[') {
        let Some((extras, tail)) = after.split_once(']') else {
            return Err(err("`[` opens a list of extras that no `]` closes"));
        };
        for extra in extras.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if !valid_name(extra) {
                return Err(err(&format!("{extra:?} is not an extra's name")));
            }
        }
        rest = tail.trim_start();
    }
    if let Some(url) = rest.strip_prefix('@') {
        let url = url.trim();
        if url.is_empty() || url.contains(char::is_whitespace) || !url.contains("://") {
            return Err(err("`@` must be followed by a URL (`name @ https://...`)"));
        }
    } else if !rest.is_empty() {
        check_versions(rest).map_err(|r| err(&r))?;
    }
    Ok(Requirement {
        name: normalise(name),
        line: text.to_string(),
    })
}

/// Reads a requirements file: one requirement per line; blank lines and `#` comments
/// (whole-line, or after whitespace) are skipped. Every bad line is reported, with its
/// number; a name given twice is an error too.
pub fn parse_file(text: &str) -> Result<Vec<Requirement>, Vec<(usize, SpecError)>> {
    let mut good: Vec<Requirement> = Vec::new();
    let mut bad = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = match raw.find(" #").or_else(|| raw.find("\t#")) {
            Some(at) => &raw[..at],
            None => raw,
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse(line) {
            Ok(r) if good.iter().any(|g| g.name == r.name) => bad.push((
                i + 1,
                SpecError {
                    line: r.line.clone(),
                    reason: format!("{} is required on an earlier line too", r.name),
                },
            )),
            Ok(r) => good.push(r),
            Err(e) => bad.push((i + 1, e)),
        }
    }
    if bad.is_empty() {
        Ok(good)
    } else {
        Err(bad)
    }
}

/// PEP 503 normalisation.
pub fn normalise(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_sep {
                out.push('-');
            }
            in_sep = true;
        } else {
            out.push(c.to_ascii_lowercase());
            in_sep = false;
        }
    }
    out
}

fn valid_name(name: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    alnum(name.chars().next())
        && alnum(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `>=1.0, <2` or `(>=1.0)`: comma-separated `OPERATOR VERSION` clauses.
fn check_versions(spec: &str) -> Result<(), String> {
    let spec = match spec.strip_prefix('(') {
        Some(inner) => inner
            .strip_suffix(')')
            .ok_or("`(` opens version clauses that no `)` closes")?,
        None => spec,
    };
    for clause in spec.split(',').map(str::trim) {
        let Some(op) = OPERATORS.iter().find(|op| clause.starts_with(**op)) else {
            return Err(format!(
                "{clause:?} is not a version clause (one of {} followed by a version, \
                 e.g. `>=2.31`)",
                OPERATORS.join(" ")
            ));
        };
        let version = clause[op.len()..].trim();
        let chars_ok = !version.is_empty()
            && version.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '.' | '*' | '+' | '!' | '-' | '_')
            });
        let star_ok = !version.contains('*')
            || (matches!(*op, "==" | "!=")
                && version.ends_with(".*")
                && version.matches('*').count() == 1);
        if !chars_ok || !star_ok {
            return Err(format!("{version:?} is not a version for `{op}`"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_usual_shapes() {
        for (line, name) in [
            ("requests", "requests"),
            ("requests>=2.31", "requests"),
            ("Charset_Normalizer==3.4.*", "charset-normalizer"),
            ("pydantic[email]==2.9.2", "pydantic"),
            ("pydantic [email, timezone] >=2, <3", "pydantic"),
            ("six (>=1.16)", "six"),
            ("zope.interface~=6.0", "zope-interface"),
            ("pkg @ https://example.com/pkg-1.0-py3-none-any.whl", "pkg"),
            ("tomli>=1.1; python_version < \"3.11\"", "tomli"),
            ("  idna===3.7  ", "idna"),
        ] {
            let r = parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(r.name, name, "{line}");
            assert_eq!(r.line, line.trim());
        }
    }

    #[test]
    fn refuses_what_is_not_a_requirement_saying_why() {
        for (line, why) in [
            ("", "empty"),
            ("-e git+https://x", "pip options"),
            ("--index-url https://x", "pip options"),
            ("requests 2.31", "not a version clause"),
            ("requests=2.31", "not a version clause"),
            ("requests>=", "not a version for"),
            ("requests>=2.*", "not a version for"),
            ("pydantic[email", "no `]` closes"),
            ("pydantic[e mail]", "not an extra"),
            ("_private", "distribution name"),
            ("requests;", "environment marker"),
            ("pkg @ not-a-url", "URL"),
            ("six (>=1.16", "no `)`"),
        ] {
            let e = parse(line).expect_err(line);
            assert!(e.to_string().contains(why), "{line}: {e}");
        }
    }

    #[test]
    fn a_file_skips_comments_and_names_every_bad_line() {
        let ok = parse_file("# deps\n\nrequests>=2  # http\nsix\n").unwrap();
        assert_eq!(
            ok.iter().map(|r| r.line.as_str()).collect::<Vec<_>>(),
            ["requests>=2", "six"]
        );
        let bad = parse_file("requests\n--index-url x\nsix\nfoo bar\nRequests==2\n").unwrap_err();
        let lines: Vec<usize> = bad.iter().map(|(n, _)| *n).collect();
        assert_eq!(lines, [2, 4, 5]);
        assert!(bad[2].1.reason.contains("earlier line"));
    }

    #[test]
    fn names_are_normalised_as_pep_503_says() {
        assert_eq!(normalise("Foo.Bar__baz-Qux"), "foo-bar-baz-qux");
    }
}
