//! The Internet Archive keys an upload signs its requests with.
//!
//! Where they come from, first match wins (SPEC Part 3, "Credentials"):
//! 1. `IA_ACCESS_KEY` / `IA_SECRET_KEY`, each or both in its `_FILE` form
//!    (a path whose file holds the value: Docker and Kubernetes secrets);
//! 2. with none of those four set, the `ia` tool's own variables
//!    (`IA_ACCESS_KEY_ID`/`IA_SECRET_ACCESS_KEY`, which `ia` itself reads);
//! 3. else the `ia` tool's own config file, looked up as `ia` does (`IA_CONFIG_FILE`, `$XDG_CONFIG_HOME/internetarchive/ia.ini`,
//!    `~/.config/internetarchive/ia.ini`, `~/.config/ia.ini`, `~/.ia`), section `[s3]`, keys
//!    `access` and `secret`, so an operator who ran `ia configure` needs nothing more.
//!
//! The secret key is held in a [`Secret`] at once, so no `{:?}` prints it;
//! errors name the source that failed (a variable, a file, a line number) and
//! never a value read from it.

use crate::secret::Secret;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The access key's variable.
pub const ACCESS_ENV: &str = "IA_ACCESS_KEY";
/// The secret key's variable.
pub const SECRET_ENV: &str = "IA_SECRET_KEY";
/// The access key's file form: a path to a file holding the key.
pub const ACCESS_FILE_ENV: &str = "IA_ACCESS_KEY_FILE";
/// The secret key's file form: a path to a file holding the key.
pub const SECRET_FILE_ENV: &str = "IA_SECRET_KEY_FILE";
/// The `ia` tool's own access key variable (`internetarchive/config.py`).
pub const IA_TOOL_ACCESS_ENV: &str = "IA_ACCESS_KEY_ID";
/// The `ia` tool's own secret key variable (`internetarchive/config.py`).
pub const IA_TOOL_SECRET_ENV: &str = "IA_SECRET_ACCESS_KEY";
/// The `ia` tool's override of its config file's path, honoured as `ia` honours it.
pub const CONFIG_FILE_ENV: &str = "IA_CONFIG_FILE";

/// The pair of IA-S3 keys (`authorization: LOW <access>:<secret>`) and where
/// they were found, for messages such as "using the keys from ~/.ia".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IaCredentials {
    /// The access key: an account identifier, sent in clear in `check_limit`
    /// URLs, so not a secret; still never logged without need.
    pub access: String,
    /// The secret key; only [`Secret::expose`] reads it, for the auth header.
    pub secret: Secret,
    /// Where the pair came from.
    pub source: CredentialSource,
}

/// Where a pair of keys was read, so an operator can tell which one is used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// The environment (`IA_ACCESS_KEY`/`IA_SECRET_KEY` or their `_FILE` forms).
    Environment,
    /// The `ia` tool's variables (`IA_ACCESS_KEY_ID`/`IA_SECRET_ACCESS_KEY`).
    IaToolEnvironment,
    /// The `ia` tool's config file at this path.
    ConfigFile(PathBuf),
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::Environment => {
                write!(f, "the environment ({ACCESS_ENV}, {SECRET_ENV})")
            }
            CredentialSource::IaToolEnvironment => {
                write!(
                    f,
                    "the environment ({IA_TOOL_ACCESS_ENV}, {IA_TOOL_SECRET_ENV})"
                )
            }
            CredentialSource::ConfigFile(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Why no keys could be had. Each names the source that failed and what to
/// do, never a value read from it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialsError {
    /// A key given twice: which one wins would be a guess.
    #[error("both {var} and {file_var} are set: set only one")]
    Both {
        /// The plain variable.
        var: &'static str,
        /// Its `_FILE` form.
        file_var: &'static str,
    },
    /// One key of the pair in the environment and not the other.
    #[error(
        "{present} is set but {missing} is not: set both keys of the pair \
         (from https://archive.org/account/s3.php)"
    )]
    HalfPair {
        /// The key that is set (or its `_FILE` form).
        present: &'static str,
        /// The key that is missing (nor is its `_FILE` form set, where it has one).
        missing: &'static str,
    },
    /// A `_FILE` variable, or the `ia` config file, that cannot be read.
    #[error("{origin}: cannot read {}: {reason}", path.display())]
    Unreadable {
        /// The variable that named the file, or "the ia config file".
        origin: String,
        /// The file.
        path: PathBuf,
        /// The I/O error, which holds no file content.
        reason: String,
    },
    /// A key that is empty (a blank file, a blank `access =` line).
    #[error("{origin}: the {what} is empty")]
    Empty {
        /// The variable or file it came from.
        origin: String,
        /// "access key" or "secret key".
        what: &'static str,
    },
    /// The `ia` config file without the key in its `[s3]` section.
    #[error("{}: no `{key}` in section [s3]: run `ia configure`, or set {ACCESS_ENV} and {SECRET_ENV}", path.display())]
    MissingInConfig {
        /// The config file.
        path: PathBuf,
        /// `access` or `secret`.
        key: &'static str,
    },
    /// A line of the `ia` config file that is not INI (its text is not shown: it may hold a key).
    #[error("{}, line {line}: not a `[section]`, `key = value` or comment line", path.display())]
    ConfigSyntax {
        /// The config file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// No source at all.
    #[error(
        "no Internet Archive keys: set {ACCESS_ENV} and {SECRET_ENV} (or {ACCESS_FILE_ENV} and \
         {SECRET_FILE_ENV}), or run `ia configure`; looked for an ia config file at: {looked}"
    )]
    Missing {
        /// The config file paths tried, comma separated.
        looked: String,
    },
}

