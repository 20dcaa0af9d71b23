//! Where the agent's join token comes from: `--token` (or `SKEIN_TOKEN`, or `token` in
//! the config file) or `--token-file PATH` (or `SKEIN_TOKEN_FILE`, or `token-file`). The
//! file keeps the token out of `/proc/PID/cmdline`, which every local user can read, and
//! out of shell history; it is read when the daemon starts, not when settings merge, so
//! [`merge`](super::merge) stays pure.

use std::{fmt, fs, path::PathBuf};

use super::{parse_token, AgentSettings, ConfigError};

/// The join token as given: its text, or the file that holds it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum TokenSource {
    Text(String),
    File(PathBuf),
}

impl TokenSource {
    /// The same precedence as every setting (command line and environment, then the
    /// config file), `--token` and `--token-file` counting as one setting: the first level
    /// that has either wins, and one level with both is refused rather than guessed.
    pub(crate) fn pick(
        given: &AgentSettings,
        file: &AgentSettings,
    ) -> Result<Option<TokenSource>, ConfigError> {
        for (level, settings) in [("", given), (" in the --config file", file)] {
            match (&settings.token, &settings.token_file) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::TokenTwice {
                        level: level.to_owned(),
                    })
                }
                (Some(text), None) => return Ok(Some(TokenSource::Text(text.clone()))),
                (None, Some(path)) => return Ok(Some(TokenSource::File(path.clone()))),
                (None, None) => {}
            }
        }
        Ok(None)
    }

    /// The token's text (not yet parsed as a token: that is the membership's job).
    pub(crate) fn read(&self) -> anyhow::Result<String> {
        match self {
            TokenSource::Text(text) => Ok(text.clone()),
            TokenSource::File(path) => {
                let text = fs::read_to_string(path).map_err(|error| {
                    anyhow::anyhow!(
                        "could not read the join token from {} (--token-file): {error}",
                        path.display()
                    )
                })?;
                parse_token(&text).map_err(|reason| {
                    anyhow::anyhow!("{} (--token-file): {reason}", path.display())
                })
            }
        }
    }
}

/// Never shows the token itself, so logging the config cannot leak it.
impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Text(_) => f.write_str("<redacted>"),
            TokenSource::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(token: Option<&str>, file: Option<&str>) -> AgentSettings {
        AgentSettings {
            token: token.map(str::to_owned),
            token_file: file.map(PathBuf::from),
            ..AgentSettings::default()
        }
    }

    #[test]
    fn the_first_level_with_either_wins() {
        let pick = |g, f| TokenSource::pick(&g, &f).unwrap();
        assert_eq!(pick(settings(None, None), settings(None, None)), None);
        assert_eq!(
            pick(settings(None, Some("/a")), settings(Some("t"), None)),
            Some(TokenSource::File("/a".into()))
        );
        assert_eq!(
            pick(settings(Some("t"), None), settings(None, Some("/a"))),
            Some(TokenSource::Text("t".into()))
        );
        assert_eq!(
            pick(settings(None, None), settings(None, Some("/b"))),
            Some(TokenSource::File("/b".into()))
        );
    }

    #[test]
    fn the_config_file_names_it_token_file() {
        let file = super::super::file::parse_file(
            "token-file = \"/etc/skein/token\"",
            std::path::Path::new("/t.toml"),
        )
        .unwrap();
        assert_eq!(
            TokenSource::pick(&AgentSettings::default(), &file).unwrap(),
            Some(TokenSource::File("/etc/skein/token".into()))
        );
    }

    #[test]
    fn both_at_one_level_is_refused() {
        let error = TokenSource::pick(&settings(Some("t"), Some("/a")), &settings(None, None))
            .unwrap_err()
            .to_string();
        assert!(error.contains("--token-file"), "{error}");
        let error = TokenSource::pick(&settings(None, None), &settings(Some("t"), Some("/a")))
            .unwrap_err()
            .to_string();
        assert!(error.contains("--config file"), "{error}");
    }

    #[test]
    fn a_file_is_read_and_trimmed_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("skein-token-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        fs::write(&path, "SKEIN-1-secret\n").unwrap();
        let source = TokenSource::File(path.clone());
        assert_eq!(source.read().unwrap(), "SKEIN-1-secret");
        assert!(!format!("{source:?}").contains("secret"));
        assert!(!format!("{:?}", TokenSource::Text("SKEIN-1-secret".into())).contains("secret"));
        fs::write(&path, "  \n").unwrap();
        let error = source.read().unwrap_err().to_string();
        assert!(error.contains("empty"), "{error}");
        let missing = TokenSource::File(dir.join("missing"));
        let error = missing.read().unwrap_err().to_string();
        assert!(error.contains("could not read the join token"), "{error}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
