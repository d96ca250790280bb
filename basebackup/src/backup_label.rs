//! `backup_label`: the lines a backup chain is checked with (`START WAL LOCATION`,
//! `START TIMELINE`, `INCREMENTAL FROM LSN`, `INCREMENTAL FROM TLI`), as written by
//! `src/backend/access/transam/xlogbackup.c` and read by pg_combinebackup's `backup_label.c`.

use pgwal::{Lsn, TimelineId};

/// A backup_label that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LabelError {
    /// A line's value is not an LSN.
    #[error("line {line}: \"{value}\" is not an LSN")]
    BadLsn {
        /// The line number.
        line: usize,
        /// The value.
        value: String,
    },
    /// A line's value is not a timeline.
    #[error("line {line}: \"{value}\" is not a timeline")]
    BadTimeline {
        /// The line number.
        line: usize,
        /// The value.
        value: String,
    },
    /// A required line is absent.
    #[error("could not find {0}")]
    Missing(&'static str),
    /// One of the two INCREMENTAL lines without the other.
    #[error("{present} requires {missing}")]
    Unpaired {
        /// The line present.
        present: &'static str,
        /// The line absent.
        missing: &'static str,
    },
}

/// What a backup_label says about where the backup starts and what it is incremental to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupLabel {
    /// `START WAL LOCATION`.
    pub start_lsn: Lsn,
    /// `START TIMELINE`.
    pub start_tli: TimelineId,
    /// `INCREMENTAL FROM LSN` and `INCREMENTAL FROM TLI` of an incremental backup.
    pub incremental_from: Option<(Lsn, TimelineId)>,
}

impl BackupLabel {
    /// Parses a label. Both INCREMENTAL lines or neither must be present.
    pub fn parse(text: &str) -> Result<Self, LabelError> {
        let mut start_lsn = None;
        let mut start_tli = None;
        let mut from_lsn = None;
        let mut from_tli = None;
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            let lsn = |v: &str| -> Result<Lsn, LabelError> {
                let v = v.split_whitespace().next().unwrap_or("");
                v.parse().map_err(|_| LabelError::BadLsn {
                    line: n,
                    value: v.chars().take(64).collect(),
                })
            };
            let tli = |v: &str| -> Result<TimelineId, LabelError> {
                v.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|t| *t > 0)
                    .map(TimelineId)
                    .ok_or_else(|| LabelError::BadTimeline {
                        line: n,
                        value: v.trim().chars().take(64).collect(),
                    })
            };
            if let Some(v) = line.strip_prefix("START WAL LOCATION: ") {
                start_lsn = Some(lsn(v)?);
            } else if let Some(v) = line.strip_prefix("START TIMELINE: ") {
                start_tli = Some(tli(v)?);
            } else if let Some(v) = line.strip_prefix("INCREMENTAL FROM LSN: ") {
                from_lsn = Some(lsn(v)?);
            } else if let Some(v) = line.strip_prefix("INCREMENTAL FROM TLI: ") {
                from_tli = Some(tli(v)?);
            }
        }
        let start_lsn = start_lsn.ok_or(LabelError::Missing("START WAL LOCATION"))?;
        let start_tli = start_tli.ok_or(LabelError::Missing("START TIMELINE"))?;
        let incremental_from = match (from_lsn, from_tli) {
            (Some(l), Some(t)) => Some((l, t)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(LabelError::Unpaired {
                    present: "INCREMENTAL FROM LSN",
                    missing: "INCREMENTAL FROM TLI",
                })
            }
            (None, Some(_)) => {
                return Err(LabelError::Unpaired {
                    present: "INCREMENTAL FROM TLI",
                    missing: "INCREMENTAL FROM LSN",
                })
            }
        };
        Ok(BackupLabel {
            start_lsn,
            start_tli,
            incremental_from,
        })
    }
}

/// The label with its INCREMENTAL FROM lines removed: the label of a combined backup.
pub fn strip_incremental(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if !line.starts_with("INCREMENTAL FROM LSN: ")
            && !line.starts_with("INCREMENTAL FROM TLI: ")
        {
            out.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const INC: &str = "START WAL LOCATION: 0/6000028 (file 000000010000000000000006)\n\
CHECKPOINT LOCATION: 0/6000080\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
START TIME: 2026-11-24 10:00:00 UTC\nLABEL: pgrepl\nSTART TIMELINE: 1\n\
INCREMENTAL FROM LSN: 0/4000028\nINCREMENTAL FROM TLI: 1\n";

    #[test]
    fn parses_and_strips() {
        let l = BackupLabel::parse(INC).unwrap();
        assert_eq!(l.start_lsn, Lsn(0x600_0028));
        assert_eq!(l.start_tli, TimelineId(1));
        assert_eq!(l.incremental_from, Some((Lsn(0x400_0028), TimelineId(1))));
        let full = strip_incremental(INC);
        assert!(!full.contains("INCREMENTAL"));
        assert!(full.ends_with("START TIMELINE: 1\n"));
        assert_eq!(BackupLabel::parse(&full).unwrap().incremental_from, None);
        let half = INC.replace("INCREMENTAL FROM TLI: 1\n", "");
        assert!(BackupLabel::parse(&half).is_err());
        assert!(BackupLabel::parse("LABEL: x\n").is_err());
    }
}