impl IaCredentials {
    /// The keys from the process environment (see the module doc).
    pub fn from_env() -> Result<IaCredentials, CredentialsError> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        IaCredentials::from_vars(&vars)
    }

    /// The keys from `vars` (the environment as a map, `HOME` and
    /// `XDG_CONFIG_HOME` included): what [`IaCredentials::from_env`] does,
    /// testable without touching the process environment. An empty variable
    /// counts as unset, as a compose `.env` leaves it.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<IaCredentials, CredentialsError> {
        let access = env_value(vars, ACCESS_ENV, ACCESS_FILE_ENV, "access key")?;
        let secret = env_value(vars, SECRET_ENV, SECRET_FILE_ENV, "secret key")?;
        match (access, secret) {
            (Some(access), Some(secret)) => Ok(IaCredentials {
                access: access.expose().to_string(),
                secret,
                source: CredentialSource::Environment,
            }),
            (Some(_), None) => Err(CredentialsError::HalfPair {
                present: ACCESS_ENV,
                missing: SECRET_ENV,
            }),
            (None, Some(_)) => Err(CredentialsError::HalfPair {
                present: SECRET_ENV,
                missing: ACCESS_ENV,
            }),
            (None, None) => ia_tool_env(vars).unwrap_or_else(|| from_config_file(vars)),
        }
    }

    /// The `authorization` header's value, `LOW <access>:<secret>`, still
    /// wrapped: it is the secret's one rightful destination.
    pub fn authorization(&self) -> Secret {
        Secret::new(format!("LOW {}:{}", self.access, self.secret.expose()))
    }
}

/// `var` or the file `file_var` names; `None` when neither is set.
fn env_value(
    vars: &HashMap<String, String>,
    var: &'static str,
    file_var: &'static str,
    what: &'static str,
) -> Result<Option<Secret>, CredentialsError> {
    let set = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    match (set(var), set(file_var)) {
        (Some(_), Some(_)) => Err(CredentialsError::Both { var, file_var }),
        (Some(value), None) => Ok(Some(Secret::new(value))),
        (None, Some(path)) => {
            let path = Path::new(path);
            let text = std::fs::read_to_string(path).map_err(|e| CredentialsError::Unreadable {
                origin: file_var.to_string(),
                path: path.to_path_buf(),
                reason: e.kind().to_string(),
            })?;
            let value = Secret::new(text.trim());
            if value.is_empty() {
                return Err(CredentialsError::Empty {
                    origin: format!("{file_var} ({})", path.display()),
                    what,
                });
            }
            Ok(Some(value))
        }
        (None, None) => Ok(None),
    }
}

