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
/// reaches stderr or the record (see [`may_be_secret`]).
pub fn hide_secrets(text: &str) {
    for (_, pair) in entries(text) {
        if let Some((key, value)) = pair {
            if may_be_secret(key, value) {
                crate::log::secret(value);
            }
        }
    }
}

/// Whether an env value should be hidden. Always, when a word of its key names a secret
/// (`DB_PASSWORD`, `API_TOKEN`, `SECRET_KEY_BASE`, `SENTRY_DSN`; words split at `_`, `-`, `.`),
/// unless it is a path, a word like `true` or a number under 6 digits: those are settings, and
/// hiding them would garble every log line they appear in. Otherwise only values that look like keys:
/// 8 characters or more, not a path, not a number, not a short plain word (`production`).
/// Values under 4 characters are never hidden.
pub fn may_be_secret(key: &str, value: &str) -> bool {
    const WORDS: [&str; 20] = [
        "PASS",
        "PASSWORD",
        "PASSWD",
        "PASSPHRASE",
        "PW",
        "SECRET",
        "SECRETS",
        "TOKEN",
        "TOKENS",
        "KEY",
        "KEYS",
        "APIKEY",
        "AUTH",
        "CREDENTIAL",
        "CREDENTIALS",
        "CREDS",
        "PRIVATE",
        "DSN",
        "SALT",
        "COOKIE",
    ];
    const ENDINGS: [&str; 4] = ["PASSWORD", "TOKEN", "SECRET", "APIKEY"];
    const SETTINGS: [&str; 8] = ["true", "false", "yes", "no", "on", "off", "null", "none"];
    let value = value.trim();
    if value.len() < 4
        || value.starts_with('/')
        || SETTINGS.iter().any(|w| value.eq_ignore_ascii_case(w))
    {
        return false;
    }
    let number = value.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let key = key.to_ascii_uppercase();
    let names_a_secret = key
        .split(['_', '-', '.'])
        .any(|w| WORDS.contains(&w) || ENDINGS.iter().any(|e| w.ends_with(e)));
    if names_a_secret {
        // A short number is a setting (`REDIS_KEY_TTL=3600`), and hiding it would garble
        // every number that contains it.
        return !number || value.len() >= 6;
    }
    if number {
        return false;
    }
    let plain_word = value.chars().all(|c| c.is_ascii_alphabetic());
    value.len() >= 8 && !(plain_word && value.len() < 16)
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
            ("DB_PASSWORD", "84736251"),
            ("DBPASSWORD", "hunter22"),
            ("SECRET_KEY_BASE", "abcdef"),
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
            ("AUTH_ENABLED", "true"),
            ("REDIS_KEY_TTL", "3600"),
            ("PASSENGER_APP_ROOT", "/srv/app"),
            ("PASSENGER_MAX_POOL", "12"),
            ("PWD", "/home/app"),
            ("SSL_KEY", "/etc/ssl/private/app.key"),
        ] {
            assert!(
                !may_be_secret(key, value),
                "{key}={value} need not be hidden"
            );
        }
    }
}
