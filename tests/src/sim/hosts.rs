//! Name resolution of a simulated machine: its own hosts file, never system DNS.

use std::net::IpAddr;
use std::path::Path;

/// A parsed hosts file: address and names per line, `#` comments allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hosts {
    entries: Vec<(IpAddr, Vec<String>)>,
}

/// Why a hosts file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// The file cannot be read.
    #[error("cannot read hosts file {path}: {source}")]
    Read {
        /// The hosts file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line is not `address name...`.
    #[error("hosts file {path} line {line}: {reason}")]
    Syntax {
        /// The hosts file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

impl Hosts {
    /// Parses hosts-file text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &str) -> Result<Hosts, HostsError> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let addr = words.next().unwrap_or_default();
            let ip: IpAddr = addr.parse().map_err(|_| HostsError::Syntax {
                path: path.to_string(),
                line: i + 1,
                reason: format!("{addr:?} is not an IP address"),
            })?;
            let names: Vec<String> = words.map(str::to_ascii_lowercase).collect();
            if names.is_empty() {
                return Err(HostsError::Syntax {
                    path: path.to_string(),
                    line: i + 1,
                    reason: format!("no host name after {addr}"),
                });
            }
            entries.push((ip, names));
        }
        Ok(Hosts { entries })
    }

    /// Reads and parses a hosts file.
    pub fn load(path: &Path) -> Result<Hosts, HostsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| HostsError::Read {
            path: shown.clone(),
            source,
        })?;
        Hosts::parse(&text, &shown)
    }

    /// Resolves a name (an IP literal resolves to itself); first matching line wins.
    pub fn resolve(&self, host: &str) -> Option<IpAddr> {
        if let Ok(ip) = host.parse() {
            return Some(ip);
        }
        let host = host.to_ascii_lowercase();
        self.entries
            .iter()
            .find(|(_, names)| names.contains(&host))
            .map(|(ip, _)| *ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comments_aliases_and_literals() {
        let h = Hosts::parse(
            "# managed\n127.0.0.1 localhost\n127.1.2.3  tm.wso2.com TM2.wso2.com # tm\n\n127.1.2.4 tm.wso2.com\n",
            "h",
        )
        .expect("parse");
        assert_eq!(
            h.resolve("tm.wso2.com"),
            Some("127.1.2.3".parse().expect("ip"))
        );
        assert_eq!(
            h.resolve("tm2.WSO2.com"),
            Some("127.1.2.3".parse().expect("ip"))
        );
        assert_eq!(h.resolve("10.0.0.1"), Some("10.0.0.1".parse().expect("ip")));
        assert_eq!(h.resolve("km.wso2.com"), None);
    }

    #[test]
    fn rejects_garbage_lines() {
        assert!(matches!(
            Hosts::parse("not-an-ip host\n", "h"),
            Err(HostsError::Syntax { line: 1, .. })
        ));
        assert!(matches!(
            Hosts::parse("127.0.0.1 a\n127.0.0.2\n", "h"),
            Err(HostsError::Syntax { line: 2, .. })
        ));
    }
}
