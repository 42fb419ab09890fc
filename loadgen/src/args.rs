//! A small `--name value` command-line parser: the loadgen has a dozen flags and no
//! need for a parser crate's compile time.

use std::{collections::HashMap, str::FromStr};

/// Flags given as `--name value` (or `--name=value`), each at most once.
#[derive(Debug, Default, Clone)]
pub struct Args {
    values: HashMap<String, String>,
}

impl Args {
    /// Parses `argv` after the subcommand.
    pub fn parse(argv: impl IntoIterator<Item = String>) -> Result<Args, String> {
        let mut values = HashMap::new();
        let mut argv = argv.into_iter();
        while let Some(arg) = argv.next() {
            let Some(name) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?}"));
            };
            let (name, value) = match name.split_once('=') {
                Some((name, value)) => (name.to_string(), value.to_string()),
                None => {
                    let value = argv
                        .next()
                        .ok_or_else(|| format!("--{name} needs a value"))?;
                    (name.to_string(), value)
                }
            };
            values.insert(name, value);
        }
        Ok(Args { values })
    }

    /// The raw value of `--name`, if given.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// `--name` parsed, or `default` when absent.
    pub fn get<T: FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.raw(name) {
            None => Ok(default),
            Some(value) => value
                .parse()
                .map_err(|_| format!("--{name}: cannot parse {value:?}")),
        }
    }

    /// `--name` as a comma-separated list (empty when absent).
    pub fn list<T: FromStr>(&self, name: &str) -> Result<Vec<T>, String> {
        let Some(value) = self.raw(name) else {
            return Ok(Vec::new());
        };
        value
            .split(',')
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse()
                    .map_err(|_| format!("--{name}: cannot parse {item:?}"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms_and_lists() {
        let args = Args::parse(
            ["--clients", "10", "--rates=1,2.5", "--protocol", "socketio"].map(String::from),
        )
        .unwrap();
        assert_eq!(args.get("clients", 0usize).unwrap(), 10);
        assert_eq!(args.list::<f64>("rates").unwrap(), vec![1.0, 2.5]);
        assert_eq!(args.raw("protocol"), Some("socketio"));
        assert_eq!(args.get("rooms", 7u32).unwrap(), 7);
        assert!(Args::parse(["--clients".to_string()]).is_err());
    }
}
