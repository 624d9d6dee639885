//! Command-line flags with Go's `flag` package semantics, because Tailscale's users,
//! scripts and docs rely on them: `-name` and `--name` are the same, values come as
//! `--name=value` or `--name value`, boolean flags take a value only after `=`, parsing
//! stops at the first non-flag argument or `--`, and errors use Go's wording. A general
//! parser (clap) would reject or reinterpret some of these forms and costs far more bytes.

use std::collections::HashMap;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Value,
}

/// One flag a command accepts.
pub struct Flag {
    pub name: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    pub usage: &'static str,
}

impl Flag {
    pub const fn bool(name: &'static str, usage: &'static str) -> Flag {
        Flag {
            name,
            kind: Kind::Bool,
            default: "false",
            usage,
        }
    }
    /// A boolean flag that is on unless `--name=false` is given.
    pub const fn bool_on(name: &'static str, usage: &'static str) -> Flag {
        Flag {
            name,
            kind: Kind::Bool,
            default: "true",
            usage,
        }
    }
    pub const fn value(name: &'static str, default: &'static str, usage: &'static str) -> Flag {
        Flag {
            name,
            kind: Kind::Value,
            default,
            usage,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum FlagError {
    /// `-h`, `-help` or `--help` was given: print usage and exit 0, as Go does.
    Help,
    Message(String),
}

impl fmt::Display for FlagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlagError::Help => f.write_str("help requested"),
            FlagError::Message(m) => f.write_str(m),
        }
    }
}

/// The result of parsing: the values given explicitly, and the remaining arguments.
pub struct Parsed<'f> {
    flags: &'f [Flag],
    set: HashMap<&'static str, String>,
    pub args: Vec<String>,
}

pub fn parse<'f>(flags: &'f [Flag], argv: &[String]) -> Result<Parsed<'f>, FlagError> {
    let mut set = HashMap::new();
    let mut i = 0;
    while i < argv.len() {
        let arg = &argv[i];
        if arg == "--" {
            i += 1;
            break;
        }
        let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            break;
        };
        if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
            if body.is_empty() {
                break; // a lone "-" is an argument
            }
            return Err(FlagError::Message(format!("bad flag syntax: {arg}")));
        }
        i += 1;
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let Some(flag) = flags.iter().find(|f| f.name == name) else {
            if name == "h" || name == "help" {
                return Err(FlagError::Help);
            }
            return Err(FlagError::Message(format!(
                "flag provided but not defined: -{name}"
            )));
        };
        let value = match (flag.kind, inline) {
            (Kind::Bool, None) => "true".to_string(),
            (Kind::Bool, Some(v)) => match parse_bool(v) {
                Some(b) => b.to_string(),
                None => {
                    return Err(FlagError::Message(format!(
                        "invalid boolean value {v:?} for -{name}: parse error"
                    )))
                }
            },
            (Kind::Value, Some(v)) => v.to_string(),
            (Kind::Value, None) => match argv.get(i) {
                Some(v) => {
                    i += 1;
                    v.clone()
                }
                None => {
                    return Err(FlagError::Message(format!(
                        "flag needs an argument: -{name}"
                    )))
                }
            },
        };
        set.insert(flag.name, value);
    }
    Ok(Parsed {
        flags,
        set,
        args: argv[i..].to_vec(),
    })
}

/// Go's strconv.ParseBool.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

impl Parsed<'_> {
    fn flag(&self, name: &str) -> &Flag {
        self.flags
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("flag -{name} is not declared"))
    }

    /// Whether the flag was given on the command line (Go's flag.Visit).
    pub fn is_set(&self, name: &str) -> bool {
        self.set.contains_key(name)
    }

    /// The flag's value: as given, or its default.
    pub fn str(&self, name: &str) -> &str {
        match self.set.get(name) {
            Some(v) => v,
            None => self.flag(name).default,
        }
    }

    pub fn bool(&self, name: &str) -> bool {
        parse_bool(self.str(name)).unwrap_or(false)
    }

    /// A numeric flag, with Go's error wording for a bad value.
    pub fn num<T: std::str::FromStr>(&self, name: &str) -> Result<T, FlagError> {
        let v = self.str(name);
        v.parse().map_err(|_| {
            FlagError::Message(format!("invalid value {v:?} for flag -{name}: parse error"))
        })
    }

    /// Go's PrintDefaults, for `-help`.
    pub fn usage(flags: &[Flag]) -> String {
        let mut out = String::new();
        for f in flags {
            let arg = if f.kind == Kind::Value { " string" } else { "" };
            out.push_str(&format!("  --{}{arg}\n    \t{}", f.name, f.usage));
            if f.kind == Kind::Value && !f.default.is_empty() {
                out.push_str(&format!(" (default {:?})", f.default));
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAGS: &[Flag] = &[
        Flag::bool("cleanup", "clean up"),
        Flag::value("port", "41641", "UDP port"),
        Flag::value("tun", "tailscale0", "device name"),
    ];

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn go_forms_are_accepted() {
        let p = parse(
            FLAGS,
            &args(&["-port", "1", "--tun=wg0", "--cleanup", "rest", "-x"]),
        )
        .unwrap();
        assert_eq!(p.num::<u16>("port").unwrap(), 1);
        assert_eq!(p.str("tun"), "wg0");
        assert!(p.bool("cleanup"));
        assert_eq!(p.args, args(&["rest", "-x"]));
        let p = parse(FLAGS, &args(&["--cleanup=false", "--", "-port"])).unwrap();
        assert!(!p.bool("cleanup") && p.is_set("cleanup"));
        assert_eq!(p.str("port"), "41641");
        assert_eq!(p.args, args(&["-port"]));
    }

    #[test]
    fn errors_use_go_wording() {
        let e = |a: &[&str]| parse(FLAGS, &args(a)).err().expect("an error");
        assert_eq!(
            e(&["--nope"]),
            FlagError::Message("flag provided but not defined: -nope".into())
        );
        assert_eq!(
            e(&["--port"]),
            FlagError::Message("flag needs an argument: -port".into())
        );
        assert_eq!(
            e(&["--cleanup=maybe"]),
            FlagError::Message("invalid boolean value \"maybe\" for -cleanup: parse error".into())
        );
        assert_eq!(e(&["-h"]), FlagError::Help);
        let p = parse(FLAGS, &args(&["--port=x"])).unwrap();
        assert_eq!(
            p.num::<u16>("port").unwrap_err(),
            FlagError::Message("invalid value \"x\" for flag -port: parse error".into())
        );
    }
}