/// `IA_ACCESS_KEY_ID`/`IA_SECRET_ACCESS_KEY`, as `ia` reads them; `None`
/// when neither is set.
fn ia_tool_env(vars: &HashMap<String, String>) -> Option<Result<IaCredentials, CredentialsError>> {
    let set = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    match (set(IA_TOOL_ACCESS_ENV), set(IA_TOOL_SECRET_ENV)) {
        (None, None) => None,
        (Some(access), Some(secret)) => Some(Ok(IaCredentials {
            access: access.to_string(),
            secret: Secret::new(secret),
            source: CredentialSource::IaToolEnvironment,
        })),
        (Some(_), None) => Some(Err(CredentialsError::HalfPair {
            present: IA_TOOL_ACCESS_ENV,
            missing: IA_TOOL_SECRET_ENV,
        })),
        (None, Some(_)) => Some(Err(CredentialsError::HalfPair {
            present: IA_TOOL_SECRET_ENV,
            missing: IA_TOOL_ACCESS_ENV,
        })),
    }
}

/// The config file paths `ia` tries, in its order.
pub fn config_candidates(vars: &HashMap<String, String>) -> Vec<PathBuf> {
    let set = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let mut candidates = Vec::new();
    if let Some(path) = set(CONFIG_FILE_ENV) {
        candidates.push(PathBuf::from(path));
    }
    let home = set("HOME").map(PathBuf::from);
    // `ia` ignores a relative XDG_CONFIG_HOME, as the XDG spec says to.
    let xdg = set("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| home.as_ref().map(|h| h.join(".config")));
    if let Some(xdg) = xdg {
        candidates.push(xdg.join("internetarchive").join("ia.ini"));
    }
    if let Some(home) = home {
        let default = home.join(".config").join("internetarchive").join("ia.ini");
        if !candidates.contains(&default) {
            candidates.push(default);
        }
        candidates.push(home.join(".config").join("ia.ini"));
        candidates.push(home.join(".ia"));
    }
    candidates
}

fn from_config_file(vars: &HashMap<String, String>) -> Result<IaCredentials, CredentialsError> {
    let candidates = config_candidates(vars);
    let Some(path) = candidates.iter().find(|p| p.is_file()) else {
        let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        return Err(CredentialsError::Missing {
            looked: if looked.is_empty() {
                "(no HOME)".into()
            } else {
                looked.join(", ")
            },
        });
    };
    let text = std::fs::read_to_string(path).map_err(|e| CredentialsError::Unreadable {
        origin: "the ia config file".into(),
        path: path.clone(),
        reason: e.kind().to_string(),
    })?;
    let s3 = s3_section(path, &text)?;
    let key = |name: &'static str, what: &'static str| -> Result<Secret, CredentialsError> {
        let value = s3.get(name).ok_or(CredentialsError::MissingInConfig {
            path: path.clone(),
            key: name,
        })?;
        if value.is_empty() {
            return Err(CredentialsError::Empty {
                origin: format!("{} [s3] {name}", path.display()),
                what,
            });
        }
        Ok(value.clone())
    };
    let access = key("access", "access key")?;
    let secret = key("secret", "secret key")?;
    Ok(IaCredentials {
        access: access.expose().to_string(),
        secret,
        source: CredentialSource::ConfigFile(path.clone()),
    })
}

/// The `[s3]` section of an INI file as Python's `configparser` reads it:
/// `key = value` or `key: value`, keys case-insensitive, `#`/`;` comment
/// lines, blank lines, indented continuation lines; other sections skipped.
/// Values stay [`Secret`]s.
fn s3_section(path: &Path, text: &str) -> Result<HashMap<String, Secret>, CredentialsError> {
    let mut section: Option<&str> = None;
    let mut keys: HashMap<String, Secret> = HashMap::new();
    let mut last_key: Option<String> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if raw.starts_with([' ', '\t']) && last_key.is_some() {
            // A continuation of the previous value (configparser joins with "\n").
            if let (Some("s3"), Some(key)) = (section, &last_key) {
                let joined = format!("{}\n{line}", keys[key].expose());
                keys.insert(key.clone(), Secret::new(joined));
            }
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.trim());
            last_key = None;
            continue;
        }
        let split = line.find(['=', ':']);
        let (Some(at), Some(name)) = (split, section) else {
            return Err(CredentialsError::ConfigSyntax {
                path: path.to_path_buf(),
                line: index + 1,
            });
        };
        let key = line[..at].trim().to_ascii_lowercase();
        if name == "s3" {
            keys.insert(key.clone(), Secret::new(line[at + 1..].trim()));
        }
        last_key = Some(key);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cr3t-VALUE-never-shown";

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The error's message, checked to hold no secret.
    fn message(error: CredentialsError) -> String {
        let text = format!("{error} {error:?}");
        assert!(!text.contains(SECRET), "{text}");
        text
    }

    fn home_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let home = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = home.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        home
    }

    fn home_vars(home: &tempfile::TempDir) -> HashMap<String, String> {
        vars(&[("HOME", home.path().to_str().unwrap())])
    }

    #[test]
    fn the_pair_from_the_environment_never_prints_the_secret() {
        let found = IaCredentials::from_vars(&vars(&[(ACCESS_ENV, " acc "), (SECRET_ENV, SECRET)]))
            .unwrap();
        assert_eq!(found.access, "acc");
        assert_eq!(found.secret.expose(), SECRET);
        assert_eq!(found.source, CredentialSource::Environment);
        assert_eq!(found.authorization().expose(), format!("LOW acc:{SECRET}"));
        assert!(!format!("{found:?} {}", found.authorization()).contains(SECRET));
    }

    #[test]
    fn file_forms_are_read_and_trimmed() {
        let home = home_with(&[("access", "acc\n"), ("secret", &format!("{SECRET}\n"))]);
        let path = |name: &str| home.path().join(name).to_str().unwrap().to_string();
        let found = IaCredentials::from_vars(&vars(&[
            (ACCESS_FILE_ENV, &path("access")),
            (SECRET_FILE_ENV, &path("secret")),
        ]))
        .unwrap();
        assert_eq!(
            (found.access.as_str(), found.secret.expose()),
            ("acc", SECRET)
        );
        // One plain, one from a file.
        let found = IaCredentials::from_vars(&vars(&[
            (ACCESS_ENV, "a2"),
            (SECRET_FILE_ENV, &path("secret")),
        ]))
        .unwrap();
        assert_eq!(
            (found.access.as_str(), found.secret.expose()),
            ("a2", SECRET)
        );
    }

    #[test]
    fn bad_environments_say_which_variable_and_never_the_value() {
        let home = home_with(&[("empty", "  \n")]);
        let empty = home.path().join("empty");
        let missing = home.path().join("nope");
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (
                vec![
                    (ACCESS_ENV, "a"),
                    (SECRET_ENV, SECRET),
                    (SECRET_FILE_ENV, "/x"),
                ],
                "both IA_SECRET_KEY and IA_SECRET_KEY_FILE are set",
            ),
            (
                vec![(SECRET_ENV, SECRET)],
                "IA_SECRET_KEY is set but IA_ACCESS_KEY is not",
            ),
            (
                vec![(ACCESS_ENV, "a")],
                "IA_ACCESS_KEY is set but IA_SECRET_KEY is not",
            ),
            (
                vec![
                    (ACCESS_ENV, "a"),
                    (SECRET_FILE_ENV, missing.to_str().unwrap()),
                ],
                "IA_SECRET_KEY_FILE: cannot read",
            ),
            (
                vec![
                    (ACCESS_ENV, "a"),
                    (SECRET_FILE_ENV, empty.to_str().unwrap()),
                ],
                "the secret key is empty",
            ),
            (
                vec![(IA_TOOL_SECRET_ENV, SECRET)],
                "IA_SECRET_ACCESS_KEY is set but IA_ACCESS_KEY_ID is not",
            ),
        ];
        for (pairs, expected) in cases {
            let error = IaCredentials::from_vars(&vars(&pairs)).unwrap_err();
            let text = message(error);
            assert!(text.contains(expected), "{pairs:?}: {text}");
        }
    }

    #[test]
    fn the_ia_tools_own_variables_come_after_ours() {
        let tool = [(IA_TOOL_ACCESS_ENV, "tool"), (IA_TOOL_SECRET_ENV, SECRET)];
        let found = IaCredentials::from_vars(&vars(&tool)).unwrap();
        assert_eq!(found.access, "tool");
        assert_eq!(found.source, CredentialSource::IaToolEnvironment);
        let mut both = tool.to_vec();
        both.extend([(ACCESS_ENV, "ours"), (SECRET_ENV, "x")]);
        assert_eq!(
            IaCredentials::from_vars(&vars(&both)).unwrap().access,
            "ours"
        );
    }

    #[test]
    fn the_ia_config_file_is_read_as_configparser_does() {
        let ini = format!(
            "# written by ia configure\n[general]\nscreenname = someone\n\n[s3]\nACCESS: acc\n\
             ; a comment\nsecret = {SECRET}\n\n[cookies]\nlogged-in-sig = a%20b=c; d\n"
        );
        let home = home_with(&[(".config/internetarchive/ia.ini", &ini)]);
        let found = IaCredentials::from_vars(&home_vars(&home)).unwrap();
        assert_eq!(
            (found.access.as_str(), found.secret.expose()),
            ("acc", SECRET)
        );
        let path = home.path().join(".config/internetarchive/ia.ini");
        assert_eq!(found.source, CredentialSource::ConfigFile(path.clone()));
        assert_eq!(found.source.to_string(), path.display().to_string());
        // The environment wins over the file.
        let mut env = home_vars(&home);
        env.extend(vars(&[(ACCESS_ENV, "env"), (SECRET_ENV, "x")]));
        assert_eq!(IaCredentials::from_vars(&env).unwrap().access, "env");
    }

    #[test]
    fn config_files_are_looked_up_in_the_ia_tools_order() {
        let ini = |access: &str| format!("[s3]\naccess = {access}\nsecret = {SECRET}\n");
        let home = home_with(&[
            (".ia", &ini("dot-ia")),
            (".config/ia.ini", &ini("config-ia-ini")),
            ("xdg/internetarchive/ia.ini", &ini("xdg")),
            ("chosen.ini", &ini("chosen")),
        ]);
        let access = |env: &HashMap<String, String>| IaCredentials::from_vars(env).unwrap().access;
        let mut env = home_vars(&home);
        assert_eq!(access(&env), "config-ia-ini");
        std::fs::remove_file(home.path().join(".config/ia.ini")).unwrap();
        assert_eq!(access(&env), "dot-ia");
        let xdg = home.path().join("xdg");
        env.insert("XDG_CONFIG_HOME".into(), xdg.to_str().unwrap().into());
        assert_eq!(access(&env), "xdg");
        // A relative XDG_CONFIG_HOME is ignored, as the XDG spec says.
        env.insert("XDG_CONFIG_HOME".into(), "xdg".into());
        assert_eq!(access(&env), "dot-ia");
        let chosen = home.path().join("chosen.ini");
        env.insert(CONFIG_FILE_ENV.into(), chosen.to_str().unwrap().into());
        assert_eq!(access(&env), "chosen");
    }

    #[test]
    fn bad_config_files_say_where_and_never_the_line() {
        let home = home_with(&[(".ia", &format!("[s3]\naccess = a\n{SECRET}\n"))]);
        let text = message(IaCredentials::from_vars(&home_vars(&home)).unwrap_err());
        assert!(text.contains(".ia, line 3"), "{text}");
        let home = home_with(&[(".ia", "[s3]\naccess = a\n")]);
        let text = message(IaCredentials::from_vars(&home_vars(&home)).unwrap_err());
        assert!(text.contains("no `secret` in section [s3]"), "{text}");
        let home = home_with(&[(".ia", "[s3]\naccess = a\nsecret =\n")]);
        let text = message(IaCredentials::from_vars(&home_vars(&home)).unwrap_err());
        assert!(text.contains("the secret key is empty"), "{text}");
        let home = home_with(&[]);
        let text = message(IaCredentials::from_vars(&home_vars(&home)).unwrap_err());
        assert!(
            text.contains("no Internet Archive keys") && text.contains(".ia"),
            "{text}"
        );
        let text = message(IaCredentials::from_vars(&HashMap::new()).unwrap_err());
        assert!(text.contains("(no HOME)"), "{text}");
    }
}
