//! pgwal against the server's own readers: on PostgreSQL 18 record by record against pg_waldump,
//! on 17 against pg_walinspect (18's pg_waldump cannot read 17's WAL), and commit timestamps
//! against pg_xact_commit_timestamp().

use std::path::Path;
use std::process::Command;

use pgrepl_testbed::{tool, Cluster, ClusterOptions, PgVersion};
use pgwal::page::{PageHeader, XLP_FIRST_IS_CONTRECORD};
use pgwal::xact::{decode_xact_end, XactOutcome};
use pgwal::xlog::{decode_xlog, XlogRecord};
use pgwal::{
    parse_wal_file_name, DecoderOptions, Lsn, WalDecoder, WalError, WalFileKind, WalSegSize,
};

/// What we decoded of one record, in the oracles' terms.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    lsn: Lsn,
    end: Lsn,
    prev: Lsn,
    rmgr: String,
    rec_len: u32,
    tot_len: u32,
    xid: u32,
    /// (rel "spc/db/rel", fork name, block, has image)
    blocks: Vec<(String, String, u32, bool)>,
}

struct Decoded {
    records: Vec<Seen>,
    end: WalError,
    commits: Vec<(u32, i64)>,
    restore_points: Vec<(String, Lsn)>,
    segment_starts_continuing: usize,
    first: Lsn,
}

fn decode_pg_wal(pg_wal: &Path, seg_size: WalSegSize) -> Decoded {
    let mut names: Vec<(u64, String)> = std::fs::read_dir(pg_wal)
        .unwrap()
        .filter_map(|e| {
            let n = e.ok()?.file_name().into_string().ok()?;
            let p = parse_wal_file_name(&n, seg_size)?;
            let s = p.segment?.0;
            (p.kind == WalFileKind::SEGMENT).then_some((s, n))
        })
        .collect();
    names.sort();
    let first = Lsn(names[0].0 * seg_size.bytes());
    let mut d = WalDecoder::new(first, DecoderOptions::new(seg_size)).unwrap();
    let mut out = Decoded {
        records: Vec::new(),
        end: WalError {
            lsn: Lsn(0),
            kind: pgwal::WalErrorKind::UnalignedStart,
        },
        commits: Vec::new(),
        restore_points: Vec::new(),
        segment_starts_continuing: 0,
        first,
    };
    'files: for (expected_seg, (segno, name)) in (names[0].0..).zip(names.iter()) {
        assert_eq!(*segno, expected_seg, "gap in pg_wal before {name}");
        let bytes = std::fs::read(pg_wal.join(name)).unwrap();
        if let Some(h) = PageHeader::parse(&bytes) {
            if h.info & XLP_FIRST_IS_CONTRECORD != 0 {
                out.segment_starts_continuing += 1;
            }
        }
        d.feed(&bytes);
        loop {
            match d.next_record() {
                Ok(Some(r)) => {
                    out.records.push(Seen {
                        lsn: r.lsn,
                        end: r.end_lsn,
                        prev: r.prev_lsn,
                        rmgr: r.rmgr_name().to_owned(),
                        rec_len: r.total_len - r.fpi_len(),
                        tot_len: r.total_len,
                        xid: r.xid,
                        blocks: r
                            .blocks
                            .iter()
                            .map(|b| {
                                (
                                    format!(
                                        "{}/{}/{}",
                                        b.rlocator.spc_oid,
                                        b.rlocator.db_oid,
                                        b.rlocator.rel_number
                                    ),
                                    b.fork_name().to_owned(),
                                    b.block,
                                    b.has_image,
                                )
                            })
                            .collect(),
                    });
                    if let Some(x) = decode_xact_end(&r).unwrap() {
                        if x.outcome == XactOutcome::Commit {
                            out.commits.push((x.xid, x.time));
                        }
                    }
                    if let Some(XlogRecord::RestorePoint { name, .. }) = decode_xlog(&r).unwrap() {
                        out.restore_points.push((name, r.end_lsn));
                    }
                }
                Ok(None) => continue 'files,
                Err(e) => {
                    out.end = e;
                    break 'files;
                }
            }
        }
    }
    out
}

