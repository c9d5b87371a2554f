//! The stage configuration: [`Config`] and [`config()`].

use std::str::FromStr;
use std::sync::OnceLock;

use crate::Error;

/// The configuration of a stage: the string key/value pairs of the stage's
/// `config` table in the pipeline file, sorted by key.
///
/// The SDK stores the configuration the host passes to `init`; read it from
/// anywhere with [`config()`], or in the `init = ...` function the kind
/// attribute names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl Config {
    /// A configuration from key/value pairs (sorted here; for a key given
    /// twice, the last value wins).
    pub fn new<K: Into<String>, V: Into<String>>(entries: impl IntoIterator<Item = (K, V)>) -> Self {
        let mut entries: Vec<(String, String)> =
            entries.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        // A stable sort keeps duplicates in order: keep the last of each run.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut deduped: Vec<(String, String)> = Vec::with_capacity(entries.len());
        for entry in entries {
            match deduped.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => deduped.push(entry),
            }
        }
        Self { entries: deduped }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self.entries[i].1.as_str())
    }

    /// The value of `key`, or an error saying that this required key is missing.
    pub fn require(&self, key: &str) -> Result<&str, Error> {
        self.get(key)
            .ok_or_else(|| Error::msg(format!("missing required config key `{key}`")))
    }

    /// The value of `key`, or `default` when it is not set.
    pub fn get_or<'s>(&'s self, key: &str, default: &'s str) -> &'s str {
        self.get(key).unwrap_or(default)
    }

    /// The value of `key` parsed with [`FromStr`] (`None` when not set); an
    /// error naming the key and the value when it does not parse.
    pub fn parse<T>(&self, key: &str) -> Result<Option<T>, Error>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        self.get(key)
            .map(|value| {
                value
                    .trim()
                    .parse()
                    .map_err(|e| Error::msg(format!("invalid value {value:?} for config key `{key}`: {e}")))
            })
            .transpose()
    }

    /// The value of `key` as a comma-separated list: items trimmed, empty
    /// items skipped (`None` when the key is not set).
    ///
    /// ```
    /// let config = weir_guest::Config::new([("words", " a, b ,,c ")]);
    /// assert_eq!(config.get_list("words"), Some(vec!["a", "b", "c"]));
    /// assert_eq!(config.get_list("other"), None);
    /// ```
    pub fn get_list(&self, key: &str) -> Option<Vec<&str>> {
        self.get(key).map(split_list)
    }

    /// All key/value pairs, sorted by key.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Config {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self::new(iter)
    }
}

/// Splits a comma-separated list: items trimmed, empty items skipped.
pub fn split_list(text: &str) -> Vec<&str> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .collect()
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// The configuration the host passed to `init`; empty before `init`.
pub fn config() -> &'static Config {
    static EMPTY: Config = Config { entries: Vec::new() };
    CONFIG.get().unwrap_or(&EMPTY)
}

/// Stores the configuration passed to `init`; an error if one is already stored.
pub(crate) fn store(config: Config) -> Result<&'static Config, Error> {
    let mut config = Some(config);
    let stored = CONFIG.get_or_init(|| config.take().unwrap_or_default());
    if config.is_some() {
        return Err(Error::msg("init was called more than once"));
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        let config = Config::new([("b", "2"), ("a", "1"), ("c", " x , y"), ("a", "3")]);
        assert_eq!(
            config.iter().collect::<Vec<_>>(),
            [("a", "3"), ("b", "2"), ("c", " x , y")]
        );
        assert_eq!(config.get("a"), Some("3"));
        assert_eq!(config.get("z"), None);
        assert_eq!(config.get_or("z", "dflt"), "dflt");
        assert_eq!(config.require("b").unwrap(), "2");
        assert_eq!(
            config.require("z").unwrap_err().to_string(),
            "missing required config key `z`"
        );
        assert_eq!(config.get_list("c"), Some(vec!["x", "y"]));
        assert_eq!(config.parse::<u32>("b").unwrap(), Some(2));
        assert_eq!(config.parse::<u32>("z").unwrap(), None);
        assert!(
            config
                .parse::<u32>("c")
                .unwrap_err()
                .to_string()
                .contains("config key `c`")
        );
        assert_eq!(config.len(), 3);
        assert!(Config::default().is_empty());
    }

    #[test]
    fn global_config_is_stored_once() {
        assert!(config().get("k").is_none() || config().get("k") == Some("v"));
        store(Config::new([("k", "v")])).unwrap();
        assert_eq!(config().get("k"), Some("v"));
        assert!(store(Config::default()).is_err());
    }
}
