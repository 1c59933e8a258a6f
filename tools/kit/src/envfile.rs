//! `.env` files (`KEY=VALUE` lines, as `docker run --env-file` and compose read them) and which
//! of their values must never be printed.

/// The meaningful lines of an env file: each with its 1-based number and its key and value
/// (`export ` and matching quotes removed), or `None` when the line is not `KEY=VALUE`. Blank
/// lines and `#` comments are skipped.
pub fn entries(text: &str) -> impl Iterator<Item = (usize, Option<(&str, &str)>)> {
    text.lines().enumerate().filter_map(|(n, line)| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let pair = line
            .split_once('=')
            .filter(|(key, _)| !key.trim().is_empty())
            .map(|(key, value)| (key.trim(), unquote(value.trim())));
        Some((n + 1, pair))
    })
}

fn unquote(value: &str) -> &str {
    let quoted = value.len() >= 2
        && ((value.starts_with('"') && value.ends_with('"'))
            || (value.starts_with('\'') && value.ends_with('\'')));
    if quoted {
        &value[1..value.len() - 1]
    } else {
        value
    }
}

/// Registers the values of an env file that can be secrets ([`crate::log::secret`]), so none
/// reaches stderr or the record. What is left out is what hiding would break without
/// protecting anything: numbers (`PORT=8000`: a redacted record would no longer be JSON),
/// absolute paths (`APP_ROOT=/srv/app`: a recorded path would lose its head) and short plain
/// words (`RAILS_ENV=production`, `DEBUG=true`), unless the key names a secret (`…PASSWORD`,
/// `…TOKEN`, `…SECRET`, `…KEY`, …).
pub fn hide_secrets(text: &str) {
    for (_, pair) in entries(text) {
        if let Some((key, value)) = pair {
            if may_be_secret(key, value) {
                crate::log::secret(value);
            }
        }
    }
}

/// Whether an env value should be hidden (see [`hide_secrets`]).
pub fn may_be_secret(key: &str, value: &str) -> bool {
    const SECRET_KEYS: [&str; 10] = [
        "PASS",
        "PW",
        "SECRET",
        "TOKEN",
        "KEY",
        "AUTH",
        "CREDENTIAL",
        "PRIVATE",
        "DSN",
        "SALT",
    ];
    if value.len() < 4 || value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return false;
    }
    let key = key.to_ascii_uppercase();
    if SECRET_KEYS.iter().any(|k| key.contains(k)) {
        return true;
    }
    let plain_word = value.chars().all(|c| c.is_ascii_alphabetic());
    value.len() >= 8 && !value.starts_with('/') && !(plain_word && value.len() < 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_as_docker_reads_them() {
        let text = "# c\n\nexport A=1\nB = \"two words\"\nC='x'\nD=\nnot a pair\n=v\n";
        let got: Vec<_> = entries(text).collect();
        assert_eq!(
            got,
            [
                (3, Some(("A", "1"))),
                (4, Some(("B", "two words"))),
                (5, Some(("C", "x"))),
                (6, Some(("D", ""))),
                (7, None),
                (8, None),
            ]
        );
    }

    #[test]
    fn which_env_values_are_hidden() {
        for (key, value) in [
            ("DATABASE_URL", "postgres://app:hunter2@db/app"),
            ("DB_PASSWORD", "production"),
            ("SMTP_PW", "hunter"),
            ("API_TOKEN", "abcd"),
            ("SESSION", "kq8Zr2mX"),
            ("STRIPE", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
            ("RANDOM", "AbCdEfGhIjKlMnOpQr"),
        ] {
            assert!(may_be_secret(key, value), "{key}={value} must be hidden");
        }
        for (key, value) in [
            ("PORT", "8000"),
            ("WORKERS", "12345678"),
            ("API_KEY", "1234"),
            ("RAILS_ENV", "production"),
            ("DEBUG", "true"),
            ("APP_ROOT", "/srv/app"),
            ("VERSION", "1.2.3"),
            ("X", "abc"),
        ] {
            assert!(
                !may_be_secret(key, value),
                "{key}={value} need not be hidden"
            );
        }
    }
}
