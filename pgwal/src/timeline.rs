//! Timeline history files (`%08X.history`): parse and write.
//!
//! Format from `readTimeLineHistory` / `writeTimeLineHistory` in
//! `src/backend/access/transam/timeline.c`: one line per ancestor, `<parent tli>\t<switch
//! point>\t<reason>`, blank and `#` lines ignored, timelines strictly increasing.

use std::fmt::Write as _;

use crate::{Lsn, TimelineId};

/// One ancestor: `timeline` was left at `switch_point`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The ancestor timeline.
    pub timeline: TimelineId,
    /// Where the next timeline branched off it.
    pub switch_point: Lsn,
    /// Free text (e.g. "no recovery target specified").
    pub reason: String,
}

/// A history file that cannot be read, naming the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The timeline field is not a number.
    #[error("line {line}: invalid timeline \"{value}\"")]
    BadTimeline {
        /// The line number.
        line: usize,
        /// The field.
        value: String,
    },
    /// The line has no switch point.
    #[error("line {line}: missing switch point")]
    MissingSwitchPoint {
        /// The line number.
        line: usize,
    },
    /// The switch point is not an LSN.
    #[error("line {line}: {source}")]
    BadSwitchPoint {
        /// The line number.
        line: usize,
        /// Why.
        #[source]
        source: crate::ParseLsnError,
    },
    /// Timelines must increase from line to line.
    #[error("line {line}: timeline IDs must be in increasing sequence")]
    NotIncreasing {
        /// The line number.
        line: usize,
    },
    /// Switch points must not go back.
    #[error("line {line}: switch points go backwards")]
    Backwards {
        /// The line number.
        line: usize,
    },
}

/// The parsed history of one timeline: its ancestors, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimelineHistory {
    /// Ancestors, oldest first.
    pub entries: Vec<HistoryEntry>,
}

impl TimelineHistory {
    /// Parses a history file's text; errors name the line.
    pub fn parse(text: &str) -> Result<TimelineHistory, HistoryError> {
        let mut entries: Vec<HistoryEntry> = Vec::new();
        // Lines end at '\n' only: the reason is kept verbatim (a '\r' in it included), so what
        // we write back parses to the same history.
        for (i, line) in text.split('\n').enumerate() {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let mut parts = trimmed.splitn(3, '\t');
            let tli = parts.next().unwrap_or("");
            let line = i + 1;
            let tli: u32 = tli.trim().parse().map_err(|_| HistoryError::BadTimeline {
                line,
                value: tli.chars().take(64).collect(),
            })?;
            let lsn = parts
                .next()
                .ok_or(HistoryError::MissingSwitchPoint { line })?;
            let switch_point: Lsn = lsn
                .trim()
                .parse()
                .map_err(|source| HistoryError::BadSwitchPoint { line, source })?;
            if let Some(prev) = entries.last() {
                if tli <= prev.timeline.0 {
                    return Err(HistoryError::NotIncreasing { line });
                }
                if switch_point < prev.switch_point {
                    return Err(HistoryError::Backwards { line });
                }
            }
            entries.push(HistoryEntry {
                timeline: TimelineId(tli),
                switch_point,
                reason: parts.next().unwrap_or("").to_owned(),
            });
        }
        Ok(TimelineHistory { entries })
    }

    /// The file's text, as the server writes it.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for e in &self.entries {
            let _ = writeln!(s, "{}\t{}\t{}", e.timeline.0, e.switch_point, e.reason);
        }
        s
    }

    /// The timeline that `lsn` belongs to, for the history of `current`.
    pub fn timeline_of(&self, current: TimelineId, lsn: Lsn) -> TimelineId {
        self.entries
            .iter()
            .find(|e| lsn < e.switch_point)
            .map(|e| e.timeline)
            .unwrap_or(current)
    }
}

/// `%08X.history`.
#[doc(alias = "TLHistoryFileName")]
pub fn history_file_name(tli: TimelineId) -> String {
    format!("{:08X}.history", tli.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_server_format() {
        let h = TimelineHistory::parse(
            "1\t0/3000060\tno recovery target specified\n\n# comment\n2\t0/5000000\tat restore point \"x\"\n",
        )
        .unwrap();
        assert_eq!(h.entries.len(), 2);
        assert_eq!(h.entries[1].switch_point, Lsn(0x500_0000));
        assert_eq!(h.timeline_of(TimelineId(3), Lsn(0x100)), TimelineId(1));
        assert_eq!(h.timeline_of(TimelineId(3), Lsn(0x300_0060)), TimelineId(2));
        assert_eq!(h.timeline_of(TimelineId(3), Lsn(0x600_0000)), TimelineId(3));
        assert!(TimelineHistory::parse("2\t0/1\tx\n1\t0/2\ty\n").is_err());
        assert!(TimelineHistory::parse("x\t0/1\n").is_err());
        assert!(TimelineHistory::parse("1\tnope\n").is_err());
        assert_eq!(history_file_name(TimelineId(10)), "0000000A.history");
    }

    #[test]
    fn carriage_returns_in_the_reason_survive_a_round_trip() {
        // found by the timeline_history fuzz target
        let text = "111\t0/1\t0/0/30ed0\x0b\x0b\r\r\0\0\r\r\n";
        let h = TimelineHistory::parse(text).unwrap();
        assert_eq!(h.entries[0].reason, "0/0/30ed0\x0b\x0b\r\r\0\0\r\r");
        assert_eq!(TimelineHistory::parse(&h.to_text()).unwrap(), h);
    }

    proptest! {
        #[test]
        fn write_parse_round_trip(steps in proptest::collection::vec((1u32..5, 0u64..1<<40, "[a-z \r\t]{0,20}"), 0..6)) {
            let mut tli = 0;
            let mut lsn = 0;
            let entries: Vec<HistoryEntry> = steps.into_iter().map(|(dt, dl, r)| {
                tli += dt; lsn += dl;
                HistoryEntry { timeline: TimelineId(tli), switch_point: Lsn(lsn), reason: r }
            }).collect();
            let h = TimelineHistory { entries };
            prop_assert_eq!(TimelineHistory::parse(&h.to_text()).unwrap(), h);
        }

        #[test]
        fn garbage_never_panics(s in "\\PC{0,200}") {
            let _ = TimelineHistory::parse(&s);
        }
    }
}
