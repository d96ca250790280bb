//! What `-R` writes into a backup, as pg_basebackup's `GenerateRecoveryConfig` /
//! `WriteRecoveryConfig` do (`src/fe_utils/recovery_gen.c`): `primary_conninfo` (and
//! `primary_slot_name`) appended to `postgresql.auto.conf`, and an empty `standby.signal`.
//!
//! This is the one place that knows those two files; the sinks only put them where their format
//! keeps files (a directory, or entries of base.tar).

/// The settings that make a restored backup start as a standby of its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbySettings {
    lines: String,
}

/// The file that the settings are appended to.
pub const AUTO_CONF: &str = "postgresql.auto.conf";
/// The file whose presence makes the server start as a standby.
pub const STANDBY_SIGNAL: &str = "standby.signal";

fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

impl StandbySettings {
    /// Settings for a standby connecting with `primary_conninfo` (see
    /// `pgrepl::Config::to_conninfo_without_password`) and, if given, streaming from `slot`.
    pub fn new(primary_conninfo: &str, slot: Option<&str>) -> Self {
        let mut lines = format!("primary_conninfo = {}\n", quote(primary_conninfo));
        if let Some(s) = slot {
            lines.push_str(&format!("primary_slot_name = {}\n", quote(s)));
        }
        StandbySettings { lines }
    }

    /// The lines appended to `postgresql.auto.conf`.
    pub fn lines(&self) -> &str {
        &self.lines
    }

    /// The files `-R` leaves in the backup, given `postgresql.auto.conf` as the backup holds
    /// it (empty when it has none): that file with the lines appended, and `standby.signal`.
    pub fn files(&self, mut auto_conf: Vec<u8>) -> [(&'static str, Vec<u8>); 2] {
        auto_conf.extend_from_slice(self.lines.as_bytes());
        [(AUTO_CONF, auto_conf), (STANDBY_SIGNAL, Vec::new())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_as_the_server_reads_it() {
        let s = StandbySettings::new("user=a host='x y' sslmode=verify-full", Some("sl'ot"));
        assert_eq!(
            s.lines(),
            "primary_conninfo = 'user=a host=''x y'' sslmode=verify-full'\nprimary_slot_name = 'sl''ot'\n"
        );
        let [(a, conf), (b, sig)] = s.files(b"# existing\n".to_vec());
        assert_eq!((a, b), (AUTO_CONF, STANDBY_SIGNAL));
        assert!(conf.starts_with(b"# existing\nprimary_conninfo"));
        assert!(sig.is_empty());
    }
}