fn lsn_field(s: &str) -> Lsn {
    s.trim_end_matches(',')
        .parse()
        .unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Block references as pg_waldump and pg_walinspect print them:
/// `blkref #0: rel 1663/5/16384 fork fsm blk 2 FPW, blkref #1: ...`
fn parse_blkrefs(text: &str) -> Vec<(String, String, u32, bool)> {
    let mut out = Vec::new();
    for part in text.split("blkref #").skip(1) {
        let toks: Vec<&str> = part
            .split_whitespace()
            .map(|t| t.trim_matches(['(', ')', ',', ';']))
            .collect();
        let rel = toks
            .iter()
            .position(|t| *t == "rel")
            .map(|i| toks[i + 1].to_owned())
            .unwrap_or_default();
        let fork = toks
            .iter()
            .position(|t| *t == "fork")
            .map(|i| toks[i + 1].to_owned())
            .unwrap_or_else(|| "main".to_owned());
        let blk_at = toks
            .iter()
            .position(|t| *t == "blk")
            .unwrap_or_else(|| panic!("no blk in {text}"));
        let blk = toks[blk_at + 1]
            .parse()
            .unwrap_or_else(|e| panic!("{e} in {text}"));
        let fpw = toks.get(blk_at + 2).is_some_and(|t| t.starts_with("FPW"));
        out.push((rel, fork, blk, fpw));
    }
    out
}

fn parse_waldump(line: &str) -> Seen {
    let after = |key: &str| -> &str {
        let i = line
            .find(key)
            .unwrap_or_else(|| panic!("no {key:?} in {line}"));
        line[i + key.len()..].trim_start()
    };
    let rmgr = after("rmgr: ")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let lens = after("len (rec/tot): ");
    let (rec, rest) = lens.split_once('/').unwrap();
    let tot = rest.trim_start().split(',').next().unwrap();
    let xid = after("tx: ").split(',').next().unwrap().trim();
    let lsn = after("lsn: ").split_whitespace().next().unwrap();
    let prev = after("prev ").split_whitespace().next().unwrap();
    Seen {
        lsn: lsn_field(lsn),
        end: Lsn(0),
        prev: lsn_field(prev),
        rmgr,
        rec_len: rec.trim().parse().unwrap(),
        tot_len: tot.trim().parse().unwrap(),
        xid: xid.parse().unwrap(),
        blocks: parse_blkrefs(line),
    }
}

fn make_wal(c: &Cluster) -> (u32, Lsn) {
    let floor: u32 = c.psql("SELECT txid_current()").parse().unwrap();
    c.pgbench_init(1);
    c.pgbench(&["-T", "3", "-c", "2", "-j", "1", "-n"]);
    let rp: Lsn = c
        .psql("SELECT pg_create_restore_point('pgrepl_rp')")
        .parse()
        .unwrap();
    // a record spanning pages
    c.psql("SELECT pg_logical_emit_message(true, 'pgrepl', repeat('y', 30000))");
    c.psql("SELECT pg_switch_wal()");
    c.psql("CREATE TABLE after_switch AS SELECT g FROM generate_series(1, 1000) g");
    c.psql("CHECKPOINT");
    (floor, rp)
}

/// Our commit times equal the server's for transactions after `floor` (earlier ones, from
/// initdb, committed before track_commit_timestamp was on).
fn commit_timestamps_match(c: &Cluster, floor: u32, commits: &[(u32, i64)]) {
    let commits: Vec<(u32, i64)> = commits
        .iter()
        .filter(|(x, _)| *x > floor)
        .copied()
        .collect();
    assert!(
        commits.len() > 100,
        "too few commits decoded: {}",
        commits.len()
    );
    let sample: Vec<&(u32, i64)> = commits.iter().step_by(commits.len() / 100 + 1).collect();
    assert!(sample.len() >= 50);
    let xids: Vec<String> = sample.iter().map(|(x, _)| x.to_string()).collect();
    let out = c.psql(&format!(
        "SELECT x, (extract(epoch FROM pg_xact_commit_timestamp(x::text::xid)) * 1000000)::bigint \
         FROM unnest(ARRAY[{}]::bigint[]) x",
        xids.join(",")
    ));
    let server: std::collections::HashMap<u32, i64> = out
        .lines()
        .map(|l| {
            let (x, t) = l.split_once('|').unwrap();
            (x.parse().unwrap(), t.parse().unwrap())
        })
        .collect();
    for (xid, pg_time) in sample {
        let unix_us = pg_time + 946_684_800 * 1_000_000;
        assert_eq!(server.get(xid), Some(&unix_us), "commit time of xid {xid}");
    }
}

fn cluster(v: PgVersion) -> Cluster {
    Cluster::start_with(
        v,
        ClusterOptions {
            conf: vec![
                "track_commit_timestamp = on".into(),
                "wal_keep_size = 1GB".into(),
            ],
            ..Default::default()
        },
    )
}

#[test]
fn pg18_matches_pg_waldump() {
    let c = cluster(PgVersion::V18);
    let (floor, rp) = make_wal(&c);
    let seg = WalSegSize::DEFAULT;
    let ours = decode_pg_wal(&c.data.join("pg_wal"), seg);

    let out = Command::new(tool("pg_waldump"))
        .arg("-p")
        .arg(c.data.join("pg_wal"))
        .args(["-s", &ours.first.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let theirs: Vec<Seen> = stdout
        .lines()
        .filter(|l| l.starts_with("rmgr: "))
        .map(parse_waldump)
        .collect();
    assert!(
        theirs.len() > 10_000,
        "pg_waldump saw only {} records",
        theirs.len()
    );
    assert_eq!(
        ours.records.len(),
        theirs.len(),
        "record counts differ; pg_waldump: {stderr}"
    );
    for (a, b) in ours.records.iter().zip(&theirs) {
        let a_cmp = Seen {
            end: Lsn(0),
            ..a.clone()
        };
        assert_eq!(a_cmp, *b, "record at {} differs", b.lsn);
    }
    // the same end of WAL, in the same words
    let reason = stderr
        .split("error in WAL record at ")
        .nth(1)
        .and_then(|s| s.split_once(": "))
        .map(|(_, r)| r.trim())
        .unwrap_or_else(|| panic!("no end-of-WAL message from pg_waldump: {stderr}"));
    assert_eq!(ours.end.to_string(), reason);
    assert!(
        ours.segment_starts_continuing > 0,
        "no record crossed a segment boundary"
    );
    assert!(
        ours.records
            .iter()
            .any(|r| r.rmgr == "XLOG" && r.tot_len == 24),
        "no XLOG_SWITCH seen"
    );
    assert!(
        ours.records.iter().any(|r| r.tot_len > 30000),
        "no record spanning pages"
    );
    assert_eq!(ours.restore_points, vec![("pgrepl_rp".to_owned(), rp)]);
    commit_timestamps_match(&c, floor, &ours.commits);
}

#[test]
fn pg17_matches_pg_walinspect() {
    let c = cluster(PgVersion::V17);
    c.psql("CREATE EXTENSION pg_walinspect");
    let (floor, rp) = make_wal(&c);
    let seg = WalSegSize::DEFAULT;
    let ours = decode_pg_wal(&c.data.join("pg_wal"), seg);
    let flush: Lsn = c.psql("SELECT pg_current_wal_flush_lsn()").parse().unwrap();
    let rows = c.psql(&format!(
        "SELECT start_lsn, end_lsn, prev_lsn, coalesce(xid::text, '0'), resource_manager, \
                record_length, fpi_length, coalesce(block_ref, '') \
         FROM pg_get_wal_records_info('{}', '{flush}')",
        ours.first
    ));
    let theirs: Vec<Seen> = rows
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(8, '|').collect();
            let tot: u32 = f[5].parse().unwrap();
            let fpi: u32 = f[6].parse().unwrap();
            Seen {
                lsn: f[0].parse().unwrap(),
                end: f[1].parse().unwrap(),
                prev: f[2].parse().unwrap(),
                xid: f[3].parse().unwrap(),
                rmgr: f[4].to_owned(),
                rec_len: tot - fpi,
                tot_len: tot,
                blocks: parse_blkrefs(f[7]),
            }
        })
        .collect();
    assert!(
        theirs.len() > 10_000,
        "pg_walinspect saw only {} records",
        theirs.len()
    );
    // we read to the end of valid WAL; pg_walinspect stops at the flush position
    let ours_upto: Vec<&Seen> = ours.records.iter().filter(|r| r.lsn < flush).collect();
    assert_eq!(ours_upto.len(), theirs.len());
    for (a, b) in ours_upto.iter().zip(&theirs) {
        assert_eq!(*a, b, "record at {} differs", b.lsn);
    }
    assert!(
        ours.end.lsn >= flush,
        "our end of WAL {} is before the flush position {flush}",
        ours.end
    );
    assert!(
        ours.segment_starts_continuing > 0,
        "no record crossed a segment boundary"
    );
    assert_eq!(ours.restore_points, vec![("pgrepl_rp".to_owned(), rp)]);
    commit_timestamps_match(&c, floor, &ours.commits);
}

#[test]
fn pg18_promotion_is_decoded_from_the_new_timeline() {
    use pgwal::timeline::TimelineHistory;
    use pgwal::TimelineId;
    use walarchive::WalDir;
    let primary = cluster(PgVersion::V18);
    primary.psql("CREATE TABLE before AS SELECT 1 AS x");
    let standby = primary.standby();
    standby.promote();
    standby.psql("CREATE TABLE after AS SELECT 2 AS x");
    let pg_wal = standby.data.join("pg_wal");
    let history =
        TimelineHistory::parse(&std::fs::read_to_string(pg_wal.join("00000002.history")).unwrap())
            .unwrap();
    let switch = history.entries[0].switch_point;
    let seg = WalSegSize::DEFAULT;
    let start = switch.segment_start(seg);
    let mut d = WalDecoder::new(start, DecoderOptions::new(seg)).unwrap();
    let mut switches = Vec::new();
    let mut last = Lsn(0);
    let mut first_after_switch = None;
    WalDir::new(&pg_wal, seg)
        .read_range(TimelineId(2), &history, start, None, |_, bytes, _| {
            d.feed(bytes);
            while let Ok(Some(r)) = d.next_record() {
                last = r.lsn;
                if r.lsn >= switch && first_after_switch.is_none() {
                    first_after_switch = Some(r.lsn);
                }
                if let Some(XlogRecord::EndOfRecovery {
                    timeline,
                    prev_timeline,
                    ..
                }) = decode_xlog(&r).unwrap()
                {
                    switches.push((r.lsn, timeline, prev_timeline));
                }
            }
        })
        .unwrap();
    assert_eq!(switches.len(), 1, "records up to {last}: {switches:?}");
    assert_eq!(
        (switches[0].1, switches[0].2),
        (TimelineId(2), TimelineId(1))
    );
    assert_eq!(
        Some(switches[0].0),
        first_after_switch,
        "END_OF_RECOVERY is the first record at or after the switch point {switch}"
    );
}
