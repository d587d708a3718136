//! `subcommand --key value --flag ...`: small enough not to need an argument crate.

use std::collections::HashMap;

pub struct Args {
    pub command: String,
    values: HashMap<String, String>,
}

/// Options that take no value.
const FLAGS: &[&str] = &["no-zerocopy", "tls-no-resume", "proxy-v2"];

impl Args {
    pub fn parse(mut it: impl Iterator<Item = String>) -> Self {
        let command = it.next().unwrap_or_default();
        let mut values = HashMap::new();
        while let Some(a) = it.next() {
            let Some(key) = a.strip_prefix("--") else {
                eprintln!("socksbench: unexpected argument '{a}'");
                std::process::exit(2);
            };
            if FLAGS.contains(&key) {
                values.insert(key.to_string(), String::new());
                continue;
            }
            match it.next() {
                Some(v) => {
                    values.insert(key.to_string(), v);
                }
                None => {
                    eprintln!("socksbench: --{key} needs a value");
                    std::process::exit(2);
                }
            }
        }
        Args { command, values }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    pub fn req(&self, key: &str) -> Result<&str, String> {
        self.get(key).ok_or_else(|| format!("--{key} is required"))
    }

    pub fn flag(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    pub fn usize(&self, key: &str, default: usize) -> usize {
        self.parsed(key).unwrap_or(default)
    }

    pub fn f64(&self, key: &str, default: f64) -> f64 {
        self.parsed(key).unwrap_or(default)
    }

    fn parsed<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.get(key).map(|v| {
            v.parse().unwrap_or_else(|_| {
                eprintln!("socksbench: --{key}: '{v}' is not a valid number");
                std::process::exit(2);
            })
        })
    }
}
